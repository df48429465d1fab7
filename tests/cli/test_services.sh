#!/usr/bin/env bash
# The servers that the PostgreSQL, PgBouncer and Redis tests run against must be there: in CI
# a missing service is a failure, never a skip. scripts/test.sh starts them on loopback and
# exports ACMO_TEST_PG_URL, ACMO_TEST_PGBOUNCER_URL, ACMO_TEST_PGBOUNCER_TX_URL and
# ACMO_TEST_REDIS_URL.
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
quietly() { "$@" >/dev/null 2>&1; }

check "ACMO_TEST_PG_URL is set (run the tests through scripts/test.sh)" quietly test -n "${ACMO_TEST_PG_URL:-}"
check "ACMO_TEST_REDIS_URL is set (run the tests through scripts/test.sh)" quietly test -n "${ACMO_TEST_REDIS_URL:-}"
check "ACMO_TEST_PGBOUNCER_URL is set (run the tests through scripts/test.sh)" quietly test -n "${ACMO_TEST_PGBOUNCER_URL:-}"
check "ACMO_TEST_PGBOUNCER_TX_URL is set (run the tests through scripts/test.sh)" quietly test -n "${ACMO_TEST_PGBOUNCER_TX_URL:-}"
check "PostgreSQL answers at \$ACMO_TEST_PG_URL" quietly psql "${ACMO_TEST_PG_URL:-postgresql://invalid}" -tAc "SELECT 1"
check "PgBouncer in session mode answers at \$ACMO_TEST_PGBOUNCER_URL" quietly psql "${ACMO_TEST_PGBOUNCER_URL:-postgresql://invalid}" -tAc "SELECT 1"
check "PgBouncer in transaction mode answers at \$ACMO_TEST_PGBOUNCER_TX_URL" quietly psql "${ACMO_TEST_PGBOUNCER_TX_URL:-postgresql://invalid}" -tAc "SELECT 1"
redis=${ACMO_TEST_REDIS_URL:-redis://127.0.0.1:1}
hostport=${redis#redis://}
check "Redis answers at \$ACMO_TEST_REDIS_URL" quietly test "$(redis-cli -h "${hostport%:*}" -p "${hostport##*:}" ping 2>/dev/null)" = PONG
pg=${ACMO_TEST_PG_URL:-postgresql://invalid:1/x}
pg_port=${pg##*:}
pg_port=${pg_port%%/*}
# Every listening socket on the port is bound to 127.0.0.1.
loopback_only() {
  local listening
  listening=$(ss -ltnH "( sport = :$1 )" | awk '{print $4}')
  [ -n "$listening" ] && ! grep -qv '^127\.0\.0\.1:' <<<"$listening"
}
check "PostgreSQL listens on loopback only" quietly loopback_only "$pg_port"
check "Redis listens on loopback only" quietly loopback_only "${hostport##*:}"
bouncer=${ACMO_TEST_PGBOUNCER_URL:-postgresql://invalid:1/x}
bouncer_port=${bouncer##*:}
bouncer_port=${bouncer_port%%/*}
check "PgBouncer listens on loopback only" quietly loopback_only "$bouncer_port"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
