#!/usr/bin/env bash
# ctest's unit test: the Catch2 executable with its stderr (thousands of log lines of the code
# under test) in a file beside it, so that the test's output is Catch2's report of each
# failure and its summary. On a failure, the stderr follows without acmo's own log lines.
set -uo pipefail
bin=$1
shift
log=$bin.stderr.log
"$bin" "$@" 2>"$log"
status=$?
if [ "$status" -ne 0 ]; then
  echo "--- exit status $status; the tests' stderr without acmo's log lines ($log has all):"
  grep -v '^acmo: ' "$log" | tail -n 100
fi
exit "$status"
