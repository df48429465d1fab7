#!/usr/bin/env bash
# acmo serve, driven with real HTTP requests (curl) against the real binary on a free loopback
# port: every endpoint, every error status, a catalogue of bad input, tokens and rate limits,
# the whole flow (POST → handler → GET → a cache hit), and SIGTERM under load, after which
# every event that got a 202 is applied.
#   tests/cli/test_http.sh path/to/acmo
set -uo pipefail
acmo=${1:?usage: $0 path/to/acmo}
work=$(mktemp -d "${TMPDIR:-/tmp}/acmo-http-test.XXXXXX")
server_pid=''
cleanup() {
  [[ -n $server_pid ]] && kill -9 "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
export ACMO_DATA_DIR="$work/data"
export NO_COLOR=1
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
command -v curl >/dev/null || { echo "not ok - curl is missing (scripts/install-deps.sh)"; exit 1; }

# start_server [FLAGS...] is in lib.sh.
# stop_server: SIGTERM, and the exit status in $server_rc.
stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid"
  server_rc=$?
  server_pid=''
}

# http METHOD PATH [CURL ARGS...]: the answer's status in $status, body in $body, headers in
# $headers.
http() {
  local method=$1 path=$2
  shift 2
  status=$(curl -s -o "$work/body" -D "$work/headers" -w '%{http_code}' -X "$method" \
             "http://127.0.0.1:$port$path" "$@")
  body=$(cat "$work/body")
  headers=$(tr -d '\r' <"$work/headers")
}
json=(-H 'Content-Type: application/json')
# expect NAME STATUS [ERROR CODE]: the last answer had that status (and error code).
expect() {
  local name=$1 want=$2 code=${3:-}
  if [[ $status != "$want" ]]; then
    not_ok "$name: status $status, not $want: $body"
  elif [[ -n $code && $(json_field "$body" code) != "$code" ]]; then
    not_ok "$name: error code $(json_field "$body" code), not $code: $body"
  else
    ok "$name ($want${code:+ $code})"
  fi
}
has() { grep -qF -- "$1" <<<"$body"; }
header() { grep -i "^$1:" <<<"$headers" | head -n 1 | cut -d' ' -f2-; }
# until_status PATH STATUS: wait (up to 10 s) until GET PATH answers STATUS.
until_status() {
  for _ in $(seq 500); do
    http GET "$1"
    [[ $status == "$2" ]] && return 0
    sleep 0.02
  done
  return 1
}

start_server
check "acmo serve logs where it listens" test -n "$port"

# --- the seed's own examples ----------------------------------------------------------------

http POST /api/orders -H "Content-Type: application/json" \
  -d '{"customer_name": "Test", "customer_email": "test@example.com", "items": []}'
expect "the seed's POST /api/orders is accepted" 202
order=$(json_field "$body" orderId)
check "202 names the order, the message and its sequence number, status queued, not a duplicate" \
  test -n "$order" -a -n "$(json_field "$body" messageId)" \
       -a "$(json_field "$body" sequenceNumber | wc -c)" -eq 21 \
       -a "$(json_field "$body" status)" = queued -a "$(json_field "$body" duplicate)" = false
check "202 has a Location header" test "$(header Location)" = "/api/orders/$order"
http GET /handler/stats
expect "the seed's GET /handler/stats" 200
check "/handler/stats holds queue, handler, store and cache" \
  bash -c 'for k in "\"queue\":" "\"handler\":" "\"store\":" "\"cache\":" "\"hitRate\":"; do grep -qF "$k" <<<"$1" || exit 1; done' _ "$body"

# --- the full flow: POST → handler → GET → cache hit ------------------------------------------

check "the in-process handler applies the CREATE (GET answers 200)" until_status "/api/orders/$order" 200
check "the order is the one sent" has '"customer_name":"Test"'
http GET /cache/stats; hits_before=$(json_field "$body" hits)
http GET "/api/orders/$order"
expect "GET the order again" 200
http GET /cache/stats
expect "GET /cache/stats" 200
check "the second GET was a cache hit" test "$(json_field "$body" hits)" -gt "$hits_before"
check "/cache/stats has backend, hits, misses, hitRate, keys, errors" \
  bash -c 'for k in backend hits misses hitRate keys errors; do grep -qF "\"$k\":" <<<"$1" || exit 1; done' _ "$body"
http GET /cache/keys
expect "GET /cache/keys" 200
check "/cache/keys lists the order's key" has "\"order:$order\""

# Idempotency-Key: a client retry never makes a second order.
item='{"customer_name":"Ada","customer_email":"ada@example.com","items":[{"product_id":"p-1","name":"Pen","quantity":2,"unit_price":12.5}]}'
http POST /api/orders "${json[@]}" -H 'Idempotency-Key: checkout-42' -d "$item"
expect "POST with Idempotency-Key" 202
ada=$(json_field "$body" orderId); first_message=$(json_field "$body" messageId)
http POST /api/orders "${json[@]}" -H 'Idempotency-Key: checkout-42' -d "$item"
expect "the same POST retried" 202
check "the retry is a duplicate of the same order and message" \
  test "$(json_field "$body" duplicate)/$(json_field "$body" orderId)/$(json_field "$body" messageId)" = "true/$ada/$first_message"
http POST /api/orders "${json[@]}" -H 'Idempotency-Key: checkout-42' -d "${item/Ada/Bob}"
expect "the Idempotency-Key with another body" 422 idempotency_key_reused
check "  it says the key was used for a different request" has 'the Idempotency-Key \"checkout-42\" was used'
http PATCH "/api/orders/$ada/status" "${json[@]}" -H 'Idempotency-Key: checkout-42' -d '{"status":"shipped"}'
expect "the Idempotency-Key of a POST reused for a PATCH of its order" 422 idempotency_key_reused
# An empty key, or two, would be taken as none or as one of them: a retry would make a second
# order. (curl sends "Idempotency-Key;" as the header with an empty value.)
http POST /api/orders "${json[@]}" -H 'Idempotency-Key;' -d "${item/Ada/Eve}"
expect "an empty Idempotency-Key is a 400" 400 invalid_input
check "  it says the key is empty" has 'Idempotency-Key is empty'
http POST /api/orders "${json[@]}" -H 'Idempotency-Key: k-1' -H 'Idempotency-Key: k-2' -d "${item/Ada/Eve}"
expect "two Idempotency-Keys are a 400" 400 invalid_input
check "  it says to give one" has 'Idempotency-Key is given 2 times; give it once'
http GET /api/orders
check "  neither queued an order for Eve" bash -c '! grep -q Eve <<<"$1"' _ "$body"
check "Ada's order is applied" until_status "/api/orders/$ada" 200
check "its total is exact (25)" has '"total":25'

# Changes: PUT, PATCH .../status, DELETE, and the audit trail.
http PUT "/api/orders/$ada" "${json[@]}" -d '{"status":"processing"}'
expect "PUT /api/orders/ID {status}" 202
check "PUT queues an UPDATE" test "$(json_field "$body" type)" = UPDATE
http PATCH "/api/orders/$ada/status" "${json[@]}" -d '{"status":"shipped"}'
expect "PATCH /api/orders/ID/status" 202
for _ in $(seq 500); do http GET "/api/orders/$ada"; has '"status":"shipped"' && break; sleep 0.02; done
check "the order shows status shipped (the cache was invalidated)" has '"status":"shipped"'
http GET "/api/orders?status=shipped"
expect "GET /api/orders?status=shipped" 200
check "the list has Ada's order, total 1" test "$(json_field "$body" total)" = 1
http GET "/api/orders?limit=1&offset=0"
expect "GET /api/orders?limit=1&offset=0" 200
check "the list counts both orders, shows one" test "$(json_field "$body" total)" = 2
http GET "/api/orders/$ada/events"
expect "GET /api/orders/ID/events" 200
check "the audit trail holds CREATE, UPDATE, UPDATE" \
  test "$(grep -oE '"type":"[A-Z]+"' <<<"$body" | tr '\n' ' ')" = '"type":"CREATE" "type":"UPDATE" "type":"UPDATE" '
http PUT "/api/orders/$ada" "${json[@]}" -d '{"status":"pending"}'
expect "a forbidden change is still queued (the handler judges it)" 202
http DELETE "/api/orders/$order"
expect "DELETE /api/orders/ID" 202
check "DELETE queues a DELETE" test "$(json_field "$body" type)" = DELETE
check "the deleted order is gone (404)" until_status "/api/orders/$order" 404
check "404 says not_found" test "$(json_field "$body" code)" = not_found

# --- monitoring ---------------------------------------------------------------------------

http GET /sqs/stats
expect "GET /sqs/stats" 200
check "/sqs/stats counts what was sent (6 messages, 1 duplicate)" \
  test "$(json_field "$body" sent)/$(json_field "$body" duplicates)" = 6/1
for _ in $(seq 200); do http GET /sqs/stats; [[ $(json_field "$body" deadLettered) == 1 ]] && break; sleep 0.02; done
check "the forbidden change was dead-lettered" test "$(json_field "$body" deadLettered)" = 1
http GET /sqs/dlq
expect "GET /sqs/dlq" 200
check "the DLQ names the reason" has 'pending'
# The CLI and the API print the same documents of the same thing (one function each builds).
same_json() { python3 -c 'import json,sys; sys.exit(json.loads(sys.argv[1]) != json.loads(sys.argv[2]))' "$1" "$2"; }
check "acmo dlq list --json is GET /sqs/dlq's document" \
  same_json "$("$acmo" --json dlq list --limit 100)" "$body"
# The DLQ's filters: a part of the reason, the age in the DLQ.
http GET '/sqs/dlq?reason=PENDING&newerThan=1h'
expect "GET /sqs/dlq?reason=PENDING&newerThan=1h" 200
check "  it matches the reason in any letter case" test "$(json_field "$body" total)" = 1
check "  acmo dlq list --reason --newer-than --json is its document" \
  same_json "$("$acmo" --json dlq list --limit 100 --reason PENDING --newer-than 1h)" "$body"
http GET '/sqs/dlq?reason=no%20such%20reason'
check "  a reason that matches nothing: total 0" test "$(json_field "$body" total)" = 0
http GET '/sqs/dlq?olderThan=1h'
check "  olderThan=1h: total 0" test "$(json_field "$body" total)" = 0
http GET '/sqs/dlq?olderThan=soon'
expect "  olderThan=soon" 400 invalid_input
check "  it names the parameter and how to write a duration" has 'olderThan: \"soon\" is not a duration'
http GET '/sqs/dlq?olderThan=2h&newerThan=1h'
expect "  olderThan=2h&newerThan=1h matches nothing" 400 invalid_input
http GET '/sqs/dlq?reason='
expect "  an empty reason" 400 invalid_input
http GET '/sqs/dlq?reasons=x'
expect "  an unknown parameter" 400 invalid_input
http POST '/sqs/dlq/redrive?id=x&reason=pending'
expect "POST /sqs/dlq/redrive with id and a filter" 400 invalid_input
http POST '/sqs/dlq/redrive?reason=no%20such%20reason'
expect "POST /sqs/dlq/redrive?reason= that matches nothing" 200
check "  moves nothing" test "$(json_field "$body" redriven)" = 0
queue_doc() { python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["queue"]))'; }
for _ in 1 2 3; do # the queue is idle by now; a late heartbeat's receive would change a figure
  http GET /sqs/stats
  cli=$("$acmo" --json stats | queue_doc)
  same_json "$cli" "$body" && break
done
check "acmo stats --json's queue is GET /sqs/stats's document" same_json "$cli" "$body"
http GET /handler/status
expect "GET /handler/status" 200
check "/handler/status shows the in-process handler running" \
  grep -qE '"inProcess":\{[^}]*"running":true' <<<"$body"
check "/handler/status lists the registered handler" has '"state":"running"'
http GET /health
expect "GET /health" 200
check "/health names the queue's and the store's back-ends" \
  jq -e '.checks.queue.backend == "sqlite" and .checks.store.backend == "sqlite"' <<<"$body"
check "  and acmo stats the queue's" grep -q '^queue orders (sqlite)$' <<<"$("$acmo" stats)"
http GET /health/live
expect "GET /health/live" 200
http GET /health/ready
expect "GET /health/ready" 200
check "/health/ready says ready" test "$(json_field "$body" status)" = ready
check "/health checks queue, store and cache" \
  bash -c 'for k in queue store cache; do grep -qE "\"$k\":\{[^}]*\"ok\":true" <<<"$1" || exit 1; done' _ "$body"
http GET /nowhere/ord_x
http GET /metrics
expect "GET /metrics" 200
check "/metrics is Prometheus text" grep -q '^text/plain; version=0.0.4' <<<"$(header Content-Type)"
# Names and format by the Prometheus conventions, as Prometheus' own linter judges them.
if command -v promtool >/dev/null; then
  lint=$(promtool check metrics <<<"$body" 2>&1)
  lint_rc=$?
  check "promtool check metrics finds no problem in /metrics (exit $lint_rc): ${lint:-none}" \
    test "$lint_rc" -eq 0 -a -z "$lint"
else
  skip "promtool check metrics: promtool is missing (Debian's prometheus package)"
fi
for m in 'acmo_http_requests_total{method="POST",route="/api/orders",code="202"}' \
         'acmo_http_requests_total{method="GET",route="/api/orders/:id",code="404"}' \
         'acmo_http_requests_total{method="GET",route="unmatched",code="404"} 1' \
         'acmo_http_request_duration_seconds_bucket{method="POST",route="/api/orders",le="+Inf"}' \
         'acmo_queue_sent_total 6' 'acmo_handler_processed_total' \
         'acmo_cache_hits_total{backend="memory"}' 'acmo_queue_messages{queue="orders",state="visible"}' \
         "acmo_build_info{version=\"$("$acmo" -q version | cut -d' ' -f2)\"" \
         'acmo_handler_batch_duration_seconds_bucket{le="+Inf"}'; do
  check "/metrics has $m" has "$m"
done
check "/metrics names routes, never paths: no order id, no unknown path" \
  bash -c '! grep -qE "$2|/nowhere" <<<"$1"' _ "$body" "$ada"
# value NAME: the value of the sample NAME (a name with its labels) in $body.
value() { grep -F "$1 " <<<"$body" | grep -v '^#' | head -n 1 | awk '{print $2}'; }
batches=$(value acmo_handler_batches_total)
check "the batch histogram counts every batch ($batches): _count and the +Inf bucket" \
  test -n "$batches" -a "$batches" -gt 0 \
       -a "$(value acmo_handler_batch_duration_seconds_count)" = "$batches" \
       -a "$(value 'acmo_handler_batch_duration_seconds_bucket{le="+Inf"}')" = "$batches"
for m in process_cpu_seconds_total process_resident_memory_bytes process_virtual_memory_bytes \
         process_open_fds process_max_fds process_start_time_seconds; do
  check "/metrics has $m ($(value "$m"))" bash -c '[[ $1 =~ ^[0-9.e+]+$ ]]' _ "$(value "$m")"
done
fds=$(ls /proc/"$server_pid"/fd | wc -l)
check "process_open_fds ($(value process_open_fds)) are this server's descriptors ($fds, give or take a connection)" \
  bash -c '(( $1 > 3 && $1 - $2 <= 4 && $2 - $1 <= 4 ))' _ "$(value process_open_fds)" "$fds"
check "process_start_time_seconds is this server's start (within a minute)" \
  bash -c 'now=$(date +%s); s=${1%.*}; (( s <= now && s > now - 60 ))' _ "$(value process_start_time_seconds)"
http POST '/sqs/dlq/redrive?reason=pending&olderThan=0s'
expect "POST /sqs/dlq/redrive?reason=pending&olderThan=0s" 200
check "the dead-lettered message is redriven" test "$(json_field "$body" redriven)" = 1
http GET '/api/orders?limit=7' # a key in the cache, whatever the handler invalidated since
http DELETE /cache/clear
expect "DELETE /cache/clear" 200
check "/cache/clear says how many keys it removed" test "$(json_field "$body" cleared)" -ge 1
http GET /cache/keys
check "the cache is empty after the clear" test "$(json_field "$body" count)" = 0
http DELETE /sqs/purge
expect "DELETE /sqs/purge" 200
check "/sqs/purge says how many it removed" test -n "$(json_field "$body" purged)"
http DELETE '/sqs/purge?queue=dlq'
expect "purge ?queue=dlq empties the DLQ" 200
http OPTIONS /api/orders
expect "OPTIONS /api/orders" 204
check "OPTIONS lists the methods in Allow" test "$(header Allow)" = "GET, POST, OPTIONS"

# --- errors and bad input ---------------------------------------------------------------------

http GET /nowhere
expect "an unknown route" 404 not_found
http GET "/api/orders/ord_nobody"
expect "an unknown order" 404 not_found
http PATCH /api/orders "${json[@]}" -d '{}'
expect "a method the path does not take" 405 method_not_allowed
check "405 has Allow: GET, POST" test "$(header Allow)" = "GET, POST"
http POST /health
expect "POST /health" 405 method_not_allowed
http POST /api/orders -d '{"customer_name":"A"}'
expect "a form-encoded body" 415 unsupported_media_type
http POST /api/orders -H 'Content-Type: text/plain' -d '{}'
expect "a text/plain body" 415 unsupported_media_type
http POST /api/orders -H 'Content-Type: application/json; charset=utf-8' -d "$item"
expect "application/json with a charset is JSON" 202
http POST /api/orders "${json[@]}" -d '{"customer_name": '
expect "truncated JSON" 400 invalid_input
check "the message says the JSON is invalid, and where" has 'not valid JSON: parse error at line 1'
http POST /api/orders "${json[@]}" -d 'customer_name=Ada'
expect "malformed JSON" 400 invalid_input
http POST /api/orders "${json[@]}"
expect "no body at all" 400 invalid_input
http POST /api/orders "${json[@]}" -d '[1,2]'
expect "a JSON array, not an object" 400 invalid_input
http POST /api/orders "${json[@]}" -d '{"customer_email":"a@example.com","items":[]}'
expect "a missing field" 400 invalid_input
check "the message names customer_name" test "$(json_field "$body" field)" = customer_name
http POST /api/orders "${json[@]}" -d '{"customer_name":5,"customer_email":"a@example.com","items":[]}'
expect "a wrong type" 400 invalid_input
check "the message says customer_name must be a string" has 'customer_name: must be a string'
http POST /api/orders "${json[@]}" -d '{"customer_name":"A","customer_email":"a@example.com","items":{}}'
expect "items that are not an array" 400 invalid_input
http POST /api/orders "${json[@]}" -d '{"customer_name":"A","customer_email":"a@example.com","items":[{"product_id":"p","quantity":-3,"unit_price":1}]}'
expect "a negative quantity" 400 invalid_input
check "the field is items[0].quantity" test "$(json_field "$body" field)" = 'items[0].quantity'
http POST /api/orders "${json[@]}" -d '{"customer_name":"A","customer_email":"a@example.com","items":[{"product_id":"p","quantity":1,"unit_price":-0.5}]}'
expect "a negative price" 400 invalid_input
http POST /api/orders "${json[@]}" -d '{"customer_name":"A","customer_email":"a@example.com","items":[{"product_id":"p","quantity":1,"unit_price":1.999}]}'
expect "a price with three decimals" 400 invalid_input
http POST /api/orders "${json[@]}" -d '{"customer_name":"A","customer_name":"B","customer_email":"a@example.com","items":[]}'
expect "a duplicate key" 400 invalid_input
check "the message names the duplicate key" has 'holds the key \"customer_name\" twice'
printf '{"customer_name":"A\xff\xfe","customer_email":"a@example.com","items":[]}' >"$work/bad-utf8.json"
http POST /api/orders "${json[@]}" --data-binary "@$work/bad-utf8.json"
expect "invalid UTF-8" 400 invalid_input
printf '%*s' 100000 '' | tr ' ' '[' >"$work/deep.json"
http POST /api/orders "${json[@]}" --data-binary "@$work/deep.json"
expect "100,000 levels of nesting" 400 invalid_input
check "the message says it nests too deep" has 'nests deeper than'
head -c 2000000 /dev/zero | tr '\0' 'a' | sed 's/^/{"customer_name":"/; s/$/"}/' >"$work/huge.json"
http POST /api/orders "${json[@]}" --data-binary "@$work/huge.json"
expect "a 2 MB body (over server.max_body)" 413 payload_too_large
http POST /api/orders "${json[@]}" -H 'Transfer-Encoding: chunked' --data-binary "@$work/huge.json"
expect "a 2 MB chunked body" 413 payload_too_large
long=$(printf 'x%.0s' $(seq 200))
http GET "/api/orders/$long"
expect "a 200-character order id" 400 invalid_input
check "the message names the order id" test "$(json_field "$body" field)" = orderId
http GET "/api/orders/$(printf 'y%.0s' $(seq 20000))"
expect "a 20,000-character path" 414 uri_too_long
http GET "/api/orders/bad%20id"
expect "an order id with a space" 400 invalid_input
http PUT "/api/orders/$ada" "${json[@]}" -d '{"status":"teleported"}'
expect "an unknown status" 400 invalid_input
http PUT "/api/orders/$ada" "${json[@]}" -d '{"status":"shipped","total":0}'
expect "a field an UPDATE cannot change" 400 invalid_input
http POST /api/orders "${json[@]}" -d '{"customer_name":"A","customer_email":"a@example.com","items":[],"shiping_address":"x"}'
expect "a field an order does not have is a 400, not dropped" 400 invalid_input
check "  it names the field as the body has it" has '\"shiping_address\" is not a field of a CREATE'
check "  and its place" test "$(json_field "$body" field)" = shiping_address
http PUT "/api/orders/$ada" "${json[@]}" -d '{"status":7}'
expect "a status that is a number" 400 invalid_input
http POST /api/orders "${json[@]}" -H "Idempotency-Key: $long" -d "$item"
expect "an Idempotency-Key over 128 characters" 400 invalid_input
http GET "/api/orders?limit=0"
expect "limit 0" 400 invalid_input
http GET "/api/orders?limit=abc"
expect "limit abc" 400 invalid_input
http GET "/api/orders?status=lost"
expect "an unknown status filter" 400 invalid_input
http GET "/api/orders?stauts=shipped"
expect "a misspelt parameter is a 400, not the whole list" 400 invalid_input
check "  it names the parameters there are" has 'it takes status, limit, offset'
http GET "/api/orders?limit=1&limit=3"
expect "a parameter given twice" 400 invalid_input
check "  the message says so" has 'is given more than once'
http GET "/api/orders/$ada?verbose=1"
expect "a parameter on a route that takes none" 400 invalid_input
http DELETE "/api/orders/$ada" "${json[@]}" -d '{"reason":"fraud"}'
expect "a body on a route that takes none is a 400, not dropped" 400 invalid_input
check "  the message says so" has "DELETE /api/orders/$ada takes no body"
http GET "/api/orders/$ada"
check "  the refused DELETE queued nothing: the order is not deleting" test "$status" = 200
http GET /health
expect "the server is alive after all that" 200
check "no bad input crashed it" kill -0 "$server_pid"

stop_server
check "SIGTERM stops acmo serve with exit 0" test "$server_rc" -eq 0
check "it logs that it stopped" grep -q 'stopped' "$work/serve.log"

# --- tokens and rate limits -------------------------------------------------------------------

ACMO_SERVER_API_TOKENS=api-secret ACMO_SERVER_ADMIN_TOKENS=admin-secret \
  ACMO_SERVER_RATE_LIMIT=5 ACMO_SERVER_RATE_BURST=5 start_server --no-handler
api=(-H 'Authorization: Bearer api-secret')
admin=(-H 'Authorization: Bearer admin-secret')
http GET /sqs/stats
expect "no token" 401 unauthorized
check "401 asks for a bearer token" test "$(header WWW-Authenticate)" = Bearer
http GET /sqs/stats -H 'Authorization: Bearer wrong'
expect "a wrong token" 401 unauthorized
http GET /health
expect "/health needs no token" 200
http GET /sqs/stats "${api[@]}"
expect "an API token" 200
http GET /sqs/stats -H 'Authorization: bEaReR api-secret'
expect "the scheme Bearer in any letter case" 200
http DELETE /sqs/purge "${api[@]}"
expect "an API token on an admin endpoint" 403 forbidden
http DELETE /cache/clear "${api[@]}"
expect "an API token on /cache/clear" 403 forbidden
http GET /sqs/dlq "${api[@]}"
expect "an API token on /sqs/dlq" 403 forbidden
http DELETE /sqs/purge
expect "no token on an admin endpoint" 401 unauthorized
http DELETE /sqs/purge "${admin[@]}"
expect "an admin token on an admin endpoint" 200
http POST /api/orders "${json[@]}" "${admin[@]}" -d "$item"
expect "an admin token on the API" 202
# (this server has no handler: the event stays queued)
http DELETE '/sqs/purge?queue=bogus' "${admin[@]}"
expect "a typo in purge's queue is a 400, never the main queue" 400 invalid_input
check "  it names the queues there are" has 'queue \"bogus\" is not a queue here; use orders (the default) or dlq'
http DELETE '/sqs/purge?queu=dlq' "${admin[@]}"
expect "an unknown parameter of an admin endpoint is a 400" 400 invalid_input
http GET /sqs/stats "${admin[@]}"
check "neither refused purge ran: the event is still queued" test "$(json_field "$body" visible)" = 1
limited=0
for _ in $(seq 8); do
  http GET /sqs/stats "${api[@]}"
  [[ $status == 429 ]] && { limited=1; break; }
done
check "over server.rate_limit: 429" test "$limited" = 1
check "429 says rate_limited" test "$(json_field "$body" code)" = rate_limited
check "429 has Retry-After" test -n "$(header Retry-After)"
http GET /health
# (503 "stalled": this server has no handler and an order waits; not 429 is what counts here)
check "/health is not rate limited (status $status)" test "$status" != 429 -a "$status" != 000
# Guessing tokens: 10 failures at once from one address, then one a second, then 429.
guesses=''
for i in $(seq 15); do
  http GET /sqs/stats -H "Authorization: Bearer guess-$i" --interface 127.0.0.4
  guesses+="$status "
done
check "failed authentications are limited per address: 401 ten times, then 429 ($guesses)" \
  bash -c '[[ $(grep -o 401 <<<"$1" | wc -l) -le 11 && $(grep -o 429 <<<"$1" | wc -l) -ge 4 ]]' _ "$guesses"
http GET /sqs/stats "${api[@]}" --interface 127.0.0.4
expect "a valid token from that address still passes" 200
stop_server

# A Prometheus scraper's token reads /metrics and nothing else; /metrics may be open instead.
ACMO_SERVER_API_TOKENS=api-secret ACMO_SERVER_METRICS_TOKENS=scrape-secret start_server --no-handler
scrape=(-H 'Authorization: Bearer scrape-secret')
http GET /metrics "${scrape[@]}"
expect "a metrics token reads /metrics" 200
check "  it gets the metrics" has 'acmo_build_info{'
http GET /api/orders "${scrape[@]}"
expect "  a metrics token on GET /api/orders" 403 forbidden
check "  403 says it is a metrics token, which reads only /metrics" has 'this token is a metrics token'
# A valid token where its role does not reach is no guess: it never counts against the
# address's allowance of failed authentications (10 at once).
forbidden=''
for _ in $(seq 14); do http GET /api/orders "${scrape[@]}"; forbidden+="$status "; done
check "  a valid token is answered 403 however often, never 429 ($forbidden)" \
  test "$(grep -o 403 <<<"$forbidden" | wc -l)" -eq 14
http POST /api/orders "${json[@]}" "${scrape[@]}" -d "$item"
expect "  a metrics token on POST /api/orders" 403 forbidden
http GET /metrics
expect "  /metrics without a token" 401 unauthorized
http GET /metrics "${api[@]}"
expect "  an API token still reads /metrics" 200
stop_server
ACMO_SERVER_API_TOKENS=api-secret ACMO_SERVER_METRICS_OPEN=true start_server --no-handler
http GET /metrics
expect "server.metrics_open: /metrics needs no token" 200
http GET /api/orders
expect "  the API still does" 401 unauthorized
stop_server
out=$(ACMO_SERVER_METRICS_OPEN=true ACMO_SERVER_METRICS_TOKENS=scrape-secret "$acmo" config check 2>&1)
rc=$?
check "an open /metrics with metrics tokens is a configuration error (exit $rc): $out" \
  bash -c '[[ $1 == 2 && $2 == *"server.metrics_tokens would never be used"* ]]' _ "$rc" "$out"

# Without tokens, a made-up bearer value is no token: it gets no bucket of its own.
ACMO_SERVER_RATE_LIMIT=1 ACMO_SERVER_RATE_BURST=5 start_server --no-handler
accepted=0
for i in $(seq 20); do
  http GET /sqs/stats -H "Authorization: Bearer made-up-$i"
  [[ $status == 200 ]] && accepted=$((accepted + 1))
done
check "rate limit without tokens: a made-up bearer per request is limited by address ($accepted of 20 taken)" \
  test "$accepted" -le 8
stop_server

# --- keep-alive: pipelined requests, and SIGTERM with idle connections -------------------------

ACMO_SERVER_KEEP_ALIVE_TIMEOUT=30s start_server --no-handler
# Two requests in one write on one connection: both answered, in order, and the connection then
# stays open (keep-alive) until the server stops.
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /health/live HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n' >&3
timeout 5 cat <&3 >"$work/kept" &
reader=$!
# (an answer's body ends without a newline: the next status line follows on the same line)
for _ in $(seq 100); do grep -aq 'HTTP/1.1 404' "$work/kept" && break; sleep 0.05; done
check "two pipelined requests: both answered, in order" \
  test "$(grep -ao 'HTTP/1.1 [0-9]*' "$work/kept" | tr '\n' ' ')" = "HTTP/1.1 200 HTTP/1.1 404 "
check "the connection stays open after them (keep-alive)" kill -0 "$reader"
started=$(date +%s%N)
stop_server
took_ms=$(( ($(date +%s%N) - started) / 1000000 ))
check "SIGTERM with an idle keep-alive connection (keep_alive_timeout 30s): exit 0 in ${took_ms} ms" \
  test "$server_rc" -eq 0 -a "$took_ms" -lt 3000
wait "$reader"
reader_rc=$? # 0: cat saw the end of the connection; 124: it was still open after 5 s
check "the idle connection was closed by the server (reader exit $reader_rc)" test "$reader_rc" -eq 0
exec 3<&-

# --- idle connections hold no thread ----------------------------------------------------------

ACMO_SERVER_THREADS=2 ACMO_SERVER_KEEP_ALIVE_TIMEOUT=2s start_server --no-handler
# Six connections that send nothing, with two threads: a new client is answered at once (before,
# each idle connection held a thread until keep_alive_timeout), and the server closes each
# after keep_alive_timeout.
idle_pids=()
for i in $(seq 6); do
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    timeout 8 cat <&3 >/dev/null
    echo $? >"$work/idle-$i" # 0: the server closed it; 124: still open after 8 s
  ) &
  idle_pids+=($!)
done
sleep 0.3
started=$(date +%s%N)
http GET /health/live
took_ms=$(( ($(date +%s%N) - started) / 1000000 ))
expect "GET /health/live with six idle connections and server.threads = 2" 200
check "it is answered in ${took_ms} ms (under 1 s; keep_alive_timeout is 2 s)" test "$took_ms" -lt 1000
# A connection idle between two requests for longer than a thread waits for it is parked, and
# its next request is answered all the same.
exec 4<>"/dev/tcp/127.0.0.1/$port"
timeout 5 cat <&4 >"$work/parked" &
reader=$!
printf 'GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n' >&4
sleep 0.5
printf 'GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n' >&4
for _ in $(seq 100); do grep -aq 'HTTP/1.1 404' "$work/parked" && break; sleep 0.05; done
check "two requests 0.5 s apart on one connection: both answered, in order" \
  test "$(grep -ao 'HTTP/1.1 [0-9]*' "$work/parked" | tr '\n' ' ')" = "HTTP/1.1 200 HTTP/1.1 404 "
wait "$reader"
reader_rc=$?
check "the connection is closed after keep_alive_timeout (reader exit $reader_rc)" test "$reader_rc" -eq 0
exec 4<&-
wait "${idle_pids[@]}"
closed=0
for i in $(seq 6); do [[ $(cat "$work/idle-$i" 2>/dev/null) == 0 ]] && closed=$((closed + 1)); done
check "the six idle connections are closed after keep_alive_timeout ($closed of 6)" test "$closed" -eq 6
stop_server

# --- health for load balancers: Redis down ------------------------------------------------------
# Nothing listens on this port: the Redis cache is down from the start. Reads are degraded (they
# fall back to the store), /health says so with 503; the queue still takes events, so
# /health/ready is 200, "degraded", naming the cache, and a POST is queued. (PostgreSQL down:
# test_pg_outage.sh.)
dead_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ACMO_DATA_DIR="$work/degraded" ACMO_CACHE_BACKEND=redis ACMO_CACHE_URL="redis://127.0.0.1:$dead_port" \
  start_server --no-handler
http GET /health
expect "Redis down: GET /health" 503
http GET /health/ready
expect "  GET /health/ready (the queue takes events)" 200
check "  it says degraded, naming the cache: $body" \
  bash -c '[[ $1 == *"\"status\":\"degraded\""* && $1 == *"\"degraded\":[\"cache\"]"* ]]' _ "$body"
http GET /health/live
expect "  GET /health/live" 200
http POST /api/orders "${json[@]}" -d "$item"
expect "  a POST is queued" 202
stop_server
# The queue's own outage is unready: see test_outage_storage.sh (a full disk, a damaged database).

# --- the backlog in /health: no live handler, or a message waiting too long -------------------
# /health fails when events are accepted but not applied; /health/ready (the load balancer's)
# does not, since the API still takes events.
bl="$work/backlog"
ACMO_DATA_DIR="$bl" ACMO_SERVER_BACKLOG_MAX_AGE=1s start_server --no-handler
http GET /health
expect "backlog: /health with nothing waiting and no handler" 200
http POST /api/orders "${json[@]}" -d "$item"
http GET /health
expect "  a message waits and no handler runs: /health" 503
check "  it says stalled, names the backlog and what to do: $body" \
  bash -c '[[ $1 == *"\"status\":\"stalled\""* && $1 == *"\"failing\":[\"backlog\"]"* && $1 == *"no handler is running: start"* ]]' _ "$body"
http GET /health/ready
expect "  /health/ready still takes events" 200
# The waiting message, browsed without receiving it: the CLI and the API show the same.
bl_order=$(ACMO_DATA_DIR="$bl" "$acmo" --json peek | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"][0]["body"]["orderId"])')
http GET "/sqs/peek?orderId=$bl_order"
expect "GET /sqs/peek?orderId=ID" 200
check "  it shows the waiting CREATE, visible" \
  bash -c '[[ $1 == *"\"count\":1"* && $1 == *"\"state\":\"visible\""* && $1 == *"\"type\":\"CREATE\""* ]]' _ "$body"
check "  acmo peek --json is GET /sqs/peek's document" \
  same_json "$(ACMO_DATA_DIR="$bl" "$acmo" --json peek --order-id "$bl_order")" "$body"
http GET "/sqs/peek?group=orders&limit=1"
check "  by group: $(json_field "$body" count)" test "$(json_field "$body" count)" = 1
http GET "/sqs/peek?orderid=x"
expect "  an unknown parameter" 400 invalid_input
http GET "/sqs/peek?limit=0"
expect "  limit 0" 400 invalid_input
# The groups of the waiting messages: the CLI and the API show the same.
http GET /sqs/groups
expect "GET /sqs/groups" 200
check "  one group, the message waiting, not blocked: $body" \
  bash -c '[[ $1 == *"\"count\":1"* && $1 == *"\"depth\":1"* && $1 == *"\"blocked\":null"* && $1 == *"\"omitted\":0"* ]]' _ "$body"
# headAgeMs moves with the clock between the two reads; the rest is the same.
cli=$(ACMO_DATA_DIR="$bl" "$acmo" --json groups)
no_age() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); [g.pop("headAgeMs") for g in d["groups"]]; print(json.dumps(d))' "$1"; }
check "  acmo groups --json is GET /sqs/groups's document" same_json "$(no_age "$cli")" "$(no_age "$body")"
http GET "/sqs/groups?blocked=true&limit=5"
check "  ?blocked=true: none blocked" test "$(json_field "$body" count)" = 0
http GET "/sqs/groups?blocked=yes"
expect "  blocked=yes" 400 invalid_input
http GET "/sqs/groups?limit=1001"
expect "  limit=1001" 400 invalid_input
check "  peeking received nothing" test "$(ACMO_DATA_DIR="$bl" "$acmo" --json stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["received"])')" = 0
ACMO_DATA_DIR="$bl" "$acmo" -q run-handler >/dev/null 2>&1 &
bl_handler=$!
check "  a handler in another process applies it: /health 200" until_status /health 200
check "  it counts as a live handler in /metrics" \
  bash -c 'curl -s "http://127.0.0.1:$1/metrics" | grep -qx "acmo_handlers_live 1"' _ "$port"
# A handler that stops (SIGSTOP) still counts as live until its heartbeat is 5 s old; a message
# older than server.backlog_max_age (1 s) fails /health meanwhile.
kill -STOP "$bl_handler"
sleep 0.3
http POST /api/orders "${json[@]}" -d "$item"
sleep 1.5
http GET /health
expect "  a message older than server.backlog_max_age: /health" 503
check "  it says how long the oldest waited: $body" \
  bash -c '[[ $1 == *"the oldest message has waited"*"more than server.backlog_max_age (1 s)"* ]]' _ "$body"
kill -CONT "$bl_handler"
check "  continued, the handler applies it: /health 200 again" until_status /health 200
kill -TERM "$bl_handler"; wait "$bl_handler"
stop_server

# --- reads across processes: a handler in another process -----------------------------------
# `serve --no-handler` with the default memory cache, the events applied by `run-handler`
# processes: a read after the other process committed shows the change, never the cached order.
two="$work/two-processes"
ACMO_DATA_DIR="$two" start_server --no-handler
http POST /api/orders "${json[@]}" -d "$item"
expect "two processes: POST /api/orders" 202
two_id=$(json_field "$body" orderId)
ACMO_DATA_DIR="$two" "$acmo" -q run-handler --once >/dev/null
http GET "/api/orders/$two_id"
http GET "/api/orders/$two_id"
check "  GET /api/orders/ID: pending, version 1 (now cached)" \
  bash -c '[[ $1 == *"\"status\":\"pending\""* && $1 == *"\"version\":1"* ]]' _ "$body"
http GET "/api/orders?status=pending"
check "  GET /api/orders?status=pending lists it (now cached)" test "$(json_field "$body" total)" = 1
for next in processing shipped; do
  http PATCH "/api/orders/$two_id/status" "${json[@]}" -d "{\"status\":\"$next\"}"
  expect "  PATCH status $next" 202
  ACMO_DATA_DIR="$two" "$acmo" -q run-handler --once >/dev/null
  http GET "/api/orders/$two_id"
  check "  GET right after the other process applied it: $next" \
    bash -c '[[ $1 == *"\"status\":\"$2\""* ]]' _ "$body" "$next"
done
http GET "/api/orders?status=pending"
check "  the cached list follows: no pending order left" test "$(json_field "$body" total)" = 0
http DELETE "/api/orders/$two_id"
ACMO_DATA_DIR="$two" "$acmo" -q run-handler --once >/dev/null
http GET "/api/orders/$two_id"
expect "  GET after the other process deleted it" 404
stop_server

# --- SIGTERM under load: every 202 is applied --------------------------------------------------

start_server
for c in 1 2 3 4; do
  (
    for i in $(seq 400); do
      out=$(curl -s -w ' %{http_code}' -X POST "http://127.0.0.1:$port/api/orders" "${json[@]}" \
              -H "Idempotency-Key: load-$c-$i" -d "$item") || break
      [[ $out == *' 202' ]] && json_field "${out% *}" orderId
    done >"$work/accepted-$c"
  ) &
done
sleep 1
stop_server
wait
cat "$work"/accepted-* >"$work/accepted"
accepted=$(wc -l <"$work/accepted")
check "the load got 202s before the SIGTERM ($accepted)" test "$accepted" -gt 10
check "SIGTERM under load: exit 0" test "$server_rc" -eq 0
"$acmo" -q run-handler --once >/dev/null
missing=0
while read -r id; do
  "$acmo" -q orders get "$id" >/dev/null 2>&1 || missing=$((missing + 1))
done <"$work/accepted"
check "every order that got a 202 is applied ($accepted, $missing missing)" test "$missing" -eq 0

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
