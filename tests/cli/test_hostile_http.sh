#!/usr/bin/env bash
# A catalogue of hostile HTTP clients against the real `acmo serve` (issue 6): slowloris-style
# slow headers and bodies, idle connections by the hundred, oversized request lines and
# headers, pipelined garbage, broken chunked encodings and Content-Lengths, half-closed
# connections, binary noise. After each, the server must still be running and answer GET
# /health with 200; requests that were not whole are never queued; the server's memory is
# reported before and after.
#   tests/cli/test_hostile_http.sh path/to/acmo
set -uo pipefail
acmo=${1:?usage: $0 path/to/acmo}
work=$(mktemp -d "${TMPDIR:-/tmp}/acmo-hostile-http.XXXXXX")
server_pid=''
cleanup() {
  [[ -n $server_pid ]] && kill -9 "$server_pid" 2>/dev/null
  local c; for c in "${clients[@]}"; do kill -9 "$c" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
export ACMO_DATA_DIR="$work/data" NO_COLOR=1
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
for tool in curl nc; do
  command -v "$tool" >/dev/null || { echo "not ok - $tool is missing (scripts/install-deps.sh)"; exit 1; }
done

start_server
threads=$(sed -n 's|.*serving .*, \([0-9]*\) threads.*|\1|p' "$work/serve.log" | head -n 1)
rss() { sed -n 's/^VmRSS:[[:space:]]*//p' "/proc/$server_pid/status"; }
rss_before=$(rss)

# health [MAX_SECONDS]: GET /health; its status and time in $health_status, $health_time.
health() {
  local out
  out=$(curl -s -o /dev/null --max-time "${1:-10}" -w '%{http_code} %{time_total}' \
          "http://127.0.0.1:$port/health")
  health_status=${out% *}
  health_time=${out#* }
}
# survived CASE: the server runs and answers /health with 200.
survived() {
  health 10
  if kill -0 "$server_pid" 2>/dev/null && [[ $health_status == 200 ]]; then
    ok "$1: the server still answers /health ($health_time s)"
  else
    not_ok "$1: /health answered $health_status; server $(kill -0 "$server_pid" 2>/dev/null && echo running || echo GONE)"
    tail -n 5 "$work/serve.log"
  fi
}
# raw FILE [SECONDS]: send FILE's bytes on one connection, half-close, read the answer (until
# the server closes, at most SECONDS) into $work/answer; its first line in $answer_line.
raw() {
  nc -N -w "${2:-5}" 127.0.0.1 "$port" <"$1" >"$work/answer" 2>/dev/null
  answer_line=$(head -n 1 "$work/answer" | tr -d '\r')
}
sent() { curl -s "http://127.0.0.1:$port/sqs/stats" | sed -n 's/.*"sent":\([0-9]*\).*/\1/p'; }
post_body='{"customer_name":"Ada","customer_email":"ada@example.com","items":[]}'
post() { # post KEY: a whole, valid POST with an Idempotency-Key
  printf 'POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nIdempotency-Key: %s\r\nContent-Length: %d\r\n\r\n%s' \
    "$1" "${#post_body}" "$post_body"
}

# The background clients of a case, and waiting for them (not for the server).
clients=()
wait_clients() { local c; for c in "${clients[@]}"; do wait "$c"; done; clients=(); }

# --- slow clients ---------------------------------------------------------------------------

# Slowloris: fewer slow connections than server threads; each sends a header line every 0.5 s
# and never ends its headers. The server must keep answering others meanwhile.
slow=$((threads / 2))
for i in $(seq "$slow"); do
  ( printf 'GET /health HTTP/1.1\r\nHost: x\r\n'
    for j in $(seq 8); do sleep 0.5; printf 'X-Slow-%d: %s\r\n' "$j" "$i"; done ) |
    nc -w 1 127.0.0.1 "$port" >/dev/null 2>&1 &
  clients+=($!)
done
sleep 1
health 3
check "slowloris, $slow connections sending a header line every 0.5 s: /health answers meanwhile ($health_status in $health_time s)" \
  test "$health_status" = 200
wait_clients
survived "slowloris headers"

# Idle connections, three times as many as the server has threads: they hold no thread (the
# server watches them until server.keep_alive_timeout, 5 s), so /health is answered at once
# meanwhile, and the server closes every one of them.
idle=$((threads * 3))
start=$(date +%s)
for i in $(seq "$idle"); do nc 127.0.0.1 "$port" </dev/null >/dev/null 2>&1 & clients+=($!); done
sleep 0.5
health 30
check "$idle idle connections ($threads threads): /health meanwhile $health_status in $health_time s (under 2 s)" \
  awk -v s="$health_status" -v t="$health_time" 'BEGIN { exit !(s == 200 && t < 2) }'
wait_clients # every nc ends when the server closes its connection
check "$idle idle connections ($threads threads): the server closes them all ($(( $(date +%s) - start )) s)" \
  test $(( $(date +%s) - start )) -lt 30
survived "$idle idle connections"

# A slow body: the headers promise 200 bytes, the body comes one byte every 0.3 s, and the
# client gives up after 12. Nothing may be queued.
before=$(sent)
( printf 'POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n'
  for c in '{' '"' 'c' 'u' 's' 't' 'o' 'm' 'e' 'r' '_' 'n'; do sleep 0.3; printf '%s' "$c"; done ) |
  nc -N -w 2 127.0.0.1 "$port" >/dev/null 2>&1
survived "a slow body abandoned half way"
# A body that stops for longer than server.read_timeout (5 s): the server gives up on it.
( post k-stalled | head -c 120; sleep 7; post k-stalled | tail -c +121 ) |
  nc -N -w 9 127.0.0.1 "$port" >"$work/answer" 2>/dev/null
check "a body stalled past server.read_timeout is not accepted ($(head -n 1 "$work/answer" | tr -d '\r'))" \
  bash -c '! grep -q "^HTTP/1.1 202" "$1"' _ "$work/answer"
check "neither slow body was queued" test "$(sent)" = "$before"
survived "a body stalled past the read timeout"

# Hundreds of half-sent requests, far more than the server has threads: half a head, or a
# whole head and half a body, then nothing. They hold no thread, so /health and POST answer
# at once meanwhile; after server.read_timeout (5 s) each gets 408 and is closed; none of them
# is queued.
before=$(sent)
out=$(timeout 60 python3 - "$port" "$post_body" <<'PY'
import socket, sys, time
port, body = int(sys.argv[1]), sys.argv[2]
def request(raw):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    t = time.monotonic()
    s.sendall(raw)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.split(b"\r\n")[0].decode(errors="replace"), time.monotonic() - t
half = []
for i in range(400):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if i % 2:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Half: ")
    else:
        s.sendall(("POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n%s" % (len(body), body[:10])).encode())
    half.append(s)
worst = 0.0
codes = set()
for i in range(10):
    line, took = request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    codes.add(line); worst = max(worst, took)
    line, took = request(("POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          "Idempotency-Key: half-sent-%d\r\nContent-Length: %d\r\n\r\n%s" % (i, len(body), body)).encode())
    codes.add(line); worst = max(worst, took)
print("meanwhile", " / ".join(sorted(codes)), "worst %.3f s" % worst)
time.sleep(5.5)
timed_out = 0
for s in half:
    try:
        s.settimeout(2)
        if s.recv(4096).startswith(b"HTTP/1.1 408"):
            timed_out += 1
    except OSError:
        pass
    s.close()
print("timed out", timed_out)
PY
)
meanwhile=$(head -n 1 <<<"$out")
check "400 half-sent requests: /health and POST answered meanwhile, each within 1 s ($meanwhile)" \
  bash -c '[[ $1 == "meanwhile HTTP/1.1 200 OK / HTTP/1.1 202 Accepted worst 0."* ]]' _ "$meanwhile"
check "  each half-sent request is answered 408 after server.read_timeout ($(tail -n 1 <<<"$out") of 400)" \
  test "$(tail -n 1 <<<"$out")" = "timed out 400"
check "  only the 10 whole POSTs were queued ($(( $(sent) - before )))" test "$(sent)" = "$((before + 10))"
survived "400 half-sent requests"

# Expect: 100-continue for a body over server.max_body: the final 413 at once, never a
# 100 Continue the client would send the body after for nothing; one Connection: close.
printf 'POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n\r\n' >"$work/req"
raw "$work/req" 3
check "Expect: 100-continue with a body over the limit: 413 at once ($answer_line)" \
  test "$answer_line" = "HTTP/1.1 413 Payload Too Large"
check "  with one Connection: close ($(grep -ci '^connection: close' "$work/answer"))" \
  test "$(grep -ci '^connection: close' "$work/answer")" = 1
printf 'POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 20\r\n\r\n' >"$work/req"
raw "$work/req" 3
check "Expect: 100-continue for a route that does not exist: 404 at once ($answer_line)" \
  test "$answer_line" = "HTTP/1.1 404 Not Found"
printf 'POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n' "${#post_body}" >"$work/req"
exec 3<>"/dev/tcp/127.0.0.1/$port"
cat "$work/req" >&3
continue_line=$(timeout 3 head -n 1 <&3 | tr -d '\r')
printf '%s' "$post_body" >&3
final_line=$(timeout 3 head -n 1 <&3 | tr -d '\r')
exec 3<&-
check "Expect: 100-continue for a request it takes: 100 Continue, then the body, then 202 ($continue_line, $final_line)" \
  test "$continue_line|$final_line" = "HTTP/1.1 100 Continue|HTTP/1.1 202 Accepted"

# Expect: 100-continue, then nothing.
printf 'POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 50\r\n\r\n' >"$work/req"
raw "$work/req" 3
survived "Expect: 100-continue and no body"

# --- oversized --------------------------------------------------------------------------------

{ printf 'GET /api/orders/'; head -c 1048576 /dev/zero | tr '\0' 'a'; printf ' HTTP/1.1\r\nHost: x\r\n\r\n'; } >"$work/req"
raw "$work/req"
check "a 1 MiB request line is refused ($answer_line)" grep -qE '^HTTP/1.1 4[0-9][0-9]|^$' <<<"$answer_line"
survived "a 1 MiB request line"
{ printf 'GET /health HTTP/1.1\r\nHost: x\r\nX-Big: '; head -c 1048576 /dev/zero | tr '\0' 'b'; printf '\r\n\r\n'; } >"$work/req"
raw "$work/req"
check "a 1 MiB header is refused ($answer_line)" bash -c '! grep -q "^HTTP/1.1 200" <<<"$1"' _ "$answer_line"
survived "a 1 MiB header"
rss_mid=$(rss)
{ printf 'GET /health HTTP/1.1\r\nHost: x\r\n'; for i in $(seq 100000); do printf 'X-%d: y\r\n' "$i"; done; printf '\r\n'; } >"$work/req"
raw "$work/req"
check "100,000 headers (1.3 MB) are answered or refused, not hoarded (RSS $rss_mid → $(rss))" \
  test "$(rss | tr -dc 0-9)" -lt $(( $(tr -dc 0-9 <<<"$rss_mid") + 200000 ))
survived "100,000 headers"
{ printf 'GET /api/orders?'; for i in $(seq 5000); do printf 'status=pending&'; done; printf ' HTTP/1.1\r\nHost: x\r\n\r\n'; } >"$work/req"
raw "$work/req"
survived "5,000 query parameters ($answer_line)"
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nRange: bytes=%s0-0\r\n\r\n' "$(for i in $(seq 2000); do printf '0-0,'; done)" >"$work/req"
raw "$work/req"
check "a Range header with 2,000 ranges does not blow the answer up ($(wc -c <"$work/answer") bytes)" \
  test "$(wc -c <"$work/answer")" -lt 1000000
survived "2,000 ranges"

# --- pipelined garbage and broken framing -------------------------------------------------------

{ printf 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n'; head -c 65536 /dev/urandom; } >"$work/req"
raw "$work/req"
check "a request then 64 KiB of noise on one connection: the request is answered ($answer_line)" \
  test "$answer_line" = "HTTP/1.1 200 OK"
survived "pipelined noise"
# Requests pipelined on one connection are each answered, in order; the garbage behind them
# gets its 400 and the connection is closed without a reset that would destroy the answers.
before=$(sent)
{ post pipe-1; post pipe-2; post pipe-3; printf 'GARBAGE \x00\x01\x02 HTTP/7.0\r\n\r\n'; head -c 4096 /dev/urandom; } >"$work/req"
raw "$work/req"
# (an answer's body ends without a newline: the next status line follows on the same line)
answered=$(grep -ao 'HTTP/1.1 202' "$work/answer" | wc -l)
refused=$(grep -ao 'HTTP/1.1 400' "$work/answer" | wc -l)
check "pipelined POSTs before garbage: all 3 answered 202 ($answered) and queued ($(( $(sent) - before ))), the garbage 400 ($refused)" \
  test "$answered" = 3 -a "$(sent)" = "$((before + 3))" -a "$refused" = 1
survived "pipelined POSTs then garbage"

before=$(sent)
chunked='POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n'
for bad in 'zz\r\n{}\r\n0\r\n\r\n' 'ffffffffffffffffff\r\n{}\r\n0\r\n\r\n' '-1\r\n{}\r\n0\r\n\r\n' \
           '5\r\n{"customer_name"' '100000\r\n{}' '2;ext=\x00\r\n{}\r\n0\r\n\r\n'; do
  printf "$chunked$bad" >"$work/req"
  raw "$work/req" 3
  survived "a broken chunked body ($(printf '%q' "$bad" | cut -c1-30): $answer_line)"
done
for cl in -1 abc 99999999999999999999 '10, 20' ' 5'; do
  printf 'POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "$cl" "$post_body" >"$work/req"
  raw "$work/req" 3
  survived "Content-Length: $cl ($answer_line)"
done
printf 'POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\nContent-Length: %d\r\n\r\n%s' "${#post_body}" "$post_body" >"$work/req"
raw "$work/req" 3
check "two Content-Lengths that disagree are refused, never read by the first ($answer_line)" \
  test "$answer_line" = "HTTP/1.1 400 Bad Request"
survived "two Content-Lengths that disagree"
printf 'GET http://127.0.0.1:%d/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' "$port" >"$work/req"
raw "$work/req" 3
check "a request in absolute form (as to a proxy) is served ($answer_line)" test "$answer_line" = "HTTP/1.1 200 OK"
printf 'GET /health HTTP/1.1\nHost: x\n\n' >"$work/req"
raw "$work/req" 3
check "lines ending in LF alone are refused ($answer_line)" test "$answer_line" = "HTTP/1.1 400 Bad Request"
printf 'POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' >"$work/req"
raw "$work/req" 3
survived "Content-Length and chunked together ($answer_line)"
check "none of the broken framings was queued" test "$(sent)" = "$before"

# --- half-closed, reset, noise ------------------------------------------------------------------

# A whole POST, then a half-close (the client says it will send nothing more, and waits for the
# answer): it gets its 202, and the client's retry with the same Idempotency-Key is answered as
# a duplicate of the same message, so the event is queued once.
before=$(sent)
post half-closed >"$work/req"
raw "$work/req"
first=${answer_line:-no answer}
out=$(curl -s -H 'Content-Type: application/json' -H 'Idempotency-Key: half-closed' -d "$post_body" \
        "http://127.0.0.1:$port/api/orders")
check "a POST on a half-closed connection ($first), then its retry ($(grep -o '"duplicate":[a-z]*' <<<"$out")): queued once ($(( $(sent) - before )))" \
  test "$first" = "HTTP/1.1 202 Accepted" -a "$(sent)" = "$((before + 1))" -a -n "$(grep -o '"duplicate":true' <<<"$out")"
printf 'POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 70\r\n\r\n{"cust' >"$work/req"
raw "$work/req"
survived "half a request, then a half-close ($answer_line)"
for _ in $(seq 300); do
  exec 3<>"/dev/tcp/127.0.0.1/$port" && exec 3>&-
done
survived "300 connections opened and closed at once"
for _ in $(seq 50); do
  exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'POST /api/orders HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{"a' >&3 && exec 3>&-
done
survived "50 connections closed in the middle of a body"
head -c 65536 /dev/urandom >"$work/req"
raw "$work/req" 3
survived "64 KiB of random bytes"
head -c 1048576 /dev/zero >"$work/req"
raw "$work/req" 3
survived "1 MiB of NUL bytes"
printf '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03%s' "$(head -c 200 /dev/zero | tr '\0' 'A')" >"$work/req"
raw "$work/req" 3
survived "a TLS ClientHello on the plain port"
for line in 'GET /' 'GET / HTTP/9.9' 'get /health HTTP/1.1' 'GET * HTTP/1.1' 'CONNECT 127.0.0.1:22 HTTP/1.1' \
            'GET http://evil.example/health HTTP/1.1' 'GET /../../../../etc/passwd HTTP/1.1' \
            'GET /api/orders/%00%ff%2e%2e HTTP/1.1' 'GET /api/orders/%%%% HTTP/1.1' \
            'DELETE /api/orders/ord_1/../../sqs/purge HTTP/1.1' 'GET /health HTTP/1.1\r\nHost: a\r\nHost: b' \
            'GET /health HTTP/1.1\r\nX-Bad header no colon' 'GET /health HTTP/1.1\r\n: empty-name' \
            'GET /health\tHTTP/1.1' 'GET  /health  HTTP/1.1'; do
  printf '%b\r\n\r\n' "$line" >"$work/req"
  raw "$work/req" 3
  survived "request line '$(printf '%q' "$line" | cut -c1-40)' ($answer_line)"
done

# --- what is left -------------------------------------------------------------------------------

check "no path trick reached the admin purge (purged 0)" \
  test "$(curl -s "http://127.0.0.1:$port/sqs/stats" | sed -n 's/.*"purged":\([0-9]*\).*/\1/p')" = 0
rss_after=$(rss)
echo "# server RSS: $rss_before at start, $rss_after after the catalogue ($threads threads)"
kill -TERM "$server_pid"
wait "$server_pid"
rc=$?
server_pid=''
check "SIGTERM still stops the server cleanly (exit $rc)" test "$rc" -eq 0

# --- connections per client --------------------------------------------------------------------
# server.max_connections_per_client = 20: the 21st connection from one address is answered 429
# and closed; another address is served.
ACMO_SERVER_MAX_CONNECTIONS_PER_CLIENT=20 start_server --no-handler
out=$(timeout 30 python3 - "$port" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
time.sleep(0.2)
extra = socket.create_connection(("127.0.0.1", port), timeout=5)
print(extra.recv(4096).split(b"\r\n")[0].decode())
other = socket.socket()
other.bind(("127.0.0.2", 0))
other.settimeout(5)
other.connect(("127.0.0.1", port))
other.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
print(other.recv(4096).split(b"\r\n")[0].decode())
for s in held:
    s.close()
time.sleep(0.3)
again = socket.create_connection(("127.0.0.1", port), timeout=5)
again.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
print(again.recv(4096).split(b"\r\n")[0].decode())
PY
)
check "the 21st connection from one address is answered 429 ($(sed -n 1p <<<"$out"))" \
  test "$(sed -n 1p <<<"$out")" = "HTTP/1.1 429 Too Many Requests"
check "  another address is served meanwhile ($(sed -n 2p <<<"$out"))" test "$(sed -n 2p <<<"$out")" = "HTTP/1.1 200 OK"
check "  and once its connections close, that address is served again ($(sed -n 3p <<<"$out"))" \
  test "$(sed -n 3p <<<"$out")" = "HTTP/1.1 200 OK"
kill -TERM "$server_pid"
wait "$server_pid"
server_pid=''

# --- memory ------------------------------------------------------------------------------------

# Distinct list queries, each a list of a thousand orders (about 290 KB): the memory cache keeps
# at most cache.max_bytes of them (8 MiB here), not cache.capacity (10,000) entries, so the
# server's RSS stops growing however many distinct queries come. Four rounds of 100 queries
# (29 MiB of answers each): the first two fill the cache and the allocator's free pages, during
# the last two RSS stays put (an unbounded cache grows by the answers' size every round).
for i in $(seq 2000); do
  printf '{"type":"CREATE","orderId":"ord_rss_%05d","data":{"customer_name":"Memory %05d","customer_email":"m@example.com","items":[{"product_id":"p","name":"A product with a long name","quantity":1,"unit_price":1.5}]}}\n' "$i" "$i"
done >"$work/orders.jsonl"
"$acmo" -q send --file "$work/orders.jsonl"
"$acmo" -q run-handler --once
# Under AddressSanitizer (scripts/test-sanitizers.sh) freed memory waits in a quarantine of
# 256 MiB before it is reused, more than the four rounds free: RSS would grow by what the cache
# evicts, bounded or not. A small quarantine lets freed memory be reused as in a release build.
asan_options=${ASAN_OPTIONS:+$ASAN_OPTIONS:quarantine_size_mb=4}
ASAN_OPTIONS=${asan_options:-} ACMO_CACHE_MAX_BYTES=8388608 start_server --no-handler
lists() { # lists FIRST_OFFSET: 100 distinct queries; prints the MiB of answers
  timeout 60 python3 - "$port" "$1" <<'PY'
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
total = 0
for offset in range(int(sys.argv[2]), int(sys.argv[2]) + 100):
    conn.request("GET", "/api/orders?limit=1000&offset=%d" % offset)
    r = conn.getresponse()
    total += len(r.read())
    if r.status != 200:
        print("status", r.status); sys.exit(1)
print(total // (1 << 20))
PY
}
rounds=()
for first in 0 100 200 300; do
  answers=$(lists "$first")
  rounds+=("$(( $(rss | tr -dc 0-9) / 1024 ))")
done
echo "# distinct lists: RSS after each round of $answers MiB of answers: ${rounds[*]} MiB"
check "two more rounds of 100 distinct lists of 1,000 orders ($answers MiB each): RSS grew $(( rounds[3] - rounds[1] )) MiB (under 16)" \
  test -n "$answers" -a $(( rounds[3] - rounds[1] )) -lt 16
survived "400 distinct list queries"
kill -TERM "$server_pid"
wait "$server_pid"
server_pid=''

# --- out of file descriptors ---------------------------------------------------------------------
# A server with 64 descriptors, and 150 idle connections: it cannot accept them all. The ones
# it did accept, parked between requests, are still served; /health says what is wrong; once
# the idle ones go, new connections are accepted again.
# Under UBSan (scripts/test-sanitizers.sh), its vptr check is not to be trusted here: it asks
# whether memory is readable by writing it into a pipe, which a process out of descriptors
# cannot make, so the check fails on any object ("invalid vptr ... <memory cannot be
# printed>"), and its report cannot open its log file either (which ends the process). So UBSan
# does not stop this one server and reports to its stderr, serve.log; ASan still stops it, and
# the server must behave.
(ulimit -n 64 && UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}halt_on_error=0:log_path=stderr" \
  exec "$acmo" --data-dir "$work/fd-limit" serve --listen 127.0.0.1:0 2>"$work/serve.log") &
server_pid=$!
for _ in $(seq 200); do
  port=$(sed -n 's|.*serving http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/serve.log" | head -n 1)
  [[ -n $port ]] && break
  sleep 0.05
done
out=$(timeout 60 python3 - "$port" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
def get(conn, path):
    conn.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n")
                  if l.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += conn.recv(65536)
    return head.split(b"\r\n")[0].decode().split(" ")[1], body.decode()
kept = socket.create_connection(("127.0.0.1", port), timeout=10)
get(kept, "/health")
idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(150)]
time.sleep(0.5)
served = 0
for _ in range(10):
    time.sleep(0.08)  # long enough for the connection to be parked between requests
    status, body = get(kept, "/health")
    served += 1
print("kept", served, status)
print("health", body)
for c in idle:
    c.close()
time.sleep(0.5)
print("new", get(socket.create_connection(("127.0.0.1", port), timeout=10), "/health")[0])
PY
)
check "at the descriptor limit, a kept-alive connection is still served ($(head -n 1 <<<"$out"))" \
  grep -qx "kept 10 503" <<<"$out"
check "  and /health says why" grep -q "out of file descriptors" <<<"$out"
check "  and the log too" grep -q "cannot accept a connection: Too many open files" "$work/serve.log"
check "once connections close, new ones are accepted and healthy again" grep -qx "new 200" <<<"$out"
kill -TERM "$server_pid"
wait "$server_pid"
rc=$?
server_pid=''
check "and SIGTERM stops that server cleanly (exit $rc)" test "$rc" -eq 0

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
