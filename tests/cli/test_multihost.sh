#!/usr/bin/env bash
# The queue on PostgreSQL shared by several hosts, each a network namespace on this machine:
# PostgreSQL (a throwaway cluster of the test's own) on one, `acmo serve` on two more, three
# `acmo run-handler` on two others, and the senders on a client host, all on one switch (a
# bridge in a namespace of its own, so the machine's own network is never touched). Senders
# stream order events over both HTTP APIs (curl, Idempotency-Key, failing over to the other
# server) and `acmo send` (--dedup-id, and `--file` for updates of orders never created), and
# retry until acknowledged, while a chaos loop kill -9s handlers and servers and starts them
# again, pauses them past the visibility timeout (SIGSTOP ... SIGCONT), and cuts a handler
# host's and a server host's link to the switch for a few seconds. At the end, with every
# process still running and the queue drained by them, tests/torture/verify.jq judges what
# PostgreSQL holds: every acknowledged event applied exactly once and in its order (the audit
# trail order_events), the orders table equal to the replay of the trail's events, the DLQ
# exactly the events that had to fail (forbidden changes, updates of orders never created).
#
#   tests/cli/test_multihost.sh path/to/acmo
#
# Needs root, iproute2, curl, jq and PostgreSQL's server programs; without one it fails (a
# skipped test is not a passed one). About 100 s; ACMO_MULTIHOST_SECONDS sets the chaos phase
# (default 60), ACMO_MULTIHOST_KEEP=1 keeps the work directory.
set -uo pipefail
acmo=$(realpath "${1:?usage: $0 path/to/acmo}")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
seconds=${ACMO_MULTIHOST_SECONDS:-60}
began=$EPOCHREALTIME

give_up() { not_ok "$*"; echo "$passed passed, $failed failed"; exit 1; }

# --- prerequisites: each missing one is a failure -----------------------------------------------

[[ $(id -u) -eq 0 ]] || give_up "needs root, for network namespaces and links (run it as root)"
for tool in ip curl jq runuser pgrep; do
  command -v "$tool" >/dev/null || give_up "$tool is missing (scripts/install-deps.sh)"
done
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[[ -n $pg_bin && -x $pg_bin/initdb && -x $pg_bin/pg_ctl && -x $pg_bin/psql ]] ||
  give_up "PostgreSQL's server programs are not installed (scripts/install-deps.sh)"
id postgres >/dev/null 2>&1 || give_up "there is no postgres user to run PostgreSQL as"

work=$(mktemp -d /tmp/acmo-multihost.XXXXXX) || give_up "cannot make a work directory"
chmod 755 "$work" # PostgreSQL, as postgres, keeps its cluster under it
export ACMO_TEST_RUN=$work

# The hosts: a name, an address on the switch's subnet. Namespaces are named after a tag of
# this run ("amh" and 4 hex digits) and the host; inside each, the link is eth0, and its other
# end, in the switch's namespace, is named after the host.
hosts=(pg s1 s2 h1 h2 c)
declare -A addr=([pg]=10.77.0.10 [s1]=10.77.0.21 [s2]=10.77.0.22 [h1]=10.77.0.31 [h2]=10.77.0.32
                 [c]=10.77.0.41)
pg_port=5432 api_port=8080
namespaces=()
declare -A pid=()  # s1 s2 (acmo serve), h1a h1b h2a (acmo run-handler) -> its pid
declare -A host_of=([s1]=s1 [s2]=s2 [h1a]=h1 [h1b]=h1 [h2a]=h2)
procs=()
senders=()
pg_started=''

on() { local h=$1; shift; ip netns exec "$tag-$h" "$@"; } # on HOST COMMAND...
as_postgres() { runuser -u postgres -- "$@"; }
sql() { on pg "$pg_bin/psql" -h "${addr[pg]}" -p "$pg_port" -U acmo -d acmo -XAtq -v ON_ERROR_STOP=1 -c "$1"; }

# stop_tree PID...: SIGSTOP each, then its children, and so on down (stopped first, none forks
# meanwhile); print every one stopped.
stop_tree() {
  local p
  for p in "$@"; do
    kill -STOP "$p" 2>/dev/null || continue
    echo "$p"
    # shellcheck disable=SC2046 # one pid a word
    stop_tree $(pgrep -P "$p")
  done
}
cleanup() {
  local n p mine=() tree=()
  kill_own 9 "${pid[@]}"
  # A sender (a child of this shell) runs each delivery in a subshell of its own, which would
  # go on retrying if only the sender were killed.
  for p in "${senders[@]}"; do
    [[ $(awk '/^PPid:/ { print $2 }' "/proc/$p/status" 2>/dev/null) == "$$" ]] && mine+=("$p")
  done
  mapfile -t tree < <(stop_tree "${mine[@]}")
  [[ ${#tree[@]} -gt 0 ]] && kill -9 "${tree[@]}" 2>/dev/null
  [[ -n $pg_started ]] && as_postgres "$pg_bin/pg_ctl" -D "$work/pg" -m immediate -w stop >/dev/null 2>&1
  # Whatever is left in this run's namespaces (a curl or an acmo send of a sender) is ours.
  for n in "${namespaces[@]}"; do
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
  wait 2>/dev/null
  for n in "${namespaces[@]}"; do ip netns del "$n" 2>/dev/null; done
  if [[ -n ${ACMO_MULTIHOST_KEEP:-} ]]; then echo "# kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the network --------------------------------------------------------------------------------

for _ in $(seq 20); do
  tag=amh$(printf '%04x' $((RANDOM * 2 + RANDOM % 2)))
  ip netns list | grep -q "^$tag-" || break
done
ip netns add "$tag-sw" || give_up "ip netns add failed: network namespaces are not available here"
namespaces+=("$tag-sw")
ip -n "$tag-sw" link add br0 type bridge || give_up "cannot make a bridge (the bridge module?)"
ip -n "$tag-sw" link set br0 up
for h in "${hosts[@]}"; do
  ip netns add "$tag-$h" || give_up "ip netns add $tag-$h failed"
  namespaces+=("$tag-$h")
  { ip -n "$tag-sw" link add "$h" type veth peer name eth0 netns "$tag-$h" &&
    ip -n "$tag-sw" link set "$h" master br0 up &&
    ip -n "$tag-$h" addr add "${addr[$h]}/24" dev eth0 &&
    ip -n "$tag-$h" link set eth0 up &&
    ip -n "$tag-$h" link set lo up; } || give_up "cannot link host $h to the switch (veth)"
done
# link_down HOST / link_up HOST: the cable between HOST and the switch, pulled and put back.
link_down() { ip -n "$tag-sw" link set "$1" down; }
link_up() { ip -n "$tag-sw" link set "$1" up; }

# --- PostgreSQL on host pg ----------------------------------------------------------------------

mkdir -p "$work/pg" "$work/pgrun" "$work/logs"
chown postgres:postgres "$work/pg" "$work/pgrun"
as_postgres "$pg_bin/initdb" -D "$work/pg" -U acmo --auth=trust -E UTF8 >"$work/logs/initdb.log" 2>&1 ||
  give_up "initdb failed: $(tail -n 3 "$work/logs/initdb.log")"
echo "host all acmo 10.77.0.0/24 trust" >>"$work/pg/pg_hba.conf"
pg_started=1
on pg runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pgrun/pg.log" -w -t 30 \
  -o "-c listen_addresses=${addr[pg]} -p $pg_port -k $work/pgrun -c fsync=on -c synchronous_commit=on -c max_connections=300" \
  start >/dev/null || give_up "PostgreSQL did not start: $(tail -n 5 "$work/pgrun/pg.log")"
on pg "$pg_bin/psql" -h "${addr[pg]}" -p "$pg_port" -U acmo -d postgres -XAtq -c "CREATE DATABASE acmo" ||
  give_up "cannot create the database acmo over the switch"

# Every acmo process, on every host: the queue and the store in that PostgreSQL. No cache: a
# memory cache is each process's own and would go stale across hosts (there is no Redis here).
export NO_COLOR=1
export ACMO_QUEUE_BACKEND=postgres ACMO_STORE_BACKEND=postgres
export ACMO_STORE_URL="postgresql://acmo@${addr[pg]}:$pg_port/acmo"
export ACMO_STORE_CONNECT_TIMEOUT=2s ACMO_CACHE_BACKEND=none
export ACMO_QUEUE_GROUP_BY=order ACMO_QUEUE_VISIBILITY_TIMEOUT=2s
export ACMO_QUEUE_RETRY_DELAYS="100ms, 200ms, 500ms" ACMO_QUEUE_MAX_RETRIES=1000

# acmo_on HOST ARGS...: acmo on HOST, with that host's data directory.
acmo_on() { local h=$1; shift; ACMO_DATA_DIR=$work/data-$h on "$h" "$acmo" "$@"; }

# --- the acmo processes -------------------------------------------------------------------------

# start NAME: start s1, s2 (acmo serve) or h1a, h1b, h2a (acmo run-handler) on its host, its
# output appended to logs/NAME.log. A simple command in the background, and `ip netns exec`
# execs acmo: $! is acmo's pid (a function in the background would be a subshell's).
start() {
  local h=${host_of[$1]} args=(run-handler --concurrency 2)
  [[ $1 == s* ]] && args=(serve --listen "${addr[$h]}:$api_port")
  ACMO_DATA_DIR=$work/data-$h ip netns exec "$tag-$h" "$acmo" "${args[@]}" >>"$work/logs/$1.log" 2>&1 &
  pid[$1]=$!
}
api_up() { [[ $(on c curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://${addr[$1]}:$api_port/health/live") == 200 ]]; }
stats_json() { acmo_on c --json stats; }
drained() {
  local s
  s=$(stats_json) || return 1
  [[ "$(jq -r '.queue | "\(.visible)/\(.inFlight)/\(.delayed)"' <<<"$s")" == 0/0/0 ]]
}
# beating: every process's handler is "running" in the registry (a fresh heartbeat); those
# that are not in $missing_beats. A host whose link came back just now may take a few seconds
# (TCP's retransmission backoff) to beat again.
beating() {
  local registry p
  missing_beats=()
  registry=$(stats_json | jq -c '[.handler.handlers[]? | select(.state == "running") | .pid]')
  for p in "${procs[@]}"; do
    jq -e --argjson p "${pid[$p]}" 'index($p) != null' <<<"$registry" >/dev/null || missing_beats+=("$p")
  done
  [[ ${#missing_beats[@]} -eq 0 ]]
}
# wait_for SECONDS COMMAND...: poll until the command succeeds.
wait_for() {
  local tries=$(($1 * 10)); shift
  for _ in $(seq "$tries"); do "$@" && return 0; sleep 0.1; done
  return 1
}
# The plans, walk_plan, ack_fields and record: order_plans.sh.
# shellcheck source=order_plans.sh
source "$here/order_plans.sh"
acks_dir=$work

# --- a handler cut off while it applies a batch ------------------------------------------------

# Handler A (h2a) receives an update that the order's state forbids (pending → shipped) and
# waits for the order's row, which another transaction holds; then A's host is cut off, past
# the visibility timeout, while handler B (h1a) runs and the order's next update (→ processing,
# after which shipped would be allowed) is sent. However the two handlers share the work, the
# first update must be judged in the state it was sent to: dead-lettered and never applied, and
# the next one applied after it.
order_is() { [[ $(sql "SELECT status || ' v' || version FROM orders WHERE id = '$1'") == "$2" ]]; }
lock_waiters() { [[ $(sql "SELECT count(*) FROM pg_stat_activity WHERE datname = 'acmo' AND wait_event_type = 'Lock'") -ge 1 ]]; }
no_transaction_of() { [[ $(sql "SELECT count(*) FROM pg_stat_activity WHERE client_addr = '${addr[$1]}' AND xact_start IS NOT NULL") == 0 ]]; }
in_dlq() { acmo_on c --json dlq list --limit 1000 | grep -qF "\"messageId\":\"$1\""; }
sender=0
procs=(h2a)
start h2a
wait_for 20 beating || give_up "acmo run-handler on h2 did not start: $(tail -n 5 "$work/logs/h2a.log")"
cut_order=ord_cut_off
ack=$(ack_fields "$(acmo_on c --json send CREATE --order-id $cut_order --dedup-id cut-0 \
        --data '{"customer_name":"Cut","customer_email":"c@example.com","items":[{"product_id":"p","quantity":1,"unit_price":1}]}')") ||
  give_up "acmo send CREATE on host c failed"
record cut 0 CREATE '' cli "$ack"
wait_for 20 order_is $cut_order "pending v1" || give_up "the handler on h2 did not apply a CREATE"
# The holder: a transaction that changes the order's row and commits once told to (a row in
# public.cut_release).
sql "CREATE TABLE public.cut_release (x int)"
sql "BEGIN; UPDATE orders SET updated_at = updated_at WHERE id = '$cut_order';
     DO \$\$ BEGIN WHILE NOT EXISTS (SELECT 1 FROM public.cut_release) LOOP PERFORM pg_sleep(0.05); END LOOP; END \$\$;
     COMMIT" >/dev/null &
holder=$!
ack=$(ack_fields "$(acmo_on c --json send UPDATE --order-id $cut_order --data '{"status":"shipped"}' --dedup-id cut-1)") ||
  give_up "acmo send UPDATE on host c failed"
record cut 1 UPDATE shipped cli "$ack"
forbidden_msg=${ack%% *}
check "cut-off handler: A (h2) has the forbidden update and waits for the order's row" wait_for 20 lock_waiters
link_down h2
sql "INSERT INTO public.cut_release VALUES (1)"
wait "$holder"
start h1a
procs=(h2a h1a)
sleep 3 # past the visibility timeout (2 s) of A's batch
# The next update: its send may wait until A, back, lets go of the order's message group.
acmo_on c --json send UPDATE --order-id $cut_order --data '{"status":"processing"}' --dedup-id cut-2 \
  >"$work/cut-2.out" 2>"$work/cut-2.err" &
next_send=$!
sleep 2
link_up h2
wait "$next_send"; rc=$?
if ack=$(ack_fields "$(<"$work/cut-2.out")"); then record cut 2 UPDATE processing cli "$ack"; fi
check "cut-off handler: the next update is acknowledged (exit $rc $(head -c 200 "$work/cut-2.err"))" test "$rc" -eq 0
check "cut-off handler: A beats again once its link is back" wait_for 30 beating
# A's worker hears from the server only when the server's retransmissions, backing off during
# the cut, get through: until then its transaction stays open.
check "cut-off handler: A's transactions end once its link is back" wait_for 60 no_transaction_of h2
check "cut-off handler: the queue is drained" wait_for 30 drained
sleep 1 # what A may still do with what it had in hand
check "cut-off handler: the forbidden update is in the DLQ" in_dlq "$forbidden_msg"
check "cut-off handler: the order is processing v2 (the forbidden update never applied): $(sql "SELECT status || ' v' || version FROM orders WHERE id = '$cut_order'")" \
  order_is $cut_order "processing v2"

# --- the other processes ------------------------------------------------------------------------

procs=(s1 s2 h1a h1b h2a)
for p in s1 s2 h1b; do start "$p"; done
for s in s1 s2; do
  for _ in $(seq 100); do api_up "$s" && break; sleep 0.2; done
  api_up "$s" || give_up "acmo serve on $s did not answer: $(tail -n 5 "$work/logs/$s.log")"
done

# --- the senders --------------------------------------------------------------------------------

# deliver KIND TYPE ORDER DATA KEY [GONE]: send one event until it is acknowledged; print
# "MESSAGE_ID ORDER_ID DUPLICATE". KIND: http (to the sender's server, then the other one after
# a failure), cli (acmo send) or ghost (an UPDATE through acmo send --file, which leaves the
# order's existence to the handler). Exit 1 after a rejection or 60 s of failures; with GONE=1
# (the order may be deleted already) a refusal for an unknown order is exit 3.
deliver() {
  local kind=$1 type=$2 order=$3 data=$4 key=$5 gone=${6:-0} out code rc started server
  started=$(now_ms)
  server=s$((sender % 2 + 1))
  while :; do
    if [[ $kind == http ]]; then
      local method=POST path=/api/orders
      case $type in
        UPDATE) method=PUT path=/api/orders/$order ;;
        DELETE) method=DELETE path=/api/orders/$order data='' ;;
      esac
      out=$(on c curl -s --connect-timeout 1 --max-time 4 -w '\n%{http_code}' -X "$method" \
              "http://${addr[$server]}:$api_port$path" \
              -H 'Content-Type: application/json' -H "Idempotency-Key: $key" \
              ${data:+--data-binary "$data"})
      rc=$?
      code=${out##*$'\n'}
      out=${out%$'\n'*}
      # A 202 whose body was cut off is no acknowledgement: retried like any failure.
      if [[ $rc == 0 && $code == 202 ]] && ack_fields "$out"; then return 0; fi
      if [[ $code == 404 && $gone == 1 ]]; then echo "$type $order" >>"$work/refused"; return 3; fi
      if [[ $code != 000 && $code != 5* && $code != 202 ]]; then
        echo "REJECTED $kind $type $order: $code $out" >>"$work/rejected"
        return 1
      fi
      [[ $server == s1 ]] && server=s2 || server=s1
    else
      if [[ $kind == ghost ]]; then
        printf '{"type":"UPDATE","orderId":"%s","data":%s,"deduplicationId":"%s"}\n' "$order" "$data" "$key" |
          acmo_on c --json send --file - >"$work/cli-$sender.out" 2>"$work/cli-$sender.err"
      else
        acmo_on c --json send "$type" --order-id "$order" ${data:+--data "$data"} --dedup-id "$key" \
          >"$work/cli-$sender.out" 2>"$work/cli-$sender.err"
      fi
      rc=$?
      if [[ $rc == 0 ]] && ack_fields "$(<"$work/cli-$sender.out")"; then return 0; fi
      if [[ $rc == 3 && $gone == 1 ]]; then echo "$type $order" >>"$work/refused"; return 3; fi
      if [[ $rc == 2 || $rc == 3 || $rc == 4 ]]; then
        echo "REJECTED $kind $type $order: exit $rc $(cat "$work/cli-$sender.err")" >>"$work/rejected"
        return 1
      fi
      code="exit $rc: $(head -c 300 "$work/cli-$sender.err")"
    fi
    echo "$kind $type $order: $code" >>"$work/retries-$sender"
    if (($(now_ms) - started > 60000)); then
      echo "GAVE UP $kind $type $order after 60 s: $code" >>"$work/rejected"
      return 1
    fi
    rand_sleep 200
  done
}

# sender N KIND DEADLINE_MS: orders one after the other until the deadline, each plan to its
# end; a CLI sender also sends, every third order, an update of an order that never exists.
sender() {
  sender=$1
  local kind=$2 deadline=$3 n=0 key ack
  while (($(now_ms) < deadline)); do
    n=$((n + 1))
    walk_plan "$n" "$kind" m 50 || return 1
    if [[ $kind == cli && $((n % 3)) == 0 ]]; then
      key="s$sender-o$n"
      ack=$(deliver ghost UPDATE "ord_ghost-$key" '{"status":"processing"}' "m-g$key") || return 1
      record "g$key" 0 UPDATE processing ghost "$ack"
    fi
  done
}

# --- the chaos ----------------------------------------------------------------------------------

started=$(now_ms)
deadline=$((started + seconds * 1000))
for s in 1 2 3; do sender "$s" http "$deadline" & senders+=($!); done
for s in 4 5; do sender "$s" cli "$deadline" & senders+=($!); done

kills_server=0 kills_handler=0 pauses=0 paused_killed=0 cuts_server=0 cuts_handler=0 self_exits=0
# restart_dead: a process that ended by itself is a finding; it is started again.
restart_dead() {
  local p rc
  for p in "${procs[@]}"; do
    if ! kill -0 "${pid[$p]}" 2>/dev/null; then
      wait "${pid[$p]}"; rc=$?
      self_exits=$((self_exits + 1))
      { echo "$p (pid ${pid[$p]}) ended by itself with exit $rc; its last lines:"
        tail -n 4 "$work/logs/$p.log" | sed 's/^/    /'; } >>"$work/self-exits"
      start "$p"
    fi
  done
}
pick() { local a=("$@"); echo "${a[$((RANDOM % $#))]}"; }
# kill9 NAME: kill -9 and start again after up to 0.3 s.
kill9() {
  kill_own CONT "${pid[$1]}"
  kill_own 9 "${pid[$1]}"
  wait "${pid[$1]}" 2>/dev/null
  rand_sleep 300
  start "$1"
}
# pause NAME: SIGSTOP past the visibility timeout (2 s), then SIGCONT, or kill -9 one time in 3.
pause() {
  kill_own STOP "${pid[$1]}"
  pauses=$((pauses + 1))
  sleep "2.$((5 + RANDOM % 5))"
  if ((RANDOM % 3 == 0)); then
    paused_killed=$((paused_killed + 1))
    kill9 "$1"
  else
    kill_own CONT "${pid[$1]}"
  fi
}
# cut HOST: its link down for 3 to 5 s, then up again; its processes stay as they are.
cut() {
  link_down "$1"
  echo "$(($(now_ms) - started)) ms: link of $1 down" >>"$work/cuts"
  sleep "$((3 + RANDOM % 3)).$((RANDOM % 10))"
  link_up "$1"
}

# In turn: kill a handler, pause a handler, kill a server, cut a handler host, kill a handler,
# pause a server, kill a server, cut a server host; each victim at random.
round=0
while (($(now_ms) < deadline)); do
  rand_sleep 700; sleep 0.3
  restart_dead
  case $((round++ % 8)) in
    0 | 4) kill9 "$(pick h1a h1b h2a)"; kills_handler=$((kills_handler + 1)) ;;
    1) pause "$(pick h1a h1b h2a)" ;;
    2 | 6) kill9 "$(pick s1 s2)"; kills_server=$((kills_server + 1)) ;;
    3) cut "$(pick h1 h2)"; cuts_handler=$((cuts_handler + 1)) ;;
    5) pause "$(pick s1 s2)" ;;
    7) cut "$(pick s1 s2)"; cuts_server=$((cuts_server + 1)) ;;
  esac
done
# The senders finish the plans they are in.
sender_failed=0
for p in "${senders[@]}"; do wait "$p" || sender_failed=$((sender_failed + 1)); done
senders=()
chaos_s=$((($(now_ms) - started) / 1000))
restart_dead

# --- the end: the running processes drain the queue ---------------------------------------------

drain_started=$(now_ms)
for _ in $(seq 120); do drained && break; sleep 0.5; done
drain_ms=$(($(now_ms) - drain_started))
check "the running handlers drain the queue after the chaos (${drain_ms} ms)" drained
drained || stats_json | jq -c .queue

# Every process is still up, answers, and its handler beats in the registry.
alive=()
for p in "${procs[@]}"; do kill -0 "${pid[$p]}" 2>/dev/null && alive+=("$p"); done
check "no process ended by itself ($self_exits)" test "$self_exits" -eq 0
[[ -s $work/self-exits ]] && sed 's/^/#   /' "$work/self-exits"
check "every process runs at the end (${alive[*]})" test "${#alive[@]}" -eq "${#procs[@]}"
check "both servers answer over HTTP" api_up s1
check "  (s2)" api_up s2
for _ in $(seq 30); do beating && break; sleep 0.5; done
none_missing "every process's handler beats in the registry (run-handler and serve's)" "${missing_beats[@]}"

# --- the verdict --------------------------------------------------------------------------------

cat "$work"/acks-* >"$work/acks.jsonl" 2>/dev/null
sql "SELECT json_build_object('id', id, 'status', status, 'version', version) FROM orders" >"$work/orders.jsonl"
sql "SELECT json_build_object('order', order_id, 'events',
            json_agg(json_build_object('messageId', message_id, 'sequenceNumber', seq, 'type', type,
                                       'status', data->>'status') ORDER BY id))
       FROM order_events GROUP BY order_id" >"$work/events.jsonl"
: >"$work/dlq.jsonl"
offset=0
while acmo_on c --json dlq list --limit 1000 --offset "$offset" >"$work/page.json"; do
  jq -c '.messages[]' "$work/page.json" >>"$work/dlq.jsonl"
  offset=$((offset + 1000))
  ((offset < $(jq '.total' "$work/page.json"))) || break
done
verdict=$(jq -n --slurpfile acks "$work/acks.jsonl" --slurpfile orders "$work/orders.jsonl" \
                --slurpfile events "$work/events.jsonl" --slurpfile dlq "$work/dlq.jsonl" \
                -f "$here/../torture/verify.jq")
problems=$(jq '.problems | length' <<<"$verdict")
stats=$(stats_json)
sent=$(jq '.queue.sent' <<<"$stats")
acked=$(jq -s 'map(.msg) | unique | length' "$work/acks.jsonl")
applied=$(jq -r '.expected.applied' <<<"$verdict")
dead=$(jq -r '.expected.deadLettered' <<<"$verdict")

check "no sender gave up or was refused" test "$sender_failed" -eq 0 -a ! -s "$work/rejected"
[[ -s $work/rejected ]] && head -n 5 "$work/rejected" | sed 's/^/#   /'
check "the chaos happened: $kills_handler+$kills_server kills, $pauses pauses, $cuts_handler+$cuts_server link cuts" \
  test "$kills_handler" -gt 0 -a "$kills_server" -gt 0 -a "$pauses" -gt 0 -a "$cuts_handler" -gt 0 -a "$cuts_server" -gt 0
check "events were acknowledged over HTTP and the CLI, some had to fail ($applied to apply, $dead to fail)" \
  test "$(jq -s 'map(.kind) | unique | length' "$work/acks.jsonl")" -eq 3 -a "$dead" -gt 0 -a "$applied" -gt 0
check "the queue accepted exactly the acknowledged events ($sent sent, $acked acknowledged)" \
  test "$sent" = "$acked"
check "the audit trail names no message twice" \
  test "$(sql "SELECT count(*) - count(DISTINCT message_id) FROM order_events")" = 0
# The orders table, replayed from the audit trail alone: a CREATE makes an order pending at
# version 1, an UPDATE sets its status and adds 1, a DELETE removes it.
replay_problems=$(jq -rn --slurpfile orders "$work/orders.jsonl" --slurpfile events "$work/events.jsonl" '
  ($orders | map({key: .id, value: "\(.status) v\(.version)"}) | from_entries) as $store
  | ($events | map({key: .order, value: (reduce .events[] as $e (null;
        if $e.type == "CREATE" then {s: "pending", v: 1}
        elif $e.type == "UPDATE" then {s: $e.status, v: (.v + 1)}
        else null end) | if . == null then null else "\(.s) v\(.v)" end)}) | from_entries) as $replay
  | ($store + $replay) | keys[] | select($store[.] != $replay[.])
  | "\(.): the store has \($store[.] // "nothing"), the trail makes \($replay[.] // "nothing")"')
check "the orders table is the replay of the audit trail ($(wc -l <"$work/orders.jsonl") orders, $(wc -l <"$work/events.jsonl") trails)" \
  test -z "$replay_problems"
[[ -n $replay_problems ]] && head -n 10 <<<"$replay_problems" | sed 's/^/#   /'
if [[ $problems == 0 ]]; then
  ok "every acknowledged event applied exactly once, in its order; the orders are the replay of the trail; the DLQ holds exactly what had to fail"
else
  not_ok "$problems problems:"
  jq -r '.problems[:20][]' <<<"$verdict" | sed 's/^/#   /'
fi

# They stop cleanly when asked.
stopped_ok=()
for p in "${procs[@]}"; do
  kill_own TERM "${pid[$p]}"
  wait "${pid[$p]}" && stopped_ok+=("$p")
done
pid=()
check "SIGTERM stops each process with exit 0 (${stopped_ok[*]})" test "${#stopped_ok[@]}" -eq "${#procs[@]}"

echo "# ${chaos_s}s of chaos, $((${EPOCHREALTIME/./} / 1000000 - ${began/./} / 1000000))s in all:" \
     "$acked events acknowledged ($(jq -s 'map(select(.kind == "http")) | length' "$work/acks.jsonl") over HTTP," \
     "$(jq -s 'map(select(.kind == "ghost")) | length' "$work/acks.jsonl") updates of orders never created)" \
     "in $(jq -r '.expected.orders' <<<"$verdict") orders, $(cat "$work"/retries-* 2>/dev/null | wc -l) client retries;" \
     "$applied applied, $dead dead-lettered; kill -9: $kills_handler run-handler, $kills_server serve," \
     "$paused_killed paused ones; $pauses pauses past the visibility timeout;" \
     "link cuts: $cuts_handler handler hosts, $cuts_server server hosts; drained in ${drain_ms} ms"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
