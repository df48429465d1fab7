#!/usr/bin/env bash
# Storage outages through the real binary (issue 6):
#  - a full disk: the data dir on a 4 MiB tmpfs mounted for the test (this needs root, or
#    CAP_SYS_ADMIN; without it these cases are skipped and the reason printed), filled with a
#    file while `acmo serve` runs: POST answers 503 and `acmo send` exits 75, both saying the
#    disk is full; a handler keeps running and dead-letters nothing; the database passes
#    PRAGMA integrity_check; once the space is back the same server accepts events again and
#    every event that was acknowledged is applied exactly once;
#  - a foreign SQLite file, a file that is not SQLite, a truncated and a corrupted acmo
#    database: every command says so and exits with its error code, never a crash.
#   tests/cli/test_outage_storage.sh path/to/acmo
set -uo pipefail
acmo=${1:?usage: $0 path/to/acmo}
work=$(mktemp -d "${TMPDIR:-/tmp}/acmo-storage-test.XXXXXX")
server_pid=''
handler_pid=''
mounted=''
cleanup() {
  [[ -n $server_pid ]] && kill -9 "$server_pid" 2>/dev/null
  [[ -n $handler_pid ]] && kill -9 "$handler_pid" 2>/dev/null
  wait 2>/dev/null
  [[ -n $mounted ]] && umount "$work/disk"
  rm -rf "$work"
}
trap cleanup EXIT
export NO_COLOR=1
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
for tool in curl sqlite3; do
  command -v "$tool" >/dev/null || { echo "not ok - $tool is missing (scripts/install-deps.sh)"; exit 1; }
done
event='{"customer_name":"Ada","customer_email":"ada@example.com","items":[{"product_id":"p","quantity":1,"unit_price":2.5}]}'

# post KEY: POST an event with Idempotency-Key KEY; status in $status, body in $body.
post() {
  local out
  out=$(curl -s --max-time 10 -w ' %{http_code}' -H 'Content-Type: application/json' \
          -H "Idempotency-Key: $1" -d "$event" "http://127.0.0.1:$port/api/orders")
  status=${out##* }
  body=${out% *}
}
order_of() { sed -n 's/.*"orderId":"\([^"]*\)".*/\1/p' <<<"$1"; }
# not_a_crash RC: an exit code of acmo's (docs/commands.md §3), not a signal's (128 + N) or an abort's.
not_a_crash() { [[ $1 =~ ^(0|1|2|3|4|75)$ ]]; }

# --- a full disk ------------------------------------------------------------------------------

mkdir -p "$work/disk"
if mount -t tmpfs -o size=4m,mode=0700 acmo-test-disk "$work/disk" 2>"$work/mount.err"; then
  mounted=1
else
  echo "WARN: the full-disk cases are skipped: mounting a 4 MiB tmpfs failed ($(cat "$work/mount.err")); they need root or CAP_SYS_ADMIN"
fi
if [[ -n $mounted ]]; then
  export ACMO_DATA_DIR="$work/disk/data"
  export ACMO_QUEUE_RETRY_DELAYS="100ms" ACMO_QUEUE_MAX_RETRIES=1000
  start_server --no-handler
  : >"$work/acked"
  for i in $(seq 20); do
    post "before-$i"
    [[ $status == 202 ]] && order_of "$body" >>"$work/acked"
  done
  check "20 events accepted before the disk fills" test "$(wc -l <"$work/acked")" -eq 20

  dd if=/dev/zero of="$work/disk/filler" bs=4k >/dev/null 2>&1
  check "the disk is full ($(df -k "$work/disk" | awk 'NR == 2 {print $4}') kB free)" \
    test "$(df -k "$work/disk" | awk 'NR == 2 {print $4}')" -eq 0
  # The WAL may still have room for a few; the first refusal must be the right one.
  first_refusal=''
  for i in $(seq 500); do
    post "full-$i"
    if [[ $status == 202 ]]; then order_of "$body" >>"$work/acked"; continue; fi
    first_refusal="$status $body"
    break
  done
  check "with the disk full, POST answers 503 unavailable ($first_refusal)" \
    grep -q '^503 .*"code":"unavailable"' <<<"$first_refusal"
  check "and says the disk is full and what to do" grep -q 'disk holding the queue is full.*free some space' <<<"$first_refusal"
  refused=0
  for i in $(seq 5); do post "full-again-$i"; [[ $status == 503 ]] && refused=$((refused + 1)); done
  check "every later POST is refused the same way ($refused of 5), the server runs" \
    test "$refused" -eq 5 -a -n "$(kill -0 "$server_pid" && echo up)"
  err=$("$acmo" send CREATE --data "$event" --dedup-id cli-full 2>&1); rc=$?
  check "acmo send with the disk full exits 75 ($rc)" test "$rc" -eq 75
  check "and says the disk is full" grep -q 'acmo: error: the disk holding the queue is full' <<<"$err"
  "$acmo" run-handler --batch-size 5 >"$work/handler.out" 2>"$work/handler.err" &
  handler_pid=$!
  sleep 2
  check "a handler started with the disk full keeps running" kill -0 "$handler_pid"
  err=$("$acmo" run-handler --once 2>&1); rc=$?
  check "run-handler --once with the disk full: not a crash (exit $rc)" not_a_crash "$rc"
  http_code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/sqs/stats")
  check "reads still answer (GET /sqs/stats: $http_code)" test "$http_code" = 200
  health=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$port/health")
  check "GET /health answers 503 and names the full disk (${health:0:160})" \
    grep -q 'disk holding the queue is full.*"failing":\[[^]]*"queue"\].* 503$' <<<"$health"
  ready=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health/ready")
  live=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health/live")
  check "  /health/ready answers 503 (the queue takes no events), /health/live 200 ($ready, $live)" \
    test "$ready/$live" = 503/200
  check "the handler's log says the disk is full and that the events wait ($(grep -c . "$work/handler.err") lines)" \
    grep -q 'warn.*handler: .*disk holding the queue is full.*the events of a failed batch go back to the queue' "$work/handler.err"

  rm -f "$work/disk/filler"
  check "PRAGMA integrity_check after the failed writes: ok" \
    test "$(sqlite3 "$ACMO_DATA_DIR/acmo.db" 'PRAGMA integrity_check')" = ok
  post "full-$i" # the client's retry of the refused event
  check "space back: the same server accepts the retried event ($status)" test "$status" = 202
  [[ $status == 202 ]] && order_of "$body" >>"$work/acked"
  out=$("$acmo" --json send CREATE --data "$event" --dedup-id cli-full); rc=$?
  check "space back: acmo send works again ($rc)" test "$rc" -eq 0
  order_of "$out" >>"$work/acked"
  for _ in $(seq 100); do
    [[ $("$acmo" --json stats | sed -n 's/.*"store":{[^}]*"orders":\([0-9]*\).*/\1/p') == "$(wc -l <"$work/acked")" ]] && break
    sleep 0.1
  done
  health=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$port/health")
  check "space back: GET /health answers 200 (${health:0:120})" grep -q '"status":"ok".* 200$' <<<"$health"
  kill -TERM "$handler_pid"; wait "$handler_pid"; rc=$?; handler_pid=''
  check "the handler that ran through the outage stops cleanly (exit $rc)" test "$rc" -eq 0
  check "and its log says when it was applying events again" \
    grep -q 'handler: applying events again after' "$work/handler.err"
  check "and it dead-lettered nothing" grep -q 'dead-lettered 0' "$work/handler.out"
  "$acmo" -q run-handler --once
  acked=$(sort -u "$work/acked" | wc -l)
  total=$("$acmo" --json orders list --limit 1 | sed -n 's/.*"total":\([0-9]*\).*/\1/p')
  missing=0
  while read -r id; do "$acmo" -q orders get "$id" >/dev/null 2>&1 || missing=$((missing + 1)); done <"$work/acked"
  check "every acknowledged event is applied exactly once ($acked acknowledged, $total orders, $missing missing)" \
    test "$total" -eq "$acked" -a "$missing" -eq 0 -a "$acked" -eq "$(wc -l <"$work/acked")"
  check "PRAGMA integrity_check at the end: ok" \
    test "$(sqlite3 "$ACMO_DATA_DIR/acmo.db" 'PRAGMA integrity_check')" = ok
  kill -TERM "$server_pid"; wait "$server_pid"; rc=$?; server_pid=''
  check "the server that lived through the full disk stops cleanly (exit $rc)" test "$rc" -eq 0

  # A process that starts while the disk is full (it cannot make the WAL's files).
  export ACMO_DATA_DIR="$work/disk/fresh"
  "$acmo" -q send CREATE --data "$event" >/dev/null
  rm -f "$ACMO_DATA_DIR"/acmo.db-wal "$ACMO_DATA_DIR"/acmo.db-shm
  dd if=/dev/zero of="$work/disk/filler" bs=4k >/dev/null 2>&1
  err=$("$acmo" send CREATE --data "$event" 2>&1); rc=$?
  check "acmo send started on a full disk exits 75 ($rc)" test "$rc" -eq 75
  check "and says the disk is full ($err)" grep -q 'acmo: error: the disk holding the queue is full' <<<"$err"
  "$acmo" serve --listen 127.0.0.1:0 >"$work/serve-full.log" 2>&1; rc=$?
  check "acmo serve started on a full disk exits 75 ($rc)" test "$rc" -eq 75
  rm -f "$work/disk/filler"
  check "space back: acmo send works ($("$acmo" -q send CREATE --data "$event" >/dev/null 2>&1; echo $?))" \
    test "$("$acmo" --json stats | sed -n 's/.*"sent":\([0-9]*\).*/\1/p')" = 2
  umount "$work/disk" && mounted=''
  unset ACMO_QUEUE_RETRY_DELAYS ACMO_QUEUE_MAX_RETRIES
fi

# --- foreign, garbage, truncated and corrupted database files -----------------------------------

# every_command NAME WORDS [damaged]: the commands a user would run on the data dir
# $ACMO_DATA_DIR. Each must exit with one of acmo's codes (never a crash), and when it fails,
# with "acmo: error:" and one of WORDS. Without "damaged", each must fail (the file cannot be
# opened at all); with it (a database damaged in places), a command that touches no damaged
# page may work, but some must find the damage.
every_command() {
  local name=$1 words=$2 damaged=${3:-} rc err cmd found=0
  for cmd in "send CREATE --data $event" "stats" "run-handler --once" "orders list --limit 1000" \
             "dlq list" "serve --listen 127.0.0.1:0"; do
    # shellcheck disable=SC2086
    err=$(timeout 10 "$acmo" $cmd 2>&1 >/dev/null); rc=$?
    [[ $rc == 124 && $cmd == serve* && -n $damaged ]] && rc=0 # it ran until stopped
    if [[ $rc != 0 ]] && not_a_crash "$rc" && grep -q "acmo: error: .*\($words\)" <<<"$err"; then
      found=$((found + 1))
      ok "$name: acmo ${cmd%% *} exits $rc: ${err:0:150}"
    elif [[ $rc == 0 && -n $damaged ]]; then
      ok "$name: acmo ${cmd%% *} exits 0 (it touched no damaged page)"
    else
      not_ok "$name: acmo ${cmd%% *} exits $rc: $err"
    fi
  done
  [[ -n $damaged ]] && check "$name: the damage is found ($found of 6 commands)" test "$found" -gt 0
  return 0
}
# serve_on_damage NAME: acmo serve on the damaged database answers every read with 200 or a
# JSON error, and keeps running.
serve_on_damage() {
  local path code bad=0
  start_server --no-handler
  for path in /health /sqs/stats "/api/orders?limit=1000" /api/orders/ord_7 /handler/stats /metrics; do
    code=$(curl -s -o "$work/answer" -w '%{http_code}' "http://127.0.0.1:$port$path")
    # (/health's 503 is its own document: {"checks": ..., "status": "unavailable", ...})
    if [[ $code != 200 && ! ( $code == 5* && $(cat "$work/answer") == '{"error":'* ) && $code != 404
          && ! ( $path == /health && $code == 503 && $(cat "$work/answer") == *'"status":"unavailable"'* ) ]]; then
      bad=$((bad + 1)); echo "# $path: $code $(head -c 200 "$work/answer")"
    fi
  done
  check "$1: acmo serve answers every read with 200, 404 or a JSON error, and keeps running" \
    test "$bad" -eq 0 -a -n "$(kill -0 "$server_pid" && echo up)"
  kill -TERM "$server_pid"; wait "$server_pid"; server_pid=''
}
export ACMO_DATA_DIR="$work/files"
mkdir -p "$ACMO_DATA_DIR"
db=$ACMO_DATA_DIR/acmo.db

sqlite3 "$db" 'CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO customers VALUES (1, "Ada");'
sum=$(sha256sum <"$db")
every_command "a foreign SQLite file" "not an acmo database"
check "the foreign file is left as it was" test "$(sha256sum <"$db")" = "$sum"

rm -f "$db"*
for _ in $(seq 200); do echo "this is not an SQLite database, it is a text file"; done >"$db"
every_command "a text file" "not an SQLite file\|not a database"

# A real acmo database with orders, then damaged.
make_db() {
  rm -f "$db"*
  for i in $(seq 300); do
    echo "{\"type\":\"CREATE\",\"orderId\":\"ord_$i\",\"data\":$event}"
  done | "$acmo" -q send --file - && "$acmo" -q run-handler --once
  sqlite3 "$db" 'PRAGMA wal_checkpoint(TRUNCATE)' >/dev/null
}
make_db
size=$(stat -c %s "$db")
truncate -s $((size / 2)) "$db"
every_command "an acmo database cut to half its size ($size bytes)" "malformed\|corrupt\|damaged\|not a database\|disk image"

make_db
pages=$(( $(stat -c %s "$db") / 4096 ))
# Noise over every page but the first (the header stays valid, so SQLite opens the file).
for p in $(seq 1 $((pages - 1))); do
  head -c 512 /dev/urandom | dd of="$db" bs=1 seek=$((p * 4096 + 100)) conv=notrunc status=none
done
every_command "an acmo database with noise over its pages ($pages pages)" "malformed\|corrupt\|damaged\|not a database\|disk image" damaged
serve_on_damage "an acmo database with noise over its pages"

# Pages overwritten under a running server: once any process finds the damage (a read, or the
# integrity check of /health), /health answers 503 and writes are refused, never acknowledged.
# The database restored from a backup, the next start checks it and takes writes again.
make_db
cp "$db" "$work/backup.db"
start_server
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")
check "a running server on a sound database is healthy ($code)" test "$code" = 200
pages=$(( $(stat -c %s "$db") / 4096 ))
for p in $(seq 1 $((pages - 1))); do
  head -c 512 /dev/urandom | dd of="$db" bs=1 seek=$((p * 4096 + 100)) conv=notrunc status=none
done
# The integrity check runs again after 100 times as long as it last took, and at least a second
# later: a second for a database this small, longer on a slow or instrumented build. Ask /health
# until it answers 503, for at most 20 seconds.
for _ in $(seq 40); do
  sleep 0.5
  code=$(curl -s -o "$work/answer" -w '%{http_code}' "http://127.0.0.1:$port/health")
  [[ $code == 503 ]] && break
done
check "pages overwritten while it runs: /health answers 503 ($code)" test "$code" = 503
check "  saying the database is damaged" grep -q '"queue":{[^}]*"error":"the queue database .* is damaged' "$work/answer"
sent_before=$(sqlite3 "$work/backup.db" 'SELECT sent FROM queues WHERE id = 1' 2>/dev/null)
code=$(curl -s -o "$work/answer" -w '%{http_code}' -X POST "http://127.0.0.1:$port/api/orders" \
         -H 'Content-Type: application/json' -d "$event")
check "  a POST is refused, not acknowledged ($code)" test "$code" = 503
check "  saying why" grep -q 'takes no writes to it until it is restored' "$work/answer"
err=$("$acmo" send CREATE --data "$event" 2>&1); rc=$?
check "  acmo send is refused too (exit $rc), saying why" \
  test "$rc" -ne 0 -a -n "$(grep 'is damaged' <<<"$err")"
check "  the mark is beside the database" test -s "$db-damaged"
kill -TERM "$server_pid"; wait "$server_pid"; server_pid=''
cp "$work/backup.db" "$db"
rm -f "$db-wal" "$db-shm"
start_server
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")
check "restored from the backup: the next start finds it sound, removes the mark, is healthy ($code)" \
  test "$code" = 200 -a ! -e "$db-damaged"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port/api/orders" \
         -H 'Content-Type: application/json' -d "$event")
check "  and takes writes again ($code)" test "$code" = 202
kill -TERM "$server_pid"; wait "$server_pid"; server_pid=''

make_db
head -c 100 /dev/urandom | dd of="$db" bs=1 seek=0 conv=notrunc status=none
every_command "an acmo database whose header is noise" "not an SQLite file\|not a database\|malformed\|corrupt\|damaged\|disk image"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
