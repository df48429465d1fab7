#!/usr/bin/env bash
# The soak test (issue 6): `acmo serve` with its in-process handler under a bounded mixed load
# from wrk on loopback (8 connections, 2 threads): 40% POST /api/orders (each its own
# Idempotency-Key), 40% GET /api/orders/ID of orders applied before the load, 10% GET
# /api/orders?limit=20, 10% GET /sqs/stats. It checks that no answer was an error (non-2xx, or
# a socket error or timeout), that the server's memory is stable (VmRSS sampled from
# /proc/PID/status every 5 s: flat over the last third), and that the queue
# drains: every accepted POST applied, once. Memory is judged in runs of 2 minutes or more.
#
#   bench/soak.sh [path/to/acmo]     (default build/cli/acmo)
#
# ACMO_SOAK_SECONDS: how long the load runs (default 180; a short run, e.g. 20, for CI).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
acmo=$(realpath "${1:-$root/build/cli/acmo}")
seconds=${ACMO_SOAK_SECONDS:-180}
connections=8
for tool in wrk curl jq; do
  command -v "$tool" >/dev/null || { echo "soak.sh: $tool is missing; run scripts/install-deps.sh" >&2; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/tmp}/acmo-soak.XXXXXX")
server_pid=''
cleanup() {
  [[ -n $server_pid ]] && kill -9 "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=../tests/cli/lib.sh
source "$root/tests/cli/lib.sh"
export ACMO_DATA_DIR=$work/data NO_COLOR=1
export ACMO_QUEUE_GROUP_BY=order ACMO_SERVER_THREADS=$((connections + 8))

start_server
url=http://127.0.0.1:$port
rss() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$server_pid/status"; }

# Orders to read: 50, applied by the in-process handler before the load starts.
event='{"customer_name":"Soak","customer_email":"soak@example.com","items":[{"product_id":"p-1","quantity":2,"unit_price":12.5}]}'
: >"$work/ids"
for i in $(seq 50); do
  curl -s -H 'Content-Type: application/json' -H "Idempotency-Key: seed-$i" -d "$event" "$url/api/orders" |
    jq -r .orderId >>"$work/ids"
done
for _ in $(seq 200); do
  [[ $(curl -s "$url/api/orders?limit=1" | jq .total) == 50 ]] && break
  sleep 0.05
done
ids_lua=$(sed 's/.*/"&",/' "$work/ids" | tr -d '\n')

cat >"$work/soak.lua" <<EOF
-- Mixed load. Each thread counts what it sent of each kind and the statuses it got back (a
-- thread has several connections, so an answer cannot be matched to its request here: a POST
-- is answered 202, every GET 200); done() sums them.
local ids = { ${ids_lua} }
local body = '${event}'
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  n = 0
  counts = {post = 0, get = 0, list = 0, stats = 0, s200 = 0, s202 = 0, other = 0}
end
function request()
  n = n + 1
  local r = n % 10
  if r < 4 then
    counts.post = counts.post + 1
    return wrk.format("POST", "/api/orders", {["Content-Type"] = "application/json",
      ["Idempotency-Key"] = "soak-" .. tid .. "-" .. n}, body)
  elseif r < 8 then
    counts.get = counts.get + 1
    return wrk.format("GET", "/api/orders/" .. ids[(n % #ids) + 1])
  elseif r < 9 then
    counts.list = counts.list + 1
    return wrk.format("GET", "/api/orders?limit=20")
  end
  counts.stats = counts.stats + 1
  return wrk.format("GET", "/sqs/stats")
end
function response(status, headers, body)
  if status == 200 then counts.s200 = counts.s200 + 1
  elseif status == 202 then counts.s202 = counts.s202 + 1
  else counts.other = counts.other + 1 end
end
function done(summary, latency, requests)
  local t = {post = 0, get = 0, list = 0, stats = 0, s200 = 0, s202 = 0, other = 0}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("counts")) do t[k] = t[k] + v end
  end
  local e = summary.errors
  io.write(string.format('{"requests":%d,"seconds":%.1f,"post":%d,"get":%d,"list":%d,"stats":%d,' ..
    '"s200":%d,"s202":%d,"other":%d,"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50_ms":%.2f,"p99_ms":%.2f}\n',
    summary.requests, summary.duration / 1e6, t.post, t.get, t.list, t.stats, t.s200, t.s202,
    t.other, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
EOF

rss_start=$(rss)
sent_before=$(curl -s "$url/sqs/stats" | jq .sent)
: >"$work/rss"
( while kill -0 "$server_pid" 2>/dev/null; do rss >>"$work/rss"; sleep 5; done ) &
sampler=$!
wrk -t 2 -c "$connections" -d "${seconds}s" --timeout 10s -s "$work/soak.lua" "$url" >"$work/wrk.out" 2>&1
wrk_rc=$?
rss_end=$(rss)
kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
summary=$(tail -n 1 "$work/wrk.out")
if ! jq -e . >/dev/null 2>&1 <<<"$summary"; then
  echo "not ok - wrk failed (exit $wrk_rc):"; cat "$work/wrk.out"; exit 1
fi
f() { jq -r ".$1" <<<"$summary"; }
samples=$(wc -l <"$work/rss")
rss_third=$(sed -n "$(( (samples + 2) / 3 ))p" "$work/rss")
rss_max=$(sort -n "$work/rss" | tail -n 1)
echo "# soak: RSS samples (kB, every 5 s): $(tr "\n" " " <"$work/rss")"

# Drained: every accepted POST applied (the handler keeps up, or catches up here).
started=$(date +%s)
for _ in $(seq 1200); do
  stats=$(curl -s "$url/sqs/stats")
  [[ $(jq -r '"\(.visible)/\(.inFlight)/\(.delayed)"' <<<"$stats") == 0/0/0 ]] && break
  sleep 0.1
done
drain_s=$(( $(date +%s) - started ))
stats=$(curl -s "$url/sqs/stats")
orders=$(curl -s "$url/api/orders?limit=1" | jq .total)
echo "# soak: ${seconds} s, $(f requests) requests ($(f post) POST, $(f get) GET order, $(f list) GET list, $(f stats) GET stats), $(jq -r '.requests / .seconds | floor' <<<"$summary") req/s, p50 $(f p50_ms) ms, p99 $(f p99_ms) ms"
echo "# soak: server RSS ${rss_start} kB at start, ${rss_third} kB after a third, ${rss_end} kB at the end, ${rss_max} kB at most; drained $drain_s s after the load; $orders orders"
check "no error answers: non-2xx $(f non2xx), connect $(f connect), read $(f read), write $(f write), timeouts $(f timeout)" \
  test "$(f non2xx)/$(f connect)/$(f read)/$(f write)/$(f timeout)" = 0/0/0/0/0
check "every answer was 202 (a POST) or 200 (a GET): $(f s202) × 202, $(f s200) × 200, $(f other) other" \
  test "$(f other)" = 0 -a "$(( $(f s202) + $(f s200) ))" = "$(f requests)" -a "$(f requests)" -gt 0
check "the queue is drained (visible/inFlight/delayed $(jq -r '"\(.visible)/\(.inFlight)/\(.delayed)"' <<<"$stats"), nothing dead-lettered ($(jq .deadLettered <<<"$stats"))" \
  test "$(jq -r '"\(.visible)/\(.inFlight)/\(.delayed)/\(.deadLettered)"' <<<"$stats")" = 0/0/0/0
# A POST in flight when wrk stops may be queued without wrk seeing its 202: at most one a
# connection.
queued=$(( $(jq .sent <<<"$stats") - sent_before ))
check "every accepted POST is queued once and applied ($(f s202) accepted, $queued queued, $(( orders - 50 )) applied)" \
  test "$queued" -ge "$(f s202)" -a "$queued" -le "$(( $(f s202) + connections ))" -a "$(( orders - 50 ))" = "$queued"
# Stable memory. RSS grows while SQLite's page caches fill (queue.cpp sets 16 MB a
# connection, and the server has several), then must stay flat: over the last third of a
# run of 2 minutes or more, at most 10% more. Shorter runs only report it.
rss_two_thirds=$(sed -n "$(( (2 * samples + 2) / 3 ))p" "$work/rss")
if (( seconds >= 120 )); then
  check "memory is stable: RSS ${rss_two_thirds} kB after two thirds, ${rss_end} kB at the end" \
    test "$rss_end" -le $(( rss_two_thirds * 110 / 100 ))
else
  echo "# soak: memory not judged in a run under 120 s (RSS ${rss_two_thirds} kB after two thirds, ${rss_end} kB at the end)"
fi
kill -TERM "$server_pid"; wait "$server_pid"; rc=$?; server_pid=''
check "SIGTERM stops the server after the soak (exit $rc)" test "$rc" -eq 0
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
