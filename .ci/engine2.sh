#!/usr/bin/env bash
# The second build host of the distributed tests: redis-server and postgresql
# installed, and a second Docker engine on this machine with its own data root, exec
# root, pidfile and socket.
# Builds have no network, so it needs no bridge and no iptables rules. It runs in a
# network namespace of its own (only lo: a build host without IPv4 networking): a
# dockerd with --bridge=none deletes the interface docker0, which in the host's
# namespace belongs to the first engine. Sourced by
# .ci/run (after docker-up.sh); sets KIISRV_TEST_DOCKER_HOST_2 and KIISRV_STARTED_DOCKERD_2.
# The tests load the test double image into it themselves and start their own Redis.
set -euo pipefail

if ! command -v redis-server >/dev/null; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
# Debian's package starts a service on 6379; the tests use their own ports.
# PostgreSQL for the shared statistics (KIISRV_STATS_URL): the tests run initdb and
# postgres themselves from /usr/lib/postgresql/15/bin; the cluster Debian's package may
# start on 5432 is not used.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

KIISRV_ENGINE2_DIR="$(mktemp -d /tmp/kiisrv-engine2.XXXXXX)"
export KIISRV_ENGINE2_DIR
setsid unshare --net dockerd \
	--data-root "$KIISRV_ENGINE2_DIR/data" \
	--exec-root "$KIISRV_ENGINE2_DIR/exec" \
	--pidfile "$KIISRV_ENGINE2_DIR/docker.pid" \
	--host "unix://$KIISRV_ENGINE2_DIR/docker.sock" \
	--bridge=none --iptables=false --ip-masq=false \
	>"$KIISRV_ENGINE2_DIR/dockerd.log" 2>&1 </dev/null &
export KIISRV_STARTED_DOCKERD_2=$!
export KIISRV_TEST_DOCKER_HOST_2="unix://$KIISRV_ENGINE2_DIR/docker.sock"
for _ in $(seq 60); do
	DOCKER_HOST="$KIISRV_TEST_DOCKER_HOST_2" docker info >/dev/null 2>&1 && break
	sleep 1
done
DOCKER_HOST="$KIISRV_TEST_DOCKER_HOST_2" docker version --format 'second engine {{.Server.Version}}' \
	|| { cat "$KIISRV_ENGINE2_DIR/dockerd.log"; exit 1; }
