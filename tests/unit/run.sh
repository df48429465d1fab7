#!/usr/bin/env bash
# ctest's unit test: the Catch2 test cases shared out over processes of a few cases each, run
# ACMO_UNIT_JOBS (4) at once. The suite spends most of its time waiting (for PostgreSQL, for
# child processes, for timeouts to pass), so cases run side by side take a fraction of the
# time they take one after the other. The cases tagged [alone] run after the others, in a
# process with nothing beside it: they look at the whole test database (its deadlock count,
# every lock waited for, the oldest open transaction), or hold the code under test to times
# short enough (100 to 400 ms) that a busy machine would miss them.
#
# Each process's stderr (the log lines of the code under test) goes to a file of its own, so
# that the output is Catch2's report of each failure; on a failure, that process's stderr
# follows without acmo's own log lines. Every case listed must have run: the processes' counts
# of cases run must add up to the number listed.
#
#   run.sh BIN                 the whole suite
#   run.sh BIN ARGS...         BIN ARGS... in one process, as Catch2 takes them
set -uo pipefail
bin=$1
shift
if [ $# -gt 0 ]; then
  log=$bin.stderr.log
  "$bin" "$@" 2>"$log"
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "--- exit status $status; the tests' stderr without acmo's log lines ($log has all):"
    grep -v '^acmo: ' "$log" | tail -n 100
  fi
  exit "$status"
fi

jobs=${ACMO_UNIT_JOBS:-4}
logs=$bin.logs
rm -rf "$logs"
mkdir -p "$logs"

# The names of the cases a test spec selects, one a line, in $logs/$2, each quoted as Catch2's
# --input-file takes it: in double quotes, with a backslash before each backslash, comma and
# double quote of the name. Catch2 exits with the number of cases listed (at most 255), not
# with 0: what it wrote to stderr says whether it failed.
list() {
  "$bin" --list-test-names-only "$1" 2>"$logs/list.stderr" | grep -v '^$' \
    | sed -e 's/[\\,"]/\\&/g' -e 's/.*/"&"/' >"$logs/$2"
  if [ -s "$logs/list.stderr" ]; then
    echo "--- $bin --list-test-names-only $1 failed:"
    cat "$logs/list.stderr"
    exit 1
  fi
}
# Not the hidden cases ([.]), which a run without a test spec leaves out too.
list '~[.]~[alone]' together
list '~[.][alone]' alone
total=$(cat "$logs/together" "$logs/alone" | wc -l)
if [ ! -s "$logs/together" ]; then
  echo "--- $bin lists no test case"
  exit 1
fi

# Process P runs the cases in $logs/P.names: its report in P.out, its stderr in P.err, its
# exit status in P.status.
run_part() {
  "$bin" --input-file "$logs/$1.names" >"$logs/$1.out" 2>"$logs/$1.err"
  echo $? >"$logs/$1.status"
}
export -f run_part
export bin logs
# The cases in parts of $per_part, taken by the next of $jobs processes as one ends, so that
# no process is left with many of the long ones.
per_part=6
split -l "$per_part" -d -a 3 --additional-suffix=.names "$logs/together" "$logs/"
parts=()
for f in "$logs"/[0-9][0-9][0-9].names; do parts+=("$(basename "$f" .names)"); done
start=$(date +%s)
printf '%s\n' "${parts[@]}" | xargs -P "$jobs" -n 1 bash -c 'run_part "$1"' _
if [ -s "$logs/alone" ]; then
  cp "$logs/alone" "$logs/alone.names"
  parts+=(alone)
  run_part alone
fi

failed=0
ran=0
for p in "${parts[@]}"; do
  status=$(cat "$logs/$p.status" 2>/dev/null || echo missing)
  # Catch2 ends with "All tests passed (A assertions in C test cases)" or "test cases: C | ...".
  summary=$(grep -E '^(All tests passed|test cases:)' "$logs/$p.out" | tail -n 1)
  cases=$(sed -nE 's/.* in ([0-9]+) test cases?\)$/\1/p; s/^test cases: *([0-9]+).*/\1/p' \
            <<<"$summary")
  ran=$((ran + ${cases:-0}))
  [ "$status" = 0 ] && continue
  failed=$((failed + 1))
  echo "=== process $p of the unit tests: exit status $status ($logs/$p.names has its cases)"
  grep -v -e '^$' -e '^Filters: ' "$logs/$p.out" | tail -n 200
  echo "--- its stderr without acmo's log lines ($logs/$p.err has all):"
  grep -v '^acmo: ' "$logs/$p.err" | tail -n 60
done
echo "unit: $ran of $total test cases run in $(($(date +%s) - start)) s, by ${#parts[@]}" \
  "processes ($jobs at once, then those tagged [alone]), $failed of them failing"
if [ "$ran" -ne "$total" ]; then
  echo "--- $total test cases were listed but $ran ran"
  exit 1
fi
[ "$failed" -eq 0 ]
