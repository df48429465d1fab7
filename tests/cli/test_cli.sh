#!/usr/bin/env bash
# Drives the real acmo binary from a shell, as a user would: send, stats and purge, exit
# codes, bad input, several processes at once, and a kill -9 in the middle of a bulk send.
#   tests/cli/test_cli.sh path/to/acmo
set -uo pipefail
acmo=${1:?usage: $0 path/to/acmo}
work=$(mktemp -d "${TMPDIR:-/tmp}/acmo-cli-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
export ACMO_DATA_DIR="$work/data"
export NO_COLOR=1
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

create_data='{"customer_name":"Ada","customer_email":"ada@example.com","items":[{"product_id":"p1","quantity":2,"unit_price":19.99}]}'

# --- send ---------------------------------------------------------------------------------
out=$("$acmo" send CREATE --json --data "$create_data"); rc=$?
check "send CREATE exits 0" test "$rc" -eq 0
for key in messageId sequenceNumber orderId groupId deduplicationId duplicate; do
  check "send --json has $key" grep -q "\"$key\"" <<<"$out"
done
seq1=$(json_field "$out" sequenceNumber)
check "sequence number is 20 digits" grep -Eq '^[0-9]{20}$' <<<"$seq1"
check "group defaults to orders" test "$(json_field "$out" groupId)" = orders
order=$(json_field "$out" orderId)
check "a CREATE gets an order id" grep -q '^ord_' <<<"$order"

out2=$("$acmo" send UPDATE --json --order-id "$order" --data '{"status":"processing"}')
seq2=$(json_field "$out2" sequenceNumber)
check "sequence numbers increase" test "$seq2" \> "$seq1"

a=$("$acmo" send UPDATE --json --order-id "$order" --data '{"status":"shipped"}' --dedup-id d-1)
b=$("$acmo" send UPDATE --json --order-id "$order" --data '{"status":"shipped"}' --dedup-id d-1)
check "a repeated dedup id is a duplicate" test "$(json_field "$b" duplicate)" = true
check "the duplicate names the original message" \
  test "$(json_field "$a" messageId)" = "$(json_field "$b" messageId)"

err=$("$acmo" send UPDATE --order-id "$order" --data '{"status":"teleported"}' 2>&1); rc=$?
check "an invalid status is rejected with exit 4" test "$rc" -eq 4
check "the error names the field" grep -q "data.status" <<<"$err"
check "errors start with 'acmo: error:'" grep -q "^acmo: error:" <<<"$err"

"$acmo" send DELETE >/dev/null 2>&1; rc=$?
check "DELETE without --order-id exits 4" test "$rc" -eq 4
"$acmo" send CREATE --data '{"customer_name":"A","customer_email":"nope","items":[]}' 2>/dev/null; rc=$?
check "a bad email exits 4" test "$rc" -eq 4
"$acmo" send CREATE --data '{not json' 2>/dev/null; rc=$?
check "--data that is not JSON exits 4" test "$rc" -eq 4
"$acmo" send CREATE --data "$create_data" --group "has space" 2>/dev/null; rc=$?
check "a group id with a space exits 4" test "$rc" -eq 4
"$acmo" send 2>/dev/null; rc=$?
check "send without TYPE or --file exits 2" test "$rc" -eq 2

err=$("$acmo" sned 2>&1); rc=$?
check "a misspelt command exits 2" test "$rc" -eq 2
check "a misspelt command gets a suggestion" grep -q "did you mean 'send'" <<<"$err"
"$acmo" send --no-such-flag 2>/dev/null; rc=$?
check "an unknown flag exits 2" test "$rc" -eq 2
# Usage errors name the command, say what is wrong in its words, and point at its --help.
usage_error() { # ARGS... → the first line of what acmo says, after checking it exits 2
  local err rc
  err=$("$acmo" "$@" 2>&1 >/dev/null); rc=$?
  [[ $rc -eq 2 ]] || echo "exit $rc"
  echo "$err"
}
err=$(usage_error --data-dir "$work/d" dlq lst)
check "a misspelt nested subcommand gets a suggestion" \
  grep -qx "acmo: error: 'lst' is not a subcommand of 'acmo dlq'; did you mean 'list'?" <<<"$err"
check "  and the help of that command" grep -qx "Run 'acmo dlq --help' for its arguments and options." <<<"$err"
err=$(usage_error config)
check "a missing subcommand is named with the choices" \
  grep -qx "acmo: error: 'acmo config' needs a subcommand: show or check" <<<"$err"
err=$(usage_error send --waitt)
check "a misspelt flag gets a suggestion" \
  grep -qx "acmo: error: 'acmo send' has no option --waitt; did you mean --wait?" <<<"$err"
err=$(usage_error send --order ord_1 CREATE)
check "  a flag cut short, the one it begins" \
  grep -qx "acmo: error: 'acmo send' has no option --order; did you mean --order-id?" <<<"$err"
err=$(usage_error stats --jsn)
check "  a global flag too" grep -q "did you mean --json?" <<<"$err"
err=$(usage_error orders get)
check "a missing argument is named" grep -qx "acmo: error: 'acmo orders get' needs its ID argument" <<<"$err"
err=$(usage_error orders get a b)
check "an extra argument is named" \
  grep -qx "acmo: error: 'acmo orders get' does not take the argument 'b'" <<<"$err"
err=$(usage_error orders list --limit abc)
check "a number that is not one is named" grep -qx "acmo: error: --limit: \"abc\" is not a whole number" <<<"$err"
for n in 010 0x10 ' 5' +5; do
  err=$(usage_error orders list --limit "$n")
  check "a number not in plain decimal is refused, never read as another ('$n')" \
    grep -qxF "acmo: error: --limit: \"$n\" is not a whole number written in decimal digits (such as 10)" <<<"$err"
done
err=$(usage_error orders list --offset 9223372036854775808)
check "a number past 64 bits is refused, never clamped" \
  grep -qx "acmo: error: --offset: 9223372036854775808 is out of range" <<<"$err"
err=$(usage_error send CREATE --data '{}' --data '{}')
check "an option given twice says so" grep -qx "acmo: error: --data is given more than once; give it once" <<<"$err"
err=$(usage_error send CREATE -- --order-id x)
check "a word after -- is an argument, whatever it looks like" \
  grep -qxF "acmo: error: 'acmo send' does not take the argument '--order-id' (after --, every word is an argument)" <<<"$err"
err=$(usage_error --version extra)
check "--version with anything else is a usage error" \
  grep -qxF "acmo: error: --version takes nothing else; run 'acmo --version' alone" <<<"$err"
err=$(usage_error send CREATE --data)
check "a flag without its value says what value" grep -qx "acmo: error: --data needs a value: JSON|@FILE" <<<"$err"
err=$(usage_error stats --watch soon)
check "a flag whose value is not a number says how to give one" \
  grep -qxF "acmo: error: --watch: 'soon' is not a number of seconds, nor an argument of 'acmo stats'" <<<"$err"
err=$(usage_error -x)
check "an unknown flag before any subcommand is named" grep -qx "acmo: error: 'acmo' has no option -x" <<<"$err"
out=$("$acmo" --help); rc=$?
check "--help exits 0" test "$rc" -eq 0
check "  and lists the exit codes" grep -q "^Exit codes: 0 success, 1 failure, 2 usage" <<<"$out"
out=$("$acmo" orders get --help)
check "a subcommand's --help says where the global options are" \
  grep -q "^Global options (--config FILE, --data-dir DIR, --json, -q, -v)" <<<"$out"

# --data @FILE and @- (stdin), in a data dir of their own.
echo "$create_data" >"$work/data.json"
out=$("$acmo" --data-dir "$work/data-at" send CREATE --data "@$work/data.json" --json); rc=$?
check "--data @FILE reads the data from FILE" test "$rc" -eq 0 -a -n "$(json_field "$out" orderId)"
out=$("$acmo" --data-dir "$work/data-at" send CREATE --dedup-id from-stdin --data @- --json \
  <"$work/data.json"); rc=$?
check "--data @- reads it from stdin" test "$rc" -eq 0 -a -n "$(json_field "$out" orderId)"
err=$("$acmo" --data-dir "$work/data-at" send CREATE --data "@$work/no-such.json" 2>&1); rc=$?
check "a --data file that is not there exits 2, saying why" \
  test "$rc" -eq 2 -a -n "$(grep "No such file or directory" <<<"$err")"

# Hostile data at every way in: the rules of an HTTP body, and no crash however deep.
deep() { local n=$1; printf '{"customer_name":"A","customer_email":"a@example.com","items":[],"x":'
  head -c "$n" /dev/zero | tr '\0' '['; head -c "$n" /dev/zero | tr '\0' ']'; printf '}'; }
deep 70000 >"$work/deep.json"
err=$("$acmo" --data-dir "$work/data-at" send CREATE --data "@$work/deep.json" 2>&1); rc=$?
check "--data nested 70,000 deep exits 4, saying so (got $rc: ${err:0:200})" \
  test "$rc" -eq 4 -a -n "$(grep -F -- "--data nests deeper than 64 levels" <<<"$err")"
err=$("$acmo" --data-dir "$work/data-at" send CREATE --data @- <"$work/deep.json" 2>&1); rc=$?
check "  and from stdin (got $rc)" test "$rc" -eq 4
{ printf '{"type":"CREATE","orderId":"ord_deep","data":'; deep 200000; printf '}\n'
  printf '{"type":"DELETE","orderId":"ord_ok"}\n'; } >"$work/deep.jsonl"
out=$("$acmo" --data-dir "$work/data-at" send --file "$work/deep.jsonl" 2>"$work/deep.err"); rc=$?
check "send --file with a line nested 200,000 deep sends the others, exit 4 (got $rc: $out)" \
  test "$rc" -eq 4 -a "$out" = "sent 1, duplicates 0, failed 1"
check "  naming the line and the rule" grep -q "^acmo: error: line 1: the line nests deeper than 64 levels" "$work/deep.err"
err=$("$acmo" --data-dir "$work/data-at" send UPDATE --order-id ord_1 \
  --data '{"status":"shipped","status":"pending"}' 2>&1); rc=$?
check "--data with a key twice exits 4, as over HTTP (got $rc: $err)" \
  test "$rc" -eq 4 -a -n "$(grep -F 'holds the key "status" twice' <<<"$err")"
for price in 1e-9 12.3400000001; do
  err=$("$acmo" --data-dir "$work/data-at" send CREATE \
    --data "{\"customer_name\":\"A\",\"customer_email\":\"a@example.com\",\"items\":[{\"product_id\":\"p\",\"quantity\":1,\"unit_price\":$price}]}" 2>&1); rc=$?
  check "a unit price of $price exits 4: more than two decimals (got $rc: $err)" \
    test "$rc" -eq 4 -a -n "$(grep -F "more than two decimals" <<<"$err")"
done
err=$("$acmo" --data-dir "$work/data-at" send CREATE \
  --data '{"customer_name":"A","customer_email":"a@example.com","items":[{"product_id":"p","quantity":1000000,"unit_price":999999999.99}]}' 2>&1); rc=$?
check "an order over the total limit is refused when sent, exit 4 (got $rc: $err)" \
  test "$rc" -eq 4 -a -n "$(grep -F "total is over 1,000,000,000" <<<"$err")"
start=$(date +%s%N)
err=$("$acmo" --data-dir "$work/data-at" send CREATE --data @/dev/zero 2>&1); rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
check "--data @/dev/zero stops at the body limit, exit 4, in ${ms} ms (got $rc: $err)" \
  test "$rc" -eq 4 -a "$ms" -lt 5000 -a -n "$(grep -F "more than 1 MiB" <<<"$err")"

# A configuration file too large to be one is refused before it is read.
{ echo '[queue]'; head -c 2000000 /dev/zero | tr '\0' '#'; echo; } >"$work/huge.toml"
err=$("$acmo" --config "$work/huge.toml" config check 2>&1); rc=$?
check "a 2 MB configuration file is refused with exit 2 (got $rc: ${err:0:120})" \
  test "$rc" -eq 2 -a -n "$(grep -F "more than a configuration file can be (1 MiB)" <<<"$err")"

# config show hides tokens and passwords unless asked.
out=$(ACMO_SERVER_API_TOKENS=tok-one,tok-two ACMO_STORE_URL='postgresql://acmo:pg-pass@db/acmo' \
      ACMO_CACHE_URL='redis://:redis-pass@127.0.0.1:6379' "$acmo" config show)
check "config show prints no token or password" \
  bash -c '! grep -qE "tok-one|tok-two|pg-pass|redis-pass" <<<"$1"' _ "$out"
check "  but says they are there" grep -qF 'postgresql://acmo:***@db/acmo' <<<"$out"
out=$(ACMO_SERVER_API_TOKENS=tok-one "$acmo" --json config show)
check "config show --json neither" bash -c '! grep -q tok-one <<<"$1"' _ "$out"
out=$(ACMO_SERVER_API_TOKENS=tok-one "$acmo" config show --show-secrets)
check "config show --show-secrets prints them" grep -q tok-one <<<"$out"

# config check: a broken file is named with its line and column, in text and in JSON.
printf '[queue]\n\nvisibility_timeout = "soon"\n' >"$work/broken.toml"
err=$("$acmo" --config "$work/broken.toml" config check 2>&1); rc=$?
check "config check of a broken file exits 2 (got $rc)" test "$rc" -eq 2
check "  naming file, line, column and key" \
  grep -qF "acmo: error: $work/broken.toml:3:22: queue.visibility_timeout: \"soon\" is not a duration" <<<"$err"
out=$("$acmo" --config "$work/broken.toml" --json config check 2>/dev/null); rc=$?
check "config check --json of a broken file says so on stdout, exit 2 ($rc: $out)" \
  bash -c '[[ $1 == 2 && $2 == "{\"error\":\""*"\"ok\":false}" ]]' _ "$rc" "$out"

# A data dir acmo may not use is a configuration error (exit 2) that says so, never "retry".
mkdir -p "$work/locked" && chmod 555 "$work/locked"
as_other=()
other_acmo=$acmo
if [[ $(id -u) -eq 0 ]]; then
  # Root may write anywhere: be nobody, who may enter the work dir but not write there, with a
  # copy of the binary there (the build dir may be out of nobody's reach).
  as_other=(runuser -u nobody --)
  chmod 755 "$work"
  other_acmo=$work/acmo
  cp "$acmo" "$other_acmo" && chmod 755 "$other_acmo"
fi
err=$("${as_other[@]}" "$other_acmo" --data-dir "$work/locked" send DELETE --order-id x 2>&1); rc=$?
check "a data dir this user may not write exits 2 (got $rc)" test "$rc" -eq 2
check "  saying so" grep -q "this user may not write the data directory $work/locked" <<<"$err"
err=$("${as_other[@]}" "$other_acmo" --data-dir "$work/locked/below" send DELETE --order-id x 2>&1)
rc=$?
check "a data dir this user may not create exits 2 (got $rc: $err)" test "$rc" -eq 2
printf 'x' >"$work/a-file"
"$acmo" --data-dir "$work/a-file" send DELETE --order-id x 2>/dev/null; rc=$?
check "a data dir that is a file exits 2 (got $rc)" test "$rc" -eq 2
"$acmo" -q --data-dir "$work/ro-db" send CREATE --order-id x --data "$create_data"
chmod 444 "$work/ro-db/acmo.db"
[[ $(id -u) -eq 0 ]] && chown -R nobody "$work/ro-db"
err=$("${as_other[@]}" "$other_acmo" --data-dir "$work/ro-db" send DELETE --order-id x 2>&1)
rc=$?
check "a queue database that is read-only for this user exits 2 (got $rc: $err)" \
  test "$rc" -eq 2 -a -n "$(grep "may not write the queue database" <<<"$err")"

# Commands that only read or act on what is there refuse a data dir without acmo's data, and
# create nothing there: a mistyped --data-dir is an error, not an empty, healthy queue.
for cmd in "stats" "stats --json" "purge --yes" "dlq list" "dlq show 00000000-0000-0000-0000-000000000000" \
           "dlq redrive" "dlq purge --yes" "orders list" "orders get ord_1" "peek" "groups" \
           "groups --json" "dlq list --reason x" "dlq redrive --older-than 1h --rate 10"; do
  # shellcheck disable=SC2086 # the command's words
  err=$("$acmo" --data-dir "$work/typo/dir" $cmd 2>&1); rc=$?
  check "$cmd in a data dir without acmo data exits 3 (got $rc)" test "$rc" -eq 3
  check "  saying so" grep -qF "no acmo data in $work/typo/dir" <<<"$err"
done
check "  and nothing was created" test ! -e "$work/typo"
err=$("$acmo" -v --data-dir "$work/typo/dir" send DELETE --order-id x 2>&1); rc=$?
check "send creates the data dir (exit $rc), and -v says so" \
  grep -qF "no acmo data in $work/typo/dir yet: creating it" <<<"$err"
check "  then stats reads it" "$acmo" -q --data-dir "$work/typo/dir" stats

# A dead-lettered event is logged, one line naming the message and the reason.
dl=(--data-dir "$work/dead-log")
"$acmo" -q "${dl[@]}" send CREATE --order-id ord_dl --data '{"customer_name":"a","customer_email":"a@b.c","items":[]}'
"$acmo" -q "${dl[@]}" send UPDATE --order-id ord_dl --data '{"status":"cancelled"}'
"$acmo" -q "${dl[@]}" send UPDATE --order-id ord_dl --data '{"status":"shipped"}'
"$acmo" "${dl[@]}" run-handler --once >/dev/null 2>"$work/dead-log.err"
dead_id=$("$acmo" "${dl[@]}" --json dlq list | sed -n 's/.*"messageId":"\([^"]*\)".*/\1/p')
check "run-handler logs the dead-lettered event, its message id and reason ($(cat "$work/dead-log.err"))" \
  test "$(grep -c "warn.*: message $dead_id (sequence 0*3, order ord_dl, group orders) dead-lettered to orders-dlq after 1 failure: order ord_dl is cancelled; it cannot become shipped" "$work/dead-log.err")" = 1

# Honest times: orders sent a second apart, applied together, keep the times they were
# accepted; the audit trail keeps when each was accepted and when it was applied.
tm=(--data-dir "$work/times")
"$acmo" -q "${tm[@]}" send CREATE --order-id ord_t1 --data "$create_data"
sleep 1.1
"$acmo" -q "${tm[@]}" send CREATE --order-id ord_t2 --data "$create_data"
sleep 1.1
"$acmo" -q "${tm[@]}" send UPDATE --order-id ord_t1 --data '{"status":"processing"}'
sleep 1.1
"$acmo" -q "${tm[@]}" run-handler --once >/dev/null
ms() { python3 -c 'import sys, datetime; print(int(datetime.datetime.fromisoformat(sys.argv[1].replace("Z", "+00:00")).timestamp() * 1000))' "$1"; }
t1=$("$acmo" "${tm[@]}" --json orders get ord_t1)
t2=$("$acmo" "${tm[@]}" --json orders get ord_t2)
c1=$(ms "$(json_field "$t1" created_at)"); u1=$(ms "$(json_field "$t1" updated_at)")
c2=$(ms "$(json_field "$t2" created_at)")
check "orders sent a second apart keep their own created_at ($((c2 - c1)) ms apart)" \
  test $((c2 - c1)) -ge 1000 -a $((c2 - c1)) -lt 3000
check "  updated_at is when the UPDATE was accepted ($((u1 - c1)) ms after the CREATE)" \
  test $((u1 - c1)) -ge 2000 -a $((u1 - c1)) -lt 5000
trail=$("$acmo" "${tm[@]}" --json orders events ord_t1)
# (json_field reads the last event's: the UPDATE, applied a second after it was accepted)
accepted=$(ms "$(json_field "$trail" acceptedAt)"); applied=$(ms "$(json_field "$trail" appliedAt)")
check "  the audit trail keeps when it was accepted and when applied ($((applied - accepted)) ms later)" \
  test "$accepted" = "$u1" -a $((applied - accepted)) -ge 1000

# --- send --file ----------------------------------------------------------------------------
cat >"$work/events.jsonl" <<JSONL
{"type":"CREATE","orderId":"ord_file_1","data":$create_data}
{"type":"UPDATE","orderId":"ord_file_1","data":{"status":"processing"}}
{"type":"UPDATE","orderId":"ord_file_1","data":{"status":"nonsense"}}

{"type":"DELETE","orderId":"ord_file_1","data":{}}
this is not json
JSONL
out=$("$acmo" send --file "$work/events.jsonl" --json 2>"$work/file.err"); rc=$?
check "--file with bad lines exits 4" test "$rc" -eq 4
check "bad line 3 is reported by number" grep -q "line 3:" "$work/file.err"
check "bad line 6 is reported by number" grep -q "line 6:" "$work/file.err"
summary=$(tail -n 1 <<<"$out")
check "--file summary counts 3 sent" test "$(json_field "$summary" sent)" = 3
check "--file summary counts 2 failed" test "$(json_field "$summary" failed)" = 2
check "--file prints one object per sent event" test "$(grep -c messageId <<<"$out")" -eq 3
out=$(head -n 2 "$work/events.jsonl" | "$acmo" send --file - --json)
check "--file - reads stdin (and dedups by content)" \
  test "$(json_field "$(tail -n 1 <<<"$out")" duplicates)" = 2
# Input of every shape, in a data dir of its own.
at=(--data-dir "$work/file-shapes")
out=$(printf '\xef\xbb\xbf{"type":"DELETE","orderId":"crlf_1"}\r\n{"type":"DELETE","orderId":"crlf_2"}' |
  "$acmo" "${at[@]}" send --file -); rc=$?
check "--file takes a BOM, CRLF and a last line without newline (got $rc: $out)" \
  test "$rc" -eq 0 -a "$out" = "sent 2, duplicates 0, failed 0"
{
  echo '{"type":"DELETE","orderId":"long_1"}'
  head -c 3000000 /dev/zero | tr '\0' x; echo
  echo '{"type":"DELETE","orderId":"long_2"}'
} >"$work/long-line.jsonl"
out=$("$acmo" "${at[@]}" send --file "$work/long-line.jsonl" 2>"$work/long-line.err"); rc=$?
check "a line longer than any event is reported and skipped, the others sent (got $rc: $out)" \
  test "$rc" -eq 4 -a "$out" = "sent 2, duplicates 0, failed 1"
check "  by its number" grep -q "^acmo: error: line 2: longer than 2 MiB" "$work/long-line.err"
# Lines are sent in parts (5,000 lines at most), the next part read while one is sent: every
# line's answer and every error still come in line order.
python3 - "$work/parts.jsonl" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(1, 12001):
        if i in (3, 5001, 11999):
            f.write("not an event\n")
        else:
            f.write('{"type":"DELETE","orderId":"part_%d"}\n' % i)
PY
out=$("$acmo" "${at[@]}" --json send --file "$work/parts.jsonl" 2>"$work/parts.err"); rc=$?
check "--file of 12,000 lines, 3 of them bad, counts them all (got $rc: $(tail -n 1 <<<"$out"))" \
  test "$rc" -eq 4 -a "$(tail -n 1 <<<"$out")" = '{"duplicates":0,"failed":3,"sent":11997}'
check "  its errors in line order" \
  test "$(grep -o '^acmo: error: line [0-9]*' "$work/parts.err" | tr '\n' ' ')" \
  = "acmo: error: line 3 acmo: error: line 5001 acmo: error: line 11999 "
check "  and its answers in line order" \
  python3 -c 'import json,sys
ids = [json.loads(l)["orderId"] for l in sys.stdin if "orderId" in l]
want = ["part_%d" % i for i in range(1, 12001) if i not in (3, 5001, 11999)]
sys.exit(0 if ids == want else 1)' <<<"$out"
# Lines piped in as a producer writes them are sent as they come, not when the input ends.
mkfifo "$work/live.fifo"
"$acmo" "${at[@]}" --json send --file - <"$work/live.fifo" >"$work/live.out" 2>"$work/live.err" &
live_pid=$!
exec 7>"$work/live.fifo"
echo '{"type":"DELETE","orderId":"live_1"}' >&7
for _ in $(seq 300); do grep -q '"orderId":"live_1"' "$work/live.out" && break; sleep 0.1; done
check "a line piped into --file - is sent and answered while the input is still open" \
  grep -q '"orderId":"live_1"' "$work/live.out"
echo '{"type":"DELETE","orderId":"live_2"}' >&7
exec 7>&-
wait "$live_pid"; rc=$?
check "  the next when it comes, and the count when the input ends (got $rc: $(tail -n 1 "$work/live.out"))" \
  test "$rc" -eq 0 -a "$(tail -n 1 "$work/live.out")" = '{"duplicates":0,"failed":0,"sent":2}'
# Memory stays bounded by the parts' size, not the lines': 400 lines of 170 kB (68 MB), which
# held at once would take several times that. Under a sanitizer (scripts/test-sanitizers.sh)
# the allocator keeps freed memory and shadows what it holds, so only the release build's
# figure is checked; the lines are sent in every build.
python3 - "$work/wide.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(400):
        items = [{"product_id": "p%d" % j + "x" * 120, "quantity": 1, "unit_price": 1.0}
                 for j in range(1000)]
        f.write(json.dumps({"type": "CREATE", "orderId": "wide_%d" % i,
                            "data": {"customer_name": "W", "customer_email": "w@example.com",
                                     "items": items}}, separators=(",", ":")) + "\n")
PY
rss=$(python3 -c 'import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, r.stdout)' \
  "$acmo" "${at[@]}" send --file "$work/wide.jsonl")
check "--file of 400 lines of 170 kB sends them all (exit, MB, output: $rss)" \
  test "$(cut -d' ' -f1 <<<"$rss")" -eq 0 -a "$(cut -d' ' -f3- <<<"$rss")" = "sent 400, duplicates 0, failed 0"
if [ -z "${ASAN_OPTIONS:-}${TSAN_OPTIONS:-}" ]; then
  check "  in at most 200 MB of memory ($(cut -d' ' -f2 <<<"$rss") MB)" \
    test "$(cut -d' ' -f2 <<<"$rss")" -le 200
fi
err=$("$acmo" "${at[@]}" send --file "$work" 2>&1); rc=$?
check "--file of a directory exits 2, saying so (got $rc)" \
  test "$rc" -eq 2 -a -n "$(grep "is a directory" <<<"$err")"
err=$("$acmo" "${at[@]}" send --file /proc/self/mem 2>&1); rc=$?
check "a read error in --file exits 1, saying so (got $rc: $err)" \
  test "$rc" -eq 1 -a -n "$(grep "reading /proc/self/mem failed after line 0: Input/output error" <<<"$err")"
err=$(printf 'nonsense\n' | "$acmo" "${at[@]}" send --file - 2>&1)
check "a line that is not JSON is named and shown what a line is" \
  grep -qF 'line 1: the line is not valid JSON: parse error at line 1, column 2' <<<"$err"
check "  and shown what a line is" \
  grep -qF 'each line is one event object, such as {"type":"DELETE"' <<<"$err"

# --- stats ------------------------------------------------------------------------------------
stats=$("$acmo" stats --json)
check "stats --json counts 6 visible" test "$(json_field "$stats" visible)" = 6
check "stats --json counts 6 sent" test "$(json_field "$stats" sent)" = 6
check "stats --json counts 3 duplicates" test "$(json_field "$stats" duplicates)" = 3
for key in name visible inFlight delayed deadLettered dedupEntries sent duplicates received \
           deleted retried expired oldestAgeMs; do
  check "stats --json has queue.$key" grep -q "\"$key\"" <<<"$stats"
done
check "stats prints a table" grep -q "in flight" <<<"$("$acmo" stats)"
check "stats --json has the handler figures" grep -q '"handler":{"deadLettered":0,"handlers":\[\]' <<<"$stats"
check "stats --json has the store" grep -q '"store":{"backend":"sqlite","orders":0}' <<<"$stats"

# --- purge ------------------------------------------------------------------------------------
"$acmo" purge </dev/null 2>/dev/null; rc=$?
check "purge off a TTY without --yes exits 2" test "$rc" -eq 2
check "purge refused: nothing removed" test "$(json_field "$("$acmo" stats --json)" visible)" = 6
out=$("$acmo" purge --yes --json)
check "purge --yes reports the count" test "$out" = '{"purged":6}'
check "purge empties the queue" test "$(json_field "$("$acmo" stats --json)" visible)" = 0
out=$("$acmo" send CREATE --json --order-id "$order" --data "$create_data" --dedup-id d-1)
check "purge clears the dedup history" test "$(json_field "$out" duplicate)" = false

# --- several processes at once ----------------------------------------------------------------
"$acmo" purge --yes >/dev/null
for p in 1 2 3 4; do
  (
    for i in $(seq 1 40); do
      "$acmo" send CREATE --json --order-id "ord_p${p}_$i" --data "$create_data" >>"$work/multi.$p" \
        2>>"$work/multi.err" || echo "send failed" >>"$work/multi.err"
    done
  ) &
done
wait
check "4 processes x 40 sends: no errors" test ! -s "$work/multi.err"
check "4 processes x 40 sends: 160 visible" test "$(json_field "$("$acmo" stats --json)" visible)" = 160
check "no 'database is locked' surfaced" bash -c "! grep -qi locked '$work/multi.err' 2>/dev/null"
dups=$(cat "$work"/multi.[1-4] | sed -n 's/.*"sequenceNumber":"\([0-9]*\)".*/\1/p' | sort | uniq -d | wc -l)
check "4 processes: every sequence number distinct" test "$dups" -eq 0

# --- kill -9 in the middle of a bulk send -----------------------------------------------------
"$acmo" purge --yes >/dev/null
# The kill comes after the first sends are acknowledged, while the rest are still going in.
bulk_events=300000
seq 1 "$bulk_events" | sed 's/.*/{"type":"CREATE","orderId":"ord_k&","data":{"customer_name":"K","customer_email":"k@example.com","items":[]}}/' >"$work/bulk.jsonl"
"$acmo" send --file "$work/bulk.jsonl" --json >"$work/bulk.out" 2>/dev/null &
pid=$!
for _ in $(seq 1 200); do
  grep -q messageId "$work/bulk.out" && break
  sleep 0.02
done
sleep "0.$((RANDOM % 4))" # and then at a moment of its own
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
acked=$(grep -c messageId "$work/bulk.out")
check "the kill -9 came in the middle of the bulk send ($acked of $bulk_events acknowledged)" \
  test "$acked" -gt 0 -a "$acked" -lt "$bulk_events"
stats=$("$acmo" stats --json); rc=$?
check "stats works after kill -9 of a bulk send" test "$rc" -eq 0
visible=$(json_field "$stats" visible)
check "every acknowledged bulk send survived kill -9 ($acked acked, $visible visible)" \
  test "$visible" -ge "$acked"
check "the queue holds whole 5,000-event transactions, nothing half-written ($visible)" test $((visible % 5000)) -eq 0
out=$("$acmo" send --json CREATE --data "$create_data"); rc=$?
check "sending works after the kill" test "$rc" -eq 0

# --- acmo groups; the DLQ's filters, and a paced redrive --------------------------------------
vw=(--data-dir "$work/views")
pending='{"customer_name":"a","customer_email":"a@b.c","items":[]}'
for g in g_a g_b; do
  "$acmo" -q "${vw[@]}" send CREATE --order-id "ord_$g" --group "$g" --data "$pending"
done
"$acmo" -q "${vw[@]}" send UPDATE --order-id ord_g_a --group g_a --data '{"status":"processing"}'
out=$("$acmo" "${vw[@]}" groups); rc=$?
check "groups exits 0 and shows a header, a line a group, the totals (got $rc: $out)" \
  test "$rc" -eq 0 -a "$(grep -c '^g_[ab] ' <<<"$out")" = 2 -a \
    -n "$(grep -x 'GROUP *DEPTH  IN FLIGHT   HEAD AGE  BLOCKED' <<<"$out")" -a \
    -n "$(grep -x '2 groups, 3 messages, 0 in flight, 0 blocked' <<<"$out")"
check "  the oldest head first, its depth, nothing in flight, not blocked" \
  grep -qE '^g_a +2 +0 +[0-9.]+ m?s +-$' <<<"$(sed -n 2p <<<"$out")"
out=$("$acmo" "${vw[@]}" --json groups --limit 1)
check "groups --json --limit 1: one group, the other counted as omitted, the totals ($out)" \
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); g=d["groups"][0]
sys.exit(not (d["count"] == 1 and d["omitted"] == 1 and g["groupId"] == "g_a" and g["depth"] == 2
  and g["inFlight"] == 0 and g["blocked"] is None and g["headAgeMs"] >= 0
  and g["headSequenceNumber"] == "00000000000000000001" and "headFirstSentAt" in g and "headVisibleAt" in g
  and d["totals"] == {"groups": 2, "messages": 3, "inFlight": 0, "blocked": 0}))' "$out"
out=$("$acmo" "${vw[@]}" groups --limit 1)
check "  the text says how many the limit left out" grep -qx '1 more group not shown; --limit shows up to 1000' <<<"$out"
out=$("$acmo" "${vw[@]}" groups --blocked)
check "groups --blocked with none blocked says so" \
  test "$out" = "no group is blocked (2 groups, 3 messages, 0 in flight, 0 blocked)"
err=$("$acmo" "${vw[@]}" groups --limit 0 2>&1); rc=$?
check "groups --limit 0 exits 2, saying the range (got $rc: $err)" \
  test "$rc" -eq 2 -a "$err" = "acmo: error: --limit must be 1 to 1000"
"$acmo" "${vw[@]}" groups --blocked=maybe >/dev/null 2>&1; rc=$?
check "groups --blocked=maybe exits 2 (got $rc)" test "$rc" -eq 2

# Dead letters of two reasons: 40 forbidden changes (pending -> shipped), then a CREATE of an
# order that exists.
"$acmo" -q "${vw[@]}" run-handler --once 2>/dev/null
"$acmo" -q "${vw[@]}" purge --dlq --yes
for i in $(seq 1 40); do
  echo "{\"type\":\"CREATE\",\"orderId\":\"ord_dl$i\",\"data\":$pending}"
  echo "{\"type\":\"UPDATE\",\"orderId\":\"ord_dl$i\",\"data\":{\"status\":\"shipped\"}}"
done >"$work/dead.jsonl"
echo "{\"type\":\"CREATE\",\"orderId\":\"ord_dl1\",\"data\":{\"customer_name\":\"b\",\"customer_email\":\"b@b.c\",\"items\":[]}}" >>"$work/dead.jsonl"
"$acmo" -q "${vw[@]}" send --file "$work/dead.jsonl" 2>/dev/null
"$acmo" -q "${vw[@]}" run-handler --once 2>/dev/null
total() { json_field "$("$acmo" "${vw[@]}" --json dlq list --limit 1 "$@")" total; }
check "41 events were dead-lettered" test "$(total)" = 41
check "dlq list --reason matches a part of the reason in any letter case" \
  test "$(total --reason "CANNOT become shipped")" = 40
out=$("$acmo" "${vw[@]}" dlq list --reason "cannot become" --limit 2)
check "  the text says how many match ($out)" grep -qx '2 of 40 matching dead-lettered messages' <<<"$out"
check "dlq list --newer-than 1h takes them all, --older-than 1h none" \
  test "$(total --newer-than 1h)/$(total --older-than 1h)" = 41/0
check "  --older-than 0s --newer-than 1d takes them all" test "$(total --older-than 0s --newer-than 1d)" = 41
for bad in "--older-than soon" "--newer-than 5" "--older-than 2h --newer-than 1h" \
           "--newer-than 0s" "--older-than -1h"; do
  # shellcheck disable=SC2086 # the flags' words
  err=$("$acmo" "${vw[@]}" dlq list $bad 2>&1); rc=$?
  check "dlq list $bad exits 2, saying what is wrong (got $rc: $err)" \
    test "$rc" -eq 2 -a -n "$(grep '^acmo: error: .*\(is not a duration\|match no message\|matches no message\)' <<<"$err")"
done
err=$("$acmo" "${vw[@]}" dlq list --older-than soon 2>&1)
check "  a bad duration names the flag and shows how to write one ($err)" \
  test "$err" = 'acmo: error: --older-than: "soon" is not a duration; write a whole number and a unit: "500ms", "30s", "5m", "2h" or "4d"'
some_id=$(json_field "$("$acmo" "${vw[@]}" --json dlq list --limit 1)" messageId)
err=$("$acmo" "${vw[@]}" dlq list --reason "" 2>&1); rc=$?
check "dlq list --reason \"\" exits 2, saying what to give (got $rc: $err)" \
  test "$rc" -eq 2 -a -n "$(grep -F 'acmo: error: --reason was given an empty value; give it one, or leave it out' <<<"$err")"
for bad in "--reason x" "--rate 5"; do
  # shellcheck disable=SC2086 # the flags' words
  err=$("$acmo" "${vw[@]}" dlq redrive $bad "$some_id" 2>&1); rc=$?
  check "dlq redrive ID $bad exits 2, saying ids go alone (got $rc: $err)" \
    test "$rc" -eq 2 -a "$err" = "acmo: error: message ids go without --reason, --older-than, --newer-than and --rate: give either the ids or the filters"
done
err=$("$acmo" "${vw[@]}" dlq redrive --rate 0 2>&1); rc=$?
check "dlq redrive --rate 0 exits 2, saying the range (got $rc: $err)" \
  test "$rc" -eq 2 -a "$err" = "acmo: error: --rate must be 1 to 100000 messages a second"
check "  nothing moved" test "$(total)" = 41

# A filtered redrive moves only what matches.
out=$("$acmo" "${vw[@]}" --json dlq redrive --reason "exists"); rc=$?
check "dlq redrive --reason moves only the matching message (got $rc: $out)" \
  test "$rc/$out/$(total)" = '0/{"redriven":1}/40'
"$acmo" -q "${vw[@]}" purge --yes

# --rate 20: 40 messages take about 2 s, in their original order.
before=$("$acmo" "${vw[@]}" --json dlq list --limit 100 | python3 -c 'import json,sys; print(" ".join(m["body"]["orderId"] for m in json.load(sys.stdin)["messages"]))')
started=$(date +%s%N)
out=$("$acmo" "${vw[@]}" --json dlq redrive --rate 20); rc=$?
took=$(( ($(date +%s%N) - started) / 1000000 ))
check "dlq redrive --rate 20 moves the 40 (got $rc: $out)" test "$rc/$out" = '0/{"redriven":40}'
check "  paced: 40 messages at 20 a second take at least 1.5 s (took $took ms)" test "$took" -ge 1500
after=$("$acmo" "${vw[@]}" --json peek --limit 100 | python3 -c 'import json,sys; print(" ".join(m["body"]["orderId"] for m in json.load(sys.stdin)["messages"]))')
check "  in their original order" test "$before" = "$after" -a -n "$after"

# SIGINT stops a paced redrive between two steps: it says how many moved and exits 1; the rest
# stay in the DLQ.
"$acmo" -q "${vw[@]}" run-handler --once 2>/dev/null
check "the 40 are dead-lettered again" test "$(total)" = 40
"$acmo" "${vw[@]}" dlq redrive --rate 10 >"$work/paced.out" 2>&1 &
paced=$!
sleep 1.2
kill -INT "$paced"
wait "$paced"; rc=$?
moved=$(sed -n 's/^stopped: moved \([0-9]*\) messages back to orders, in their original order; the rest stay in the DLQ$/\1/p' "$work/paced.out")
check "SIGINT stops dlq redrive --rate: exit 1, how many moved ($rc: $(cat "$work/paced.out"))" \
  test "$rc" -eq 1 -a -n "$moved"
check "  some moved, the rest stay in the DLQ ($moved + $(total))" \
  test "${moved:-0}" -gt 0 -a "${moved:-0}" -lt 40 -a $(( ${moved:-0} + $(total) )) -eq 40
check "  the queue holds exactly those ($(json_field "$("$acmo" "${vw[@]}" --json groups)" messages))" \
  test "$(json_field "$("$acmo" "${vw[@]}" --json groups)" messages)" = "$moved"

# A paced redrive that was stopped goes on at its rate: no burst makes up for the lost time.
"$acmo" -q "${vw[@]}" run-handler --once 2>/dev/null
check "the 40 are dead-lettered again" test "$(total)" = 40
"$acmo" "${vw[@]}" -q dlq redrive --rate 20 >/dev/null 2>&1 &
paced=$!
sleep 0.5
kill -STOP "$paced"
sleep 1.5
kill -CONT "$paced"
sleep 0.25
left=$(total)
wait "$paced"
check "  a quarter of a second after SIGCONT it has not caught up: $(( 40 - left )) of 40 moved" \
  test "$left" -ge 10
check "  and in the end it moves them all ($(total) left)" test "$(total)" = 0

# --- a data dir that cannot work -------------------------------------------------------------
mkdir -p "$work/garbage"
head -c 8192 /dev/urandom >"$work/garbage/acmo.db"
err=$("$acmo" --data-dir "$work/garbage" stats 2>&1); rc=$?
check "a garbage database file fails cleanly (exit $rc)" test "$rc" -ge 1 -a "$rc" -lt 128
check "a garbage database file gets a clear message" grep -qi "not an SQLite file\|damaged" <<<"$err"
touch "$work/plainfile"
"$acmo" --data-dir "$work/plainfile" stats 2>/dev/null; rc=$?
check "a data dir that is a file is refused (exit $rc)" test "$rc" -ge 1 -a "$rc" -lt 128

mkdir -p "$work/dbdir/acmo.db"
err=$("$acmo" --data-dir "$work/dbdir" send CREATE --data "$create_data" 2>&1); rc=$?
check "a data dir whose acmo.db is a directory is a usage error, not a retry (exit $rc)" \
  test "$rc" -eq 2
check "  and says what to do" grep -q "Is a directory.*pass --data-dir" <<<"$err"

# --- hostile input at the command line ----------------------------------------------------------
export ACMO_DATA_DIR="$work/hostile"
"$acmo" -q send CREATE --data "$create_data" && "$acmo" -q send CREATE --data "${create_data/Ada/Bob}"
visible() { json_field "$("$acmo" stats --json)" visible; }
check "two messages to keep" test "$(visible)" = 2
# The purge prompt takes only a yes: "yn", "ye", "yes please no" remove nothing.
if command -v script >/dev/null; then
  for answer in yn ye "yes please no" n ""; do
    printf '%s\n' "$answer" >"$work/answer"
    script -qec "$acmo purge" /dev/null <"$work/answer" >"$work/prompt.out" 2>&1; rc=$?
    check "purge answered '$answer' on a terminal removes nothing (exit $rc)" \
      test "$rc" -eq 1 -a "$(visible)" = 2
  done
  printf ' YES \n' >"$work/answer"
  script -qec "$acmo purge --dlq" /dev/null <"$work/answer" >"$work/prompt.out" 2>&1
  check "the DLQ's prompt does not promise the dedup history" \
    bash -c '! grep -q "dedup history" "$1" && grep -q "purged 0 messages" "$1"' _ "$work/prompt.out"
  printf ' YES \n' >"$work/answer"
  script -qec "$acmo purge" /dev/null <"$work/answer" >"$work/prompt.out" 2>&1; rc=$?
  check "purge answered ' YES ' purges (exit $rc)" test "$rc" -eq 0 -a "$(visible)" = 0
else
  skip "script (bsdutils) is missing: the purge prompt is not tested"
fi
for rate in "--rate -1" "--rate=-1" "--rate 0"; do
  # shellcheck disable=SC2086
  "$acmo" dlq redrive $rate >/dev/null 2>&1; rc=$?
  check "dlq redrive $rate is a usage error (exit $rc)" test "$rc" -eq 2
done
# An empty value is a mistake, never the default.
empty_value() { # empty_value OPTION ARGS...: acmo ARGS, in which OPTION is given ''
  local name=$1 err rc
  shift
  err=$("$acmo" "$@" 2>&1); rc=$?
  check "acmo $*: exit 2 for the empty $name ($rc: $err)" \
    bash -c '[[ $1 -eq 2 ]] && grep -q -- "$3 was given an empty value" <<<"$2"' _ "$rc" "$err" "$name"
}
empty_value --config --config '' stats
empty_value --data-dir --data-dir '' stats
empty_value --order-id send UPDATE --order-id '' --data '{"status":"shipped"}'
empty_value --group send CREATE --group '' --data "$create_data"
empty_value --dedup-id send CREATE --dedup-id '' --data "$create_data"
empty_value --status orders list --status ''
empty_value --group peek --group ''
empty_value --schema queue move --to postgresql://x/y --schema '' --yes
empty_value --reason dlq list --reason ''
check "none of them queued anything" test "$(visible)" = 0
err=$("$acmo" send UPDATE --order-id ord_x --data "@$work" 2>&1); rc=$?
check "--data @DIRECTORY is a usage error, not empty data (exit $rc)" test "$rc" -eq 2
check "  saying it is a directory" grep -q "is a directory" <<<"$err"
out=$("$acmo" --json handlers stop --all); rc=$?
check "--json handlers stop --all with none running prints JSON ($out)" \
  test "$rc" -eq 0 -a "$out" = '{"asked":[],"stopped":null}'
for wait in nan -5 3601; do
  "$acmo" handlers stop --all --wait "$wait" >/dev/null 2>&1; rc=$?
  check "handlers stop --wait $wait is a usage error (exit $rc)" test "$rc" -eq 2
done
timeout 10 "$acmo" tail --count 0 >/dev/null 2>&1; rc=$?
check "tail --count 0 is a usage error, not a tail that never ends (exit $rc)" test "$rc" -eq 2
timeout 10 "$acmo" tail --order-id 'bad id' >/dev/null 2>&1; rc=$?
check "tail --order-id checks the id (exit $rc)" test "$rc" -eq 2
if [[ -w /dev/full ]]; then
  "$acmo" --json orders list >/dev/full 2>"$work/full.err"; rc=$?
  check "output that cannot be written is a failure (exit $rc: $(cat "$work/full.err"))" \
    bash -c '[[ $1 -eq 1 ]] && grep -q "cannot write the output" "$2"' _ "$rc" "$work/full.err"
fi
err=$("$acmo" send CREATE --data '{"customer_name":"X\u001b]0;pwned\u0007","customer_email":"x@example.com","items":[]}' 2>&1); rc=$?
check "a control character in a name is refused with exit 4 ($rc: $err)" \
  bash -c '[[ $1 -eq 4 ]] && grep -q "data.customer_name: holds the control character U+001B" <<<"$2"' _ "$rc" "$err"
err=$("$acmo" send CREATE --data '{"customer_name":"X","customer_email":"x@example.com","items":[{"product_id":"p","quantity":1,"unit_price":1.4999999999999999999999}]}' 2>&1); rc=$?
check "a price a double cannot hold is refused, not rounded to 1.5 (exit $rc)" \
  bash -c '[[ $1 -eq 4 ]] && grep -q "cannot hold exactly (it would read as 1.5)" <<<"$2"' _ "$rc" "$err"
line='{"type":"CREATE","orderid":"ord_typo","data":{"customer_name":"A","customer_email":"a@example.com","items":[]}}'
err=$("$acmo" send --file - <<<"$line" 2>&1); rc=$?
check "a line with a misspelt field is refused, not sent with a made-up order id (exit $rc)" \
  bash -c '[[ $1 -eq 4 ]] && grep -q "\"orderid\" is not a field of an event (did you mean orderId?" <<<"$2"' _ "$rc" "$err"
err=$("$acmo" send CREATE --data '{"customer_name":"A","customer_email":"a@example.com","items":[{"product_id":"p","quantity":1,"unit_price":1,"nmae":"Pen"}]}' 2>&1); rc=$?
check "a misspelt field of the data is refused, not dropped (exit $rc)" \
  bash -c '[[ $1 -eq 4 ]] && grep -qF "data.items[0]: \"nmae\" is not a field of an item (did you mean name?" <<<"$2"' _ "$rc" "$err"
err=$(ACMO_QUEUE_MAX_RETIRES=0 "$acmo" stats 2>&1); rc=$?
check "a misspelt ACMO_ variable is exit 2, naming the one it meant ($rc)" \
  bash -c '[[ $1 -eq 2 ]] && grep -q "ACMO_QUEUE_MAX_RETIRES is not one acmo reads; did you mean ACMO_QUEUE_MAX_RETRIES?" <<<"$2"' _ "$rc" "$err"
err=$("$acmo" dlq show $'id\e]0;owned\a' 2>&1)
check "an error quoting what was typed shows its control characters as escapes ($err)" \
  grep -qF 'no message id\x1b]0;owned\x07 in the DLQ' <<<"$err"
# A retry of a message redriven since: --wait follows it to its new sequence number.
rd="$work/redriven"
echo '{"type":"UPDATE","orderId":"rd1","data":{"status":"processing"},"deduplicationId":"K1"}' \
  | "$acmo" --data-dir "$rd" -q send --file -
"$acmo" --data-dir "$rd" run-handler --once >/dev/null 2>&1
"$acmo" --data-dir "$rd" -q dlq redrive
out=$("$acmo" --data-dir "$rd" --json send UPDATE --order-id rd1 --data '{"status":"processing"}' \
        --dedup-id K1 --wait 1 2>&1); rc=$?
check "send --wait on a duplicate of a redriven message waits for it, not 'gone' ($rc: $out)" \
  bash -c '[[ $1 -eq 75 ]] && grep -q "\"state\":\"timeout\"" <<<"$2" && grep -q "still queued" <<<"$2"' _ "$rc" "$out"
"$acmo" --data-dir "$rd" run-handler --once >/dev/null 2>&1
"$acmo" --data-dir "$rd" -q dlq purge --yes
out=$("$acmo" --data-dir "$rd" --json stats)
check "a purge of the DLQ is counted as the DLQ's ($out)" \
  bash -c 'grep -q "\"dlqPurged\":1" <<<"$1" && grep -q "\"deadLetteredTotal\":2" <<<"$1" && grep -q "\"redriven\":1" <<<"$1"' _ "$out"
# A key of a hundred thousand parts crashed every command that read the file.
python3 -c "print('.'.join(['q'] * 100000) + ' = 1')" >"$work/deep.toml"
err=$("$acmo" --config "$work/deep.toml" config check 2>&1); rc=$?
check "a dotted key of 100,000 parts is a configuration error, not a crash (exit $rc)" \
  bash -c '[[ $1 -eq 2 ]] && grep -q "a key of more than 65 parts" <<<"$2"' _ "$rc" "$err"
# A PostgreSQL URL libpq cannot read is a configuration error, and never shows its password.
for url in 'postgresql://acmo:S3cretPW@[::1/acmo' 'http://acmo:S3cretPW@db/acmo' \
           'postgresql://acmo:S3cretPW@127.0.0.1:1/acmo?sslmode=bogus'; do
  err=$(ACMO_STORE_BACKEND=postgres ACMO_QUEUE_BACKEND=postgres ACMO_STORE_URL="$url" "$acmo" stats 2>&1); rc=$?
  check "store.url $url: exit 2, no password ($rc: $err)" \
    bash -c '[[ $1 -eq 2 ]] && ! grep -q S3cretPW <<<"$2" && grep -q "store.url" <<<"$2"' _ "$rc" "$err"
done

# --- the demo never touches a queue in use ---------------------------------------------------
"$acmo" -q send CREATE --data "$create_data"
err=$("$acmo" demo 2>&1 --data-dir "$ACMO_DATA_DIR"); rc=$?
check "demo --data-dir of a queue in use is refused (exit $rc)" test "$rc" -eq 2
check "  and the waiting event is still there" test "$(visible)" = 1
if [[ -n ${ACMO_TEST_PG_URL:-} ]]; then
  schema="cli_demo_$$"
  psql -q "$ACMO_TEST_PG_URL" -c "CREATE SCHEMA $schema" >/dev/null
  sep='?'; [[ $ACMO_TEST_PG_URL == *\?* ]] && sep='&'
  cat >"$work/pg.toml" <<EOF
[queue]
backend = "postgres"
schema = "${schema}_queue"
[store]
backend = "postgres"
url = "$ACMO_TEST_PG_URL${sep}options=-csearch_path%3D$schema"
[cache]
backend = "none"
EOF
  "$acmo" --config "$work/pg.toml" -q send CREATE --data "$create_data"
  "$acmo" --config "$work/pg.toml" --json demo >"$work/demo.json" 2>"$work/demo.err"; rc=$?
  check "demo with a PostgreSQL configuration runs on its own (exit $rc: $(head -c 300 "$work/demo.err"))" \
    test "$rc" -eq 0
  st=$("$acmo" --config "$work/pg.toml" stats --json)
  check "  the PostgreSQL queue still holds its one event ($st)" test "$(json_field "$st" visible)" = 1
  check "  and its orders hold none of the demo's" \
    test "$("$acmo" --config "$work/pg.toml" --json orders list | grep -c Lovelace)" -eq 0
  psql -q "$ACMO_TEST_PG_URL" -c "DROP SCHEMA IF EXISTS $schema, ${schema}_queue CASCADE" >/dev/null 2>&1
else
  skip "ACMO_TEST_PG_URL is not set: the demo is not tried against a PostgreSQL configuration"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
