# fish completion for acmo. Installed in $datadir/fish/vendor_completions.d; to try it by hand:
#   source completions/acmo.fish
# Keep the lists in step with `acmo --help` and `acmo COMMAND --help`;
# tests/cli/test_docs.sh fails when they drift apart.

# The words of the command line before the cursor that are neither options nor option values:
# the subcommand first, then its arguments (send's TYPE).
function __acmo_args
    set -l words (commandline -opc)
    set -e words[1]
    set -l skip 0
    for w in $words
        if test $skip = 1
            set skip 0
            continue
        end
        switch $w
            case --config --data-dir --order-id --data --group --dedup-id --file \
                    --concurrency --batch-size --status --limit --offset --pid-file --log-file \
                    --reason --older-than --newer-than --rate --listen --count --to --schema
                set skip 1
            case '-*'
            case '*'
                echo $w
        end
    end
end

# Whether the words so far are exactly $argv: no subcommand yet, or "config" ("orders") and none
# of its subcommands yet.
function __acmo_no_subcommand
    set -l args (__acmo_args)
    test (count $args) -eq (count $argv); or return 1
    for i in (seq (count $argv))
        test "$args[$i]" = "$argv[$i]"; or return 1
    end
end

# Whether the words so far start with $argv: "send", or "config show".
function __acmo_using
    set -l args (__acmo_args)
    test (count $args) -ge (count $argv); or return 1
    for i in (seq (count $argv))
        test "$args[$i]" = "$argv[$i]"; or return 1
    end
end

function __acmo_send_needs_type
    set -l args (__acmo_args)
    test (count $args) -eq 1; and test "$args[1]" = send
    and not contains -- --file (commandline -opc)
end

# --data JSON is typed by hand; --data @FILE reads it from FILE.
function __acmo_data_files
    set -l token (string replace -r -- '^--data=' '' (commandline -ct))
    if string match -q -- '@*' $token
        __fish_complete_path (string sub -s 2 -- $token) | string replace -r -- '^' '@'
    end
end

# Run acmo itself with the --data-dir and --config the command line names, and the arguments
# given, to ask it for live values.
function __acmo_ask
    set -l words (commandline -opc)
    set -l args
    for i in (seq 2 (count $words))
        switch $words[$i]
            case --data-dir --config
                set -l j (math $i + 1)
                test $j -le (count $words); and set -a args $words[$i] $words[$j]
            case '--data-dir=*' '--config=*'
                set -a args $words[$i]
        end
    end
    command $words[1] $args $argv 2>/dev/null
end

# The ids of the orders (up to 1000, newest first).
function __acmo_order_ids
    __acmo_ask --json orders list --limit 1000 |
        string match -ra '"id":"[A-Za-z0-9_-]+"' | string replace -r '^"id":"(.*)"$' '$1'
end

# The message ids of the DLQ (up to 1000, oldest first).
function __acmo_dlq_ids
    __acmo_ask --json dlq list --limit 1000 |
        string match -ra '"messageId":"[A-Za-z0-9_-]+"' | string replace -r '^"messageId":"(.*)"$' '$1'
end

complete -c acmo -f

# Options every command takes, before or after the subcommand.
complete -c acmo -l config -r -F -d 'Read the configuration from FILE'
complete -c acmo -l data-dir -x -a '(__fish_complete_directories)' -d 'Keep the queue database in DIR'
complete -c acmo -l json -d 'Print machine-readable JSON'
complete -c acmo -s q -l quiet -d 'Print only errors'
complete -c acmo -s v -l verbose -d 'Say on stderr which configuration and database files are used'
complete -c acmo -s h -l help -d 'Print help and exit'
complete -c acmo -n __acmo_no_subcommand -l version -d 'Print the version and exit'

# Subcommands.
complete -c acmo -n __acmo_no_subcommand -a send -d 'Put order events on the queue'
complete -c acmo -n __acmo_no_subcommand -a stats -d 'Show queue figures'
complete -c acmo -n __acmo_no_subcommand -a purge -d 'Remove every message of the queue or its DLQ'
complete -c acmo -n __acmo_no_subcommand -a run-handler -d 'Run the OrderHandler: apply queued events to the orders'
complete -c acmo -n __acmo_no_subcommand -a serve -d 'Serve the HTTP API and monitoring endpoints'
complete -c acmo -n __acmo_no_subcommand -a orders -d 'Read orders and their audit trail'
complete -c acmo -n __acmo_no_subcommand -a peek -d 'Browse the waiting messages without receiving them'
complete -c acmo -n __acmo_no_subcommand -a groups -d 'Show the message groups: depth, head age, in flight, blocked'
complete -c acmo -n __acmo_no_subcommand -a handlers -d 'List the handlers; stop or drain one wherever it runs'
complete -c acmo -n __acmo_no_subcommand -a tail -d 'Follow the events applied and dead-lettered'
complete -c acmo -n __acmo_no_subcommand -a dlq -d 'Inspect and replay dead-lettered messages'
complete -c acmo -n __acmo_no_subcommand -a queue -d 'Move the embedded queue into PostgreSQL'
complete -c acmo -n __acmo_no_subcommand -a config -d 'Show or check the configuration'
complete -c acmo -n __acmo_no_subcommand -a demo -d 'Walk through the whole pipeline, narrated'
complete -c acmo -n __acmo_no_subcommand -a version -d "Print acmo's version and what it was built with"

# acmo send
complete -c acmo -n __acmo_send_needs_type -a 'CREATE UPDATE DELETE' -d 'Event type'
complete -c acmo -n '__acmo_using send' -l order-id -x -a '(__acmo_order_ids)' -d 'The order the event is about'
complete -c acmo -n '__acmo_using send' -l data -x -a '(__acmo_data_files)' -d 'Event data as JSON, or @FILE'
complete -c acmo -n '__acmo_using send' -l group -x -d 'Message group (default: orders, or the order id)'
complete -c acmo -n '__acmo_using send' -l dedup-id -x -d 'Deduplication id (default: SHA-256 of the body)'
complete -c acmo -n '__acmo_using send' -l wait -d 'Wait until the event is applied or dead-lettered (--wait=SECS)'
complete -c acmo -n '__acmo_using send' -l file -r -F -d "Send every event of a JSON Lines FILE ('-' for stdin)"

# acmo peek
complete -c acmo -n '__acmo_using peek' -l group -x -d 'Only the messages of this message group'
complete -c acmo -n '__acmo_using peek' -l order-id -x -a '(__acmo_order_ids)' -d 'Only the events of this order'
complete -c acmo -n '__acmo_using peek' -l limit -x -d 'At most N messages, oldest first (default 50)'

# acmo groups
complete -c acmo -n '__acmo_using groups' -l limit -x -d 'At most N groups, blocked first (default 50)'
complete -c acmo -n '__acmo_using groups' -l blocked -d 'Only the blocked groups'

# acmo stats
complete -c acmo -n '__acmo_using stats' -l watch -d 'Refresh every SECS seconds (--watch=SECS, default 2)'


# acmo purge
complete -c acmo -n '__acmo_using purge' -l dlq -d 'Purge the dead-letter queue instead'
complete -c acmo -n '__acmo_using purge' -s y -l yes -d 'Do not ask for confirmation'

# acmo run-handler
complete -c acmo -n '__acmo_using run-handler' -l concurrency -x -d 'Worker threads, 1-64 (default 1)'
complete -c acmo -n '__acmo_using run-handler' -l batch-size -x -d 'Messages per receive, 1-1000 (default 100)'
complete -c acmo -n '__acmo_using run-handler' -l once -d 'Process what is queued until none is left, then exit'
complete -c acmo -n '__acmo_using run-handler' -l daemon -d 'Detach, write a pid file, log to a file'
complete -c acmo -n '__acmo_using run-handler' -l pid-file -r -F -d 'With --daemon: the pid file'
complete -c acmo -n '__acmo_using run-handler' -l log-file -r -F -d 'With --daemon: the log file'

# acmo serve
complete -c acmo -n '__acmo_using serve' -l listen -x -d 'Listen on HOST:PORT (default 127.0.0.1:3000)'
complete -c acmo -n '__acmo_using serve' -l no-handler -d 'Only queue events; run-handler processes apply them'
complete -c acmo -n '__acmo_using serve' -l daemon -d 'Detach, write a pid file, log to a file'
complete -c acmo -n '__acmo_using serve' -l pid-file -r -F -d 'With --daemon: the pid file'
complete -c acmo -n '__acmo_using serve' -l log-file -r -F -d 'With --daemon: the log file'

# acmo orders: a subcommand of its own, get ID, list or events ID; only list has options.
complete -c acmo -n '__acmo_no_subcommand orders' -a get -d 'Show one order, its items and total'
complete -c acmo -n '__acmo_no_subcommand orders' -a list -d 'List orders, newest first'
complete -c acmo -n '__acmo_no_subcommand orders' -a events -d "Show an order's audit trail"
complete -c acmo -n '__acmo_no_subcommand orders get' -a '(__acmo_order_ids)' -d 'Order'
complete -c acmo -n '__acmo_no_subcommand orders events' -a '(__acmo_order_ids)' -d 'Order'
complete -c acmo -n '__acmo_using orders list' -l status -x -a 'pending processing shipped delivered cancelled' -d 'Only orders of this status'
complete -c acmo -n '__acmo_using orders list' -l limit -x -d 'Show at most N orders, 1-1000 (default 50)'
complete -c acmo -n '__acmo_using orders list' -l offset -x -d 'Skip the first N orders (default 0)'

# acmo dlq: a subcommand of its own, list, show ID, redrive [ID...|filters] or purge.
complete -c acmo -n '__acmo_no_subcommand dlq' -a list -d 'List dead-lettered messages, oldest first'
complete -c acmo -n '__acmo_no_subcommand dlq' -a show -d 'Show one dead-lettered message in full'
complete -c acmo -n '__acmo_no_subcommand dlq' -a redrive -d 'Move messages back to the queue, in order'
complete -c acmo -n '__acmo_no_subcommand dlq' -a purge -d 'Remove every dead-lettered message'
complete -c acmo -n '__acmo_using dlq list' -l limit -x -d 'Show at most N messages, 1-1000 (default 50)'
complete -c acmo -n '__acmo_using dlq list' -l offset -x -d 'Skip the first N messages (default 0)'
complete -c acmo -n '__acmo_using dlq list' -l reason -x -d 'Only messages whose reason contains TEXT'
complete -c acmo -n '__acmo_using dlq list' -l older-than -x -a '30s 5m 1h 1d' -d 'Only messages dead-lettered at least DURATION ago'
complete -c acmo -n '__acmo_using dlq list' -l newer-than -x -a '30s 5m 1h 1d' -d 'Only messages dead-lettered less than DURATION ago'
complete -c acmo -n '__acmo_using dlq redrive' -l reason -x -d 'Only messages whose reason contains TEXT'
complete -c acmo -n '__acmo_using dlq redrive' -l older-than -x -a '30s 5m 1h 1d' -d 'Only messages dead-lettered at least DURATION ago'
complete -c acmo -n '__acmo_using dlq redrive' -l newer-than -x -a '30s 5m 1h 1d' -d 'Only messages dead-lettered less than DURATION ago'
complete -c acmo -n '__acmo_using dlq redrive' -l rate -x -d 'At most N messages a second; Ctrl-C stops between two steps'
complete -c acmo -n '__acmo_using dlq purge' -s y -l yes -d 'Do not ask for confirmation'
complete -c acmo -n '__acmo_no_subcommand dlq show' -a '(__acmo_dlq_ids)' -d 'Dead-lettered message'
complete -c acmo -n '__acmo_using dlq redrive' -a '(__acmo_dlq_ids)' -d 'Dead-lettered message'

# acmo tail
complete -c acmo -n '__acmo_using tail' -l applied -d 'Only the events applied'
complete -c acmo -n '__acmo_using tail' -l dead-lettered -d 'Only the events dead-lettered'
complete -c acmo -n '__acmo_using tail' -l order-id -x -a '(__acmo_order_ids)' -d 'Only the events of this order'
complete -c acmo -n '__acmo_using tail' -l count -x -d 'Exit after N events'

# acmo handlers: list (the default), stop ID... or drain ID...
complete -c acmo -n '__acmo_no_subcommand handlers' -a list -d 'List the handlers seen in the last hour'
complete -c acmo -n '__acmo_no_subcommand handlers' -a stop -d 'Stop handlers after the batches in hand'
complete -c acmo -n '__acmo_no_subcommand handlers' -a drain -d 'Handle what is queued, then stop'
complete -c acmo -n '__acmo_using handlers stop' -l all -d 'Every running handler'
complete -c acmo -n '__acmo_using handlers stop' -l wait -x -d 'Wait up to SECONDS for them to stop'
complete -c acmo -n '__acmo_using handlers drain' -l all -d 'Every running handler'
complete -c acmo -n '__acmo_using handlers drain' -l wait -x -d 'Wait up to SECONDS for them to stop'

# acmo queue: a subcommand of its own, move.
complete -c acmo -n '__acmo_no_subcommand queue' -a move -d 'Move the embedded queue, its DLQ and dedup history into PostgreSQL'
complete -c acmo -n '__acmo_using queue move' -l to -x -d 'The PostgreSQL URL to move the queue to'
complete -c acmo -n '__acmo_using queue move' -l schema -x -d 'The schema to move it into'
complete -c acmo -n '__acmo_using queue move' -s y -l yes -d 'Do not ask for confirmation'

# acmo config: a subcommand of its own, show or check.
complete -c acmo -n '__acmo_no_subcommand config' -a show -d "Print every key's value and where it came from"
complete -c acmo -n '__acmo_no_subcommand config' -a check -d 'Check the configuration file and environment'
complete -c acmo -n '__acmo_using config show' -l show-secrets -d 'Print tokens and passwords in clear'

# acmo demo
complete -c acmo -n '__acmo_using demo' -l keep -d 'Keep the temporary data dir at the end'

# acmo version: no options of its own.
