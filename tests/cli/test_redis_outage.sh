#!/usr/bin/env bash
# Redis stopped in the middle of a run (issue 3, item 6), through the real acmo binary: a
# redis-server of the test's own (loopback, port 26479 or $ACMO_TEST_REDIS_OUTAGE_PORT, its own
# dir), cache.backend = "redis", `acmo run-handler` in the background while events stream in,
# reads with `acmo orders get|list` and figures from `acmo stats`. With Redis gone no event
# fails (all applied, none dead-lettered), reads answer from the store, errors are counted;
# with Redis back, caching resumes.
#   tests/cli/test_redis_outage.sh path/to/acmo
set -uo pipefail
acmo=${1:?usage: $0 path/to/acmo}
port=${ACMO_TEST_REDIS_OUTAGE_PORT:-26479}
work=$(mktemp -d "${TMPDIR:-/tmp}/acmo-redis-outage-test.XXXXXX")
handler_pid=''
redis_pid=''
cleanup() {
  [[ -n $handler_pid ]] && kill -9 "$handler_pid" 2>/dev/null
  [[ -n $redis_pid ]] && kill -9 "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
export ACMO_DATA_DIR="$work/data"
export ACMO_CACHE_BACKEND=redis ACMO_CACHE_URL="redis://127.0.0.1:$port" ACMO_CACHE_TIMEOUT=100ms
export NO_COLOR=1
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_redis() {
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$work" \
    --logfile "$work/redis.log" &
  redis_pid=$!
  for _ in $(seq 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "redis-server did not start on port $port" >&2
  exit 1
}
stop_redis() {
  kill -9 "$redis_pid"
  wait "$redis_pid" 2>/dev/null
  redis_pid=''
}
if redis-cli -p "$port" ping >/dev/null 2>&1; then
  echo "port $port is taken by another Redis; set ACMO_TEST_REDIS_OUTAGE_PORT" >&2
  exit 1
fi

n=20
ids=()
for i in $(seq "$n"); do ids+=("ord_$i"); done
send_all() { # send_all TYPE STATUS: one event per order, as a JSON Lines stream
  for id in "${ids[@]}"; do
    if [[ $1 == CREATE ]]; then
      echo "{\"type\":\"CREATE\",\"orderId\":\"$id\",\"data\":{\"customer_name\":\"Ada\",\"customer_email\":\"ada@example.com\",\"items\":[]}}"
    else
      echo "{\"type\":\"UPDATE\",\"orderId\":\"$id\",\"data\":{\"status\":\"$2\"}}"
    fi
  done | "$acmo" -q send --file -
}
# Wait (up to 20 s) until the handler has applied everything queued.
drained() {
  local s
  for _ in $(seq 200); do
    s=$("$acmo" --json stats)
    [[ $(json_field "$s" visible) == 0 && $(json_field "$s" inFlight) == 0 &&
       $(json_field "$s" delayed) == 0 ]] && return 0
    sleep 0.1
  done
  return 1
}
# Drained, and past the handler's second invalidation of what it applied (one to two heartbeats
# after the commit, core/handler/order_handler.cpp): reads taken before it may be wiped by it and miss.
settled() {
  drained || return 1
  sleep 2.2
}
# Every order read twice with `acmo orders get`, and the list: how many answers were wrong.
read_all() {
  local wrong=0 id out
  for _ in 1 2; do
    for id in "${ids[@]}"; do
      out=$("$acmo" --json orders get "$id") || { wrong=$((wrong + 1)); continue; }
      [[ $(json_field "$out" status) == "$1" ]] || wrong=$((wrong + 1))
    done
    out=$("$acmo" --json orders list --status "$1" --limit 100) || wrong=$((wrong + 1))
    [[ $(json_field "$out" total) == "$n" ]] || wrong=$((wrong + 1))
  done
  echo "$wrong"
}
cache_field() { json_field "$(grep -o '"cache":{[^}]*}' <<<"$1")" "$2"; }

start_redis
"$acmo" run-handler --concurrency 2 >"$work/handler.log" 2>&1 &
handler_pid=$!

# --- Redis up ---------------------------------------------------------------------------------
send_all CREATE
check "the CREATEs are applied" settled
check "every order reads back pending" test "$(read_all pending)" = 0
s=$("$acmo" --json stats)
check "stats: the cache is redis" test "$(cache_field "$s" backend)" = redis
hits_up=$(cache_field "$s" hits)
check "stats: the second reads were hits ($hits_up)" test "${hits_up:-0}" -ge "$n"
check "stats: no cache errors yet" test "$(cache_field "$s" errors)" = 0

# --- Redis stopped ----------------------------------------------------------------------------
stop_redis
send_all UPDATE processing
check "with Redis down, the UPDATEs are applied" drained
start=$(date +%s%N)
check "with Redis down, every order reads back processing (from the store)" \
  test "$(read_all processing)" = 0
ms=$((($(date +%s%N) - start) / 1000000))
check "with Redis down, $((2 * n + 2)) reads took ${ms} ms (no read waits long)" test "$ms" -lt 20000
s=$("$acmo" --json stats)
check "with Redis down, acmo stats still answers and counts the error" \
  test "$(cache_field "$s" errors)" -ge 1
check "with Redis down, no event was dead-lettered" test -z "$("$acmo" -q dlq list)"

# --- Redis back (empty) -----------------------------------------------------------------------
start_redis
sleep 0.6 # the handler's back-off runs out
send_all UPDATE shipped
check "with Redis back, the UPDATEs are applied" settled
check "with Redis back, every order reads back shipped" test "$(read_all shipped)" = 0
s=$("$acmo" --json stats)
hits_back=$(cache_field "$s" hits)
check "with Redis back, caching resumed: the second reads were hits ($hits_back)" \
  test "${hits_back:-0}" -ge "$n"
errors_back=$(cache_field "$s" errors)
check "with Redis back, the handler's outage errors are in the figures ($errors_back)" \
  test "${errors_back:-0}" -ge 1
check "nothing was dead-lettered" test -z "$("$acmo" -q dlq list)"

kill -TERM "$handler_pid"
wait "$handler_pid"; rc=$?
handler_pid=''
check "run-handler exits 0 after SIGTERM (got $rc)" test "$rc" -eq 0
out=$("$acmo" --json orders list --status shipped --limit 1)
check "all $n orders shipped, none lost" test "$(json_field "$out" total)" = "$n"

echo "# $passed passed, $failed failed"
[[ $failed -eq 0 ]]
