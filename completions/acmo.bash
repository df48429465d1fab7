# bash completion for acmo                                   -*- shell-script -*-
#
# Plain bash, no bash-completion helpers needed. Installed as
# $datadir/bash-completion/completions/acmo; to try it by hand: source completions/acmo.bash
# Keep the lists in step with `acmo --help` and `acmo COMMAND --help`;
# tests/cli/test_docs.sh fails when they drift apart.

_acmo_subcommands='send stats purge'
_acmo_global_opts='--config --data-dir --json -q --quiet -v --verbose'

# Options of each subcommand, and the options (of any command) that take a value.
_acmo_opts_send='--order-id --data --group --dedup-id --file -h --help'
_acmo_opts_stats='-h --help'
_acmo_opts_purge='--dlq -y --yes -h --help'
_acmo_value_opts=' --config --data-dir --order-id --data --group --dedup-id --file '

_acmo_files()
{
    compopt -o filenames 2>/dev/null
    local IFS=$'\n'
    COMPREPLY=($(compgen -P "$2" -f -- "$1"))
}

_acmo_dirs()
{
    compopt -o filenames 2>/dev/null
    local IFS=$'\n'
    COMPREPLY=($(compgen -d -- "$1"))
}

_acmo()
{
    local cur=${COMP_WORDS[COMP_CWORD]} opt i w cmd= positionals=0 from_file=
    COMPREPLY=()

    # bash splits "--data-dir=DIR" and "--data @FILE" at '=' and '@' (COMP_WORDBREAKS): the
    # word may be just the '=' or '@', and the option may be a few words back.
    local at= j=$(( COMP_CWORD - 1 ))
    if [[ $cur == = || $cur == @ ]]; then
        [[ $cur == @ ]] && at=@
        cur=
    fi
    while (( j > 1 )) && [[ ${COMP_WORDS[j]} == = || ${COMP_WORDS[j]} == @ ]]; do
        [[ ${COMP_WORDS[j]} == @ ]] && at=@
        (( j-- ))
    done
    opt=${COMP_WORDS[j]}$at

    case $opt in
        --config|--file) _acmo_files "$cur"; return ;;
        --data-dir) _acmo_dirs "$cur"; return ;;
        --data@) _acmo_files "$cur"; return ;;
        --data)
            # JSON is typed by hand; "@FILE" reads it from a file.
            [[ $cur == @* ]] && _acmo_files "${cur#@}" @
            return ;;
        --order-id|--group|--dedup-id) return ;;
    esac

    # The subcommand is the first word that is neither an option nor an option's value; for
    # send, the words after it that are not options count as its TYPE.
    for (( i = 1; i < COMP_CWORD; i++ )); do
        w=${COMP_WORDS[i]}
        if [[ $_acmo_value_opts == *" $w "* ]]; then
            [[ $w == --file ]] && from_file=1
            # Skip the value, and the '=' or '@' bash may have split off before it.
            while [[ ${COMP_WORDS[i+1]} == = || ${COMP_WORDS[i+1]} == @ ]]; do (( i++ )); done
            (( i++ ))
        elif [[ $w == -* || $w == = || $w == @ ]]; then
            :
        elif [[ -z $cmd ]]; then
            cmd=$w
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
    local opts_var=_acmo_opts_${cmd//-/_}
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "${!opts_var} $_acmo_global_opts" -- "$cur"))
    elif [[ $cmd == send && $positionals -eq 0 && -z $from_file ]]; then
        COMPREPLY=($(compgen -W 'CREATE UPDATE DELETE' -- "$cur"))
    fi
}
complete -F _acmo acmo
