#!/usr/bin/env bash
# Start or stop the PostgreSQL and Redis servers the tests use: loopback only, on ports of
# their own, with data in a directory of their own (never the system's servers).
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
  echo "ACMO_TEST_PG_URL=postgresql://acmo@127.0.0.1:$pg_port/acmo_test"
  echo "ACMO_TEST_REDIS_URL=redis://127.0.0.1:$redis_port"
}

stop() {
  if [ -f "$root/pg/PG_VERSION" ]; then
    as_postgres "$pg_bin/pg_ctl" -D "$root/pg" -m fast -w stop >/dev/null 2>&1 || true
  fi
  redis-cli -h 127.0.0.1 -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
