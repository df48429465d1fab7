# Shared by the shell tests: counters, checks and a small JSON reader.
# Source it after setting nothing; it defines passed, failed, ok, not_ok, check, json_field.
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }
# check NAME COMMAND...: the command must succeed.
check() { local name=$1; shift; if "$@"; then ok "$name"; else not_ok "$name"; fi; }
# json_field JSON KEY: the first value of a scalar field (acmo prints compact JSON).
json_field() { sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\)\"\{0,1\}[,}].*/\1/p" <<<"$1" | head -n 1; }
