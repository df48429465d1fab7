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
  --pg-per-connection 5 --pg-bulk-messages 300 --pg-file-lines 300 --pg-drain-messages 200 \
  --pg-events 200 \
  --pg-wake-samples 5 >"$work/out.json" 2>"$work/err"
rc=$?
check "acmo-bench exits 0 (got $rc)" test "$rc" -eq 0
[[ $rc -eq 0 ]] || tail -n 20 "$work/err"

python3 - "$work/out.json" "$services" <<'EOF' && ok "every scenario measured" || not_ok "every scenario measured"
import json, sys
doc = json.load(open(sys.argv[1]))
r = doc["results"]
bad = []
want = ["baseline_sqlite_fsync_per_insert", "baseline_sqlite_1000_per_commit", "bulk_send",
        "concurrent_send", "receive_delete_batch10", "receive_delete_batch10_1000_groups",
        "receive_delete_batch10_combined", "receive_delete_batch10_combined_1000_groups",
        "pipeline_sqlite_single_group_batch10", "pipeline_sqlite_group_per_order_batch10",
        "pipeline_sqlite_single_group_batch100", "pipeline_sqlite_group_per_order_batch100"]
if sys.argv[2] == "yes":
    want += ["pipeline_postgres_single_group_batch%d" % b for b in (10, 100, 1000)]
    want += ["pipeline_postgres_group_per_order_batch%d" % b for b in (10, 100, 1000)]
    want += ["cache_redis_get_hit"]
    pg = ["pg_send_concurrent", "pg_send_bulk", "pg_send_bulk_groups", "pg_send_file",
          "pg_send_file_groups", "pg_receive_delete",
          "pg_receive_delete_2_receivers", "pg_receive_delete_4_receivers",
          "pg_end_to_end_1_process", "pg_end_to_end_2_processes", "pg_end_to_end_4_processes",
          "pg_end_to_end_1_process_2_workers", "pg_end_to_end_1_process_analyzed_empty"]
    want += ["baseline_pg_insert_per_commit", "pg_handler_start"] + pg
    for k in pg:
        if k in r and not r[k].get("ratio_to_baseline_pg_insert_per_commit", 0) > 0:
            bad.append(k + " has no ratio to the PostgreSQL baseline")
    pw = r.get("pg_wakeup", {})
    if not (pw.get("p50_median", 0) > 0 and pw.get("p99_median", 0) >= pw.get("p50_median", 0)):
        bad.append("pg_wakeup measured nothing")
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

# A scenario asked for by name runs or fails the command: unknown names and the PostgreSQL
# scenarios without a server are usage errors (exit 2), never a report without them.
env -u ACMO_BENCH_PG_URL "$bench" --only pg_send_bulk >"$work/out" 2>"$work/err"
rc=$?
check "--only pg_send_bulk without ACMO_BENCH_PG_URL exits 2 (got $rc)" test "$rc" -eq 2
check "and says what it needs" grep -q "needs ACMO_BENCH_PG_URL" "$work/err"
check "and prints no report" test ! -s "$work/out"
"$bench" --only no_such_scenario >"$work/out" 2>"$work/err"
rc=$?
check "--only with an unknown scenario exits 2 (got $rc)" test "$rc" -eq 2
check "and names it" grep -q 'no scenario "no_such_scenario"' "$work/err"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
