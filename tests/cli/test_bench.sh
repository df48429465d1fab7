#!/usr/bin/env bash
# The benchmark command, run end to end with small sizes so that it stays working: every
# scenario runs and measures, the document is one JSON object, and the http scenarios (wrk
# against acmo serve) answered without errors. No rate is judged here: the targets are judged
# by full runs (docs/performance.md), never by a timed test. With the test services
# (ACMO_TEST_PG_URL, ACMO_TEST_REDIS_URL) the PostgreSQL and Redis scenarios run too; in CI
# they must.
#   tests/cli/test_bench.sh path/to/acmo-bench
set -uo pipefail
bench=${1:?usage: $0 path/to/acmo-bench}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
work=$(mktemp -d "${TMPDIR:-/tmp}/acmo-bench-test.XXXXXX")
trap 'rm -rf "$work"' EXIT

services=yes
if [[ -z ${ACMO_TEST_PG_URL:-} || -z ${ACMO_TEST_REDIS_URL:-} ]]; then
  if [[ ${CI:-} == true ]]; then
    echo "not ok - ACMO_TEST_PG_URL and ACMO_TEST_REDIS_URL must be set in CI (scripts/test.sh)"
    exit 1
  fi
  echo "WARN: the PostgreSQL and Redis scenarios are skipped: no test services (scripts/test.sh)"
  services=no
fi

ACMO_BENCH_PG_URL=${ACMO_TEST_PG_URL:-} ACMO_BENCH_REDIS_URL=${ACMO_TEST_REDIS_URL:-} \
  "$bench" --runs 1 --dir "$work" --bulk-messages 5000 --threads 8 --per-thread 50 \
  --drain-messages 2000 --wake-samples 10 --pipeline-events 400 --http-duration 1 \
  >"$work/out.json" 2>"$work/err"
rc=$?
check "acmo-bench exits 0 (got $rc)" test "$rc" -eq 0
[[ $rc -eq 0 ]] || tail -n 20 "$work/err"

python3 - "$work/out.json" "$services" <<'EOF' && ok "every scenario measured" || not_ok "every scenario measured"
import json, sys
doc = json.load(open(sys.argv[1]))
r = doc["results"]
want = ["baseline_sqlite_fsync_per_insert", "baseline_sqlite_1000_per_commit", "bulk_send",
        "concurrent_send", "receive_delete_batch10", "receive_delete_batch10_1000_groups",
        "receive_delete_batch10_combined", "receive_delete_batch10_combined_1000_groups",
        "pipeline_sqlite_single_group_batch10", "pipeline_sqlite_group_per_order_batch10",
        "pipeline_sqlite_single_group_batch100", "pipeline_sqlite_group_per_order_batch100"]
if sys.argv[2] == "yes":
    want += ["pipeline_postgres_single_group_batch%d" % b for b in (10, 100, 1000)]
    want += ["pipeline_postgres_group_per_order_batch%d" % b for b in (10, 100, 1000)]
    want += ["cache_redis_get_hit"]
bad = []
for k in want:
    if k not in r:
        bad.append(k + " is missing")
    elif k != "cache_redis_get_hit" and not r[k]["median"] > 0:
        bad.append(k + " measured nothing")
if "cache_redis_get_hit" in r and not r["cache_redis_get_hit"]["median_1_thread"] > 0:
    bad.append("cache_redis_get_hit measured nothing")
w = r.get("cross_process_wakeup", {})
if not w.get("p50_median", 0) > 0:
    bad.append("cross_process_wakeup measured nothing")
http = r.get("http", {})
if "error" in http or "scenarios" not in http:
    bad.append("http: " + http.get("error", "no scenarios"))
else:
    for sc in http["scenarios"]:
        for run in sc["runs"]:
            if not run["requests"] > 0 or run["errors"] != 0:
                bad.append("http %s: %d requests, %d errors" % (sc["name"], run["requests"], run["errors"]))
for b in bad:
    print("  " + b)
sys.exit(1 if bad else 0)
EOF

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
