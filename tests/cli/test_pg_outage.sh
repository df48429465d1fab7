#!/usr/bin/env bash
# PostgreSQL stopped in the middle of a run (issue 3, item 6), through the real acmo binary: a
# PostgreSQL server of the test's own (loopback, port 25532 or $ACMO_TEST_PG_OUTAGE_PORT, its
# own data dir in a temp dir, stopped by the trap), store.backend = "postgres", `acmo
# run-handler` in the foreground (in the background of this script) while events stream in.
# With the server stopped, events are retried with backoff and the handler stays up (its
# figures show the retries and the last error); with the server back, everything is applied
# exactly once. A long outage costs the waiting events one attempt: the handler takes no more
# until the server answers. With no retries, events end in the DLQ with the reason, and `acmo
# dlq redrive` applies them once the server is back.
#   tests/cli/test_pg_outage.sh path/to/acmo
set -uo pipefail
acmo=${1:?usage: $0 path/to/acmo}
port=${ACMO_TEST_PG_OUTAGE_PORT:-25532}
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [[ -z $pg_bin ]]; then
  if [[ ${CI:-} == true ]]; then
    echo "not ok - PostgreSQL's server programs are not installed (scripts/install-deps.sh)"
    exit 1
  fi
  echo "WARN: skipped: PostgreSQL's server programs are not installed (scripts/install-deps.sh)"
  exit 0
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/acmo-pg-outage-test.XXXXXX")
handler_pid=''
as_postgres() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
pg_running() { as_postgres "$pg_bin/pg_ctl" -D "$work/pg" status >/dev/null 2>&1; }
server_pid=''
server2_pid=''
server3_pid=''
cleanup() {
  [[ -n $handler_pid ]] && kill -9 "$handler_pid" 2>/dev/null
  [[ -n $server_pid ]] && kill -9 "$server_pid" 2>/dev/null
  [[ -n $server2_pid ]] && kill -9 "$server2_pid" 2>/dev/null
  [[ -n $server3_pid ]] && kill -9 "$server3_pid" 2>/dev/null
  [[ -f $work/pg/PG_VERSION ]] && as_postgres "$pg_bin/pg_ctl" -D "$work/pg" -m immediate -w stop >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
[[ $(id -u) -eq 0 ]] && chown postgres:postgres "$work"
export ACMO_DATA_DIR="$work/data"
export ACMO_STORE_BACKEND=postgres ACMO_STORE_URL="postgresql://acmo@127.0.0.1:$port/acmo"
export ACMO_STORE_CONNECT_TIMEOUT=1s ACMO_CACHE_BACKEND=none
export NO_COLOR=1
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The port is in the kernel's ephemeral range: a client connection elsewhere on the machine may
# hold it for a moment, so a failed start is tried again.
start_pg() {
  local try
  for try in 1 2 3 4 5 6 7 8 9 10; do
    as_postgres "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w -t 30 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $work -c fsync=on" start >/dev/null 2>&1 && return 0
    ss -tan "( sport = :$port )" | tail -n +2 >&2
    sleep 0.5
  done
  return 1
}
stop_pg() { as_postgres "$pg_bin/pg_ctl" -D "$work/pg" -m fast -w stop >/dev/null; }
# A crash of the server (no shutdown checkpoint: WAL not yet written is gone), then its restart.
crash_pg() {
  as_postgres "$pg_bin/pg_ctl" -D "$work/pg" -m immediate -w stop >/dev/null
  start_pg
}
sql() { as_postgres "$pg_bin/psql" -h 127.0.0.1 -p "$port" -U acmo -d acmo -tAc "$1"; }

if "$pg_bin/pg_isready" -h 127.0.0.1 -p "$port" >/dev/null 2>&1; then
  echo "not ok - port $port is taken by another PostgreSQL; set ACMO_TEST_PG_OUTAGE_PORT"
  exit 1
fi
as_postgres "$pg_bin/initdb" -D "$work/pg" -U acmo --auth=trust -E UTF8 >/dev/null || exit 1
start_pg || { echo "not ok - PostgreSQL did not start"; cat "$work/pg.log"; exit 1; }
as_postgres "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U acmo acmo || exit 1

# events FIRST LAST: a CREATE and an UPDATE to processing for orders ord_FIRST..ord_LAST, as
# JSON Lines; the two events of an order are in the same group (the default, "orders").
events() {
  local i
  for i in $(seq "$1" "$2"); do
    echo "{\"type\":\"CREATE\",\"orderId\":\"ord_$i\",\"data\":{\"customer_name\":\"Ada\",\"customer_email\":\"ada@example.com\",\"items\":[{\"product_id\":\"p\",\"quantity\":1,\"unit_price\":2.5}]}}"
    echo "{\"type\":\"UPDATE\",\"orderId\":\"ord_$i\",\"data\":{\"status\":\"processing\"}}"
  done
}
send_events() { events "$1" "$2" | "$acmo" -q send --file -; }
# queue_empty: nothing visible, in flight or delayed.
queue_empty() {
  local stats
  stats=$("$acmo" --json stats)
  [[ "$(json_field "$stats" visible)/$(json_field "$stats" inFlight)/$(json_field "$stats" delayed)" == 0/0/0 ]]
}
# wait_for SECONDS COMMAND...: poll until the command succeeds.
wait_for() {
  local tries=$(($1 * 10)); shift
  for _ in $(seq "$tries"); do "$@" && return 0; sleep 0.1; done
  return 1
}
applied_orders() { [[ "$(sql "SELECT count(*) FROM orders WHERE version = 2" 2>/dev/null)" == "$1" ]]; }
# The handler section of `acmo stats --json` (the queue's section has fields of the same names).
handler_stats() { local s; s=$("$acmo" --json stats); echo "${s#*\"handler\":}"; }
handler_retried() { [[ "$(json_field "$(handler_stats)" retried)" -gt 0 ]]; }
# Every event in the audit trail once, and every order as its events make it.
exactly_once() { # exactly_once ORDERS
  [[ "$(sql "SELECT count(*), count(DISTINCT message_id) FROM order_events")" == "$(($1 * 2))|$(($1 * 2))" ]] &&
    [[ "$(sql "SELECT count(*) FROM applied_messages")" == "$(($1 * 2))" ]] &&
    [[ "$(sql "SELECT count(*) FROM orders WHERE status = 'processing' AND version = 2 AND total_cents = 250")" == "$1" ]] &&
    [[ "$(sql "SELECT count(*) FROM orders")" == "$1" ]]
}

# The DLQ's size: `acmo dlq list` reads only the queue, so it answers while PostgreSQL is down.
dlq_total() { sed -n 's/.*"total":\([0-9]*\)}$/\1/p' <<<"$("$acmo" --json dlq list --limit 1)"; }
dlq_count() { [[ "$(dlq_total)" == "$1" ]]; }
# SIGTERM the running handler ($handler_pid) and check that it stops cleanly.
stop_handler() {
  local rc=0
  kill -TERM "$handler_pid"
  wait "$handler_pid" || rc=$?
  handler_pid=''
  check "SIGTERM stops the handler: exit 0" test "$rc" -eq 0
}

# --- stopped mid-run: retried with backoff, then applied once ----------------------------------

export ACMO_QUEUE_RETRY_DELAYS="200ms, 400ms, 800ms" ACMO_QUEUE_MAX_RETRIES=50
"$acmo" run-handler --batch-size 10 >"$work/handler.out" 2>"$work/handler.err" &
handler_pid=$!
pg_port=$port # start_server sets $port to the API's
ACMO_STORE_CONNECT_TIMEOUT=1s start_server --no-handler
api_port=$port
port=$pg_port
send_events 1 100
check "the handler applies 200 events while PostgreSQL runs" wait_for 20 applied_orders 100

stop_pg
check "PostgreSQL is stopped" test "$(pg_running && echo up || echo down)" = down
send_events 101 200
sleep 2 # several rounds of retries against the stopped server
check "with PostgreSQL down the handler keeps running" kill -0 "$handler_pid"
check "and dead-letters nothing (retries are left)" dlq_count 0
# For a load balancer: the API still queues events (as `acmo send` just did), so it is ready,
# with reads degraded.
code=$(curl -s -o "$work/health" -w '%{http_code}' "http://127.0.0.1:$api_port/health")
check "with PostgreSQL down, /health answers 503 ($code)" test "$code" = 503
code=$(curl -s -o "$work/ready" -w '%{http_code}' "http://127.0.0.1:$api_port/health/ready")
check "  /health/ready 200, degraded, naming the store ($code: $(cat "$work/ready"))" \
  bash -c '[[ $1 == 200 && $2 == *"\"degraded\":[\"store\"]"* && $2 == *"\"status\":\"degraded\""* ]]' \
  _ "$code" "$(cat "$work/ready")"
kill -TERM "$server_pid"; wait "$server_pid"; server_pid=''
# A server started now cannot open the store its API reads: it waits instead of exiting.
ACMO_STORE_CONNECT_TIMEOUT=1s "$acmo" serve --listen 127.0.0.1:0 --no-handler 2>"$work/serve3.log" &
server3_pid=$!
err=$("$acmo" orders get ord_1 2>&1); rc=$?
check "orders get with PostgreSQL down exits 75" test "$rc" -eq 75
check "and says which server does not answer" grep -q "127.0.0.1:$port.*is not answering" <<<"$err"

# Under a sanitizer the server takes seconds to get that far.
check "an acmo serve started with the store down waits for it" wait_for 20 \
  bash -c 'kill -0 "$1" && grep -q "is not answering.*retrying until it answers" "$2"' _ \
  "$server3_pid" "$work/serve3.log"
start_pg
check "PostgreSQL is back" pg_running
check "  and that server serves: /health/ready 200" wait_for 30 bash -c '
  p=$(sed -n "s|.*serving http://127.0.0.1:\([0-9]*\).*|\1|p" "$1" | head -n 1)
  [[ -n $p && $(curl -s -o /dev/null -w "%{http_code}" "http://127.0.0.1:$p/health/ready") == 200 ]]' _ "$work/serve3.log"
kill -TERM "$server3_pid"; wait "$server3_pid"; server3_pid=''
check "once it is back, the handler applies the waiting events (200 orders in all)" \
  wait_for 20 applied_orders 200
check "the queue is empty" wait_for 5 queue_empty
check "every event is applied exactly once: 400 in the audit trail, 400 applied ids, 200 orders" \
  exactly_once 200
check "orders get answers again" test "$(json_field "$("$acmo" --json orders get ord_150)" status)" = processing
handler=$(handler_stats)
check "acmo stats: the handler retried events" test "$(json_field "$handler" retried)" -gt 0
check "acmo stats: its last error says PostgreSQL was not answering" \
  grep -q '"lastError":"PostgreSQL at postgresql://acmo@127.0.0.1:'"$port"'/acmo is not answering' <<<"$handler"
stop_handler
check "its summary: 400 applied, none dead-lettered, some retried" \
  grep -qE '^applied 400, dead-lettered 0, retried [1-9][0-9]*$' "$work/handler.out"
check "its log says PostgreSQL was not answering and that the events wait" \
  grep -q "warn.*handler: PostgreSQL at .*127.0.0.1:$port.* is not answering.*the events of a failed batch go back to the queue and are retried after queue.retry_delays" "$work/handler.err"
check "and when it was applying events again" grep -q 'info.*handler: applying events again after' "$work/handler.err"
check "the outage is logged a few times, not once per batch ($(grep -c 'handler: PostgreSQL' "$work/handler.err") lines)" \
  test "$(grep -c 'handler: PostgreSQL' "$work/handler.err")" -le 10

# --- a long outage: one attempt counted, then the handler waits for the store ---------------

export ACMO_QUEUE_RETRY_DELAYS="100ms" ACMO_QUEUE_MAX_RETRIES=1
"$acmo" run-handler --batch-size 10 >"$work/handler2.out" 2>"$work/handler2.err" &
handler_pid=$!
# It has connected (and found the schema) once it says it is handling the queue.
check "the second handler starts" wait_for 10 grep -q "handling queue" "$work/handler2.err"
stop_pg
send_events 201 215
sleep 3 # thirty retry delays
check "with 1 retry and the store down for 30 retry delays, nothing goes to the DLQ" dlq_count 0
check "the handler is still running" kill -0 "$handler_pid"
# This handler's own figures (the registry also remembers the first one's).
retried=$("$acmo" --json stats | jq --argjson pid "$handler_pid" '.handler.handlers[] | select(.pid == $pid) | .retried')
check "only the batch that found the store down was tried ($retried events retried, at most 10)" \
  test "$retried" -ge 1 -a "$retried" -le 10
start_pg
check "once it is back, the handler applies them (215 orders)" wait_for 20 applied_orders 215
check "the queue is empty" wait_for 5 queue_empty
check "nothing is in the DLQ" dlq_count 0
check "every event is applied exactly once: 430 in the audit trail, 215 orders" exactly_once 215
stop_handler

# --- no retries: the DLQ with the reason, then redrive ---------------------------------------

export ACMO_QUEUE_MAX_RETRIES=0
"$acmo" run-handler --batch-size 10 >"$work/handler2.out" 2>"$work/handler2.err" &
handler_pid=$!
check "a handler with queue.max_retries = 0 starts" wait_for 10 grep -q "handling queue" "$work/handler2.err"
# Stopped while the server goes down and the events come, so that its first batch is all ten;
# stopped while it does not hold the embedded queue's write lock (SQLite's lock on byte 120 of
# the WAL index, in /proc/locks), which a stopped handler would keep from every sender.
holds_write_lock() {
  local ino
  ino=$(stat -c %i "$ACMO_DATA_DIR/acmo.db-shm" 2>/dev/null) || return 1
  grep -qE "POSIX +ADVISORY +WRITE +$1 [0-9a-f]+:[0-9a-f]+:$ino 120 120\$" /proc/locks
}
for _ in $(seq 100); do
  kill -STOP "$handler_pid"
  holds_write_lock "$handler_pid" || break
  kill -CONT "$handler_pid"
  sleep 0.05
done
lock_free_of() { ! holds_write_lock "$1"; }
check "the handler is stopped without the queue's write lock" lock_free_of "$handler_pid"
stop_pg
send_events 216 220
kill -CONT "$handler_pid"
check "the batch that finds the store down goes to the DLQ: 10 events" wait_for 15 dlq_count 10
check "the handler is still running" kill -0 "$handler_pid"
dlq=$("$acmo" --json dlq list --limit 100)
check "the DLQ gives PostgreSQL's outage as the reason of each" \
  test "$(grep -oE '"reason":"failed 1 time, retries exhausted \(queue.max_retries = 0\): PostgreSQL at [^"]* is not answering' <<<"$dlq" | wc -l)" -eq 10
check "the handler logs one line per dead-lettered event, naming its order ($(grep -c 'dead-lettered to .*PostgreSQL at' "$work/handler2.err"))" \
  test "$(grep -cE 'warn acmo\[[0-9]+\]: message [0-9a-f-]+ \(sequence [0-9]+, order ord_[0-9]+, group [^)]*\) dead-lettered to [^ ]+ after 1 failure: failed 1 time, retries exhausted .*PostgreSQL at' "$work/handler2.err")" -eq 10
check "its outage warning counts what went to the DLQ" \
  grep -qE 'handler: PostgreSQL at .* is not answering.*queue.max_retries \(0\) are spent goes to the DLQ' "$work/handler2.err"
start_pg
out=$("$acmo" --json dlq redrive); rc=$?
check "dlq redrive moves the 10 back" test "$rc/$(json_field "$out" redriven)" = 0/10
check "the handler applies them (220 orders)" wait_for 20 applied_orders 220
check "the queue and the DLQ are empty" wait_for 5 queue_empty
check "nothing is left in the DLQ" dlq_count 0
check "every event is applied exactly once: 440 in the audit trail, 220 orders" exactly_once 220
stop_handler

# --- the queue in PostgreSQL too: sends refused while it is down, nothing counted -----------

export ACMO_QUEUE_BACKEND=postgres ACMO_QUEUE_RETRY_DELAYS="100ms" ACMO_QUEUE_MAX_RETRIES=1
"$acmo" run-handler --batch-size 10 >"$work/handler3.out" 2>"$work/handler3.err" &
handler_pid=$!
check "a handler of the PostgreSQL queue starts" wait_for 10 grep -q "handling queue" "$work/handler3.err"
pg_port=$port
start_server --no-handler
api_port=$port
port=$pg_port
send_events 301 320
check "it applies the 40 events sent to the PostgreSQL queue (240 orders)" wait_for 20 applied_orders 240
check "acmo stats names the queue's back-end" \
  grep -q '"backend":"postgres"' <<<"$("$acmo" --json stats | sed 's/"store".*//')"
stop_pg
err=$(events 321 321 | "$acmo" send --file - 2>&1); rc=$?
check "with PostgreSQL down, acmo send exits 75 ($rc)" test "$rc" -eq 75
check "  and says which server does not answer: $err" grep -q "127.0.0.1:$port.*is not answering.*queue.url" <<<"$err"
order='{"customer_name":"Ada","customer_email":"ada@example.com","items":[{"product_id":"p","quantity":1,"unit_price":2.5}]}'
code=$(curl -s -o "$work/post" -w '%{http_code}' -H 'Content-Type: application/json' \
  -d "$order" "http://127.0.0.1:$api_port/api/orders")
check "  POST /api/orders answers 503 ($code: $(cat "$work/post"))" test "$code" = 503
code=$(curl -s -o "$work/health" -w '%{http_code}' "http://127.0.0.1:$api_port/health")
check "  /health answers 503 and the queue's check says why ($code)" \
  bash -c '[[ $1 == 503 ]] && jq -e ".checks.queue.ok == false and (.checks.queue.error | test(\"not answering\"))" "$2" >/dev/null' \
  _ "$code" "$work/health"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$api_port/health/ready")
check "  and /health/ready 503: the queue takes no events ($code)" test "$code" = 503
"$acmo" run-handler --batch-size 10 >"$work/handler4.out" 2>"$work/handler4.err" &
handler4_pid=$!
"$acmo" serve --listen 127.0.0.1:0 2>"$work/serve2.log" & # with its handler
server2_pid=$!
sleep 2 # rounds of failed consumes by the running handler; the new ones wait to start
check "the running handler keeps running" kill -0 "$handler_pid"
check "  and says the events stay in the queue, uncounted" \
  grep -q "handler: PostgreSQL at .* is not answering.*the events stay in the queue, nothing counts against their retries" "$work/handler3.err"
check "a handler started meanwhile waits for the server" \
  grep -q "is not answering.*retrying until it answers" "$work/handler4.err"
check "so does an acmo serve (with its handler) started meanwhile" \
  bash -c 'kill -0 "$1" && grep -q "is not answering.*retrying until it answers" "$2"' _ \
  "$server2_pid" "$work/serve2.log"
start_pg
check "once PostgreSQL is back, that server serves: /health/ready 200" wait_for 30 bash -c '
  p=$(sed -n "s|.*serving http://127.0.0.1:\([0-9]*\).*|\1|p" "$1" | head -n 1)
  [[ -n $p && $(curl -s -o /dev/null -w "%{http_code}" "http://127.0.0.1:$p/health/ready") == 200 ]]' _ "$work/serve2.log"
send_events 321 330
check "once it is back, the handlers apply what was sent (250 orders)" wait_for 30 applied_orders 250
check "the queue is empty" wait_for 5 queue_empty
check "and nothing went to the DLQ: the outage counted against no retry" dlq_count 0
check "every event of the PostgreSQL queue applied once, in the queue's transaction (no id recorded)" \
  test "$(sql "SELECT count(*), count(DISTINCT message_id) FROM order_events") $(sql "SELECT count(*) FROM applied_messages")" = "500|500 440"
kill -TERM "$handler_pid" "$handler4_pid"
wait "$handler_pid"; rc=$?
wait "$handler4_pid"; rc4=$?
handler_pid=''
check "SIGTERM stops both handlers: exit 0 ($rc, $rc4)" test "$rc/$rc4" = 0/0
kill -TERM "$server_pid" "$server2_pid"; wait "$server_pid"; wait "$server2_pid"; rc=$?
server_pid='' server2_pid=''
check "SIGTERM stops the server that waited: exit 0 ($rc)" test "$rc" -eq 0

# --- the store's commits wait for the disk, whatever the server's default ------------------
# With the embedded queue, a handler deletes a message only after the PostgreSQL store has
# committed its event: that commit must be on disk first, or a crash of the server loses an
# event whose message is gone. A server, database or role whose synchronous_commit is off (a
# common tuning) must not make it asynchronous: the store's URL sets it off for its sessions
# here, and the WAL writer writes asynchronous commits only every 10 s (from here to the end),
# so that such a commit is still in memory when the server crashes.
sql "ALTER SYSTEM SET wal_writer_delay = '10s'" >/dev/null && sql "SELECT pg_reload_conf()" >/dev/null
orders_5() { [[ "$(sql "SELECT count(*) FROM orders WHERE version = 2 AND id LIKE 'ord_5___'")" == "$1" ]]; }
async_store="postgresql://acmo@127.0.0.1:$port/acmo?options=-c%20synchronous_commit%3Doff"
ACMO_QUEUE_BACKEND=sqlite ACMO_STORE_URL=$async_store \
  "$acmo" run-handler --batch-size 50 >"$work/handler5.out" 2>"$work/handler5.err" &
handler_pid=$!
check "a handler of the embedded queue, its store's sessions asynchronous by default, starts" \
  wait_for 10 grep -q "handling queue" "$work/handler5.err"
events 5001 5100 | ACMO_QUEUE_BACKEND=sqlite ACMO_STORE_URL=$async_store "$acmo" -q send --file -
check "  it applies the 200 events (100 orders)" wait_for 20 orders_5 100
embedded_queue_empty() { ACMO_QUEUE_BACKEND=sqlite ACMO_STORE_URL=$async_store queue_empty; }
check "  and empties the queue" wait_for 5 embedded_queue_empty
kill -9 "$handler_pid"; wait "$handler_pid" 2>/dev/null; handler_pid=''
crash_pg
check "after a crash of PostgreSQL the store still holds all 100 orders ($(sql "SELECT count(*) FROM orders WHERE version = 2 AND id LIKE 'ord_5___'"))" orders_5 100

# --- what a send acknowledged survives a crash of PostgreSQL --------------------------------
# With queue.durability = "full" (the default) acmo answers a send once the WAL holds it on
# disk. A crash of the server (pg_ctl -m immediate: no shutdown checkpoint, the WAL buffers not
# yet written are lost) right after the answer must lose none of it: single sends, and then a
# bulk send, whose last statement's commit is in the buffers for up to wal_writer_delay unless
# acmo flushed it (a flush covers every commit before it, so the bulk send comes last). Three
# rounds, with nothing consuming the queue: the first to one group, whose bulk send runs on one
# connection, the others with a group per order, on two at once.
visible() { json_field "$("$acmo" --json stats)" visible; }
crash_total=0
for round in 1 2 3; do
  first=$((1000 * round + 1000))
  group_by=order
  [[ $round == 1 ]] && group_by=single
  rc=0
  for i in 1 2 3 4 5; do
    "$acmo" -q send CREATE --order-id "crash_${round}_$i" --data "$order" || rc=$?
  done
  events "$first" $((first + 999)) | ACMO_QUEUE_GROUP_BY=$group_by "$acmo" -q send --file - || rc=$?
  crash_total=$((crash_total + 2005))
  crash_pg
  got=$(visible)
  check "round $round (groups: $group_by): the $crash_total messages acknowledged (exit $rc) are all there after a crash of PostgreSQL ($got)" \
    test "$rc/$got" = "0/$crash_total"
done

# Single sends alone, with no bulk send after them to flush the WAL: each commits durably
# before it is answered. Twenty processes send at once. The WAL writer is stopped meanwhile
# (kill -STOP), so that nothing but acmo's own commits writes their WAL: an asynchronous commit
# stays in the WAL buffers, and the crash loses it every time, not only when the WAL writer
# happens not to have written it (the stopped process dies at the crash, killed by the
# postmaster after 5 s).
walwriter=$(pgrep -P "$(head -n 1 "$work/pg/postmaster.pid")" -f walwriter)
check "the WAL writer's process is found (${walwriter:-none})" test -n "$walwriter"
kill -STOP "$walwriter"
rc=0
pids=()
for i in $(seq 1 20); do
  "$acmo" -q send CREATE --order-id "crash_single_$i" --data "$order" & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
crash_total=$((crash_total + 20))
crash_pg
got=$(visible)
check "20 concurrent single sends acknowledged (exit $rc) are all there after a crash of PostgreSQL ($got of $crash_total)" \
  test "$rc/$got" = "0/$crash_total"

# A purge answered is as durable as a send: a crash right after it must not bring the messages
# back (the WAL writer still writes asynchronous commits only every 10 s).
out=$("$acmo" --json purge --yes 2>&1); rc=$?
check "purge removes the $crash_total messages (exit $rc): $out" \
  test "$rc/$(json_field "$out" purged)" = "0/$crash_total"
crash_pg
got=$(visible)
check "after a crash of PostgreSQL right after the purge, the queue is still empty ($got)" \
  test "$got" = 0

# A handler of the PostgreSQL queue commits each batch without waiting for the disk: the
# events it applied and the deletion of their messages are one transaction, so a crash that
# loses the commit loses both, and the messages come back to be applied again, once. The
# handler is stopped (SIGSTOP) over the crash so that what came back can be counted, then
# goes on by itself.
orders_7() { [[ "$(sql "SELECT count(*) FROM orders WHERE version = 2 AND id LIKE 'ord_7___'")" == "$1" ]]; }
trail_7() {
  [[ "$(sql "SELECT count(*), count(DISTINCT message_id) FROM order_events WHERE order_id LIKE 'ord_7___'")" == "200|200" ]]
}
ACMO_QUEUE_MAX_RETRIES=5 "$acmo" run-handler --batch-size 20 >"$work/handler6.out" 2>"$work/handler6.err" &
handler_pid=$!
send_events 7001 7100
check "a handler of the PostgreSQL queue applies 200 events (100 orders)" wait_for 20 orders_7 100
check "  and empties the queue" wait_for 5 queue_empty
kill -STOP "$handler_pid"
crash_pg
back=$(visible)
kill -CONT "$handler_pid"
check "after a crash ($back messages came back with their lost batches), the handler applies every event once more: 100 orders" \
  wait_for 30 orders_7 100
check "  the queue is empty again" wait_for 10 queue_empty
check "  each of the 200 events is in the trail once ($(sql "SELECT count(*) FROM order_events WHERE order_id LIKE 'ord_7___'"))" trail_7
check "  and the DLQ holds none of them" test "$(sql "SELECT count(*) FROM acmo.messages m JOIN acmo.queues q ON q.id = m.queue_id WHERE q.name LIKE '%-dlq' AND m.body LIKE '%ord_7___%'")" = 0
kill -TERM "$handler_pid"; wait "$handler_pid"; rc=$?
handler_pid=''
check "SIGTERM stops that handler: exit 0 ($rc)" test "$rc" -eq 0

# --- a send --file that loses PostgreSQL in the middle ----------------------------------------
# Lines come through a pipe as a producer writes them: the first go while the server runs,
# the next find it stopped. Those are worth sending again, so the exit is 75 (retry), not 4
# (a line refused for what it holds).
visible_is() { [[ "$(visible)" == "$1" ]]; }
before=$(visible)
mkfifo "$work/lines"
"$acmo" send --file - <"$work/lines" >"$work/mid.out" 2>"$work/mid.err" &
mid_pid=$!
exec 3>"$work/lines"
events 8001 8001 >&3
check "a send --file from a pipe sends its first lines while PostgreSQL runs" \
  wait_for 20 visible_is $((before + 2))
stop_pg
events 8002 8002 >&3
exec 3>&-
wait "$mid_pid"; rc=$?
check "the lines after PostgreSQL stopped are not sent: exit 75, not 4 ($rc: $(tail -n 2 "$work/mid.err" | tr '\n' ' '))" \
  test "$rc" -eq 75
check "  and their errors say the server does not answer" grep -q "line 3: .*not answering" "$work/mid.err"
start_pg

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
