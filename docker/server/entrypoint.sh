#!/bin/sh
# Start kiisrv as uid 1000. Started as root (the default), it first joins the group
# that owns the mounted Docker socket, whatever its id on this host, and makes sure
# the data folder belongs to kiisrv; then it drops every privilege. Started as another
# user (compose `user:` plus `group_add:`), it runs the command as it is.
set -eu
if [ "$(id -u)" = "0" ]; then
	engine="${DOCKER_HOST:-unix:///var/run/docker.sock}"
	groups="1000"
	case "$engine" in
	unix://*)
		socket="${engine#unix://}"
		if [ -S "$socket" ]; then
			groups="1000,$(stat -c %g "$socket")"
		else
			echo "kiisrv: no Docker socket at $socket; builds will answer 503" >&2
		fi ;;
	esac
	data="${KIISRV_DATA_DIR:-/data}"
	mkdir -p "$data"
	chown 1000:1000 "$data"
	for d in config builds; do [ -d "$data/$d" ] && chown 1000:1000 "$data/$d"; done
	# A client key shared by the API servers of a cluster (KIISRV_CLIENT_KEY_FILE, e.g.
	# compose.distributed.yaml's /data/client-key): its folder, and the file if someone
	# copied it in as root, are kiisrv's.
	key="${KIISRV_CLIENT_KEY_FILE:-}"
	if [ -n "$key" ]; then
		mkdir -p "$(dirname "$key")"
		chown 1000:1000 "$(dirname "$key")"
		if [ -f "$key" ]; then chown 1000:1000 "$key"; chmod 600 "$key"; fi
	fi
	exec setpriv --reuid=1000 --regid=1000 --groups="$groups" --inh-caps=-all \
		--bounding-set=-all --no-new-privs -- "$@"
fi
exec "$@"
