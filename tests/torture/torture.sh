#!/usr/bin/env bash
# The torture suite (issue 6): `acmo serve` (with its in-process handler) and two `acmo
# run-handler` processes over one data dir, HTTP senders (curl, Idempotency-Key) and CLI senders
# (`acmo send --dedup-id`) streaming order events and retrying every failure or timeout, while a
# killer `kill -9`s the server, the handlers and the CLI senders at random and starts them
# again. At the end (after `acmo run-handler --once` drained the queue) tests/torture/verify.jq
# checks: every acknowledged event applied exactly once and in its order in the audit trail, the
# store equal to the state the acknowledged events make, the DLQ exactly the events that had to
# fail (each order's plan includes forbidden changes and changes to deleted orders).
#
#   tests/torture/torture.sh path/to/acmo [sqlite|postgres|pgqueue|all]     (default: all)
#
# ACMO_TORTURE=short (default, CI: 40 s of kills per backend) or long (10 min per backend);
# ACMO_TORTURE_SECONDS=N overrides either. The postgres run stores orders in PostgreSQL
# ($ACMO_TEST_PG_URL, a schema of its own, dropped at the end) and caches in Redis
# ($ACMO_TEST_REDIS_URL, a prefix of its own, cleared at the end); the pgqueue run puts the
# queue in that schema too (queue.backend = "postgres"), so the handlers apply in the queue's
# transaction. eval "$(scripts/test-services.sh start)" first. Without them those runs are
# skipped with a warning, or fail when CI=true.
set -uo pipefail
acmo=$(realpath "${1:?usage: $0 path/to/acmo [sqlite|postgres|pgqueue|all]}")
which_backends=${2:-all}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case ${ACMO_TORTURE:-short} in
  short) seconds=40 ;;
  long) seconds=600 ;;
  *) echo "ACMO_TORTURE must be short or long" >&2; exit 2 ;;
esac
seconds=${ACMO_TORTURE_SECONDS:-$seconds}
for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "not ok - $tool is missing (scripts/install-deps.sh)"; exit 1; }
done
# shellcheck source=../cli/lib.sh
source "$here/../cli/lib.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/acmo-torture.XXXXXX")
export ACMO_TEST_RUN=$work
declare -A pid=()  # serve, h1, h2 -> the pid of the running process
senders=()
pg_schema=''
pg_schemas=() # every schema made, dropped at the end
redis_prefix=''
cleanup() {
  local p
  kill_own 9 "${pid[@]}" "${senders[@]}"
  wait 2>/dev/null
  for p in "${pg_schemas[@]}"; do
    psql "$ACMO_TEST_PG_URL" -qc "DROP SCHEMA IF EXISTS $p CASCADE" >/dev/null 2>&1
  done
  if [[ -n $redis_prefix ]]; then
    redis_cli --scan --pattern "$redis_prefix*" | xargs -r redis_cli del >/dev/null 2>&1
  fi
  [[ -n ${ACMO_TORTURE_KEEP:-} ]] && { echo "# kept $work"; return; }
  rm -rf "$work"
}
trap cleanup EXIT
redis_cli() {
  local url=${ACMO_TEST_REDIS_URL#redis://}
  redis-cli -h "${url%%:*}" -p "${url##*:}" "$@"
}

# --- the processes ------------------------------------------------------------------------------

# start NAME: start serve, h1 or h2 again (their output appended to NAME.log).
start() {
  case $1 in
    serve) "$acmo" serve --listen "127.0.0.1:$port" >>"$dir/serve.log" 2>&1 & ;;
    h*) "$acmo" run-handler --concurrency 2 >>"$dir/$1.log" 2>&1 & ;;
  esac
  pid[$1]=$!
}
# The port: the first acmo serve picks a free one (port 0); restarts use the same.
start_first_server() {
  "$acmo" serve --listen 127.0.0.1:0 >>"$dir/serve.log" 2>&1 &
  pid[serve]=$!
  port=''
  for _ in $(seq 200); do
    port=$(sed -n 's|.*serving http://127.0.0.1:\([0-9]*\).*|\1|p' "$dir/serve.log" | head -n 1)
    [[ -n $port ]] && return 0
    sleep 0.05
  done
  echo "not ok - acmo serve did not start:"; cat "$dir/serve.log"; exit 1
}

# --- the senders --------------------------------------------------------------------------------

# The plans, walk_plan, ack_fields and record: tests/cli/order_plans.sh.
# shellcheck source=../cli/order_plans.sh
source "$here/../cli/order_plans.sh"

# deliver KIND TYPE ORDER DATA KEY [GONE]: send one event until it is acknowledged; print
# "MESSAGE_ID ORDER_ID DUPLICATE". Exit 1 after a rejection (a bug: these events are valid).
# GONE=1: the order may be deleted and that DELETE applied already, so the event may be refused
# as being for an order that exists nowhere (404, exit 3): exit 3 then, nothing acknowledged.
deliver() {
  local kind=$1 type=$2 order=$3 data=$4 key=$5 gone=${6:-0} out code started rc
  started=$(now_ms)
  while :; do
    if [[ $kind == http ]]; then
      local method=POST path=/api/orders
      case $type in
        UPDATE) method=PUT path=/api/orders/$order ;;
        DELETE) method=DELETE path=/api/orders/$order data='' ;;
      esac
      out=$(curl -s --max-time 5 -w '\n%{http_code}' -X "$method" "http://127.0.0.1:$port$path" \
              -H 'Content-Type: application/json' -H "Idempotency-Key: $key" \
              ${data:+--data-binary "$data"})
      rc=$?
      code=${out##*$'\n'}
      out=${out%$'\n'*}
      # A 202 whose body was cut off (the server killed between headers and body) is no
      # acknowledgement: retried like any failure.
      if [[ $rc == 0 && $code == 202 ]] && ack_fields "$out"; then
        return 0
      fi
      [[ $code == 202 ]] && code="202 cut off (curl exit $rc)"
      if [[ $code == 404 && $gone == 1 ]]; then
        echo "$type $order" >>"$dir/refused"
        return 3
      fi
      if [[ $code != 000 && $code != 5* && $code != 202* ]]; then
        echo "REJECTED $kind $type $order: $code $out" >>"$dir/rejected"
        return 1
      fi
    else
      "$acmo" --json send "$type" --order-id "$order" ${data:+--data "$data"} --dedup-id "$key" \
        >"$dir/cli-$sender.out" 2>"$dir/cli-$sender.err" &
      echo $! >"$dir/cli-$sender.pid"
      wait $!
      rc=$?
      rm -f "$dir/cli-$sender.pid"
      if [[ $rc == 0 ]] && ack_fields "$(<"$dir/cli-$sender.out")"; then
        return 0
      fi
      if [[ $rc == 3 && $gone == 1 ]]; then
        echo "$type $order" >>"$dir/refused"
        return 3
      fi
      if [[ $rc == 2 || $rc == 3 || $rc == 4 ]]; then
        echo "REJECTED $kind $type $order: exit $rc $(cat "$dir/cli-$sender.err")" >>"$dir/rejected"
        return 1
      fi
    fi
    echo retry >>"$dir/retries-$sender"
    if (($(now_ms) - started > 90000)); then
      echo "GAVE UP $kind $type $order after 90 s: ${code:-exit $rc}" >>"$dir/rejected"
      return 1
    fi
    rand_sleep 200
  done
}

# sender N KIND DEADLINE_MS: orders one after the other until the deadline, each plan to its
# end; every acknowledgement appended to acks-N as JSON.
sender() {
  sender=$1
  local kind=$2 deadline=$3 n=0
  while (($(now_ms) < deadline)); do
    n=$((n + 1))
    walk_plan "$n" "$kind" t || return 1
  done
}

# wait_for PID SECONDS: reap the child PID once it has exited, waiting at most SECONDS; its exit
# status, or 124 with PID still running.
wait_for() {
  local p=$1 limit=$(($(now_ms) + $2 * 1000))
  while [[ -e /proc/$p && $(cut -d' ' -f3 "/proc/$p/stat" 2>/dev/null) != Z ]]; do
    (($(now_ms) < limit)) || return 124
    sleep 0.1
  done
  wait "$p"
}

# stuck WHAT: a wait that never ended, told with what this run's processes are doing.
stuck() {
  not_ok "$backend: $1"
  ps -eo pid,ppid,stat,etimes,wchan:24,args | grep -E "acmo|curl|torture|sleep" | grep -v grep \
    | sed 's/^/#   /'
}

# --- one run ------------------------------------------------------------------------------------

# drained: nothing visible, in flight or delayed.
drained() {
  local s
  s=$("$acmo" --json stats) || return 1
  [[ "$(jq -r '.queue | "\(.visible)/\(.inFlight)/\(.delayed)"' <<<"$s")" == 0/0/0 ]]
}

torture() {
  local backend=$1
  dir=$work/$backend
  mkdir -p "$dir"
  acks_dir=$dir
  export ACMO_DATA_DIR=$dir/data NO_COLOR=1
  export ACMO_QUEUE_GROUP_BY=order ACMO_QUEUE_VISIBILITY_TIMEOUT=2s
  export ACMO_QUEUE_RETRY_DELAYS="100ms, 200ms, 500ms" ACMO_QUEUE_MAX_RETRIES=1000
  if [[ $backend == postgres || $backend == pgqueue ]]; then
    pg_schema="acmo_torture_$$_$RANDOM"
    pg_schemas+=("$pg_schema")
    psql "$ACMO_TEST_PG_URL" -qc "CREATE SCHEMA $pg_schema" >/dev/null || {
      not_ok "$backend: cannot make a schema in $ACMO_TEST_PG_URL"; return; }
    local sep='?'; [[ $ACMO_TEST_PG_URL == *\?* ]] && sep='&'
    export ACMO_STORE_BACKEND=postgres
    export ACMO_STORE_URL="$ACMO_TEST_PG_URL${sep}options=-csearch_path%3D$pg_schema"
    redis_prefix="acmo-torture-$$-$RANDOM:"
    export ACMO_CACHE_BACKEND=redis ACMO_CACHE_URL=$ACMO_TEST_REDIS_URL ACMO_CACHE_PREFIX=$redis_prefix
    if [[ $backend == pgqueue ]]; then
      export ACMO_QUEUE_BACKEND=postgres ACMO_QUEUE_SCHEMA=$pg_schema
    fi
  else
    unset ACMO_STORE_BACKEND ACMO_STORE_URL ACMO_CACHE_PREFIX ACMO_CACHE_URL
    export ACMO_CACHE_BACKEND=memory
  fi

  local started deadline victim kills_serve=0 kills_handler=0 kills_cli=0 self_exits=0 p rc
  local pauses=0 paused_then_killed=0
  start_first_server
  start h1
  start h2
  started=$(now_ms)
  deadline=$((started + seconds * 1000))
  senders=()
  local s
  for s in 1 2 3; do sender "$s" http "$deadline" & senders+=($!); done
  for s in 4 5; do sender "$s" cli "$deadline" & senders+=($!); done

  # The killer: every 0.1–0.8 s, kill -9 one of serve, h1, h2 or a running `acmo send`, or
  # pause serve or a handler with SIGSTOP for longer than the visibility timeout (2 s), wherever
  # it is (in a write transaction, holding messages in flight, in a PostgreSQL transaction),
  # then continue it, or kill -9 it while it is stopped.
  while (($(now_ms) < deadline)); do
    rand_sleep 700; sleep 0.1
    for p in serve h1 h2; do # one that ended by itself is a finding; start it again
      if ! kill -0 "${pid[$p]}" 2>/dev/null; then
        wait "${pid[$p]}"; rc=$?
        self_exits=$((self_exits + 1))
        echo "$p (pid ${pid[$p]}) ended by itself with exit $rc" >>"$dir/self-exits"
        start "$p"
      fi
    done
    case $((RANDOM % 6)) in
      0) victim=serve ;;
      1) victim=h1 ;;
      2) victim=h2 ;;
      3) victim=cli ;;
      *) victim=pause ;;
    esac
    # Every kind of fault happens at least once: past half the run, one that has not yet
    # happened is chosen (the draws alone missed one now and then).
    if (($(now_ms) > started + seconds * 500)); then
      if ((kills_cli == 0)); then victim=cli
      elif ((kills_serve == 0)); then victim=serve
      elif ((kills_handler == 0)); then victim=h1
      elif ((pauses == 0)); then victim=pause
      fi
    fi
    if [[ $victim == pause ]]; then
      local sleeper
      case $((RANDOM % 3)) in 0) sleeper=serve ;; 1) sleeper=h1 ;; *) sleeper=h2 ;; esac
      kill -STOP "${pid[$sleeper]}" 2>/dev/null || continue
      pauses=$((pauses + 1))
      sleep "2.$((5 + RANDOM % 5))" # past the visibility timeout
      if ((RANDOM % 3 == 0)); then
        kill -9 "${pid[$sleeper]}"
        wait "${pid[$sleeper]}" 2>/dev/null
        paused_then_killed=$((paused_then_killed + 1))
        if [[ $sleeper == serve ]]; then kills_serve=$((kills_serve + 1)); else kills_handler=$((kills_handler + 1)); fi
        start "$sleeper"
      else
        kill -CONT "${pid[$sleeper]}"
      fi
      continue
    fi
    if [[ $victim == cli ]]; then
      # A running acmo send of a CLI sender (waiting up to 0.2 s for one to be running).
      local f cli_pid try
      for try in $(seq 20); do
        for f in "$dir"/cli-*.pid; do
          cli_pid=$(cat "$f" 2>/dev/null) || continue
          # Only an acmo send of ours (the file may be a moment stale).
          if tr '\0' ' ' 2>/dev/null <"/proc/$cli_pid/cmdline" | grep -q "send .*--dedup-id t-s"; then
            kill -9 "$cli_pid" 2>/dev/null && kills_cli=$((kills_cli + 1)) && break 2
          fi
        done
        sleep 0.01
      done
      continue
    fi
    kill -9 "${pid[$victim]}"
    wait "${pid[$victim]}" 2>/dev/null
    if [[ $victim == serve ]]; then kills_serve=$((kills_serve + 1)); else kills_handler=$((kills_handler + 1)); fi
    rand_sleep 300
    start "$victim"
  done

  # The last kills: every handler at once, whatever it holds. The senders finish the plans
  # they are in through a server without a handler, so the drain below has work to do.
  for p in serve h1 h2; do kill -CONT "${pid[$p]}" 2>/dev/null; kill -9 "${pid[$p]}" 2>/dev/null; wait "${pid[$p]}" 2>/dev/null; done
  kills_serve=$((kills_serve + 1)) kills_handler=$((kills_handler + 2))
  pid=()
  "$acmo" serve --no-handler --listen "127.0.0.1:$port" >>"$dir/serve.log" 2>&1 &
  pid[serve]=$!
  # A sender gives up on an event after 90 s of failures, so every one has ended well within
  # 150 s; serve, which has no handler, stops within seconds of SIGTERM. A wait past either is
  # a finding, reported with what the processes were doing, not a hang of the suite.
  local sender_failed=0
  for p in "${senders[@]}"; do
    wait_for "$p" 150; rc=$?
    if ((rc == 124)); then
      stuck "sender $p has not ended 150 s after the run"
      pkill -9 -P "$p"; kill -9 "$p"; wait "$p"
    fi
    ((rc == 0)) || sender_failed=$((sender_failed + 1))
  done
  senders=()
  local elapsed=$((($(now_ms) - started) / 1000))
  kill -TERM "${pid[serve]}"
  if ! wait_for "${pid[serve]}" 30 && kill -0 "${pid[serve]}" 2>/dev/null; then
    stuck "serve (pid ${pid[serve]}) has not stopped 30 s after SIGTERM"
    kill -9 "${pid[serve]}"; wait "${pid[serve]}"
  fi
  pid=()

  # Drain: what the killed handlers held comes back after the visibility timeout (2 s).
  local drain_runs=0
  "$acmo" --json stats >"$dir/stats-before-drain.json"
  for _ in $(seq 60); do
    drained && break
    "$acmo" -q run-handler --once >>"$dir/drain.log" 2>&1
    drain_runs=$((drain_runs + 1))
    drained && break
    sleep 0.5
  done
  check "$backend: the queue is drained ($drain_runs run-handler --once)" drained

  # What the store, the audit trail and the DLQ hold, read from the store (not a cache).
  local offset total
  : >"$dir/orders.jsonl"
  : >"$dir/dlq.jsonl"
  offset=0
  while ACMO_CACHE_BACKEND=none "$acmo" --json orders list --limit 1000 --offset "$offset" >"$dir/page.json"; do
    jq -c '.orders[]' "$dir/page.json" >>"$dir/orders.jsonl"
    offset=$((offset + 1000))
    ((offset < $(jq '.total' "$dir/page.json"))) || break
  done
  offset=0
  while "$acmo" --json dlq list --limit 1000 --offset "$offset" >"$dir/page.json"; do
    jq -c '.messages[]' "$dir/page.json" >>"$dir/dlq.jsonl"
    offset=$((offset + 1000))
    ((offset < $(jq '.total' "$dir/page.json"))) || break
  done
  cat "$dir"/acks-* >"$dir/acks.jsonl" 2>/dev/null
  jq -r 'select(.step == 0) | .order' "$dir/acks.jsonl" | sort -u | while read -r order; do
    local out
    out=$(ACMO_CACHE_BACKEND=none "$acmo" --json orders events "$order") &&
      echo "{\"order\":\"$order\",${out#\{}"
  done >"$dir/events.jsonl"

  local verdict problems
  verdict=$(jq -n --slurpfile acks "$dir/acks.jsonl" --slurpfile orders "$dir/orders.jsonl" \
                  --slurpfile events "$dir/events.jsonl" --slurpfile dlq "$dir/dlq.jsonl" \
                  -f "$here/verify.jq")
  problems=$(jq '.problems | length' <<<"$verdict")
  local stats sent acked events applied dead dups retries
  stats=$("$acmo" --json stats)
  sent=$(jq '.queue.sent' <<<"$stats")
  acked=$(jq -s 'map(.msg) | unique | length' "$dir/acks.jsonl")
  applied=$(jq -r '.expected.applied' <<<"$verdict")
  dead=$(jq -r '.expected.deadLettered' <<<"$verdict")
  dups=$(jq -r '.expected.duplicates' <<<"$verdict")
  retries=$(cat "$dir"/retries-* 2>/dev/null | wc -l)
  echo "# $backend: ${elapsed}s, $acked events acknowledged ($(jq -s 'map(select(.kind == "http")) | length' "$dir/acks.jsonl") over HTTP)" \
       "in $(jq -r '.expected.orders' <<<"$verdict") orders; $retries client retries, $dups acknowledged as duplicates;" \
       "kills: $kills_serve serve, $kills_handler run-handler, $kills_cli acmo send;" \
       "$pauses pauses past the visibility timeout ($paused_then_killed ended by kill -9);" \
       "$applied applied, $dead dead-lettered;" \
       "$(cat "$dir/refused" 2>/dev/null | wc -l) changes of deleted orders refused at once"

  check "$backend: no sender gave up or was refused" test "$sender_failed" -eq 0 -a ! -s "$dir/rejected"
  [[ -s $dir/rejected ]] && head -n 5 "$dir/rejected"
  check "$backend: no process ended by itself" test "$self_exits" -eq 0
  [[ -s $dir/self-exits ]] && head -n 5 "$dir/self-exits"
  check "$backend: processes were killed ($kills_serve serve, $kills_handler handler, $kills_cli send)" \
    test "$kills_serve" -gt 0 -a "$kills_handler" -gt 0 -a "$kills_cli" -gt 0
  check "$backend: processes were paused past the visibility timeout ($pauses)" test "$pauses" -gt 0
  check "$backend: events were acknowledged over HTTP and the CLI, some had to fail ($acked, $dead)" \
    test "$(jq -s 'map(.kind) | unique | length' "$dir/acks.jsonl")" -eq 2 -a "$dead" -gt 0 -a "$applied" -gt 0
  check "$backend: the queue accepted exactly the acknowledged events ($sent sent, $acked acknowledged)" \
    test "$sent" -eq "$acked"
  if [[ $problems == 0 ]]; then
    ok "$backend: every acknowledged event applied exactly once, in order; store, audit trail and DLQ as the events make them"
  else
    not_ok "$backend: $problems problems:"
    jq -r '.problems[:20][]' <<<"$verdict" | sed 's/^/#   /'
  fi
  local want_queue=sqlite want_store=sqlite want_cache=memory
  [[ $backend != sqlite ]] && want_store=postgres want_cache=redis
  [[ $backend == pgqueue ]] && want_queue=postgres
  check "$backend: the queue was $want_queue, the store $want_store, the cache $want_cache" \
    test "$(jq -r '"\(.queue.backend) \(.store.backend) \(.cache.backend)"' <<<"$stats")" = "$want_queue $want_store $want_cache"

  # The judge must see what it is there to see: the same evidence, each time spoiled once.
  judge() { # judge ORDERS EVENTS DLQ: the number of problems found
    jq -n --slurpfile acks "$dir/acks.jsonl" --slurpfile orders "$1" --slurpfile events "$2" \
          --slurpfile dlq "$3" -f "$here/verify.jq" | jq '.problems | length'
  }
  local o=$dir/orders.jsonl e=$dir/events.jsonl d=$dir/dlq.jsonl
  sed '1d' "$o" >"$dir/spoiled-orders"
  jq -c 'if input_line_number == 1 then .events += [.events[0]] else . end' "$e" >"$dir/spoiled-twice"
  jq -c 'if input_line_number == 1 then .events |= reverse else . end' "$e" >"$dir/spoiled-order"
  sed '1d' "$d" >"$dir/spoiled-dlq"
  jq -c '.status = "delivered"' "$o" >"$dir/spoiled-status"
  check "$backend: the judge sees an order missing, an event applied twice or out of order, a lost dead letter, a wrong status" \
    test "$(judge "$dir/spoiled-orders" "$e" "$d") $(judge "$o" "$dir/spoiled-twice" "$d") $(judge "$o" "$dir/spoiled-order" "$d") $(judge "$o" "$e" "$dir/spoiled-dlq")" = "2 2 2 1" \
         -a "$(judge "$dir/spoiled-status" "$e" "$d")" -gt 0
  unset ACMO_STORE_BACKEND ACMO_STORE_URL ACMO_CACHE_PREFIX ACMO_CACHE_URL ACMO_CACHE_BACKEND
  unset ACMO_QUEUE_BACKEND ACMO_QUEUE_SCHEMA
}

backends=()
case $which_backends in
  sqlite | postgres | pgqueue) backends=("$which_backends") ;;
  all) backends=(sqlite postgres pgqueue) ;;
  *) echo "usage: $0 path/to/acmo [sqlite|postgres|pgqueue|all]" >&2; exit 2 ;;
esac
for backend in "${backends[@]}"; do
  if [[ $backend != sqlite && ( -z ${ACMO_TEST_PG_URL:-} || -z ${ACMO_TEST_REDIS_URL:-} ) ]]; then
    if [[ ${CI:-} == true ]]; then
      not_ok "$backend: ACMO_TEST_PG_URL and ACMO_TEST_REDIS_URL are not set (scripts/test-services.sh start)"
    else
      echo "WARN: $backend run skipped: eval \"\$(scripts/test-services.sh start)\" first"
    fi
    continue
  fi
  torture "$backend"
done

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
