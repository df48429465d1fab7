# Shared by the shell tests: counters, checks and a small JSON reader.
# Source it after setting nothing; it defines passed, failed, ok, not_ok, check, none_missing,
# skip, json_field, start_server and kill_own.
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }
# check NAME COMMAND...: the command must succeed.
check() { local name=$1; shift; if "$@"; then ok "$name"; else not_ok "$name"; fi; }
# none_missing NAME WORD...: passes when no word is given; the words are what is missing or
# wrong (for checks that compare lists, such as the docs test's).
none_missing() {
  local name=$1
  shift
  if [[ $# -eq 0 ]]; then ok "$name"; else not_ok "$name (missing or wrong: $*)"; fi
}
# skip WHAT: a check that cannot run here is skipped outside CI; in CI (CI set) it fails, since
# scripts/install-deps.sh installs every tool the tests use.
skip() {
  if [[ -n ${CI:-} ]]; then not_ok "$* (CI must have it: scripts/install-deps.sh)"; else echo "ok - # SKIP $*"; fi
}
# kill_own SIGNAL PID...: signal each PID that is still a process of this run, never one that
# merely reuses the number (PIDs wrap within minutes on a busy machine: a test that killed
# every PID it once started could kill another run's process). A process of this run has
# ACMO_TEST_RUN=$work in its environment, which a suite exports once it has made $work, or is
# a child of this shell: a subshell (a function run with &) is forked without an exec, so its
# /proc environment is still the one this shell started with.
kill_own() {
  local sig=$1 p
  shift
  for p in "$@"; do
    [[ -n $p && -n ${ACMO_TEST_RUN:-} ]] || continue
    if grep -qzxF "ACMO_TEST_RUN=$ACMO_TEST_RUN" "/proc/$p/environ" 2>/dev/null ||
       [[ "$(awk '/^PPid:/ { print $2 }' "/proc/$p/status" 2>/dev/null)" == "$$" ]]; then
      kill "-$sig" "$p" 2>/dev/null
    fi
  done
  return 0
}
# json_field JSON KEY: the first value of a scalar field (acmo prints compact JSON).
json_field() { sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\)\"\{0,1\}[,}].*/\1/p" <<<"$1" | head -n 1; }
# start_server [FLAGS...]: `$acmo serve` in the background on a port the kernel picks
# (--listen 127.0.0.1:0), its log in $work/serve.log; sets $server_pid and $port (read back from
# the log line "serving http://127.0.0.1:PORT"). A server that does not start ends the script.
start_server() {
  : >"$work/serve.log"
  "$acmo" serve --listen 127.0.0.1:0 "$@" 2>"$work/serve.log" &
  server_pid=$!
  port=''
  local _
  for _ in $(seq 200); do
    port=$(sed -n 's|.*serving http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/serve.log" | head -n 1)
    [[ -n $port ]] && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "not ok - acmo serve did not start:"; cat "$work/serve.log"
  exit 1
}
