#!/usr/bin/env bash
# The HTTP benchmark of `acmo serve`: wrk, a second process on loopback, with
# 32 connections on 2 threads against
#   - durable POST /api/orders (each a CREATE with its own Idempotency-Key, fsynced before
#     its 202; the server runs with --no-handler so that only the write path is measured), and
#   - cached GET /api/orders/ID (an order the in-process handler applied; after the first read
#     every answer is a cache hit).
# Each run starts a fresh data dir and server. Prints one JSON document: every run, the median,
# the target and whether it was met. When bench/acmo-bench sits beside the binary's build, each
# run also measures the bare queue's 32-thread durable send (concurrent_send) as a baseline, and
# the POST figures get a ratio to it: on a shared machine the ratio means more than the rate.
#
#   bench/http_bench.sh [--runs N] [--duration SECS] [--connections N] [path/to/acmo]
set -euo pipefail

runs=3
duration=10
connections=32
acmo=""
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "http_bench.sh: unknown option $1" >&2; exit 2 ;;
    *) acmo=$1; shift ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
acmo=${acmo:-$root/build/cli/acmo}
acmo=$(cd "$(dirname "$acmo")" && pwd)/$(basename "$acmo")
for tool in wrk curl python3; do
  command -v $tool >/dev/null || { echo "http_bench.sh: $tool is missing; run scripts/install-deps.sh" >&2; exit 1; }
done
[ -x "$acmo" ] || { echo "http_bench.sh: no acmo binary at $acmo; build it first" >&2; exit 1; }

tmp=$(mktemp -d)
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap 'stop_server; rm -rf "$tmp"' EXIT

# A free port on loopback, from the kernel.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server DIR [FLAGS...]: acmo serve on a free port, with a thread per connection.
start_server() {
  local dir=$1
  shift
  port=$(free_port)
  ACMO_DATA_DIR=$dir ACMO_SERVER_THREADS=$((connections + 8)) ACMO_LOG_LEVEL=warn \
    "$acmo" serve --listen "127.0.0.1:$port" "$@" 2>>"$tmp/serve.log" &
  server_pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "http_bench.sh: acmo serve did not start; see its log:" >&2
  cat "$tmp/serve.log" >&2
  exit 1
}

# wrk prints one JSON line of its own at the end (done() below).
cat >"$tmp/post.lua" <<'EOF'
local counter = 0
local tag = ""
local threads_made = 0
function setup(thread)
  threads_made = threads_made + 1
  thread:set("tid", threads_made)
end
function init(args)
  tag = tostring(tid) .. "-" .. tostring(os.time())
end
function request()
  counter = counter + 1
  local id = "bench-" .. tag .. "-" .. counter
  local body = '{"customer_name":"Bench ' .. counter .. '","customer_email":"bench@example.com",' ..
    '"items":[{"product_id":"p-' .. counter .. '","quantity":1,"unit_price":9.99}]}'
  return wrk.format("POST", "/api/orders",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = id}, body)
end
EOF
cat >"$tmp/report.lua" <<'EOF'
-- errors.status counts the answers with a status of 400 or more.
function done(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests": %d, "seconds": %.3f, "errors": %d, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
EOF
cat "$tmp/report.lua" >>"$tmp/post.lua"
cp "$tmp/report.lua" "$tmp/get.lua"

run_wrk() { # run_wrk SCRIPT PATH → the WRKJSON line's JSON
  wrk -t2 -c"$connections" -d"${duration}s" --timeout 5s -s "$1" "http://127.0.0.1:$port$2" \
    | sed -n 's/^WRKJSON //p'
}

bench_bin=$(dirname "$acmo")/../bench/acmo-bench
post_runs=()
get_runs=()
base_runs=()
for run in $(seq "$runs"); do
  if [ -x "$bench_bin" ]; then
    echo "http_bench.sh: run $run of $runs: baseline, the bare queue's concurrent_send" >&2
    base_runs+=("$(ACMO_LOG_LEVEL=warn "$bench_bin" --only concurrent_send --runs 1 2>/dev/null \
                   | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["results"]["concurrent_send"]["median"]))' \
                   || echo 0)")
  fi
  echo "http_bench.sh: run $run of $runs: POST /api/orders" >&2
  dir=$tmp/post-$run
  start_server "$dir" --no-handler
  post_runs+=("$(run_wrk "$tmp/post.lua" /api/orders)")
  stop_server
  rm -rf "$dir"

  echo "http_bench.sh: run $run of $runs: GET /api/orders/ID" >&2
  dir=$tmp/get-$run
  start_server "$dir"
  id=$(curl -sf -X POST "http://127.0.0.1:$port/api/orders" -H 'Content-Type: application/json' \
         -d '{"customer_name":"Ada","customer_email":"ada@example.com","items":[{"product_id":"p-1","quantity":2,"unit_price":12.5}]}' \
       | python3 -c 'import json,sys; print(json.load(sys.stdin)["orderId"])')
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$port/api/orders/$id" >/dev/null && break
    sleep 0.02
  done
  get_runs+=("$(run_wrk "$tmp/get.lua" "/api/orders/$id")")
  stop_server
  rm -rf "$dir"
done

python3 - "$connections" "$duration" "${base_runs[*]:-}" "${post_runs[@]}" "---" "${get_runs[@]}" <<'EOF'
import json, statistics, sys
connections, duration = int(sys.argv[1]), int(sys.argv[2])
base = [int(x) for x in sys.argv[3].split()]
args = sys.argv[4:]
cut = args.index("---")
def scenario(name, lines, target_rps, target_p99):
    runs = [json.loads(l) for l in lines]
    for r in runs:
        r["rps"] = round(r["requests"] / r["seconds"])
    rps = statistics.median(r["rps"] for r in runs)
    p99 = statistics.median(r["p99_ms"] for r in runs)
    out = {"name": name, "runs": runs, "median_rps": rps, "median_p50_ms": statistics.median(r["p50_ms"] for r in runs),
           "median_p99_ms": p99, "errors": sum(r["errors"] for r in runs),
           "target_rps": target_rps}
    met = rps >= target_rps
    if target_p99 is not None:
        out["target_p99_ms"] = target_p99
        met = met and p99 <= target_p99
    out["met"] = met and out["errors"] == 0
    return out
doc = {"connections": connections, "wrk_threads": 2, "duration_s": duration,
       "scenarios": [scenario("post_orders_durable", args[:cut], 15000, 10.0),
                     scenario("get_order_cached", args[cut + 1:], 30000, None)]}
if base and all(b > 0 for b in base):
    # The same run's bare queue: 32 threads sending durably, no HTTP.
    post = doc["scenarios"][0]
    for r, b in zip(post["runs"], base):
        r["baseline_concurrent_send"] = b
        r["ratio_to_baseline"] = round(r["rps"] / b, 2)
    doc["baseline_concurrent_send"] = {"runs": base, "median": statistics.median(base)}
    post["median_ratio_to_baseline"] = statistics.median(r["ratio_to_baseline"] for r in post["runs"])
print(json.dumps(doc, indent=2))
EOF
