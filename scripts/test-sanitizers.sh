#!/usr/bin/env bash
# Build acmo under AddressSanitizer + UndefinedBehaviorSanitizer and under ThreadSanitizer
# (ACMO_SANITIZE=address|thread, each in a build dir of its own) and run the unit and
# integration tests with them. A report from any process, the tests' own or an `acmo` that a
# shell test started (even one whose exit status the test ignores), fails the run: every
# sanitizer writes its reports to files in the build dir, and they must be absent at the end.
#
#   scripts/test-sanitizers.sh [address] [thread]     (default: both)
#
# PostgreSQL and Redis must be running for the tests that need them (scripts/test-services.sh
# start); scripts/test.sh calls this with them running when CI=true or ACMO_SANITIZERS is set.
# ACMO_SANITIZE_TESTS is a ctest -R regex of the tests to run (default below: the unit tests and
# the shell tests that drive the binary; not the docs test, which runs no code of interest, nor
# the torture suite, which is the release build's).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
sanitizers=("$@")
[ ${#sanitizers[@]} -eq 0 ] && sanitizers=(address thread)
tests=${ACMO_SANITIZE_TESTS:-'^(unit|cli|pipeline|http|pg_outage|redis_outage|demo|daemon|hostile_http|outage_storage)$'}

status=0
for san in "${sanitizers[@]}"; do
  case $san in
    address) dir=${ACMO_ASAN_BUILD_DIR:-build-asan} ;;
    thread) dir=${ACMO_TSAN_BUILD_DIR:-build-tsan} ;;
    *) echo "usage: $0 [address] [thread]" >&2; exit 2 ;;
  esac
  echo "== $san: building in $dir"
  start=$(date +%s)
  # clang, at -O1: GCC 12 takes minutes of CPU for each file that includes CLI11 under ASan
  # and UBSan at -O2, which CI cannot afford; clang builds the same in a fraction of that.
  # Warnings are the release build's business (-Werror there), not this one's. Debug
  # information is line tables only: all a report's stack needs (functions, files, lines,
  # inlined frames), built in a tenth less time than -g (GCC calls it -g1).
  cxx=${ACMO_SANITIZE_CXX:-clang++}
  lines=-gline-tables-only
  case $cxx in *clang*) ;; *) lines=-g1 ;; esac
  CXX=$cxx cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_CXX_FLAGS_DEBUG="-O1 $lines" -DACMO_SANITIZE="$san" -DACMO_BUILD_TESTS=ON >/dev/null
  cmake --build "$dir" -j "$(nproc)" --target acmo acmo_unit_tests >/dev/null
  built=$(date +%s)

  reports=$root/$dir/sanitizer-reports
  rm -rf "$reports"
  mkdir -p "$reports"
  # Reports go to files (log_path), so that none is lost in a test's 2>/dev/null; a process
  # stops at its first report. Processes killed with SIGKILL on purpose make no report.
  export ASAN_OPTIONS="log_path=$reports/asan:halt_on_error=1:abort_on_error=0:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1"
  export UBSAN_OPTIONS="log_path=$reports/ubsan:halt_on_error=1:print_stacktrace=1"
  # TSan's main thread sleeps atexit_sleep_ms (1 s by default) before exiting whenever another
  # thread is alive, as acmo's stop guard (cli/app.cpp) always is: every short command would
  # take a second more, which the shell suites' timings cannot absorb. 50 ms still lets
  # threads racing with exit be seen.
  export TSAN_OPTIONS="log_path=$reports/tsan:halt_on_error=1:second_deadlock_stack=1:atexit_sleep_ms=50"
  # Leaks in libraries, each explained in the file.
  export LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0"
  echo "== $san: running the tests matching $tests"
  run_status=0
  (cd "$dir" && ctest --output-on-failure --timeout 1200 -R "$tests") || run_status=$?
  ran=$(date +%s)
  found=$(find "$reports" -type f | wc -l)
  if [ "$found" -gt 0 ]; then
    echo "== $san: $found sanitizer report(s):"
    for f in $(find "$reports" -type f | head -n 5); do echo "--- $f"; head -n 60 "$f"; done
    run_status=1
  fi
  echo "== $san: build $((built - start)) s, tests $((ran - built)) s, $found reports, ctest exit $run_status"
  [ "$run_status" -eq 0 ] || status=1
done
exit $status
