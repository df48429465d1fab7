#!/usr/bin/env bash
# Install what acmo needs, build it, and run its main job on the embedded default (SQLite,
# no services): `acmo demo`, the narrated walk through the pipeline, in a temporary data dir;
# it exits non-zero if a step did not do what it said.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
ACMO_BUILD_TARGETS=acmo scripts/build.sh # only what the demo runs; scripts/test.sh adds the rest
exec build/cli/acmo demo
