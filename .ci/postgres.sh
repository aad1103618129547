#!/usr/bin/env bash
# The PostgreSQL server the ledger tests use: a throwaway cluster of its own
# (not Debian's "main"), listening on 127.0.0.1 only, trust authentication.
#
#   .ci/postgres.sh install  install PostgreSQL from Debian (as root) if missing
#   .ci/postgres.sh start    install if missing, create the cluster and its database
#                            if missing, start it if stopped; idempotent
#   .ci/postgres.sh stop     stop it (if running)
#   .ci/postgres.sh url      print the libpq URL for DICOMRELAY_TEST_POSTGRES
#
# DICOMRELAY_PG_DIR (default: $TMPDIR/dicomrelay-postgres-$USER; /tmp as root) and
# DICOMRELAY_PG_PORT (default 54329) say where. As root, the server runs as the
# "postgres" user (PostgreSQL refuses to run as root).
set -euo pipefail

port="${DICOMRELAY_PG_PORT:-54329}"
tmp="${TMPDIR:-/tmp}"
[ "$(id -u)" != 0 ] || tmp=/tmp  # where the postgres user can reach
dir="${DICOMRELAY_PG_DIR:-$tmp/dicomrelay-postgres-$(id -un)}"
data="$dir/data"
db=dicomrelay
superuser=dicomrelay

url() { echo "postgresql://$superuser@127.0.0.1:$port/$db"; }

bindir() {
    local d
    d="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

install() {
    bindir >/dev/null && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql, as root)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bindir >/dev/null || { echo "postgres.sh: no initdb after installing postgresql" >&2; exit 1; }
}

# Run a server binary as the user the cluster belongs to.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    install
    local bin
    bin="$(bindir)"
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    if [ ! -f "$data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$data" -U "$superuser" --auth=trust -E UTF8 \
            --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; exit 1; }
        # A test cluster: durability is PostgreSQL's own business, not under test.
        cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    fi
    if ! as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start >/dev/null \
            || { tail -n 20 "$dir/server.log" >&2; exit 1; }
    fi
    if ! as_owner "$bin/psql" -h "$dir" -p "$port" -U "$superuser" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
        as_owner "$bin/createdb" -h "$dir" -p "$port" -U "$superuser" "$db"
    fi
    echo "PostgreSQL for the tests: $(url)" >&2
}

stop() {
    local bin
    bin="$(bindir)" || return 0
    [ -f "$data/PG_VERSION" ] || return 0
    if as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
}

case "${1:-start}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    url) url ;;
    *) echo "usage: $0 install|start|stop|url" >&2; exit 2 ;;
esac
