# The torture suite's judge (tests/torture/torture.sh). Input, slurped (jq -n with --slurpfile):
#   $acks    one object per acknowledged event: {key, step, type, status, msg, order, dup}
#            (key names an order of the test, step its place in that order's plan; an event
#            acknowledged more than once, after a retry, appears once per acknowledgement)
#   $orders  the store's orders (`acmo orders list`, every page), one array
#   $events  one object per order: {order, events: [...]} (`acmo orders events ID`)
#   $dlq     the dead-lettered messages (`acmo dlq list`, every page), one array
# Output: {expected: {...figures}, problems: [strings]}. No problem means: every acknowledged
# event applied exactly once and in its order, the store equal to the state the acknowledged
# events make by docs/orders.md §2's rules, and the DLQ holding exactly the events that had to fail.

def allowed($from; $to):
  ($from == "pending" and $to == "processing") or
  ($from == "processing" and $to == "shipped") or
  ($from == "shipped" and $to == "delivered") or
  (($from == "pending" or $from == "processing" or $from == "shipped") and $to == "cancelled");

# The outcome of one order's acknowledged events, in the order they were acknowledged (a
# sender sends an order's next event only after the previous one was acknowledged).
def simulate:
  reduce .[] as $e ({state: null, version: 0, applied: [], dlq: [], id: null};
    .id = ($e.order // .id) |
    if $e.type == "CREATE" then
      if .state == null then .state = "pending" | .version = 1 | .applied += [$e.msg]
      else .dlq += [$e.msg] end
    elif $e.type == "UPDATE" then
      if .state != null and .state != "deleted" and allowed(.state; $e.status)
      then .state = $e.status | .version += 1 | .applied += [$e.msg]
      else .dlq += [$e.msg] end
    else # DELETE
      if .state != null and .state != "deleted" then .state = "deleted" | .applied += [$e.msg]
      else .dlq += [$e.msg] end
    end);

($acks | group_by(.key)) as $by_key
| [ $by_key[] | . as $all
    # Every acknowledgement of one step must name the same message (a retry is a duplicate).
    | (group_by(.step) | map({step: .[0].step, type: .[0].type, status: .[0].status,
                              order: (map(.order) | map(select(. != null and . != "")) | first),
                              msgs: (map(.msg) | unique)})) as $steps
    | {key: .[0].key,
       split: [ $steps[] | select((.msgs | length) != 1) | .step ],
       outcome: ($steps | map({type, status, order, msg: .msgs[0]}) | simulate)} ]
  as $expected
| ($orders | map({key: .id, value: .}) | from_entries) as $store
| ($events | map({key: .order, value: .events}) | from_entries) as $trails
| ($expected | map(select(.outcome.state != null and .outcome.state != "deleted")) | length) as $live
| {
    expected: {
      orders: ($expected | length),
      live: $live,
      applied: ([ $expected[].outcome.applied | length ] | add // 0),
      deadLettered: ([ $expected[].outcome.dlq | length ] | add // 0),
      acknowledgements: ($acks | length),
      duplicates: ([ $acks[] | select(.dup) ] | length)
    },
    problems: (
      [ $expected[] | select(.split | length > 0)
        | "\(.key): a step was acknowledged with two message ids (steps \(.split))" ]
      + [ $expected[] | .outcome as $o | .key as $k | ($store[$o.id // ""]) as $row
          | if $o.state == "deleted" or $o.state == null then
              (if $row != null then "\($k) (\($o.id)): deleted, yet in the store" else empty end)
            elif $row == null then "\($k) (\($o.id)): acknowledged, missing from the store"
            elif $row.status != $o.state or $row.version != $o.version then
              "\($k) (\($o.id)): store has \($row.status) v\($row.version), the events make \($o.state) v\($o.version)"
            else empty end ]
      + [ $expected[] | .outcome as $o | .key as $k
          | select($o.id != null)
          | ($trails[$o.id] // []) as $t
          | ($t | map(.messageId)) as $ids
          | (if $ids != $o.applied then
               "\($k) (\($o.id)): audit trail \($ids), expected \($o.applied) (each once, in order)"
             else empty end),
            (if ($t | map(.sequenceNumber)) != ($t | map(.sequenceNumber) | sort)
                or ($t | map(.sequenceNumber) | unique | length) != ($t | length) then
               "\($k) (\($o.id)): audit trail out of sequence order: \($t | map(.sequenceNumber))"
             else empty end) ]
      + (if ($store | length) != $live then
           [ "the store holds \($store | length) orders, the acknowledged events make \($live)" ]
         else [] end)
      + (([ $expected[].outcome.dlq[] ] | sort) as $want | ($dlq | map(.messageId) | sort) as $got
         | if $want != $got then
             [ "DLQ holds \($got | length) messages, expected \($want | length); missing \($want - $got), extra \($got - $want)" ]
           else [] end)
    )
  }
