#!/usr/bin/env bash
# stack.sh: the local stack ragpool's demo and tests run against.
#
#   stack.sh up DIR [--devmodel PATH]   start Postgres 15, Redis and the
#                                       development model server in DIR
#   stack.sh down DIR                   stop them (safe to repeat, safe on a
#                                       half-started stack)
#   stack.sh status DIR                 exit 0 when every part answers
#   stack.sh env DIR                    print DIR/env
#
# Everything listens on 127.0.0.1 only, on free ports picked at run time, so
# several stacks (one per developer, per CI job, per test run) can run side by
# side.  `up` writes DIR/env, a file of `export` lines (RP_STACK_DIR,
# RP_TEST_PG_URL, DATABASE_URL, REDIS_URL, OPENAI_BASE_URL, OPENAI_API_KEY,
# RAGPOOL_*) that the demo, the tests and developers source.  `up` on a DIR
# whose stack is running reuses it; on a DIR with a dead or partial stack it
# stops what is left and starts again (keeping the Postgres data directory).
#
# Postgres refuses to run as root, so when run as root it runs as the
# `postgres` user (runuser); DIR is then owned by postgres and world-readable
# so that user can write its data directory, log and socket there while root
# writes the rest.  The devmodel binary comes from --devmodel, else
# $RP_DEVMODEL_BIN, else build/devmodel/ragpool-devmodel under the repository.
set -euo pipefail

PG_BIN=${RP_PG_BIN:-/usr/lib/postgresql/15/bin}
API_KEY=dev-key
DEADLINE_S=${RP_STACK_DEADLINE_S:-60}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

die() { echo "stack.sh: $*" >&2; exit 1; }
say() { echo "stack.sh: $*" >&2; }

# Run a command as the Postgres owner: the postgres user when we are root,
# ourselves otherwise.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# True when some socket listens on TCP port $1 (IPv4 or IPv6), read from
# /proc so no extra tool is needed on a minimal system.
port_in_use() {
    local hex
    hex=$(printf '%04X' "$1")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }'
}

# Print a port that nothing listens on, from a range below the kernel's
# ephemeral ports so outgoing connections do not take it meanwhile.
free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        if ! port_in_use "$p"; then
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

read_file() { [ -s "$1" ] && cat "$1" || true; }

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# ---------------------------------------------------------------- Postgres

pg_data() { echo "$DIR/pgdata"; }

pg_running() {
    local port
    port=$(read_file "$DIR/pg.port")
    [ -n "$port" ] && [ -f "$(pg_data)/postmaster.pid" ] &&
        "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2
}

pg_init() {
    local data
    data=$(pg_data)
    if [ -f "$data/PG_VERSION" ]; then
        return 0
    fi
    rm -rf "$data"
    as_pg "$PG_BIN/initdb" -D "$data" -A trust -U postgres -E UTF8 --no-locale --no-sync >"$DIR/initdb.log" 2>&1 ||
        { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
    # Settings the project relies on: logical decoding for the Realtime test
    # (wal2json), room for many worker connections, and durable commits.
    cat >>"$data/postgresql.conf" <<EOF

# --- ragpool local stack (deploy/local/stack.sh) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
fsync = on
synchronous_commit = on
shared_buffers = 256MB
max_connections = 300
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
EOF
    # Some Debian builds only let listed libraries act as logical decoding
    # output plugins; wal2json (what Supabase Realtime reads) must be one.
    # The setting is absent elsewhere, where naming it would stop start-up.
    local described
    described=$("$PG_BIN/postgres" --describe-config 2>/dev/null || true)
    if grep -q '^output_plugin_libraries' <<<"$described"; then
        echo "output_plugin_libraries = 'pgoutput, test_decoding, wal2json'" >>"$data/postgresql.conf"
    fi
}

pg_start() {
    local data port try
    data=$(pg_data)
    pg_init
    for try in 1 2 3 4 5; do
        port=$(free_port)
        if as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$DIR/postgres.log" -w -t "$DEADLINE_S" \
            -o "-p $port" start >/dev/null 2>&1; then
            echo "$port" >"$DIR/pg.port"
            break
        fi
        # Someone took the port between the check and the bind: try another.
        if grep -q -E 'could not bind|Address already in use' "$DIR/postgres.log" 2>/dev/null; then
            say "port $port was taken, retrying"
            continue
        fi
        tail -n 20 "$DIR/postgres.log" >&2 || true
        die "Postgres did not start (log: $DIR/postgres.log)"
    done
    [ -s "$DIR/pg.port" ] || die "Postgres did not start after 5 ports"
    wait_for "Postgres" "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2
    local exists
    exists=$(psql_cmd "$port" -tA -c "select 1 from pg_database where datname = 'ragpool'")
    if [ "$exists" != 1 ]; then
        psql_cmd "$port" -c "create database ragpool" >/dev/null
    fi
}

psql_cmd() {
    local port=$1
    shift
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"
}

pg_stop() {
    local data
    data=$(pg_data)
    if [ -f "$data/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t "$DEADLINE_S" stop >/dev/null 2>&1 ||
            say "pg_ctl stop reported an error (already stopped?)"
    fi
    # A postmaster.pid left by a killed server would make the next start
    # wait: pg_ctl removes a stale one itself, so nothing more to do here.
    rm -f "$DIR/pg.port"
}

# ---------------------------------------------------------------- Redis

redis_running() {
    local port
    port=$(read_file "$DIR/redis.port")
    [ -n "$port" ] && [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]
}

redis_start() {
    local port try i
    for try in 1 2 3 4 5; do
        port=$(free_port)
        : >"$DIR/redis.log"
        redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --dir "$DIR" \
            --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" \
            --maxmemory-policy noeviction --appendonly yes --save '' >/dev/null ||
            die "redis-server failed to start"
        echo "$port" >"$DIR/redis.port"
        for i in $(seq 1 $((DEADLINE_S * 10))); do
            if redis_running; then
                return 0
            fi
            if grep -q -E 'Address already in use|Could not create server TCP' "$DIR/redis.log"; then
                break
            fi
            sleep 0.1
        done
        if grep -q -E 'Address already in use|Could not create server TCP' "$DIR/redis.log"; then
            say "port $port was taken, retrying"
            rm -f "$DIR/redis.port"
            continue
        fi
        tail -n 20 "$DIR/redis.log" >&2 || true
        die "Redis did not answer within ${DEADLINE_S}s"
    done
    die "Redis did not start after 5 ports"
}

redis_stop() {
    local port pid i
    port=$(read_file "$DIR/redis.port")
    pid=$(read_file "$DIR/redis.pid")
    if [ -n "$port" ]; then
        redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    fi
    if pid_alive "$pid"; then
        for i in $(seq 1 50); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        pid_alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/redis.port" "$DIR/redis.pid"
}

# ---------------------------------------------------------------- devmodel

devmodel_running() {
    local port pid
    port=$(read_file "$DIR/devmodel.port")
    pid=$(read_file "$DIR/devmodel.pid")
    pid_alive "$pid" && [ -n "$port" ] &&
        curl -fsS -m 2 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1
}

devmodel_start() {
    local bin=$1 pid i
    [ -x "$bin" ] || die "devmodel binary not found at $bin (build first: ./dev build)"
    rm -f "$DIR/devmodel.port"
    # setsid: its own session, so a Ctrl-C in the terminal that ran `up`
    # does not reach it; `down` stops it by pid.
    setsid "$bin" --host 127.0.0.1 --port 0 --port-file "$DIR/devmodel.port" \
        --api-key "$API_KEY" </dev/null >"$DIR/devmodel.log" 2>&1 &
    pid=$!
    echo "$pid" >"$DIR/devmodel.pid"
    for i in $(seq 1 $((DEADLINE_S * 10))); do
        if devmodel_running; then
            return 0
        fi
        pid_alive "$pid" || { tail -n 20 "$DIR/devmodel.log" >&2; die "devmodel exited at start-up"; }
        sleep 0.1
    done
    tail -n 20 "$DIR/devmodel.log" >&2 || true
    die "devmodel did not answer /healthz within ${DEADLINE_S}s"
}

devmodel_stop() {
    local pid i
    pid=$(read_file "$DIR/devmodel.pid")
    if pid_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        pid_alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/devmodel.pid" "$DIR/devmodel.port"
}

# ---------------------------------------------------------------- helpers

wait_for() {
    local what=$1 i
    shift
    for i in $(seq 1 $((DEADLINE_S * 10))); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    die "$what did not answer within ${DEADLINE_S}s"
}

write_env() {
    local pg redis dm tmp
    pg=$(read_file "$DIR/pg.port")
    redis=$(read_file "$DIR/redis.port")
    dm=$(read_file "$DIR/devmodel.port")
    tmp="$DIR/env.tmp"
    cat >"$tmp" <<EOF
# Written by deploy/local/stack.sh up: source this file to use the stack.
export RP_STACK_DIR='$DIR'
export RP_TEST_PG_URL='postgresql://postgres@127.0.0.1:$pg/postgres'
export DATABASE_URL='postgresql://postgres@127.0.0.1:$pg/ragpool'
export REDIS_URL='redis://127.0.0.1:$redis/0'
export OPENAI_BASE_URL='http://127.0.0.1:$dm/v1'
export OPENAI_API_KEY='$API_KEY'
export RAGPOOL_EMBED_MODEL='dev-embed'
export RAGPOOL_EMBED_DIMENSIONS='384'
export RAGPOOL_CHAT_MODEL='dev-chat'
export RAGPOOL_MATCH_THRESHOLD='0.2'
EOF
    mv "$tmp" "$DIR/env"
}

all_running() { pg_running && redis_running && devmodel_running && [ -s "$DIR/env" ]; }

prepare_dir() {
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    # DIR changes owner and mode below: only ever an empty directory or one
    # a previous `up` made, never (by a slip) /tmp or a source tree.
    if [ -n "$(ls -A "$DIR")" ] && [ ! -d "$DIR/pgdata" ] && [ ! -e "$DIR/pg.port" ] &&
        [ ! -e "$DIR/initdb.log" ]; then
        die "$DIR is neither empty nor a stack directory; give a new or empty directory"
    fi
    if [ "$(id -u)" = 0 ]; then
        chown postgres:postgres "$DIR"
        chmod 755 "$DIR"
        runuser -u postgres -- test -w "$DIR" ||
            die "the postgres user cannot write $DIR (is a parent directory private?)"
    fi
}

cmd_up() {
    local bin=${DEVMODEL_BIN:-${RP_DEVMODEL_BIN:-}}
    if [ -z "$bin" ]; then
        bin="$REPO/${RP_BUILD_DIR:-build}/devmodel/ragpool-devmodel"
    fi
    prepare_dir
    if all_running; then
        say "stack in $DIR is already running; reusing it"
        return 0
    fi
    if [ -e "$DIR/pg.port" ] || [ -e "$DIR/redis.port" ] || [ -e "$DIR/devmodel.pid" ]; then
        say "stack in $DIR is partly running; restarting it"
        cmd_down
    fi
    [ -x "$bin" ] || die "devmodel binary not found at $bin (build first: ./dev build)"
    rm -f "$DIR/env"
    # On any failure below (die exits), stop what this call started.
    trap 'up_failed' EXIT
    pg_start
    redis_start
    devmodel_start "$bin"
    write_env
    trap - EXIT
    say "stack up in $DIR (Postgres :$(cat "$DIR/pg.port"), Redis :$(cat "$DIR/redis.port"), devmodel :$(cat "$DIR/devmodel.port"))"
}

up_failed() {
    say "start-up failed; stopping what was started"
    cmd_down >/dev/null 2>&1 || true
}

cmd_down() {
    [ -d "$DIR" ] || return 0
    DIR=$(cd "$DIR" && pwd)
    devmodel_stop
    redis_stop
    pg_stop
    rm -f "$DIR/env"
}

usage() {
    echo "usage: stack.sh up DIR [--devmodel PATH] | down DIR | status DIR | env DIR" >&2
    exit 2
}

[ $# -ge 2 ] || usage
CMD=$1
DIR=$2
shift 2
DEVMODEL_BIN=
while [ $# -gt 0 ]; do
    case $1 in
    --devmodel)
        [ $# -ge 2 ] || usage
        DEVMODEL_BIN=$2
        shift 2
        ;;
    *) usage ;;
    esac
done

case $CMD in
up) cmd_up ;;
down) cmd_down ;;
status)
    [ -d "$DIR" ] || exit 1
    DIR=$(cd "$DIR" && pwd)
    all_running
    ;;
env) cat "$DIR/env" ;;
*) usage ;;
esac
