#!/bin/sh
# The official postgres image's start, as far as compose.distributed.yaml uses it: as
# root, own PGDATA and drop to postgres; on first start initdb with POSTGRES_USER as the
# superuser and POSTGRES_PASSWORD as its password, create POSTGRES_DB, accept password
# (scram-sha-256) logins from any address; then exec the command (postgres as PID 1,
# so a stale postmaster.pid after a kill is recognised as its own).
set -eu
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chown postgres:postgres "$PGDATA" /var/run/postgresql
	chmod 700 "$PGDATA"
	exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$0" "$@"
fi
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
	: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
	user="${POSTGRES_USER:-postgres}"
	db="${POSTGRES_DB:-$user}"
	pwfile="$(mktemp)"
	printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
		--auth-local=trust --auth-host=scram-sha-256 >/dev/null
	rm -f "$pwfile"
	echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
	echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
	if [ "$db" != postgres ]; then
		# Single-user mode runs as the bootstrap superuser: no server, no socket yet.
		echo "CREATE DATABASE \"$db\"" | postgres --single -D "$PGDATA" postgres >/dev/null
	fi
	echo "stand-in postgres: cluster made in $PGDATA, database $db, user $user"
fi
exec "$@"
