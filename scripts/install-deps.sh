#!/usr/bin/env bash
# Install everything acmo needs to build, test and benchmark, from Debian 12's archive.
# Idempotent: does nothing when every package is already there. Needs root (or sudo).
set -euo pipefail

packages=(
  build-essential cmake pkg-config ccache
  libsqlite3-dev libssl-dev libcli11-dev libfmt-dev libexpected-dev nlohmann-json3-dev
  libtomlplusplus-dev libpqxx-dev libhiredis-dev catch2 libjemalloc-dev
  scdoc zsh fish
  clang libclang-rt-14-dev
  postgresql redis-server iproute2
  pgbouncer # the tests reach PostgreSQL through a pooler too, in session and in transaction mode
  curl wrk jq netcat-openbsd sqlite3
  prometheus # promtool: the HTTP test lints GET /metrics with `promtool check metrics`
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "acmo: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
