#!/usr/bin/env bash
# Configure and build acmo into ./build (or $ACMO_BUILD_DIR). Extra arguments go to cmake.
# Warnings are errors (-DACMO_WERROR=OFF to relax that) and the tests are configured, as
# scripts/test.sh needs them, so that the demo's build and the tests' share every object:
# $ACMO_BUILD_TARGETS (default: everything) names the targets to build, e.g. "acmo".
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${ACMO_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DACMO_WERROR=ON \
  -DACMO_BUILD_TESTS=ON "$@" >/dev/null
targets=()
for t in ${ACMO_BUILD_TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$build_dir" -j "$(nproc)" "${targets[@]}"
