#!/usr/bin/env bash
# A throwaway Postgres 15 server for the tests and benchmarks.
#
# Contract (what tests may rely on):
#   scripts/pg.sh start DIR   starts (or finds already running) a server whose
#                             data, socket and log live in DIR, listening on
#                             127.0.0.1 on a free port, trust auth, superuser
#                             `postgres`; durability is off (fsync=off,
#                             synchronous_commit=off, full_page_writes=off).
#                             Writes the URL postgres://postgres@127.0.0.1:PORT/postgres
#                             to DIR/url and prints it on stdout. Installs
#                             postgresql-15 with apt-get when it is missing
#                             (as root). As root, the server runs as the
#                             `postgres` user (created when missing).
#   scripts/pg.sh stop DIR    stops it (fast mode); nothing to do when it is
#                             not running.
#   scripts/pg.sh url DIR     prints the URL of a started server.
# Both are idempotent. Messages go to stderr; exit code 0 ok, 1 failure.
# Tests read the URL from OVERSEER_TEST_PG_URL (scripts/test.sh sets it) and
# create one fresh database per test (overseer_tests::pg_database).
# OVERSEER_PG_BIN overrides the server binary directory
# (default /usr/lib/postgresql/15/bin).
set -euo pipefail

PG_BIN="${OVERSEER_PG_BIN:-/usr/lib/postgresql/15/bin}"

die() {
    echo "pg.sh: $*" >&2
    exit 1
}

usage() {
    die "usage: scripts/pg.sh start|stop|url DIR"
}

# Runs a command as the server's user: `postgres` when we are root (initdb
# and postgres refuse to run as root), ourselves otherwise.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

install_server() {
    [ -x "$PG_BIN/postgres" ] && return 0
    [ "$(id -u)" = 0 ] || die "$PG_BIN/postgres is missing; install postgresql-15 (apt-get install postgresql-15) or set OVERSEER_PG_BIN"
    command -v apt-get >/dev/null || die "$PG_BIN/postgres is missing and apt-get is not available to install postgresql-15"
    echo "pg.sh: installing postgresql-15" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends postgresql-15 >&2; then
        apt-get update -q >&2 || die "apt-get update failed"
        apt-get install -y -q --no-install-recommends postgresql-15 >&2 || die "apt-get install postgresql-15 failed"
    fi
    [ -x "$PG_BIN/postgres" ] || die "postgresql-15 is installed but $PG_BIN/postgres is missing"
}

ensure_user() {
    [ "$(id -u)" = 0 ] || return 0
    if ! id -u postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres ||
            die "cannot create the postgres user"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

running() {
    [ -f "$DIR/data/PG_VERSION" ] && as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1
}

write_url() {
    local port
    port=$(sed -n 's/^port = \([0-9]*\).*/\1/p' "$DIR/data/overseer.conf" | tail -n1)
    [ -n "$port" ] || die "no port in $DIR/data/overseer.conf"
    echo "postgres://postgres@127.0.0.1:$port/postgres" >"$DIR/url"
    cat "$DIR/url"
}

start() {
    install_server
    ensure_user
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$DIR"
        chmod 0700 "$DIR"
    fi
    as_pg test -w "$DIR" ||
        die "$DIR is not writable by the postgres user (is a parent directory private? use a directory under /tmp)"
    if running; then
        echo "pg.sh: already running in $DIR" >&2
        write_url
        return 0
    fi
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
        rm -rf "$DIR/data"
        as_pg "$PG_BIN/initdb" -D "$DIR/data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
            >"$DIR/initdb.log" 2>&1 || die "initdb failed; see $DIR/initdb.log"
        as_pg tee -a "$DIR/data/postgresql.conf" >/dev/null <<EOF
include_if_exists = 'overseer.conf'
EOF
    fi
    local attempt port
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        port_in_use "$port" && continue
        as_pg tee "$DIR/data/overseer.conf" >/dev/null <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 256MB
max_wal_size = 4GB
checkpoint_timeout = 30min
maintenance_work_mem = 256MB
EOF
        if as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start >/dev/null 2>&1; then
            write_url
            return 0
        fi
        # A port taken between the check and the start: try another one.
        grep -q "could not bind\|Address already in use" "$DIR/server.log" 2>/dev/null || break
        echo "pg.sh: port $port is taken, retrying (attempt $attempt)" >&2
    done
    die "the server did not start; see $DIR/server.log: $(tail -n 5 "$DIR/server.log" 2>/dev/null)"
}

stop() {
    [ -d "$DIR" ] || return 0
    if running; then
        as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -m fast -w -t 60 stop >/dev/null ||
            die "pg_ctl stop failed; see $DIR/server.log"
    fi
}

[ $# -eq 2 ] || usage
DIR=$2
case "$1" in
start) start ;;
stop) stop ;;
url)
    [ -f "$DIR/url" ] || die "no server was started in $DIR"
    cat "$DIR/url"
    ;;
*) usage ;;
esac
