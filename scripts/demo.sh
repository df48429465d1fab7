#!/usr/bin/env bash
# Install what acmo needs, build it, and run its main job on the embedded default (SQLite,
# no services): send a few order events into a fresh data dir and show the queue figures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
exec examples/demo.sh build/cli/acmo
