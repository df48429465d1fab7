#!/usr/bin/env bash
# Start or stop the PostgreSQL and Redis servers the tests use, and a PgBouncer in front of
# that PostgreSQL: loopback only, on ports of their own, with data in a directory of their own
# (never the system's servers).
#
#   scripts/test-services.sh start   # prints the environment the tests read
#   scripts/test-services.sh stop
set -euo pipefail

root=${ACMO_TEST_SERVICES_DIR:-/tmp/acmo-test-services}
# Below 32768, outside Linux's ephemeral range (32768-60999): a port in it can be taken for a
# while by the TIME-WAIT of a client connection that happened to get it as its source port,
# and then a server cannot bind it (CI saw this for PostgreSQL after thousands of test
# connections). The outage tests' own servers use 25532 and 26479 for the same reason.
pg_port=${ACMO_TEST_PG_PORT:-25432}
redis_port=${ACMO_TEST_REDIS_PORT:-26379}
pgbouncer_port=${ACMO_TEST_PGBOUNCER_PORT:-$((pg_port + 1))}
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  mkdir -p "$root"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$root"
  if [ ! -f "$root/pg/PG_VERSION" ]; then
    as_postgres "$pg_bin/initdb" -D "$root/pg" -U acmo --auth=trust -E UTF8 >/dev/null
  fi
  if ! as_postgres "$pg_bin/pg_ctl" -D "$root/pg" status >/dev/null 2>&1; then
    as_postgres "$pg_bin/pg_ctl" -D "$root/pg" -l "$root/pg.log" -w -t 30 \
      -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $root -c fsync=on" start >/dev/null
  fi
  as_postgres "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U acmo -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'acmo_test'" | grep -q 1 ||
    as_postgres "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U acmo acmo_test
  if ! redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port "$redis_port" --daemonize yes --save "" \
      --appendonly no --dir "$root" --pidfile "$root/redis.pid" --logfile "$root/redis.log"
    for _ in $(seq 50); do
      redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
  redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null
  start_pgbouncer
  echo "ACMO_TEST_PG_URL=postgresql://acmo@127.0.0.1:$pg_port/acmo_test"
  echo "ACMO_TEST_REDIS_URL=redis://127.0.0.1:$redis_port"
  echo "ACMO_TEST_PGBOUNCER_URL=postgresql://acmo@127.0.0.1:$pgbouncer_port/acmo_test"
  echo "ACMO_TEST_PGBOUNCER_TX_URL=postgresql://acmo@127.0.0.1:$pgbouncer_port/acmo_test_tx"
}

# The test database twice: as acmo_test through a pool in session mode (a client keeps one
# server connection until it leaves), and as acmo_test_tx in transaction mode, with one server
# connection that every client's transactions take turns on. PgBouncer passes no `options` on
# (the tests' URLs name their schemas there, for the store); acmo's queue sets its own
# search_path on each connection.
start_pgbouncer() {
  if [ ! -f "$root/pgbouncer.pid" ] || ! kill -0 "$(cat "$root/pgbouncer.pid")" 2>/dev/null; then
    cat >"$root/pgbouncer.ini" <<EOF
[databases]
acmo_test = host=127.0.0.1 port=$pg_port dbname=acmo_test user=acmo pool_mode=session
acmo_test_tx = host=127.0.0.1 port=$pg_port dbname=acmo_test user=acmo pool_mode=transaction pool_size=1
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgbouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $root/pgbouncer.users
default_pool_size = 100
max_client_conn = 1000
ignore_startup_parameters = options
logfile = $root/pgbouncer.log
pidfile = $root/pgbouncer.pid
EOF
    echo '"acmo" ""' >"$root/pgbouncer.users"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$root/pgbouncer.ini" "$root/pgbouncer.users"
    as_postgres pgbouncer -d "$root/pgbouncer.ini" >/dev/null
  fi
  for _ in $(seq 50); do
    as_postgres "$pg_bin/psql" -h 127.0.0.1 -p "$pgbouncer_port" -U acmo -d acmo_test -tAc \
      "SELECT 1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "test-services: PgBouncer did not answer on port $pgbouncer_port (see $root/pgbouncer.log)" >&2
  return 1
}

stop() {
  if [ -f "$root/pg/PG_VERSION" ]; then
    as_postgres "$pg_bin/pg_ctl" -D "$root/pg" -m fast -w stop >/dev/null 2>&1 || true
  fi
  redis-cli -h 127.0.0.1 -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  if [ -f "$root/pgbouncer.pid" ]; then
    kill "$(cat "$root/pgbouncer.pid")" 2>/dev/null || true
    rm -f "$root/pgbouncer.pid"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
