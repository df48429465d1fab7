#!/usr/bin/env bash
# Daemon mode of the long-running commands, through the real binary: run-handler --daemon and
# serve --daemon detach, write and lock their pid file, log to a file that SIGHUP reopens, stop
# gracefully on SIGTERM and remove the pid file; several handler daemons share a data dir; the
# errors a user can make are refused with the right exit code. Also `acmo demo` and the
# examples (events.jsonl, the systemd units' command lines).
#   tests/cli/test_daemon.sh path/to/acmo [source dir]
set -uo pipefail
acmo=${1:?usage: $0 path/to/acmo [source dir]}
src=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
acmo=$(cd "$(dirname "$acmo")" && pwd)/$(basename "$acmo")
work=$(mktemp -d "${TMPDIR:-/tmp}/acmo-daemon-test.XXXXXX")
export ACMO_TEST_RUN=$work
pids=()
cleanup() {
  kill_own 9 "${pids[@]}"
  rm -rf "$work"
}
trap cleanup EXIT
export ACMO_DATA_DIR="$work/data"
export NO_COLOR=1
unset ACMO_CONFIG
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

alive() { kill -0 "$1" 2>/dev/null; }
# wait_for SECONDS COMMAND...: retry COMMAND every 50 ms until it succeeds or time is up.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do (( SECONDS < deadline )) || return 1; sleep 0.05; done
}
gone() { ! alive "$1"; }
pid_of() { tr -d '\n' <"$1" 2>/dev/null; }

# --- run-handler --daemon -----------------------------------------------------------------------

out=$("$acmo" run-handler --daemon --pid-file "$work/h1.pid" --log-file "$work/h1.log" 2>&1)
rc=$?
pid=$(pid_of "$work/h1.pid")
[[ -n $pid ]] && pids+=("$pid")
check "run-handler --daemon exits 0 and says it started (got $rc: $out)" \
  test "$rc" = 0 -a -n "$pid"
check "the message names the pid, the log and the pid file" \
  grep -qF "started as pid $pid; log $work/h1.log, pid file $work/h1.pid" <<<"$out"
check "the daemon runs after its parent exited" alive "$pid"
check "the daemon is in a session of its own (no terminal)" \
  test "$(ps -o sid= -p "$pid" | tr -d ' ')" = "$pid" -o "$(ps -o tty= -p "$pid" | tr -d ' ')" = "?"
check "its log says what it handles" grep -qF "handling queue orders" "$work/h1.log"

sent=$("$acmo" --json send CREATE --data '{"customer_name":"Ada","customer_email":"ada@example.com","items":[]}')
order=$(json_field "$sent" orderId)
check "the daemon applies a sent event" wait_for 10 "$acmo" -q orders get "$order"

# A second daemon with the same pid file is refused; the first keeps running.
out=$("$acmo" run-handler --daemon --pid-file "$work/h1.pid" --log-file "$work/h1.log" 2>&1)
rc=$?
check "a second daemon with the same pid file is refused with exit 1 (got $rc: $out)" \
  test "$rc" = 1
check "the refusal names the running pid" grep -qF "pid $pid" <<<"$out"
check "the first daemon still runs" alive "$pid"

# Several handler daemons on one data dir, with the default pid files.
out=$("$acmo" run-handler --daemon --log-file "$work/h2.log" 2>&1)
rc=$?
pid2=$(sed -n 's/.*started as pid \([0-9]*\);.*/\1/p' <<<"$out")
[[ -n $pid2 ]] && pids+=("$pid2")
check "a second handler daemon on the same data dir starts (got $rc: $out)" \
  test "$rc" = 0 -a -n "$pid2"
check "its default pid file is in the data dir, named after its pid, one per daemon" \
  grep -qx "$pid2" "$ACMO_DATA_DIR/acmo-run-handler.$pid2.pid"
check "  and acmo says which" grep -qF "pid file $ACMO_DATA_DIR/acmo-run-handler.$pid2.pid" <<<"$out"
running_two() { [[ $("$acmo" --json stats | grep -o '"state":"running"' | wc -l) -ge 2 ]]; }
check "acmo stats lists both handlers as running" wait_for 5 running_two

# SIGHUP reopens the log: move it away (as logrotate does), signal, and a new file appears.
mv "$work/h1.log" "$work/h1.log.1"
kill -HUP "$pid"
check "SIGHUP makes the daemon reopen its log file" wait_for 5 test -s "$work/h1.log"
check "the new log says it was reopened" grep -qF "log file reopened" "$work/h1.log"
check "the daemon survives SIGHUP" alive "$pid"

# SIGTERM stops it gracefully: it exits, logs what it did and removes its pid file.
kill -TERM "$pid"
check "SIGTERM stops the daemon" wait_for 10 gone "$pid"
check "it removed its pid file" test ! -e "$work/h1.pid"
check "its log ends with what it did" grep -qE "stopped: applied [0-9]+" "$work/h1.log"
kill -TERM "$pid2"
check "SIGTERM stops the second daemon" wait_for 10 gone "$pid2"

# Mistakes.
"$acmo" run-handler --once --daemon >/dev/null 2>&1
check "--once with --daemon is a usage error (exit 2)" test $? = 2
"$acmo" run-handler --pid-file "$work/x.pid" --once >/dev/null 2>&1
check "--pid-file without --daemon is a usage error (exit 2)" test $? = 2
out=$("$acmo" run-handler --daemon --log-file "$work/no/such/dir/h.log" 2>&1)
rc=$?
check "a log file that cannot be opened is refused at once with exit 1 (got $rc)" test "$rc" = 1
check "the error names the log file" grep -qF "$work/no/such/dir/h.log" <<<"$out"
out=$(ACMO_STORE_BACKEND=postgres ACMO_STORE_URL=postgresql://nobody@127.0.0.1:1/none \
  ACMO_STORE_CONNECT_TIMEOUT=1s "$acmo" run-handler --daemon --pid-file "$work/h3.pid" \
  --log-file "$work/h3.log" 2>&1)
rc=$?
pid3=$(pid_of "$work/h3.pid")
[[ -n $pid3 ]] && pids+=("$pid3")
check "a handler daemon whose store does not answer yet starts and waits for it (got $rc: $out)" \
  test "$rc" = 0 -a -n "$pid3"
check "the starting command warns that the store does not answer" \
  grep -qE "warning: PostgreSQL .* not answering.*retrying" <<<"$out"
check "the daemon keeps retrying (its log says so)" \
  wait_for 5 grep -q "retrying until it answers" "$work/h3.log"
kill -TERM "${pid3:-0}" 2>/dev/null
check "SIGTERM stops it while it waits, and its pid file goes" \
  bash -c 'for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || exit 0; sleep 0.05; done; exit 1' _ "${pid3:-0}"
check "  (no pid file left)" test ! -e "$work/h3.pid"
"$acmo" run-handler --once --batch-size 5 >/dev/null 2>&1 <<<"" &&
out=$(ACMO_STORE_BACKEND=postgres ACMO_STORE_URL=postgresql://nobody@127.0.0.1:1/none \
  ACMO_STORE_CONNECT_TIMEOUT=1s "$acmo" run-handler --once 2>&1)
rc=$?
check "run-handler --once with a store that does not answer exits 75 at once (got $rc)" test "$rc" = 75

# --- serve --daemon -------------------------------------------------------------------------------

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
out=$("$acmo" serve --daemon --listen "127.0.0.1:$port" 2>&1)
rc=$?
spid=$(pid_of "$ACMO_DATA_DIR/acmo-serve.pid")
[[ -n $spid ]] && pids+=("$spid")
check "serve --daemon exits 0 with a pid file in the data dir (got $rc: $out)" \
  test "$rc" = 0 -a -n "$spid"
check "the daemon answers /health" \
  wait_for 5 curl -sf -o /dev/null "http://127.0.0.1:$port/health"
check "its log is in the data dir" grep -qF "serving http://127.0.0.1:$port" "$ACMO_DATA_DIR/acmo-serve.log"
out=$("$acmo" serve --daemon --listen "127.0.0.1:$port" 2>&1)
check "a second serve daemon is refused: the pid file is held (exit 1)" test $? = 1
out=$("$acmo" serve --daemon --listen "127.0.0.1:$port" --pid-file "$work/s2.pid" 2>&1)
rc=$?
check "a serve daemon on a port in use reports it to the starting command (exit 1, got $rc: $out)" \
  test "$rc" = 1
check "  saying that another process listens there" grep -q "another process is listening there" <<<"$out"
# In the foreground: a port in use is temporary (75); an address that is not this machine's
# (192.0.2.1 is TEST-NET-1, never assigned) is a configuration error (2).
out=$(timeout 10 "$acmo" serve --listen "127.0.0.1:$port" 2>&1)
check "serve on a port in use exits 75 (got $?: $out)" test $? = 75
out=$(timeout 10 "$acmo" serve --listen "192.0.2.1:$port" 2>&1)
rc=$?
check "serve on an address of another machine exits 2 (got $rc: $out)" test "$rc" = 2
check "  and says so" grep -q "192.0.2.1 is not an address of this machine" <<<"$out"
kill -TERM "$spid"
check "SIGTERM stops the serve daemon" wait_for 10 gone "$spid"
check "and its pid file is gone" test ! -e "$ACMO_DATA_DIR/acmo-serve.pid"

# --- send --wait and stats --watch -----------------------------------------------------------------

export ACMO_DATA_DIR="$work/wait"
create='{"customer_name":"Ada","customer_email":"ada@example.com","items":[]}'
out=$("$acmo" send CREATE --order-id w1 --data "$create" --wait=1 2>&1)
check "send --wait without a handler gives up with exit 75 and says it is still queued" \
  bash -c '[[ $1 == 75 && $2 == *"still queued"* ]]' _ "$?" "$out"
out=$("$acmo" run-handler --daemon --pid-file "$work/w.pid" --log-file "$work/w.log" 2>&1)
wpid=$(pid_of "$work/w.pid")
[[ -n $wpid ]] && pids+=("$wpid")
out=$("$acmo" send UPDATE --order-id w1 --data '{"status":"processing"}' --wait 2>&1)
check "send --wait prints the outcome once the handler applied it (exit 0): $out" \
  bash -c '[[ $1 == 0 && $2 == *"applied: order w1 is processing (version 2)"* ]]' _ "$?" "$out"
out=$("$acmo" --json send UPDATE --order-id w1 --data '{"status":"pending"}' --wait 10)
check "send --wait 10 reports a dead-lettered event with its reason (exit 4)" \
  bash -c '[[ $1 == 4 && $2 == *"\"state\":\"deadLettered\""* && $2 == *"cannot become pending"* ]]' _ "$?" "$out"
"$acmo" send --file "$src/examples/events.jsonl" --wait >/dev/null 2>&1
check "send --file --wait is a usage error (exit 2)" test $? = 2
"$acmo" send DELETE --order-id w1 --wait=0 >/dev/null 2>&1
check "send --wait=0 is a usage error (exit 2)" test $? = 2
"$acmo" --json stats --watch 1 >"$work/watch.jsonl" &
watcher=$!
sleep 2.5
kill -INT "$watcher"
wait "$watcher"
rc=$?
lines=$(grep -c '"queue":' "$work/watch.jsonl")
check "stats --watch 1 --json prints a document per second and exits 0 on SIGINT (got $lines lines, exit $rc)" \
  bash -c '[[ $1 -ge 2 && $1 -le 4 && $2 == 0 ]]' _ "$lines" "$rc"
kill -TERM "$wpid" 2>/dev/null
wait_for 10 gone "$wpid"

# --- dlq redrive in chunks --------------------------------------------------------------------------

export ACMO_DATA_DIR="$work/redrive"
for i in $(seq 2500); do
  printf '{"type":"UPDATE","orderId":"none-%d","data":{"status":"shipped"}}\n' "$i"
done >"$work/unknown.jsonl"
"$acmo" -q send --file "$work/unknown.jsonl"
"$acmo" -q run-handler --once --batch-size 100
out=$("$acmo" --json dlq redrive)
check "dlq redrive moves all 2,500 dead-lettered messages (in chunks of 1,000): $out" \
  grep -qF '{"redriven":2500}' <<<"$out"
"$acmo" -q run-handler --once --batch-size 100
order=$("$acmo" --json dlq list --limit 1000 --offset 1000 | grep -oE '"orderId":"none-[0-9]+"' |
  grep -oE 'none-[0-9]+' | tr '\n' ' ')
check "the redriven messages kept their original order across chunks" \
  test "$order" = "$(seq -f 'none-%g' 1001 2000 | tr '\n' ' ')"

# --- systemd notification (Type=notify) -----------------------------------------------------------

# notify_run SOCKET ACMO-ARGS...: run acmo in the foreground with NOTIFY_SOCKET=SOCKET (a path,
# or @name for an abstract socket), as systemd does; once it says READY=1, send SIGTERM. Prints
# the messages it sent, then "exit N".
notify_run() {
  timeout 30 python3 - "$@" <<'PY'
import os, signal, socket, subprocess, sys
where, args = sys.argv[1], sys.argv[2:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + where[1:] if where.startswith("@") else where)
s.settimeout(15)
p = subprocess.Popen(args, env=dict(os.environ, NOTIFY_SOCKET=where),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    ready = s.recv(4096).decode()
    print(ready.replace("\n", " "))
    p.send_signal(signal.SIGTERM)
    print(s.recv(4096).decode().replace("\n", " "))
finally:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    print("exit", p.wait(timeout=10))
PY
}
export ACMO_DATA_DIR="$work/notify"
out=$(notify_run "$work/notify.sock" "$acmo" run-handler)
check "run-handler tells systemd it is ready, with its pid" grep -qE "^READY=1 MAINPID=[0-9]+ STATUS=running$" <<<"$out"
check "  then that it is stopping, on SIGTERM, and exits 0 ($out)" \
  bash -c 'grep -q "^STOPPING=1" <<<"$1" && grep -qx "exit 0" <<<"$1"' _ "$out"
out=$(notify_run "@acmo-test-notify-$$" "$acmo" serve --listen 127.0.0.1:0)
check "serve does the same, to an abstract socket ($out)" \
  bash -c 'grep -q "^READY=1 " <<<"$1" && grep -q "^STOPPING=1" <<<"$1" && grep -qx "exit 0" <<<"$1"' _ "$out"

# --- acmo demo ------------------------------------------------------------------------------------

out=$(ACMO_DATA_DIR= "$acmo" demo 2>&1)
rc=$?
check "acmo demo exits 0: every step did what it said (got $rc)" test "$rc" = 0
check "acmo demo narrates and checks each step" \
  bash -c 'grep -c "^   ok " <<<"$1" | grep -qE "^(1[5-9]|[2-9][0-9])$"' _ "$out"
tmpdir=$(sed -n 's/^Data dir: \(.*\) (temporary.*/\1/p' <<<"$out")
check "its temporary data dir is removed at the end" test -n "$tmpdir" -a ! -e "${tmpdir:-/nonexistent}"
json=$(ACMO_DATA_DIR= "$acmo" --json demo --keep)
kept=$(sed -n 's/.*"dataDir":"\([^"]*\)".*/\1/p' <<<"$json")
check "acmo --json demo --keep reports ok and keeps its data dir" \
  bash -c '[[ $1 == *"\"ok\":true"* && -d $2 ]]' _ "$json" "$kept"
check "the kept data dir holds the demo's orders" \
  bash -c '"$1" --data-dir "$2" --json orders list | grep -q "Ada Lovelace"' _ "$acmo" "$kept"
[[ -n $kept && $kept == */acmo-demo.* ]] && rm -rf "$kept"
"$acmo" --data-dir "$work/demo-here" -q demo
check "acmo demo --data-dir uses and leaves that directory" test -e "$work/demo-here/acmo.db"

# --- examples --------------------------------------------------------------------------------------

export ACMO_DATA_DIR="$work/examples"
out=$("$acmo" --json send --file "$src/examples/events.jsonl")
check "examples/events.jsonl: every event is sent" grep -qF '{"duplicates":0,"failed":0,"sent":9}' <<<"$out"
"$acmo" -q run-handler --once
check "examples/events.jsonl: ord_1001 ends delivered" \
  bash -c '"$1" --json orders get ord_1001 | grep -qF "\"status\":\"delivered\""' _ "$acmo"
check "examples/events.jsonl: ord_1002 ends cancelled" \
  bash -c '"$1" --json orders get ord_1002 | grep -qF "\"status\":\"cancelled\""' _ "$acmo"
"$acmo" -q orders get ord_1003 2>/dev/null
check "examples/events.jsonl: ord_1003 is deleted (exit 3)" test $? = 3
check "examples/events.jsonl: nothing dead-lettered" \
  bash -c '"$1" --json stats | grep -qF "\"deadLettered\":0"' _ "$acmo"
for unit in "$src"/examples/*.service; do
  cmdline=$(sed -n 's|^ExecStart=[^ ]*/acmo ||p' "$unit")
  # The unit's command line, with the config file it names replaced by the example.
  read -ra args <<<"${cmdline//\/etc\/acmo\/acmo.toml/$src/examples/acmo.toml}"
  "$acmo" "${args[@]}" --help >/dev/null 2>&1
  check "$(basename "$unit"): its ExecStart is a valid acmo command line ($cmdline)" test $? = 0
  check "$(basename "$unit"): runs in the foreground and says when it is ready (Type=notify, no --daemon)" \
    bash -c 'grep -qx "Type=notify" "$1" && ! grep "^ExecStart=" "$1" | grep -q -- "--daemon"' _ "$unit"
done

# --- a handler stopped with the write lock held, and one stopped with Ctrl-Z -------------------
# SIGSTOP cannot be caught: a handler stopped in the middle of its write transaction keeps every
# writer waiting. Readers go on, writers say who holds the lock and give up after
# queue.busy_timeout, and /health says why it is not ready. SIGTSTP (Ctrl-Z) is caught: the
# transaction in hand commits first, so writers never wait for a stopped process.
export ACMO_DATA_DIR="$work/stopped"
for i in $(seq 30000); do
  printf '{"type":"CREATE","orderId":"ord_s%05d","data":{"customer_name":"S","customer_email":"s@example.com","items":[]}}\n' "$i"
done >"$work/stop-events.jsonl"
"$acmo" -q send --file "$work/stop-events.jsonl"
# One event a transaction, so that the handler is still busy, and nearly always inside a
# transaction, for the whole loop below: with the default batch it could apply all 30,000
# in under a second and be found idle by every try.
"$acmo" run-handler --batch-size 1 2>"$work/stopped-handler.log" &
handler=$!
pids+=("$handler")
# Past its start (it has opened the queue and the store once it says it is handling the
# queue): stopped while SQLite sets up the database's shared memory, it would keep every
# other process from opening the database at all, which is not what this part tests.
wait_for 10 grep -q "handling queue" "$work/stopped-handler.log"
# Stop it until it is stopped inside a transaction: a send then cannot commit at once.
locked=0
for try in $(seq 40); do
  kill -STOP "$handler"
  if ! ACMO_QUEUE_BUSY_TIMEOUT=300ms "$acmo" -q send CREATE --order-id "ord_probe$try" --data "$create" 2>/dev/null; then
    locked=1
    break
  fi
  kill -CONT "$handler"
  sleep 0.0$((RANDOM % 9))
done
check "a handler stopped (SIGSTOP) inside its write transaction holds the lock (try $try)" test "$locked" = 1
started=$(date +%s%N)
out=$("$acmo" --json stats 2>&1); rc=$?
ms=$(( ($(date +%s%N) - started) / 1000000 ))
why=''
[[ $rc -ne 0 ]] && why=": ${out:0:300}"
check "  acmo stats still reads meanwhile (exit $rc, ${ms} ms$why)" test "$rc" -eq 0 -a "$ms" -lt 3000
err=$(ACMO_QUEUE_BUSY_TIMEOUT=2s "$acmo" send CREATE --order-id ord_x --data "$create" 2>&1); rc=$?
check "  acmo send gives up after queue.busy_timeout with exit 75 (got $rc)" test "$rc" -eq 75
check "  it said while waiting who holds the lock" \
  grep -q "acmo: warning: waiting for the queue database's write lock, held by pid $handler (acmo run-handler --batch-size 1), which is stopped" <<<"$err"
check "  and its error names the holder and how to resume it" \
  grep -q "acmo: error: the queue database's write lock stayed held for 2 s (queue.busy_timeout) by pid $handler (acmo run-handler --batch-size 1), which is stopped (Ctrl-Z or SIGSTOP: \`kill -CONT $handler\` resumes it)" <<<"$err"
"$acmo" serve --no-handler --listen 127.0.0.1:0 2>"$work/stopped-serve.log" &
server=$!
pids+=("$server")
port=''
for _ in $(seq 200); do
  port=$(sed -n 's|.*serving http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/stopped-serve.log" | head -n 1)
  [[ -n $port ]] && break
  sleep 0.05
done
health=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$port/health")
check "  /health answers 503 naming the stopped holder (${health: -3})" \
  bash -c '[[ $1 == *" 503" && $1 == *"write lock is held by pid $2 (acmo run-handler --batch-size 1), which is stopped"* ]]' _ "$health" "$handler"
kill -CONT "$handler"
wait_for 5 bash -c '[[ $(curl -s -o /dev/null -w "%{http_code}" "http://127.0.0.1:$1/health") == 200 ]]' _ "$port"
check "  once it is continued, /health answers 200 again" test $? = 0
check "  and a send goes through" "$acmo" -q send CREATE --order-id ord_after_cont --data "$create"
# Ctrl-Z, ten times while it works: every send meanwhile commits at once.
quick=0
for try in $(seq 10); do
  kill -TSTP "$handler"
  wait_for 2 bash -c '[[ $(awk "{print \$3}" /proc/$1/stat) == T ]]' _ "$handler"
  ACMO_QUEUE_BUSY_TIMEOUT=500ms "$acmo" -q send CREATE --order-id "ord_tstp$try" --data "$create" 2>/dev/null && quick=$((quick + 1))
  kill -CONT "$handler"
  sleep 0.0$((RANDOM % 9))
done
check "Ctrl-Z (SIGTSTP) stops a handler between transactions: $quick of 10 sends while it was stopped committed" \
  test "$quick" = 10
kill -TERM "$server" "$handler"
wait "$server" "$handler"
check "the handler and the server stop cleanly after all that" test $? = 0

# --- a process stopped while it holds a lock of the WAL index -----------------------------------
# Checkpoints, restarts of the WAL and recoveries lock parts of the WAL index exclusively for a
# moment. A process stopped in that moment keeps every other one from reading the database:
# SQLite gives up after about 10 s. The error says who and how to resume it. A helper with the
# database open takes the read marks' locks (bytes 123 to 127 of the -shm) as a checkpoint
# does, and stops itself.
export ACMO_DATA_DIR="$work/shm-locked"
"$acmo" -q send CREATE --order-id ord_shm --data "$create"
python3 - "$ACMO_DATA_DIR/acmo.db" <<'PY' &
import fcntl, os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("SELECT count(*) FROM sqlite_master").fetchall()  # maps the WAL index
fd = os.open(sys.argv[1] + "-shm", os.O_RDWR)  # never closed: that would drop SQLite's locks
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 123)
os.kill(os.getpid(), signal.SIGSTOP)
PY
holder=$!
pids+=("$holder")
wait_for 5 bash -c '[[ $(awk "{print \$3}" /proc/$1/stat) == T ]]' _ "$holder"
err=$("$acmo" stats 2>&1); rc=$?
check "a process stopped holding the WAL index's locks: stats gives up with exit 75 (got $rc)" \
  test "$rc" -eq 75
check "  naming that process and how to resume it" \
  grep -qF "WAL index is locked by pid $holder (python3 - $ACMO_DATA_DIR/acmo.db), which is stopped (Ctrl-Z or SIGSTOP: \`kill -CONT $holder\` resumes it)" <<<"$err"
kill -CONT "$holder"
wait "$holder"
check "  once it has gone on and exited, stats reads again" "$acmo" -q stats
export ACMO_DATA_DIR="$work/data"

# --- the log in JSON: every line an object, with stable fields --------------------------------

export ACMO_DATA_DIR="$work/jsonlog"
port=$((21000 + RANDOM % 5000))
ACMO_LOG_FORMAT=json ACMO_LOG_LEVEL=debug ACMO_LOG_ACCESS=true \
  "$acmo" serve --listen "127.0.0.1:$port" --daemon --log-file "$work/json.log" >/dev/null 2>&1
server=$(pid_of "$ACMO_DATA_DIR/acmo-serve.pid")
[[ -n $server ]] && pids+=("$server")
check "serve --daemon with log.format = json, log.level = debug, log.access = true starts" \
  wait_for 10 curl -fsS -o /dev/null "http://127.0.0.1:$port/health/live"
create='{"customer_name":"Ada","customer_email":"ada@example.com","items":[{"product_id":"p","quantity":1,"unit_price":2}]}'
curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' -d "$create" \
  "http://127.0.0.1:$port/api/orders"
"$acmo" -q send CREATE --order-id ord_j1 --data "$create"
check "the CREATE is applied" wait_for 10 bash -c '"$1" --json orders get ord_j1 >/dev/null 2>&1' _ "$acmo"
# send --file sends unchecked: the handler dead-letters the UPDATE of an order deleted before.
printf '%s\n' '{"type":"DELETE","orderId":"ord_j1"}' \
  '{"type":"UPDATE","orderId":"ord_j1","data":{"status":"shipped"}}' >"$work/j.jsonl"
"$acmo" -q send --file "$work/j.jsonl"
check "the impossible UPDATE is dead-lettered" \
  wait_for 10 bash -c '"$1" --json dlq list | grep -q "\"total\":1"' _ "$acmo"
curl -sS -o /dev/null "http://127.0.0.1:$port/api/orders/ord_none"
# A second server on the same port fails: its last word is a log line too.
ACMO_LOG_FORMAT=json "$acmo" serve --listen "127.0.0.1:$port" --no-handler 2>"$work/json-fatal.log" >/dev/null
kill -TERM "$server"
check "the server stops on SIGTERM" wait_for 10 gone "$server"
logcheck() {
  python3 - "$1" "$2" <<'PY'
import json, sys
path, what = sys.argv[1], sys.argv[2]
lines = [l for l in open(path).read().split("\n") if l]
docs = []
for l in lines:
    d = json.loads(l)  # every line parses, or the check fails
    assert isinstance(d, dict) and {"time", "level", "pid", "event", "message"} <= d.keys(), l
    docs.append(d)
def one(event, **fields):
    found = [d for d in docs if d["event"] == event and all(d.get(k) == v for k, v in fields.items())]
    assert found, f"no {event} line with {fields}"
    return found[0]
if what == "serve":
    one("started")
    one("http_request", method="POST", path="/api/orders", status=202)
    one("http_request", method="GET", path="/api/orders/ord_none", status=404, client="127.0.0.1")
    b = one("batch", applied=1)
    assert b["level"] == "debug" and b["handler"].count(":") == 2, b
    d = one("dead_lettered", order_id="ord_j1")
    assert d["message_id"] and d["reason"] and d["handler"] == b["handler"], d
    one("stopping")
    one("stopped")
else:
    one("fatal", level="error")
print(len(docs))
PY
}
n=$(logcheck "$work/json.log" serve 2>&1)
check "every line of the JSON log parses, with the access, batch and dead-letter lines ($n)" \
  test "${n:-x}" -gt 5 2>/dev/null
n=$(logcheck "$work/json-fatal.log" fatal 2>&1)
check "a server that cannot start says why in a JSON line ($n)" test "$n" = 1 2>/dev/null
export ACMO_DATA_DIR="$work/data"

# --- acmo handlers: list, stop and drain without pkill ----------------------------------------

export ACMO_DATA_DIR="$work/registry"
"$acmo" handlers >/dev/null 2>"$work/h.err"; rc=$?
check "acmo handlers on a directory without acmo data exits 3 ($rc)" \
  test "$rc" = 3 -a -n "$(grep 'no acmo data in' "$work/h.err")"
"$acmo" -q send CREATE --order-id ord_r0 --data "$create"
check "acmo handlers with none lists none" \
  grep -q "no handler was seen in the last hour" <<<"$("$acmo" handlers)"
"$acmo" run-handler >"$work/r1.out" 2>"$work/r1.err" & r1=$!; pids+=("$r1")
"$acmo" run-handler >"$work/r2.out" 2>"$work/r2.err" & r2=$!; pids+=("$r2")
check "two handlers are listed as running" \
  wait_for 10 bash -c '"$1" handlers | grep -q "^2 running, 2 seen"' _ "$acmo"
id1=$("$acmo" --json handlers | python3 -c 'import json,sys,os; print([h["id"] for h in json.load(sys.stdin)["handlers"] if h["pid"] == int(sys.argv[1])][0])' "$r1")
out=$("$acmo" handlers stop "$id1" --wait 10); rc=$?
check "handlers stop ID --wait stops that handler: exit 0 ($out)" \
  test "$rc" = 0 -a -n "$(grep -F '1 handler stopped' <<<"$out")"
check "its process exits 0 by itself" bash -c 'wait_for() { local d=$((SECONDS + $1)); shift; until "$@"; do (( SECONDS < d )) || return 1; sleep 0.05; done; }; wait_for 5 bash -c "! kill -0 $1 2>/dev/null"' _ "$r1"
wait "$r1"; rc=$?
check "  with exit status 0 ($rc), saying it was asked" \
  test "$rc" = 0 -a -n "$(grep -F 'acmo handlers stop' "$work/r1.err")"
check "the other handler still runs" alive "$r2"
"$acmo" handlers stop "$id1" 2>"$work/h.err"; rc=$?
check "stopping a stopped handler exits 1 and says it is stopped ($rc)" \
  test "$rc" = 1 -a -n "$(grep -F "is not running: it is stopped" "$work/h.err")"
"$acmo" handlers stop nosuch:1:abcd 2>"$work/h.err"; rc=$?
check "an unknown id exits 3 ($rc)" test "$rc" = 3 -a -n "$(grep -F 'no handler nosuch:1:abcd' "$work/h.err")"
"$acmo" handlers drain 2>"$work/h.err"; rc=$?
check "drain with no id and no --all is a usage error, exit 2 ($rc)" test "$rc" = 2
# Drain: the events queued while the handler is stopped are all applied before it exits.
kill -STOP "$r2"
for i in $(seq 1 30); do echo "{\"type\":\"CREATE\",\"orderId\":\"ord_r$i\",\"data\":$create}"; done >"$work/r.jsonl"
"$acmo" -q send --file "$work/r.jsonl"
out=$("$acmo" --json handlers drain --all); rc=$?
kill -CONT "$r2"
check "handlers drain --all asks the running handler ($rc)" test "$rc" = 0
check "  --json names it in asked, and stopped is null without --wait ($out)" \
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(not (len(d["asked"]) == 1 and d["asked"][0].split(":")[1] == sys.argv[2] and d["stopped"] is None))' "$out" "$r2"
check "the drained handler exits by itself" bash -c 'for _ in $(seq 200); do kill -0 "$1" 2>/dev/null || exit 0; sleep 0.05; done; exit 1' _ "$r2"
wait "$r2"; rc=$?
check "  with exit 0 ($rc), having applied what was queued: 31 orders, nothing waits" \
  test "$rc/$("$acmo" --json orders list --limit 100 | grep -o '"id":"ord_r[0-9]*"' | wc -l)/$("$acmo" --json stats | sed -n 's/.*"visible":\([0-9]*\).*/\1/p')" = 0/31/0
port=$((21000 + RANDOM % 5000))
"$acmo" serve --listen "127.0.0.1:$port" >/dev/null 2>"$work/rs.err" & rs=$!; pids+=("$rs")
check "serve's handler registers" wait_for 10 bash -c '"$1" handlers | grep -q "^1 running"' _ "$acmo"
out=$("$acmo" --json handlers stop --all --wait 10); rc=$?
check "handlers stop --all --wait stops serve's handler ($rc)" test "$rc" = 0
check "  --json --wait: stopped is what was asked ($out)" \
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(not (len(d["asked"]) == 1 and d["stopped"] == d["asked"]))' "$out"
check "  serve goes on serving, and says so in its log" \
  bash -c 'curl -fsS -o /dev/null "http://127.0.0.1:$1/health/live" && alive() { kill -0 "$1"; } && alive "$2" && grep -q "the order handler stopped as asked" "$3"' _ "$port" "$rs" "$work/rs.err"
kill -TERM "$rs"; wait "$rs"; rc=$?
check "  and stops on SIGTERM with exit 0 ($rc)" test "$rc" = 0
export ACMO_DATA_DIR="$work/data"

# --- acmo tail: what handlers in other processes apply and dead-letter, as it happens ----------

export ACMO_DATA_DIR="$work/tail"
"$acmo" tail >/dev/null 2>"$work/t.err"; rc=$?
check "acmo tail on a directory without acmo data exits 3 ($rc)" test "$rc" = 3
"$acmo" -q send CREATE --order-id ord_t0 --data "$create"
"$acmo" -q run-handler --once 2>/dev/null
"$acmo" tail --applied --dead-lettered 2>"$work/t.err"; rc=$?
check "--applied with --dead-lettered is a usage error, exit 2 ($rc)" test "$rc" = 2
"$acmo" --json tail --count 3 >"$work/tail.json" 2>"$work/tail.err" & tailer=$!; pids+=("$tailer")
"$acmo" tail --order-id ord_t1 >"$work/tail1.txt" 2>&1 & tailer1=$!; pids+=("$tailer1")
sleep 0.5
"$acmo" run-handler >/dev/null 2>&1 & th=$!; pids+=("$th")
"$acmo" -q send CREATE --order-id ord_t1 --data "$create"
"$acmo" -q send CREATE --order-id ord_t2 --data "$create"
printf '%s\n' '{"type":"UPDATE","orderId":"ord_tx","data":{"status":"shipped"}}' >"$work/tx.jsonl"
"$acmo" -q send --file "$work/tx.jsonl"
check "tail --count 3 exits 0 after three events" \
  bash -c 'for _ in $(seq 200); do kill -0 "$1" 2>/dev/null || exit 0; sleep 0.05; done; exit 1' _ "$tailer"
wait "$tailer"; rc=$?
check "  (exit $rc): ord_t1 and ord_t2 applied in order, ord_tx dead-lettered with its reason, not ord_t0 from before" \
  test "$rc/$(jq -r '[.event, .orderId, .type] | join(" ")' "$work/tail.json" | tr '\n' ',')" = \
       "0/applied ord_t1 CREATE,applied ord_t2 CREATE,deadLettered ord_tx UPDATE," \
       -a -n "$(jq -r 'select(.event == "deadLettered") | .reason' "$work/tail.json" | grep 'does not exist')"
kill -INT "$tailer1"; wait "$tailer1"; rc=$?
check "tail --order-id shows that order's events only, and SIGINT ends it with exit 0 ($rc)" \
  test "$rc/$(grep -c . "$work/tail1.txt")" = 0/1 -a -n "$(grep -E '^[0-9T:.-]+Z applied +CREATE ord_t1 ' "$work/tail1.txt")"
kill -TERM "$th"; wait "$th"
export ACMO_DATA_DIR="$work/data"

echo "# daemon: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
