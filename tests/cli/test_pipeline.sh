#!/usr/bin/env bash
# The order pipeline on the embedded store, driven through the real acmo binary: events sent
# with `acmo send`, applied by `acmo run-handler` (--once, and in the foreground until SIGTERM),
# read back with `acmo orders get|list|events`; bad events end in the DLQ.
#   tests/cli/test_pipeline.sh path/to/acmo
set -uo pipefail
acmo=${1:?usage: $0 path/to/acmo}
work=$(mktemp -d "${TMPDIR:-/tmp}/acmo-pipeline-test.XXXXXX")
handler_pid=''
cleanup() {
  [[ -n $handler_pid ]] && kill -9 "$handler_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
export ACMO_DATA_DIR="$work/data"
export NO_COLOR=1
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# has_all TEXT WORD...: TEXT contains every WORD.
has_all() { local text=$1 w; shift; for w; do grep -qF -- "$w" <<<"$text" || return 1; done; }
# count TEXT WORD: how often WORD occurs in TEXT.
count() { grep -oF -- "$2" <<<"$1" | wc -l; }
# The sequence numbers of an events document, one per line, in the order printed.
sequences() { grep -oE '"sequenceNumber":"[0-9]+"' <<<"$1" | grep -oE '[0-9]+'; }

send() { "$acmo" -q send "$@"; }

# --- --once over good and bad events ----------------------------------------------------------

# Totals that binary floating point gets wrong: 3 × 0.1 + 0.2 is 0.5000000000000001 in doubles.
send CREATE --order-id ord_a --data '{"customer_name":"Ada","customer_email":"ada@example.com",
  "items":[{"product_id":"p-1","name":"Pen","quantity":3,"unit_price":0.1},
           {"product_id":"p-2","quantity":1,"unit_price":0.2}]}'
send CREATE --order-id ord_b --data '{"customer_name":"Bob","customer_email":"bob@example.com",
  "items":[{"product_id":"p-3","quantity":3,"unit_price":19.99}]}'
for status in processing shipped; do
  for order in ord_a ord_b; do
    send UPDATE --order-id "$order" --data "{\"status\":\"$status\"}"
  done
done
send UPDATE --order-id ord_a --data '{"status":"pending"}'       # shipped -> pending: forbidden
err=$("$acmo" send UPDATE --order-id ord_nobody --data '{"status":"shipped"}' 2>&1); rc=$?
check "send UPDATE of an order neither stored nor queued exits 3 (got $rc)" test "$rc" -eq 3
check "  saying so: $err" grep -qF "no order ord_nobody: it is neither in the store nor waiting in the queue" <<<"$err"
# `send --file` leaves that check to the handler, which dead-letters it.
echo '{"type":"UPDATE","orderId":"ord_nobody","data":{"status":"shipped"}}' | "$acmo" -q send --file -
check "8 events queued" test "$(json_field "$("$acmo" --json stats)" visible)" = 8

out=$("$acmo" run-handler --once --json); rc=$?
check "run-handler --once exits 0" test "$rc" -eq 0
check "run-handler --once --json has processed, deadLettered, retried, batches" \
  grep -qE '"processed":.*"deadLettered":|"batches":' <<<"$out"
check "6 events applied (processed 6)" test "$(json_field "$out" processed)" = 6
check "the forbidden change and the unknown order were dead-lettered (deadLettered 2)" \
  test "$(json_field "$out" deadLettered)" = 2
check "nothing retried" test "$(json_field "$out" retried)" = 0

stats=$("$acmo" --json stats)
check "acmo stats: deadLettered 2" test "$(json_field "$stats" deadLettered)" = 2
check "the queue is empty: nothing visible, in flight or delayed" \
  test "$(json_field "$stats" visible)/$(json_field "$stats" inFlight)/$(json_field "$stats" delayed)" = 0/0/0

a=$("$acmo" orders get ord_a --json); rc=$?
check "orders get ord_a exits 0" test "$rc" -eq 0
check "ord_a is shipped" test "$(json_field "$a" status)" = shipped
check "ord_a is at version 3 (the forbidden change did not count)" \
  test "$(json_field "$a" version)" = 3
check "ord_a's total is exactly 0.5 (3 x 0.10 + 0.20)" test "$(json_field "$a" total)" = 0.5
check "ord_a keeps its items and the name of the first" \
  grep -q '"items":\[{"name":"Pen","product_id":"p-1","quantity":3,"unit_price":0.1},{"product_id":"p-2","quantity":1,"unit_price":0.2}\]' <<<"$a"
check "ord_a's times are ISO 8601 UTC with milliseconds" \
  grep -qE '"created_at":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"' <<<"$a"
b=$("$acmo" --json orders get ord_b)
check "ord_b's total is exactly 59.97 (3 x 19.99)" test "$(json_field "$b" total)" = 59.97
human=$("$acmo" orders get ord_a)
check "orders get (text) shows status, total and items" has_all "$human" shipped 0.50 p-1 Pen p-2

list=$("$acmo" --json orders list --status shipped); rc=$?
check "orders list --status shipped exits 0" test "$rc" -eq 0
check "orders list --status shipped: total 2" \
  test "$(sed -n 's/.*"total":\([0-9]*\)}$/\1/p' <<<"$list")" = 2
check "orders list --status shipped lists ord_a and ord_b" \
  has_all "$list" '"id":"ord_a"' '"id":"ord_b"'
list=$("$acmo" --json orders list --status pending)
check "orders list --status pending is empty" test "$list" = '{"orders":[],"total":0}'
list=$("$acmo" --json orders list --limit 1 --offset 1)
check "orders list --limit 1 --offset 1: one order, total 2" \
  test "$(count "$list" '"id":"')/$(sed -n 's/.*"total":\([0-9]*\)}$/\1/p' <<<"$list")" = 1/2
text=$("$acmo" orders list)
check "orders list (text) has a header and a row per order" \
  test "$(grep -cE '^(ID +STATUS +TOTAL +CUSTOMER +CREATED|ord_[ab] +shipped )' <<<"$text")" = 3

events=$("$acmo" --json orders events ord_a); rc=$?
check "orders events ord_a exits 0" test "$rc" -eq 0
check "ord_a has 3 events: CREATE, UPDATE, UPDATE" \
  test "$(grep -oE '"type":"[A-Z]+"' <<<"$events" | tr '\n' ' ')" = \
  '"type":"CREATE" "type":"UPDATE" "type":"UPDATE" '
check "ord_a's events carry their data, in the order applied" \
  test "$(grep -oE '"data":\{"status":"[a-z]+"\}' <<<"$events" | tr '\n' ' ')" = \
  '"data":{"status":"processing"} "data":{"status":"shipped"} '
seqs=$(sequences "$events")
check "ord_a's sequence numbers are 20 digits and increase" \
  test "$(grep -cE '^[0-9]{20}$' <<<"$seqs")" = 3 -a "$(sort <<<"$seqs")" = "$seqs"
check "every event has a messageId and an ISO 8601 appliedAt" \
  test "$(count "$events" '"messageId":"')/$(grep -cE '"appliedAt":"[0-9-]{10}T[0-9:]{8}\.[0-9]{3}Z"' \
    <<<"$(grep -oE '"appliedAt":"[^"]*"' <<<"$events")")" = 3/3
check "orders events (text): one line per event" \
  test "$("$acmo" orders events ord_a | wc -l)" = 3

# --- errors ----------------------------------------------------------------------------------

err=$("$acmo" orders get ord_nobody 2>&1); rc=$?
check "orders get of an unknown order exits 3" test "$rc" -eq 3
check "it says 'acmo: error: no order ord_nobody'" grep -q "^acmo: error: no order ord_nobody" <<<"$err"
"$acmo" orders events ord_nobody 2>/dev/null; rc=$?
check "orders events of an unknown order exits 3" test "$rc" -eq 3
err=$("$acmo" orders list --status lost 2>&1); rc=$?
check "orders list --status lost exits 2" test "$rc" -eq 2
check "the message names the statuses" \
  has_all "$err" "pending, processing, shipped, delivered or cancelled"
for args in "--concurrency 0" "--concurrency 65" "--batch-size 0" "--batch-size 1001"; do
  # shellcheck disable=SC2086
  err=$("$acmo" run-handler --once $args 2>&1); rc=$?
  check "run-handler $args exits 2 with a message naming the flag" \
    test "$rc/${err%% must *}" = "2/acmo: error: ${args% *}"
done
out=$("$acmo" run-handler --once --concurrency 64 --batch-size 1000); rc=$?
check "run-handler --once on an empty queue exits 0: applied 0, dead-lettered 0, retried 0" \
  test "$rc/$out" = "0/applied 0, dead-lettered 0, retried 0"

# --- in the foreground until SIGTERM ---------------------------------------------------------

"$acmo" run-handler --concurrency 2 >"$work/handler.out" 2>"$work/handler.err" &
handler_pid=$!
send CREATE --order-id ord_c --data '{"customer_name":"Cy","customer_email":"cy@example.com","items":[]}'
found=''
for _ in $(seq 50); do
  if "$acmo" orders get ord_c >/dev/null 2>&1; then found=1; break; fi
  sleep 0.1
done
check "a running handler applies an event sent from another process within 5 s" test -n "$found"
kill -TERM "$handler_pid"
for _ in $(seq 50); do kill -0 "$handler_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$handler_pid" 2>/dev/null; then
  not_ok "run-handler exits within 5 s of SIGTERM"
  kill -9 "$handler_pid" 2>/dev/null
  wait "$handler_pid" 2>/dev/null
else
  ok "run-handler exits within 5 s of SIGTERM"
  wait "$handler_pid"; rc=$?
  check "run-handler exits 0 after SIGTERM (got $rc)" test "$rc" -eq 0
  [[ $rc -eq 0 ]] || sed 's/^/# /' "$work/handler.err"
  check "it prints the summary of its run: applied 1" \
    test "$(cat "$work/handler.out")" = "applied 1, dead-lettered 0, retried 0"
fi
handler_pid=''
stats=$("$acmo" --json stats)
check "the queue is empty after the handler stopped" \
  test "$(json_field "$stats" visible)/$(json_field "$stats" inFlight)" = 0/0

# The dead-letter queue: what failed for good, why, and a replay.
dlq=$("$acmo" --json dlq list)
check "dlq list --json counts the 2 dead-lettered events" test "$(json_field "$dlq" total)" = 2
check "dlq list says why: a forbidden change" grep -q 'cannot become' <<<"$dlq"
check "dlq list says why: an unknown order" grep -q 'does not exist' <<<"$dlq"
first=$(grep -oE '"messageId":"[0-9a-f-]+"' <<<"$dlq" | head -n 1 | cut -d'"' -f4)
check "dlq show ID --json shows that message" grep -q "$first" <<<"$("$acmo" --json dlq show "$first")"
"$acmo" dlq show 00000000-0000-4000-8000-000000000000 >/dev/null 2>&1; rc=$?
check "dlq show of an id not in the DLQ exits 3 (got $rc)" test "$rc" -eq 3
check "dlq redrive moves both back" test "$("$acmo" --json dlq redrive)" = '{"redriven":2}'
again=$("$acmo" --json run-handler --once)
check "redriven, they fail again and return to the DLQ" test "$(json_field "$again" deadLettered)" = 2
"$acmo" dlq purge </dev/null >/dev/null 2>&1; rc=$?
check "dlq purge off a TTY without --yes exits 2 (got $rc)" test "$rc" -eq 2
check "dlq purge --yes empties it" test "$("$acmo" --json dlq purge --yes)" = '{"purged":2}'

# SIGTERM in the middle of --once: the batch in hand is finished, nothing is lost, exit 0.
# Enough events that the handler is still at work when the signal comes (a fast machine
# applies 70,000 a second at the default batch of 100), and the signal only once it has begun.
events=100000
seq 1 "$events" | sed 's/.*/{"type":"CREATE","orderId":"ord_t&","data":{"customer_name":"T","customer_email":"t@example.com","items":[]}}/' >"$work/many.jsonl"
orders_before=$(json_field "$(sed 's/.*"store"://' <<<"$("$acmo" --json stats)")" orders)
"$acmo" send --file "$work/many.jsonl" -q
"$acmo" --json run-handler --once >"$work/once.out" 2>"$work/once.err" &
once_pid=$!
for _ in $(seq 1 100); do
  [[ $(json_field "$("$acmo" --json stats)" deleted) -gt 0 ]] && break
  sleep 0.05
done
kill -TERM "$once_pid"
wait "$once_pid"; rc=$?
check "run-handler --once stops on SIGTERM with exit 0 (got $rc)" test "$rc" -eq 0
applied=$(json_field "$(cat "$work/once.out")" processed)
stats=$("$acmo" --json stats)
orders_now=$(json_field "$(sed 's/.*"store"://' <<<"$stats")" orders)
check "it stopped early: applied $applied of $events" test -n "$applied" -a "${applied:-0}" -lt "$events"
check "nothing lost: applied + still queued = $events" \
  test $((orders_now - orders_before + $(json_field "$stats" visible) + $(json_field "$stats" inFlight))) -eq "$events"
check "the stopped handler (the newest) is shown as stopped, not gone" \
  test "$(json_field "$(sed 's/.*"handlers":\[//' <<<"$stats")" state)" = stopped

"$acmo" --data-dir "$work/never-used" orders list >/dev/null 2>&1; rc=$?
check "orders in a data dir without a database exits 3 (got $rc)" test "$rc" -eq 3
check "and creates nothing there" test ! -e "$work/never-used"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
