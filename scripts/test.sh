#!/usr/bin/env bash
# The one command that installs what acmo needs, builds it with warnings as errors, starts
# PostgreSQL and Redis on loopback for the tests that need them, and runs every test.
# A missing service is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/install-deps.sh
ACMO_BUILD_DIR=${ACMO_BUILD_DIR:-build} scripts/build.sh

# In CI, the services keep their data in a directory of this run's own, removed at the end:
# nothing an earlier run left (a database's contents, a stale pid file) reaches the tests.
# Services running from the usual directory hold the ports, and are stopped first.
fresh_services=
if [ "${CI:-}" = true ] && [ -z "${ACMO_TEST_SERVICES_DIR:-}" ]; then
  scripts/test-services.sh stop
  fresh_services=$(mktemp -d /tmp/acmo-test-services.XXXXXX)
  export ACMO_TEST_SERVICES_DIR=$fresh_services
fi

# Stop the services however the run ends, keeping the tests' exit status.
trap 'status=$?; "$root/scripts/test-services.sh" stop || true
  [ -z "$fresh_services" ] || rm -rf "$fresh_services"; exit $status' EXIT
eval "$(scripts/test-services.sh start | sed 's/^/export /')"

cd "${ACMO_BUILD_DIR:-build}"
ctest --output-on-failure --timeout 900 "$@"

# The unit and integration tests again under ASan + UBSan and under TSan, and a short
# run of every fuzz target, in CI (CI=true) or when asked (ACMO_EXTRA_TESTS=1), with the
# services still up. By hand: scripts/test-sanitizers.sh [address] [thread], and
# scripts/test-fuzz.sh (ACMO_FUZZ_SECONDS, 30 s a target here).
cd "$root"
if [ "${CI:-}" = true ] || [ -n "${ACMO_EXTRA_TESTS:-}" ]; then
  scripts/test-sanitizers.sh
  ACMO_FUZZ_SECONDS=${ACMO_FUZZ_SECONDS:-30} scripts/test-fuzz.sh
fi
