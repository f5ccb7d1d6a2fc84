#!/usr/bin/env bash
# Install and start what the Docker tests need on a bare Debian 12: the engine, Compose
# v1, and a debian:bookworm-slim base image made with debootstrap (there is no registry).
# Sourced by .ci/run; sets KIISRV_STARTED_DOCKERD when it started the daemon itself.
set -euo pipefail

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null \
	|| ! command -v docker-compose >/dev/null; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
	setsid dockerd >/tmp/kiisrv-dockerd.log 2>&1 < /dev/null &
	export KIISRV_STARTED_DOCKERD=$!
	for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
	docker info >/dev/null || { cat /tmp/kiisrv-dockerd.log; exit 1; }
fi

if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
	root="$(mktemp -d)"
	debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/tmp/kiisrv-debootstrap.log 2>&1 \
		|| { tail -20 /tmp/kiisrv-debootstrap.log; exit 1; }
	# Like the registry's slim image: no package archives or lists left in the root.
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
	tar -C "$root" -c . | docker import - debian:bookworm-slim >/dev/null
	rm -rf "$root"
fi
docker version --format 'docker engine {{.Server.Version}} (API {{.Server.APIVersion}})'
