# bash completion for acmo                                   -*- shell-script -*-
#
# Plain bash, no bash-completion helpers needed. Installed as
# $datadir/bash-completion/completions/acmo; to try it by hand: source completions/acmo.bash
# Keep the lists in step with `acmo --help` and `acmo COMMAND --help`;
# tests/cli/test_docs.sh fails when they drift apart.
# Word lists are split into COMPREPLY on purpose; file names are split at newlines only.
# shellcheck disable=SC2207

_acmo_subcommands='send stats purge run-handler serve orders peek groups handlers tail dlq queue config demo version'
_acmo_global_opts='--config --data-dir --json -q --quiet -v --verbose'

# The subcommands of a subcommand: _acmo_subcommands_CMD.
_acmo_subcommands_config='show check'
_acmo_subcommands_orders='get list events'
_acmo_subcommands_dlq='list show redrive purge'
_acmo_subcommands_handlers='list stop drain'
_acmo_subcommands_queue='move'

# Options of each (sub)subcommand, _acmo_opts_CMD or _acmo_opts_CMD_SUB, and the options (of
# any command) that take a value.
_acmo_opts_send='--order-id --data --group --dedup-id --file --wait -h --help'
_acmo_opts_stats='--watch -h --help'
_acmo_opts_purge='--dlq -y --yes -h --help'
_acmo_opts_run_handler='--concurrency --batch-size --once --daemon --pid-file --log-file -h --help'
_acmo_opts_serve='--listen --no-handler --daemon --pid-file --log-file -h --help'
_acmo_opts_orders='-h --help'
_acmo_opts_orders_get='-h --help'
_acmo_opts_orders_list='--status --limit --offset -h --help'
_acmo_opts_orders_events='-h --help'
_acmo_opts_peek='--group --order-id --limit -h --help'
_acmo_opts_groups='--limit --blocked -h --help'
_acmo_opts_tail='--applied --dead-lettered --order-id --count -h --help'
_acmo_opts_handlers='-h --help'
_acmo_opts_handlers_list='-h --help'
_acmo_opts_handlers_stop='--all --wait -h --help'
_acmo_opts_handlers_drain='--all --wait -h --help'
_acmo_opts_dlq='-h --help'
_acmo_opts_dlq_list='--limit --offset --reason --older-than --newer-than -h --help'
_acmo_opts_dlq_show='-h --help'
_acmo_opts_dlq_redrive='--reason --older-than --newer-than --rate -h --help'
_acmo_opts_dlq_purge='-y --yes -h --help'
_acmo_opts_queue='-h --help'
_acmo_opts_queue_move='--to --schema -y --yes -h --help'
_acmo_opts_config='-h --help'
_acmo_opts_config_show='-h --help --show-secrets'
_acmo_opts_config_check='-h --help'
_acmo_opts_demo='--keep -h --help'
_acmo_opts_version='-h --help'
_acmo_value_opts=' --config --data-dir --order-id --data --group --dedup-id --file '
_acmo_value_opts+='--concurrency --batch-size --status --limit --offset --pid-file --log-file --listen '
_acmo_value_opts+='--reason --older-than --newer-than --rate --to --schema '
_acmo_durations='30s 5m 1h 1d'
_acmo_statuses='pending processing shipped delivered cancelled'

_acmo_files()
{
    compopt -o filenames 2>/dev/null
    local IFS=$'\n'
    COMPREPLY=($(compgen -f -- "$1"))
}

# "--data @FILE": the replies keep the '@', so readline must not quote them as file names.
_acmo_data_files()
{
    local IFS=$'\n' f
    for f in $(compgen -f -- "$1"); do
        [[ -d $f ]] && f+=/
        printf -v f '%q' "$f"
        COMPREPLY+=("@$f")
    done
    [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == */ ]] && compopt -o nospace 2>/dev/null
}

_acmo_dirs()
{
    compopt -o filenames 2>/dev/null
    local IFS=$'\n'
    COMPREPLY=($(compgen -d -- "$1"))
}

# Run acmo itself with the --data-dir and --config the command line names, and the arguments
# given, to ask it for live values.
_acmo_ask()
{
    local args=() i w v
    for (( i = 1; i < COMP_CWORD; i++ )); do
        w=${COMP_WORDS[i]}
        [[ $w == --data-dir || $w == --config ]] || continue
        while [[ ${COMP_WORDS[i+1]-} == = ]]; do (( i++ )); done
        (( i + 1 < COMP_CWORD )) || break
        v=${COMP_WORDS[i+1]}
        # shellcheck disable=SC2088 # a literal "~/" that readline left unexpanded
        [[ $v == '~/'* ]] && v=$HOME/${v#'~/'}
        args+=("$w" "$v")
        (( i++ ))
    done
    "${COMP_WORDS[0]}" "${args[@]}" "$@" 2>/dev/null
}

# The ids of the orders (up to 1000, newest first) that start with $1.
_acmo_order_ids()
{
    local IFS=$'\n'
    COMPREPLY=($(compgen -W "$(_acmo_ask --json orders list --limit 1000 |
        grep -oE '"id":"[A-Za-z0-9_-]+"' | cut -d'"' -f4)" -- "$1"))
}

# The message ids of the DLQ (up to 1000, oldest first) that start with $1.
_acmo_dlq_ids()
{
    local IFS=$'\n'
    COMPREPLY=($(compgen -W "$(_acmo_ask --json dlq list --limit 1000 |
        grep -oE '"messageId":"[A-Za-z0-9_-]+"' | cut -d'"' -f4)" -- "$1"))
}

# The subcommands of subcommand $1, if it has any (else fail).
_acmo_nested()
{
    local var=_acmo_subcommands_${1//-/_}
    [[ -n ${!var-} ]] && echo "${!var}"
}

_acmo()
{
    # $2 is the word readline replaces. bash splits COMP_WORDS at '=' and '@' too
    # (COMP_WORDBREAKS), so "--data-dir=DIR" and "--data @FILE" take several words there, and
    # the option may be a few words back; readline's word keeps the '@' of "@FILE".
    local cur=${2-${COMP_WORDS[COMP_CWORD]}} opt i w cmd='' sub='' positionals=0 from_file=''
    local j=$(( COMP_CWORD - 1 ))
    while (( j > 1 )) && [[ ${COMP_WORDS[j]} =~ ^[=@]+$ ]]; do (( j-- )); done
    opt=${COMP_WORDS[j]}
    COMPREPLY=()

    case $opt in
        --config|--file|--pid-file|--log-file) _acmo_files "$cur"; return ;;
        --data-dir) _acmo_dirs "$cur"; return ;;
        --data)
            # JSON is typed by hand; "@FILE" reads it from a file.
            [[ $cur == @* ]] && _acmo_data_files "${cur#@}"
            return ;;
        --status) COMPREPLY=($(compgen -W "$_acmo_statuses" -- "$cur")); return ;;
        --order-id) _acmo_order_ids "$cur"; return ;;
        --older-than|--newer-than) COMPREPLY=($(compgen -W "$_acmo_durations" -- "$cur")); return ;;
        --group|--dedup-id|--concurrency|--batch-size|--limit|--offset|--reason|--rate|--to|--schema) return ;;
    esac

    # The subcommand is the first word that is neither an option nor an option's value. For a
    # command with subcommands of its own (config, orders), the next such word is its
    # subcommand; for send, the words after it that are not options count as its TYPE.
    for (( i = 1; i < COMP_CWORD; i++ )); do
        w=${COMP_WORDS[i]}
        if [[ $_acmo_value_opts == *" $w "* ]]; then
            [[ $w == --file ]] && from_file=1
            # Skip the value, and the '=' or '@' bash may have split off before it.
            while [[ ${COMP_WORDS[i+1]-} =~ ^[=@]+$ ]]; do (( i++ )); done
            (( i++ ))
        elif [[ $w == -* || $w =~ ^[=@]+$ ]]; then
            :
        elif [[ -z $cmd ]]; then
            cmd=$w
        elif [[ -z $sub ]] && _acmo_nested "$cmd" >/dev/null; then
            sub=$w
        else
            (( positionals++ ))
        fi
    done

    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "$_acmo_global_opts -h --help --version" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$_acmo_subcommands" -- "$cur"))
        fi
        return
    fi

    [[ " $_acmo_subcommands " == *" $cmd "* ]] || return
    local nested opts_var=_acmo_opts_${cmd//-/_}
    if nested=$(_acmo_nested "$cmd"); then
        if [[ -z $sub ]]; then
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "${!opts_var} $_acmo_global_opts" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "$nested" -- "$cur"))
            fi
            return
        fi
        [[ " $nested " == *" $sub "* ]] || return
        opts_var=${opts_var}_${sub//-/_}
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "${!opts_var} $_acmo_global_opts" -- "$cur"))
    elif [[ $cmd == send && $positionals -eq 0 && -z $from_file ]]; then
        COMPREPLY=($(compgen -W 'CREATE UPDATE DELETE' -- "$cur"))
    elif [[ $cmd == orders && ($sub == get || $sub == events) && $positionals -eq 0 ]]; then
        _acmo_order_ids "$cur"
    elif [[ $cmd == dlq && ($sub == show && $positionals -eq 0 || $sub == redrive) ]]; then
        _acmo_dlq_ids "$cur"
    fi
}
complete -F _acmo acmo
