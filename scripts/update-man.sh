#!/usr/bin/env bash
# Regenerate the ready-to-read man pages man/acmo.1 and man/acmo.toml.5 from their scdoc
# sources (so that `man ./man/acmo.1` works in a fresh checkout, before any build). Run it after
# editing a man/*.scd; tests/cli/test_docs.sh fails when they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
for page in acmo.1 acmo.toml.5; do
  scdoc <"man/$page.scd" >"man/$page"
done
