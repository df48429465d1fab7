# The orders the torture and multihost suites send, and their bookkeeping, as
# tests/torture/verify.jq reads it. Sourced by tests/torture/torture.sh and
# tests/cli/test_multihost.sh, which set $sender (the sender's number) and $acks_dir, and define
# deliver KIND TYPE ORDER DATA KEY [GONE]: send one event until it is acknowledged and print
# "MESSAGE_ID ORDER_ID DUPLICATE"; exit 1 after a rejection, 3 when GONE=1 and the order exists
# nowhere (its DELETE applied already).

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
rand_sleep() { sleep "0.$(printf '%03d' $((RANDOM % $1)))"; } # rand_sleep MAX_MS (< 1000)

# Each order follows one of these plans (the statuses of its UPDATEs, "DELETE", in order).
# Some steps must fail: a forbidden change, a change of a deleted order.
plans=(
  "processing shipped delivered"
  "processing pending cancelled"           # processing → pending is forbidden
  "cancelled DELETE"
  "shipped processing DELETE processing"   # pending → shipped is forbidden; the last: deleted
  "processing delivered"                   # processing → delivered is forbidden
)

# ack_fields JSON: "MESSAGE_ID ORDER_ID DUPLICATE" of a send's answer (bash alone: starting jq
# for every event would cost more than sending it).
ack_fields() {
  local msg order dup
  [[ $1 =~ \"messageId\":\"([^\"]+)\" ]] && msg=${BASH_REMATCH[1]}
  [[ $1 =~ \"orderId\":\"([^\"]+)\" ]] && order=${BASH_REMATCH[1]}
  [[ $1 =~ \"duplicate\":(true|false) ]] && dup=${BASH_REMATCH[1]}
  [[ -n ${msg:-} && -n ${order:-} && -n ${dup:-} ]] || return 1
  echo "$msg $order $dup"
}

# record KEY STEP TYPE STATUS KIND ACK: an acknowledgement, appended to $acks_dir/acks-$sender.
record() {
  local msg order dup
  read -r msg order dup <<<"$6"
  printf '{"key":"%s","step":%d,"type":"%s","status":"%s","msg":"%s","order":"%s","dup":%s,"kind":"%s"}\n' \
    "$1" "$2" "$3" "$4" "$msg" "$order" "$dup" "$5" >>"$acks_dir/acks-$sender"
}

# walk_plan N KIND TAG [PAUSE_MS]: the Nth order of sender $sender: its CREATE, then each step of
# its plan, each delivered until acknowledged and recorded, with up to PAUSE_MS between steps.
# Keys are TAG-sS-oN-STEP; a cli order's id is ord_TAGsS-oN (an http order's comes back in the
# answer to its CREATE). Exit 1 when a delivery failed.
walk_plan() {
  # (Bash scopes locals dynamically: deliver sees these, so none may shadow a variable of the
  # suites, such as test_multihost.sh's $tag.)
  local n=$1 kind=$2 plan_tag=$3 plan_pause=${4:-0} key plan order step gone word type status
  local data ack rc
  key="s$sender-o$n"
  plan=${plans[$(((sender * 7 + n) % ${#plans[@]}))]}
  order=''
  [[ $kind == cli ]] && order="ord_$plan_tag$key"
  step=0
  gone=0
  for word in CREATE $plan; do
    case $word in
      CREATE) type=CREATE status=''
        data="{\"customer_name\":\"Customer $key\",\"customer_email\":\"$plan_tag$sender@example.com\",\"items\":[{\"product_id\":\"p-$n\",\"quantity\":$((n % 5 + 1)),\"unit_price\":12.34}]}" ;;
      DELETE) type=DELETE status='' data='' ;;
      *) type=UPDATE status=$word data="{\"status\":\"$word\"}" ;;
    esac
    ack=$(deliver "$kind" "$type" "$order" "$data" "$plan_tag-$key-$step" "$gone"); rc=$?
    [[ $type == DELETE ]] && gone=1
    if [[ $rc == 3 ]]; then step=$((step + 1)); continue; fi
    [[ $rc == 0 ]] || return 1
    record "$key" "$step" "$type" "$status" "$kind" "$ack"
    order=$(cut -d' ' -f2 <<<"$ack")
    step=$((step + 1))
    ((plan_pause > 0)) && rand_sleep "$plan_pause"
  done
  return 0
}
