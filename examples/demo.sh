#!/usr/bin/env bash
# A walk through acmo's queue from the shell, using only acmo commands, in a fresh data dir.
#   examples/demo.sh [path/to/acmo]
set -euo pipefail
acmo=${1:-acmo}
export ACMO_DATA_DIR=$(mktemp -d "${TMPDIR:-/tmp}/acmo-demo.XXXXXX")
trap 'rm -rf "$ACMO_DATA_DIR"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Queue a CREATE event (the order id is generated)"
order=$("$acmo" send CREATE --json \
  --data '{"customer_name":"Ada Lovelace","customer_email":"ada@example.com",
           "items":[{"product_id":"p-1","name":"Notebook","quantity":2,"unit_price":12.50}]}' |
  sed -n 's/.*"orderId":"\([^"]*\)".*/\1/p')
echo "order $order queued"

step "Queue its UPDATE and DELETE events: one group, so they stay in order"
"$acmo" send UPDATE --order-id "$order" --data '{"status":"processing"}'
"$acmo" send DELETE --order-id "$order"

step "Send the same UPDATE again with a deduplication id, twice: the second is a duplicate"
"$acmo" send UPDATE --order-id "$order" --data '{"status":"shipped"}' --dedup-id ship-1
"$acmo" send UPDATE --order-id "$order" --data '{"status":"shipped"}' --dedup-id ship-1

step "A bad event is refused before it is queued (exit code 4)"
if "$acmo" send UPDATE --order-id "$order" --data '{"status":"teleported"}'; then
  echo "unexpected: the bad event was accepted" >&2
  exit 1
fi

step "Queue figures"
"$acmo" stats

step "Empty the queue"
"$acmo" purge --yes
"$acmo" stats --json
