#!/usr/bin/env bash
# `acmo queue move`, through the real acmo binary and the real PostgreSQL of the test services
# ($ACMO_TEST_PG_URL, a schema of its own, dropped at the end): an embedded queue with waiting
# messages, a dead letter and a dedup history moves into PostgreSQL; the messages keep their
# ids, sequence numbers and order, the DLQ its reason, the dedup history its ids; the embedded
# queue takes no more sends; a second run (even from a copy of the file taken before the move)
# moves nothing twice; the handler then applies every event once. It refuses while a handler
# runs, without --yes off a terminal, and with the embedded store.
#   tests/cli/test_queue_move.sh path/to/acmo
set -uo pipefail
acmo=$(realpath "${1:?usage: $0 path/to/acmo}")
here=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source=lib.sh
source "$here/lib.sh"
if [[ -z ${ACMO_TEST_PG_URL:-} ]]; then
  if [[ ${CI:-} == true ]]; then
    echo "not ok - ACMO_TEST_PG_URL is not set: eval \"\$(scripts/test-services.sh start)\""
    exit 1
  fi
  echo "WARN: skipped: ACMO_TEST_PG_URL is not set (eval \"\$(scripts/test-services.sh start)\")"
  exit 0
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/acmo-queue-move-test.XXXXXX")
export ACMO_TEST_RUN=$work
schema="acmo_move_$$_$RANDOM"
owner="acmo_owner_$$_$RANDOM"
handler_pid=''
server_pid=''
cleanup() {
  kill_own 9 "$handler_pid" "$server_pid"
  psql "$ACMO_TEST_PG_URL" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1
  psql "$ACMO_TEST_PG_URL" -qc "DROP SCHEMA IF EXISTS ${schema}_typo CASCADE; DROP SCHEMA IF EXISTS ${schema}_own CASCADE; DROP ROLE IF EXISTS $owner" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
psql "$ACMO_TEST_PG_URL" -qc "CREATE SCHEMA $schema" >/dev/null || {
  echo "not ok - cannot make a schema in $ACMO_TEST_PG_URL"; exit 1; }
sep='?'; [[ $ACMO_TEST_PG_URL == *\?* ]] && sep='&'
url="$ACMO_TEST_PG_URL${sep}options=-csearch_path%3D$schema"
export ACMO_DATA_DIR="$work/data" NO_COLOR=1
export ACMO_STORE_BACKEND=postgres ACMO_STORE_URL=$url ACMO_CACHE_BACKEND=none
export ACMO_QUEUE_GROUP_BY=order ACMO_QUEUE_SCHEMA=$schema
sql() { psql "$ACMO_TEST_PG_URL" -tAc "SET search_path = $schema; $1" | tail -n 1; }
on_pg() { ACMO_QUEUE_BACKEND=postgres "$acmo" "$@"; }
create() {
  echo "{\"type\":\"CREATE\",\"orderId\":\"$1\",\"data\":{\"customer_name\":\"Ada\",\"customer_email\":\"ada@example.com\",\"items\":[{\"product_id\":\"p\",\"quantity\":1,\"unit_price\":2.5}]}}"
}
update() { echo "{\"type\":\"UPDATE\",\"orderId\":\"$1\",\"data\":{\"status\":\"$2\"}}"; }

out=$("$acmo" queue move --to "$url" --yes 2>&1)
check "no embedded queue: exit 3, saying so" test $? -eq 3 -a -n "$(grep -F 'no acmo data' <<<"$out")"

# A dead letter: an UPDATE of an order deleted before it.
{ create ord_d; echo '{"type":"DELETE","orderId":"ord_d"}'; update ord_d processing; } |
  "$acmo" -q send --file - || not_ok "the first sends failed"
"$acmo" run-handler --once >/dev/null 2>&1

# A handler running on the embedded queue: the move is refused (75), nothing moves.
"$acmo" run-handler >"$work/handler.log" 2>&1 &
handler_pid=$!
for _ in $(seq 100); do
  "$acmo" handlers --json 2>/dev/null | grep -q '"state":"running"' && break
  sleep 0.1
done
out=$("$acmo" queue move --to "$url" --yes 2>&1)
check "a handler running: exit 75, naming it" test $? -eq 75 -a -n "$(grep -F 'is running' <<<"$out")"
# The same handler stopped with SIGSTOP past its heartbeat's timeout: gone from the registry's
# view, but its process could wake and apply what it holds; still refused.
kill_own STOP "$handler_pid"
for _ in $(seq 100); do
  "$acmo" handlers --json 2>/dev/null | grep -q '"state":"gone"' && break
  sleep 0.1
done
out=$("$acmo" queue move --to "$url" --yes 2>&1)
check "a handler stopped with SIGSTOP: exit 75, naming its process" \
  test $? -eq 75 -a -n "$(grep -F "process $handler_pid is still there" <<<"$out")"
kill_own CONT "$handler_pid"
"$acmo" handlers stop --all --wait 10 >/dev/null 2>&1 || not_ok "the handler did not stop"
wait "$handler_pid" 2>/dev/null
handler_pid=''

# What waits: ten orders, each a CREATE and an UPDATE in its own group, and one with a dedup id.
for i in $(seq 10); do create "ord_$i"; update "ord_$i" processing; done >"$work/events.jsonl"
"$acmo" -q send --file "$work/events.jsonl" || not_ok "the sends failed"
keyed=$("$acmo" --json send CREATE --order-id ord_k --dedup-id key-1 \
  --data '{"customer_name":"Bo","customer_email":"bo@example.com","items":[]}')
keyed_id=$(json_field "$keyed" messageId)
before=$("$acmo" --json peek --limit 100 | jq -c '[.messages[] | {messageId, sequenceNumber, groupId}]')
check "21 messages wait in the embedded queue" test "$(jq length <<<"$before")" -eq 21
cp -a "$work/data" "$work/copy" # the file as it was before the move

out=$("$acmo" queue move --to "nonsense" --yes 2>&1)
check "a --to libpq cannot read: exit 2, saying so" \
  test $? -eq 2 -a -n "$(grep -F -- '--to is neither a PostgreSQL URL' <<<"$out")"
out=$("$acmo" queue move --to "$url" </dev/null 2>&1)
check "off a terminal without --yes: exit 2, asking for it" \
  test $? -eq 2 -a -n "$(grep -F -- '--yes' <<<"$out")"
out=$(ACMO_STORE_BACKEND=sqlite "$acmo" queue move --to "$url" --yes 2>&1)
check "with the embedded store: exit 2, saying why" \
  test $? -eq 2 -a -n "$(grep -F 'store.backend' <<<"$out")"
check "the refusals made nothing in PostgreSQL" \
  test "$(sql "SELECT count(*) FROM pg_tables WHERE schemaname = '$schema' AND tablename = 'messages'")" = 0

start_server --no-handler # on the embedded queue, running through the move
out=$("$acmo" queue move --to "$url" --yes 2>&1)
check "the move: exit 0" test $? -eq 0
check "it says what it moved" grep -qF "moved 21 messages, 1 dead letter and 24 deduplication entries" <<<"$out"
check "the password-free URL and the schema are named" grep -qF "(schema $schema)" <<<"$out"

code=$(curl -s -o "$work/post" -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
  -d '{"status":"shipped"}' "http://127.0.0.1:$port/api/orders/ord_1")
check "a server that was running takes no more events: 503, saying where the queue went ($code)" \
  test "$code" = 503 -a -n "$(grep -F 'was moved to' "$work/post")"
kill_own TERM "$server_pid"; wait "$server_pid"; server_pid=''
out=$("$acmo" send UPDATE --order-id ord_1 --data '{"status":"shipped"}' 2>&1)
check "a command started with the old configuration: exit 2, saying what to set" \
  test $? -eq 2 -a -n "$(grep -F 'was moved to' <<<"$out" | grep -F 'queue.backend')"

stats=$(on_pg --json stats)
check "stats: the queue is in PostgreSQL, 21 messages and a dead letter" \
  test "$(jq -c '[.queue.backend, .queue.visible + .queue.delayed, .queue.deadLettered]' <<<"$stats")" = '["postgres",21,1]'
after=$(on_pg --json peek --limit 100 | jq -c '[.messages[] | {messageId, sequenceNumber, groupId}]')
check "the same messages, ids, sequence numbers and groups, in the same order" \
  test "$after" = "$before"
dlq=$(on_pg --json dlq list)
check "the dead letter moved with its reason" \
  test "$(jq -r '[.total, (.messages[0].reason | test("deleted"))] | @text' <<<"$dlq")" = '[1,true]'
dead_id=$(jq -r '.messages[0].messageId' <<<"$dlq")
check "the moved dead letter is shown by its id" \
  test "$(on_pg --json dlq show "$dead_id" | jq -r .messageId)" = "$dead_id"

dup=$(on_pg --json send CREATE --order-id ord_k --dedup-id key-1 \
  --data '{"customer_name":"Bo","customer_email":"bo@example.com","items":[]}')
check "a dedup id sent before the move is a duplicate of its message" \
  test "$(json_field "$dup" duplicate)" = true -a "$(json_field "$dup" messageId)" = "$keyed_id"
dup=$(head -n 1 "$work/events.jsonl" | ACMO_QUEUE_BACKEND=postgres "$acmo" --json send --file -)
check "a content-based duplicate too" grep -q '"duplicate":true' <<<"$dup"
last_seq=$(jq -r '.[-1].sequenceNumber' <<<"$before")
new=$(on_pg --json send CREATE --order-id ord_n \
  --data '{"customer_name":"Cy","customer_email":"cy@example.com","items":[]}')
check "a new message comes after the moved ones" \
  test "$(json_field "$new" sequenceNumber)" \> "$last_seq"

out=$("$acmo" --json queue move --to "$url" --yes 2>&1)
check "a second run moves nothing" test "$(jq -c '[.moved, .deadLettered]' <<<"$out")" = "[0,0]"
out=$("$acmo" queue move --to "$url" --schema "${schema}_typo" --yes 2>&1); rc=$?
check "a run to another schema is refused: the messages are where the first went ($rc: $out)" \
  test "$rc" -ne 0 -a -n "$(grep -F "was moved to" <<<"$out" | grep -F "(schema $schema)")"
check "  and it made nothing there" \
  test "$(sql "SELECT count(*) FROM pg_namespace WHERE nspname = '${schema}_typo'")" = 0
out=$("$acmo" send UPDATE --order-id ord_1 --data '{"status":"shipped"}' 2>&1)
check "  the embedded queue still says where the queue went" grep -qF "(schema $schema)" <<<"$out"

on_pg run-handler --once >/dev/null 2>&1
check "the handler applies every moved event: the orders are processing" \
  test "$(sql "SELECT count(*) FROM orders WHERE id LIKE 'ord\\_%' ESCAPE '\\' AND status = 'processing'")" -eq 10
check "each event applied once" \
  test "$(sql "SELECT count(*) FROM order_events WHERE order_id IN ('ord_1', 'ord_5')")" -eq 4

# A run stopped between PostgreSQL's commit and the embedded queue's: the file as it was.
rm -rf "$work/data" && mv "$work/copy" "$work/data"
out=$("$acmo" --json queue move --to "$url" --yes 2>&1)
check "the same file moved again: every message was moved before, none twice" \
  test "$(jq -c '[.moved, .deadLettered, .movedBefore]' <<<"$out")" = "[0,0,22]"
on_pg run-handler --once >/dev/null 2>&1
check "and nothing is applied twice" \
  test "$(sql "SELECT count(*) FROM order_events WHERE order_id IN ('ord_1', 'ord_5')")" -eq 4

# A role that owns the schema it is given, with no right to make schemas in the database.
psql "$ACMO_TEST_PG_URL" -qc "CREATE ROLE $owner LOGIN; CREATE SCHEMA ${schema}_own AUTHORIZATION $owner" >/dev/null
owner_url=$(sed -E "s#^(postgres(ql)?://)[^@/]*@#\1$owner@#" <<<"$ACMO_TEST_PG_URL")
out=$(ACMO_QUEUE_BACKEND=postgres ACMO_QUEUE_URL=$owner_url ACMO_QUEUE_SCHEMA=${schema}_own \
        "$acmo" --json stats 2>&1); rc=$?
check "a role that owns its schema, with no right on the database, uses it ($rc: $out)" \
  test "$rc" -eq 0 -a "$(jq -r .queue.backend <<<"$out" 2>/dev/null)" = postgres
out=$(ACMO_QUEUE_BACKEND=postgres ACMO_QUEUE_URL=$owner_url ACMO_QUEUE_SCHEMA=${schema}_none \
        "$acmo" stats 2>&1); rc=$?
check "  one with no schema of its own is told what right it needs ($rc: $out)" \
  test "$rc" -ne 0 -a -n "$(grep -F 'GRANT CREATE ON DATABASE' <<<"$out")"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
