#!/usr/bin/env bash
# Build the libFuzzer targets (tests/fuzz: event JSON, the configuration file, the HTTP request
# path, acmo send's event input) with clang, ASan and UBSan in build-fuzz/, and run each for a
# while on a copy of its corpus (tests/fuzz/corpus/TARGET; what the run adds is kept in build-fuzz/corpus/TARGET, so
# the repo's corpus stays the hand-made seeds). A crash, a sanitizer report, a leak or a failed
# property is a failure; its input is left in build-fuzz/ for `build-fuzz/tests/fuzz/fuzz_X FILE`.
#
#   scripts/test-fuzz.sh [TARGET...]         (default: event config http cli_input)
#
# ACMO_FUZZ_SECONDS: how long each target runs (default 30; hours by hand, e.g. 3600).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(event config http cli_input)
seconds=${ACMO_FUZZ_SECONDS:-30}
dir=${ACMO_FUZZ_BUILD_DIR:-build-fuzz}

command -v clang++ >/dev/null || { echo "acmo: clang++ is missing (scripts/install-deps.sh)" >&2; exit 1; }
CXX=clang++ cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DACMO_FUZZ=ON \
  -DACMO_BUILD_TESTS=OFF >/dev/null
cmake --build "$dir" -j "$(nproc)" --target "${targets[@]/#/fuzz_}" >/dev/null

# The files and the database the targets make for themselves go in a directory of the run's
# own, removed at the end (the targets end when libFuzzer is done, without cleaning up).
scratch=$(mktemp -d "${TMPDIR:-/tmp}/acmo-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

status=0
for t in "${targets[@]}"; do
  seeds=$root/tests/fuzz/corpus/$t
  corpus=$root/$dir/corpus/$t
  mkdir -p "$corpus" "$root/$dir/artifacts"
  dict=()
  [ -f "$root/tests/fuzz/$t.dict" ] && dict=(-dict="$root/tests/fuzz/$t.dict")
  log=$root/$dir/fuzz-$t.log
  rc=0
  # -timeout: an input that takes longer is a hang, reported as a failure.
  TMPDIR=$scratch ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$dir/tests/fuzz/fuzz_$t" "$corpus" "$seeds" "${dict[@]}" -max_total_time="$seconds" \
      -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="$root/$dir/artifacts/$t-" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  inputs=$(find "$corpus" -type f | wc -l)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1)
  echo "fuzz_$t: ${seconds} s, ${execs:-?} executions, $inputs inputs in the corpus, ${cov:-cov: ?}, exit $rc"
  if [ "$rc" -ne 0 ]; then
    echo "fuzz_$t FAILED; the end of $log:"
    tail -n 60 "$log"
    status=1
  fi
done
exit $status
