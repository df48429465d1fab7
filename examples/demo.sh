#!/usr/bin/env bash
# A walk through acmo from the shell, using only acmo commands, in a fresh data dir: events go
# on the queue, the OrderHandler applies them to the orders, and the audit trail shows them.
#   examples/demo.sh [path/to/acmo]
set -euo pipefail
acmo=${1:-acmo}
export ACMO_DATA_DIR=$(mktemp -d "${TMPDIR:-/tmp}/acmo-demo.XXXXXX")
trap 'rm -rf "$ACMO_DATA_DIR"' EXIT

# Headings in bold on a terminal, unless NO_COLOR is set; plain text into a pipe or a file.
if [[ -t 1 && -z ${NO_COLOR:-} ]]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi

step "Queue a CREATE event (the order id is generated)"
order=$("$acmo" send CREATE --json \
  --data '{"customer_name":"Ada Lovelace","customer_email":"ada@example.com",
           "items":[{"product_id":"p-1","name":"Notebook","quantity":2,"unit_price":12.50}]}' |
  sed -n 's/.*"orderId":"\([^"]*\)".*/\1/p')
echo "order $order queued"

step "Queue two status changes: one group, so they are applied in order"
"$acmo" send UPDATE --order-id "$order" --data '{"status":"processing"}'
"$acmo" send UPDATE --order-id "$order" --data '{"status":"shipped"}' --dedup-id ship-1

step "Send the shipping event again with the same deduplication id: it is a duplicate"
"$acmo" send UPDATE --order-id "$order" --data '{"status":"shipped"}' --dedup-id ship-1

step "A bad event is refused before it is queued (exit code 4)"
if "$acmo" send UPDATE --order-id "$order" --data '{"status":"teleported"}'; then
  echo "unexpected: the bad event was accepted" >&2
  exit 1
fi

step "The queue holds three events; nothing is applied yet"
"$acmo" stats

step "The OrderHandler applies what is queued, then stops"
"$acmo" run-handler --once

step "The order, as the handler left it"
"$acmo" orders get "$order"

step "Its audit trail: every applied event, in order"
"$acmo" orders events "$order"

step "Delete it: the order is gone, its events stay"
"$acmo" send DELETE --order-id "$order"
"$acmo" run-handler --once
if "$acmo" orders get "$order" 2>/dev/null; then
  echo "unexpected: the order is still there" >&2
  exit 1
fi
"$acmo" orders events "$order"

step "Queue figures at the end"
"$acmo" stats
