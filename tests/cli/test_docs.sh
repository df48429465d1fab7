#!/usr/bin/env bash
# Drift test: the man page and the bash, zsh and fish completions cover every subcommand and
# every flag the acmo binary has, and mention none it does not have; acmo.toml(5), the
# ENVIRONMENT of acmo(1), examples/acmo.toml and docs/configuration.md cover every configuration
# key it has. README.md, ARCHITECTURE.md, docs/*.md and man/*.scd hold no history (commit
# hashes, issue numbers, dates, clock times, diary phrases), their relative links lead to files
# of the checkout, and README.md stays under 220 lines.
#
#   bash tests/cli/test_docs.sh path/to/acmo path/to/source-root
#
# The binary is the source of truth: its subcommands come from the "Subcommands:" section of
# `acmo --help`, their own subcommands (config show, config check) from that of
# `acmo SUB --help`, and the flags of each from the "Options:" section of
# `acmo SUB [SUB2] --help` (CLI11's format: "  -q,--quiet   text" or "  --data JSON|@FILE
# text"). A command is named by its path: "send", "config", "config/show". The configuration
# keys come from `acmo config show`. The bash completion is also run, with
# COMP_WORDS/COMP_CWORD set by hand; fish is run and zsh parses _acmo when they are installed.
# Lists of words (subcommands, flags, completions) are split on purpose throughout.
# shellcheck disable=SC2046,SC2086,SC2116
set -u

if [[ $# -ne 2 ]]; then
  echo "usage: $0 path/to/acmo path/to/source-root" >&2
  exit 2
fi
# Absolute paths: the completions run in a temp dir.
acmo=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
root=$(cd "$2" && pwd)
man_page=$root/man/acmo.1.scd
toml_page=$root/man/acmo.toml.5.scd
bash_file=$root/completions/acmo.bash
zsh_file=$root/completions/_acmo
fish_file=$root/completions/acmo.fish

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The words of list $1 that are not in list $2 (both whitespace-separated).
missing_from() {
  local word out=()
  for word in $1; do
    [[ " $(echo $2) " == *" $word "* ]] || out+=("$word")
  done
  echo "${out[@]}"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- what the binary says -------------------------------------------------------------------

# The names in the "Options:" section of a CLI11 help text, one per line: "-q", "--quiet", ...
help_flags() {
  awk '/^Options:/ { on = 1; next } /^[^ ]/ { on = 0 } on && /^  -/ { print $1 }' |
    tr ',' '\n' | grep -oE '^--?[A-Za-z0-9][A-Za-z0-9_-]*'
}

# The names in the "Subcommands:" section of a CLI11 help text, one per line.
help_subcommands() {
  awk '/^Subcommands:/ { on = 1; next } /^[^ ]/ || /^$/ { on = 0 } on { print $1 }'
}
# The words of a command path: "config/show" -> "config show".
words() { echo "${1//\// }"; }

top_help=$("$acmo" --help) || { not_ok "acmo --help exits 0"; }
subcommands=$(echo "$top_help" | help_subcommands)
global_flags=$(echo "$top_help" | help_flags)
# commands: every path; sub_flags[PATH]: its flags; nested[SUB]: the subcommands of SUB;
# no_args: the paths whose usage line takes nothing but options ("Usage: acmo stats [OPTIONS]").
declare -A sub_flags nested
commands=''
no_args=''
for sub in $subcommands; do
  help=$("$acmo" "$sub" --help) || not_ok "acmo $sub --help exits 0"
  paths=$sub
  nested[$sub]=$(echo "$help" | help_subcommands)
  for inner in ${nested[$sub]}; do paths+=" $sub/$inner"; done
  for path in $paths; do
    [[ $path == */* ]] && { help=$("$acmo" $(words $path) --help) ||
      not_ok "acmo $(words $path) --help exits 0"; }
    sub_flags[$path]=$(echo "$help" | help_flags)
    grep -qxE "Usage: acmo $(words $path) \[OPTIONS\]" <<<"$help" && no_args+=" $path"
    commands+=" $path"
  done
done

# Guard against a parser that finds nothing (and so checks nothing).
if [[ -z $subcommands || $global_flags != *--data-dir* || ${sub_flags[send]:-} != *--order-id* ||
  ${nested[config]:-} != *show* || ${sub_flags[config/show]:-} != *--help* ]]
then
  not_ok "parse acmo --help, acmo send --help and acmo config --help (got commands:" \
    "$(echo $commands); global flags: $(echo $global_flags))"
  echo "$passed passed, $((failed)) failed"
  exit 1
fi
ok "the binary has commands: $(echo $commands); global flags: $(echo $global_flags)"

long_only() { tr ' ' '\n' <<<"$*" | grep -E '^--' ; }
short_only() { tr ' ' '\n' <<<"$*" | grep -E '^-[^-]' ; }
all_flags="$global_flags"
for path in $commands; do all_flags+=" ${sub_flags[$path]}"; done
all_long=$(long_only $all_flags | sort -u)

# --- the man pages --------------------------------------------------------------------------

if command -v scdoc >/dev/null 2>&1; then
  for page in "$man_page" "$toml_page"; do
    if scdoc <"$page" >/dev/null 2>"$tmp/scdoc.err"; then
      ok "scdoc builds ${page#"$root"/}"
    else
      not_ok "scdoc builds ${page#"$root"/}: $(cat "$tmp/scdoc.err")"
    fi
  done
else
  skip "scdoc is not installed; man pages not built"
fi

# The text of one section of the man page: from the heading line $1 to the next heading (a
# line that starts with "#" outside a ``` block).
section_of() {
  awk -v heading="$1" '/^```/ { code = !code } $0 == heading { on = 1; next }
    on && /^#/ && !code { on = 0 } on'
}
man_section() { section_of "$1" <"$man_page"; }
# The flags of $2.. that the man page text $1 does not describe: no term line (a line that
# starts with "*-", such as "*-y*, *--yes*") shows the flag in bold as *FLAG*.
not_described() {
  local terms flag out=()
  terms=$(grep -E '^\*-' <<<"$1")
  shift
  for flag in "$@"; do
    grep -qF -- "*$flag*" <<<"$terms" || out+=("$flag")
  done
  echo "${out[@]}"
}

section=$(man_section "# GLOBAL OPTIONS")
none_missing "man page: GLOBAL OPTIONS describes every global flag" \
  $(not_described "$section" $global_flags)
synopsis=$(man_section "# SYNOPSIS")
for path in $commands; do
  name=$(words $path)
  section=$(man_section "## acmo $name")
  if [[ -z $section ]]; then
    not_ok "man page: a section '## acmo $name'"
  else
    ok "man page: a section '## acmo $name'"
    # -h/--help is in every subcommand; GLOBAL OPTIONS covers it.
    none_missing "man page: '## acmo $name' describes every flag of acmo $name" \
      $(not_described "$section" $(missing_from "${sub_flags[$path]}" "$global_flags"))
  fi
  none_missing "man page: SYNOPSIS shows acmo $name" \
    $(for w in $name; do grep -qF -- "*$w*" <<<"$synopsis" || echo "$w"; done)
done
man_sections=$(sed -n 's/^## acmo \([a-z -]*\)$/\1/p' "$man_page" | tr ' ' '/')
none_missing "man page: every '## acmo X' section is a command of the binary" \
  $(missing_from "$man_sections" "$commands")
man_long=$(grep -oE -- '(^|[^a-z-])--[a-z][a-z-]*' "$man_page" | grep -oE -- '--[a-z-]+' | sort -u)
none_missing "man page: every --flag it names is a flag of the binary" \
  $(missing_from "$man_long" "$all_long")

# The ready-to-read pages in man/ (for `man ./man/acmo.1` in a checkout) are what scdoc makes of
# the sources today, but for the date in the .TH line.
for page in acmo.1 acmo.toml.5; do
  if [[ ! -f $root/man/$page ]]; then
    not_ok "man/$page exists (scripts/update-man.sh makes it)"
  elif diff <(scdoc <"$root/man/$page.scd" | grep -v '^\.TH ') <(grep -v '^\.TH ' "$root/man/$page") >/dev/null; then
    ok "man/$page is up to date with man/$page.scd"
  else
    not_ok "man/$page is up to date with man/$page.scd (run scripts/update-man.sh)"
  fi
done

# A shell example's line continuation: scdoc reads a lone backslash at the end of a line as an
# escape and drops it, so the page would show a command cut in pieces. In the sources it is "\\".
for page in acmo.1 acmo.toml.5; do
  # shellcheck disable=SC2046 # one word per line number
  none_missing "man/$page.scd: no line ends in a lone backslash, which scdoc drops" \
    $(grep -nP '(?<!\\)\\$' "$root/man/$page.scd" | cut -d: -f1 | sed 's/^/line-/')
done
# And the page shows them.
if [[ $(MANWIDTH=120 man "$root/man/acmo.1" 2>/dev/null | grep -c 'curl .*\\$') -ge 1 ]]; then
  ok "man/acmo.1 shows the curl example's line continuations"
else
  not_ok "man/acmo.1 shows the curl example's line continuations"
fi

# --- bash -----------------------------------------------------------------------------------

# What the bash completion offers for the command line "$@", the last word being completed;
# run in the temp dir, where a few files wait to be completed. bash_complete_as WORD ... passes
# WORD as readline's word ($2), which differs from the last of COMP_WORDS after an '@'.
mkdir -p "$tmp/work/subdir"
touch "$tmp/work/events.jsonl" "$tmp/work/order.json"
bash_complete_as() {
  (cd "$tmp/work" && bash --norc --noprofile -c '
    source "$1" || exit 1
    word=$2
    shift 2
    fn=$(complete -p acmo 2>/dev/null | sed -n "s/.*-F \([^ ]*\) .*/\1/p")
    [[ -n $fn ]] || { echo "no complete -F ... acmo" >&2; exit 1; }
    COMP_WORDS=("$@")
    COMP_CWORD=$(( $# - 1 ))
    COMP_LINE="$*"
    COMP_POINT=${#COMP_LINE}
    COMPREPLY=()
    "$fn" acmo "$word" "${COMP_WORDS[COMP_CWORD-1]}"
    printf "%s\n" "${COMPREPLY[@]}"' _ "$bash_file" "$@")
}
bash_complete() { bash_complete_as "${@: -1}" "$@"; }

if offered=$(bash_complete acmo ""); then
  ok "bash: completions/acmo.bash loads and registers a function for acmo"
else
  not_ok "bash: completions/acmo.bash loads and registers a function for acmo"
fi
none_missing "bash: 'acmo <TAB>' offers every subcommand" $(missing_from "$subcommands" "$offered")
none_missing "bash: 'acmo <TAB>' offers only subcommands" $(missing_from "$offered" "$subcommands")
for word in send stats purge config; do
  none_missing "bash: 'acmo <TAB>' offers $word" $(missing_from "$word" "$offered")
done
for sub in $subcommands; do
  [[ -n ${nested[$sub]} ]] || continue
  for line in "acmo $sub" "acmo --json $sub"; do
    offered=$(bash_complete $line "")
    none_missing "bash: '$line <TAB>' offers exactly: $(echo ${nested[$sub]})" \
      $(missing_from "${nested[$sub]}" "$offered") $(missing_from "$offered" "${nested[$sub]}")
  done
done
for path in $no_args; do
  offered=$(bash_complete acmo $(words $path) "")
  none_missing "bash: 'acmo $(words $path) <TAB>' offers nothing (it takes no arguments)" $offered
done

offered=$(bash_complete acmo -)
none_missing "bash: 'acmo -<TAB>' offers every global flag" $(missing_from "$global_flags" "$offered")
none_missing "bash: 'acmo -<TAB>' offers only global flags" $(missing_from "$offered" "$global_flags")

# After a subcommand: its own flags and the global ones (CLI11 lets them follow it), except
# --version, which belongs before the subcommand.
globals_after=$(missing_from "$global_flags" "--version -h --help")
for path in $commands; do
  name=$(words $path)
  offered=$(bash_complete acmo $name -)
  none_missing "bash: 'acmo $name -<TAB>' offers every flag of acmo $name" \
    $(missing_from "${sub_flags[$path]} $globals_after" "$offered")
  none_missing "bash: 'acmo $name -<TAB>' offers only flags of acmo $name and global flags" \
    $(missing_from "$offered" "${sub_flags[$path]} $global_flags")
done

offered=$(bash_complete acmo send --)
none_missing "bash: 'acmo send --<TAB>' offers --order-id --data --file --dedup-id --group" \
  $(missing_from "--order-id --data --file --dedup-id --group" "$offered")
offered=$(bash_complete acmo --json send "")
none_missing "bash: 'acmo --json send <TAB>' offers CREATE UPDATE DELETE" \
  $(missing_from "CREATE UPDATE DELETE" "$offered")
offered=$(bash_complete acmo send --file "")
none_missing "bash: 'acmo send --file <TAB>' offers files" \
  $(missing_from "events.jsonl order.json" "$offered")
# bash splits "--data @o" into "--data" "@" "o" in COMP_WORDS, and "--data=@o" into
# "--data" "=@" "o"; readline's word is "@o" in both.
offered=$(bash_complete_as @o acmo send --data @ o)
none_missing "bash: 'acmo send --data @o<TAB>' offers @order.json" $(missing_from "@order.json" "$offered")
offered=$(bash_complete_as @o acmo send --data =@ o)
none_missing "bash: 'acmo send --data=@o<TAB>' offers @order.json" $(missing_from "@order.json" "$offered")
offered=$(bash_complete acmo --data-dir "")
none_missing "bash: 'acmo --data-dir <TAB>' offers directories only" \
  $(missing_from "subdir" "$offered") $(missing_from "$offered" "subdir")
offered=$(bash_complete_as "" acmo --config =)  # "--config=": readline's word is empty
none_missing "bash: 'acmo --config=<TAB>' offers files" $(missing_from "events.jsonl" "$offered")

# Live values: order ids, DLQ message ids and statuses, asked of acmo (found on PATH, as the
# completion runs the command's first word) for the --data-dir on the line.
live="$tmp/live"
acmo_dir=$(cd "$(dirname "$acmo")" && pwd)
live_order=ord_completion_1
"$acmo" --data-dir "$live" -q send CREATE --order-id "$live_order" \
  --data '{"customer_name":"Ada","customer_email":"ada@example.com","items":[]}'
"$acmo" --data-dir "$live" -q send UPDATE --order-id "$live_order" --data '{"status":"delivered"}'
"$acmo" --data-dir "$live" -q run-handler --once
dead_id=$("$acmo" --data-dir "$live" --json dlq list | grep -oE '"messageId":"[^"]+"' | cut -d'"' -f4)
offered=$(PATH="$acmo_dir:$PATH" bash_complete acmo --data-dir "$live" orders get "")
none_missing "bash: 'acmo --data-dir DIR orders get <TAB>' offers the orders of DIR" \
  $(missing_from "$live_order" "$offered")
offered=$(PATH="$acmo_dir:$PATH" bash_complete acmo --data-dir "$live" dlq show "")
none_missing "bash: 'acmo --data-dir DIR dlq show <TAB>' offers the DLQ's message ids" \
  $(missing_from "${dead_id:-a-dead-letter-id}" "$offered")
offered=$(bash_complete acmo orders list --status "")
none_missing "bash: 'acmo orders list --status <TAB>' offers the statuses" \
  $(missing_from "pending processing shipped delivered cancelled" "$offered")

# --- zsh ------------------------------------------------------------------------------------

# The lines of $zsh_file from the one that is $1 to the next line that is "}" or ")".
zsh_block() {
  awk -v start="$1" '$0 == start { on = 1; next } on && /^[})]$/ { on = 0 } on' "$zsh_file"
}
# The flags of $2.. that the zsh spec text $1 does not name as an option: "--json[",
# "--config=[", "--wait=-[" (a value that must be attached), or in a {-q,--quiet} brace pair.
zsh_missing() {
  local text=$1 flag out=()
  shift
  for flag in "$@"; do
    [[ $text == *"'${flag}["* || $text == *"'${flag}=["* || $text == *"{${flag},"* ||
      $text == *",${flag}}"* || $text == *")${flag}["* || $text == *")${flag}=["* ||
      $text == *"'${flag}=-["* || $text == *")${flag}=-["* ]] ||
      out+=("$flag")
  done
  echo "${out[@]}"
}

# The names of the command list ("  'send:put order events ...'") in the zsh text $1.
zsh_commands() { sed -n "s/^ *'\([a-z-]*\):.*/\1/p" <<<"$1"; }

zsh_globals=$(zsh_block "_acmo_global_opts=(")
zsh_top=$(zsh_block "_acmo() {")
none_missing "zsh: _acmo and _acmo_global_opts name every global flag" \
  $(zsh_missing "$zsh_globals $zsh_top" $global_flags)
# _acmo lists the subcommands; _acmo_SUB lists those of SUB, if it has any.
for parent in '' $subcommands; do
  if [[ -z $parent ]]; then fn=_acmo; want=$subcommands; else fn=_acmo_$parent; want=${nested[$parent]}; fi
  [[ -n $want ]] || continue
  listed=$(zsh_commands "$(zsh_block "$fn() {")")
  none_missing "zsh: the command list of $fn names exactly: $(echo $want)" \
    $(missing_from "$want" "$listed") $(missing_from "$listed" "$want")
done
for path in $commands; do
  fn=_acmo_${path//\//_}
  none_missing "zsh: $fn names every flag of acmo $(words $path)" \
    $(zsh_missing "$(zsh_block "$fn() {")" ${sub_flags[$path]})
done
all_names=$(for path in $commands; do echo "${path##*/}"; done)
none_missing "zsh: every command in a list is a command of the binary" \
  $(missing_from "$(zsh_commands "$(cat "$zsh_file")")" "$all_names")
zsh_long=$(grep -oE -- "(^|[^a-z-])--[a-z][a-z-]*" "$zsh_file" | grep -oE -- '--[a-z-]+' | sort -u)
none_missing "zsh: every --flag it names is a flag of the binary" $(missing_from "$zsh_long" "$all_long")
if command -v zsh >/dev/null 2>&1; then
  if zsh -n "$zsh_file" 2>"$tmp/zsh.err"; then ok "zsh: _acmo parses (zsh -n)"
  else not_ok "zsh: _acmo parses (zsh -n): $(cat "$tmp/zsh.err")"; fi
else
  skip "zsh is not installed; _acmo not parsed"
fi

# --- fish -----------------------------------------------------------------------------------

# The flags of $2.. that no "complete -c acmo" line of the text $1 declares with -l or -s.
fish_missing() {
  local text=$1 flag out=() re
  shift
  for flag in "$@"; do
    if [[ $flag == --* ]]; then re=" -l ${flag#--}( |$)"; else re=" -s ${flag#-}( |$)"; fi
    grep -qE -- "$re" <<<"$text" || out+=("$flag")
  done
  echo "${out[@]}"
}

fish_lines=$(grep -E '^complete -c acmo ' "$fish_file")
none_missing "fish: every global flag is declared for any subcommand" \
  $(fish_missing "$(grep -v -- '__acmo_using' <<<"$fish_lines")" $global_flags)
# Subcommands are offered with "-n __acmo_no_subcommand -a SUB", and the subcommands of SUB
# with "-n '__acmo_no_subcommand SUB' -a INNER"; the flags of a path with
# "-n '__acmo_using WORDS...'".
for path in $commands; do
  if [[ $path == */* ]]; then condition="'__acmo_no_subcommand ${path%%/*}'"
  else condition=__acmo_no_subcommand; fi
  none_missing "fish: $(words $path) is offered as a subcommand" \
    $(grep -qE -- "-n $condition -a ${path##*/}( |$)" <<<"$fish_lines" || echo "${path##*/}")
  none_missing "fish: every flag of acmo $(words $path) is declared for '__acmo_using $(words $path)'" \
    $(fish_missing "$(grep -E -- "'__acmo_using $(words $path)'| -l help" <<<"$fish_lines")" \
      ${sub_flags[$path]})
done
fish_subs=$(sed -nE 's/.*-n __acmo_no_subcommand -a ([a-z-]+) .*/\1/p' <<<"$fish_lines")
none_missing "fish: every subcommand it offers is a subcommand of the binary" \
  $(missing_from "$fish_subs" "$subcommands")
for sub in $subcommands; do
  fish_inner=$(sed -nE "s/.*-n '__acmo_no_subcommand $sub' -a ([a-z-]+) .*/\1/p" <<<"$fish_lines")
  [[ -n ${nested[$sub]}$fish_inner ]] || continue
  none_missing "fish: every subcommand of $sub it offers is one of the binary" \
    $(missing_from "$fish_inner" "${nested[$sub]}")
done
fish_long=$(grep -oE -- ' -l [a-z][a-z-]*' <<<"$fish_lines" | sed 's/ -l /--/' | sort -u)
none_missing "fish: every -l flag it declares is a flag of the binary" \
  $(missing_from "$fish_long" "$all_long")
if command -v fish >/dev/null 2>&1; then
  fish_complete() {
    (cd "$tmp/work" && fish --no-config -c "source '$fish_file'; complete -C '$1'" | cut -f1)
  }
  offered=$(fish_complete "acmo ")
  none_missing "fish: 'acmo <TAB>' offers exactly the subcommands" \
    $(missing_from "$subcommands" "$offered") $(missing_from "$offered" "$subcommands")
  offered=$(fish_complete "acmo send --")
  none_missing "fish: 'acmo send --<TAB>' offers every long flag of acmo send" \
    $(missing_from "$(long_only ${sub_flags[send]})" "$offered")
  offered=$(fish_complete "acmo send ")
  none_missing "fish: 'acmo send <TAB>' offers CREATE UPDATE DELETE" \
    $(missing_from "CREATE UPDATE DELETE" "$offered")
  for sub in $subcommands; do
    [[ -n ${nested[$sub]} ]] || continue
    for line in "acmo $sub " "acmo --json $sub "; do
      offered=$(fish_complete "$line")
      none_missing "fish: '$line<TAB>' offers exactly: $(echo ${nested[$sub]})" \
        $(missing_from "${nested[$sub]}" "$offered") $(missing_from "$offered" "${nested[$sub]}")
    done
  done
  for path in $no_args; do
    offered=$(fish_complete "acmo $(words $path) ")
    none_missing "fish: 'acmo $(words $path) <TAB>' offers nothing (it takes no arguments)" $offered
  done
else
  skip "fish is not installed; acmo.fish not run"
fi

# --- configuration keys ---------------------------------------------------------------------

# Run "$@" without the caller's ACMO_* and XDG_* variables, with an empty HOME, in an empty
# directory: no configuration file is found but /etc/acmo/acmo.toml, so give acmo --config to
# be sure which file it reads.
mkdir -p "$tmp/empty" "$tmp/home"
: >"$tmp/empty.toml"
acmo_clean() {
  local name unset=()
  for name in $(compgen -e); do
    [[ $name == ACMO_* || $name == XDG_* ]] && unset+=(-u "$name")
  done
  (cd "$tmp/empty" && env "${unset[@]}" HOME="$tmp/home" "$@")
}
# The lines "KEY<TAB>VALUE<TAB>SOURCE" of the text output of `acmo config show` on stdin
# ("queue.name  "orders"  # default").
show_rows() { sed -nE 's/^([^ ]+) +(.*[^ ]) +# (.*)$/\1\t\2\t\3/p'; }
# The environment variable of a key: queue.dedup_window -> ACMO_QUEUE_DEDUP_WINDOW.
env_var() { local v=${1^^}; echo "ACMO_${v//./_}"; }
# scdoc text with its escapes removed: "\_" -> "_".
unescape() { sed 's/\\_/_/g' "$@"; }

# The keys, and their defaults: an empty --config file sets nothing.
keys_json=$(acmo_clean "$acmo" --config "$tmp/empty.toml" --json config show)
keys=$(grep -oE '"[a-z_][a-z0-9_.]*":\{' <<<"$keys_json" | sed -E 's/^"(.*)":\{$/\1/')
defaults=$(acmo_clean "$acmo" --config "$tmp/empty.toml" config show | show_rows)
declare -A default_of
while IFS=$'\t' read -r key value source; do
  [[ $source == default ]] && default_of[$key]=$value
done <<<"$defaults"
if [[ -z $keys || " $(echo $keys) " != *" queue.name "* || -z ${default_of[queue.name]:-} ]]; then
  not_ok "parse acmo config show (got keys: $(echo $keys))"
  echo "$passed passed, $failed failed"
  exit 1
fi
ok "acmo config show --json has the keys: $(echo $keys)"
none_missing "acmo config show prints the same keys as acmo config show --json, all at a default" \
  $(missing_from "$keys" "${!default_of[*]}") $(missing_from "${!default_of[*]}" "$keys")

# Each key's variable is ACMO_ and the key in capitals, '.' as '_': set every one (to its
# default without quotes and brackets, "x" if empty) and see that acmo takes each from it.
env_args=()
for key in $keys; do
  value=$(sed -E 's/[]["]//g; s/, /,/g' <<<"${default_of[$key]-}")
  env_args+=("$(env_var "$key")=${value:-x}")
done
from_env=$(acmo_clean env "${env_args[@]}" "$acmo" --config "$tmp/empty.toml" config show |
  show_rows)
none_missing "every key is read from its variable ACMO_KEY, with '.' as '_'" \
  $(for key in $keys; do
      grep -qxF "$key"$'\t'"$(sed -nE "s/^$key\t(.*)\t.*/\1/p" <<<"$from_env")"$'\t'"env $(env_var "$key")" \
        <<<"$from_env" || echo "$key"
    done)

# acmo.toml(5): each key "T.N" has a term line "*N* = DEFAULT" in the section "## [T]" ("## Top
# level" for a key without a table), and the paragraph under it names its variable.
toml_text=$(unescape "$toml_page")
# The text of the subsection $1 of the unescaped acmo.toml(5).
toml_section() { section_of "$1" <<<"$toml_text"; }
# The term line of key $2 in section text $1, and the paragraph under it.
toml_entry() { awk -v term="*$2* = " 'index($0, term) == 1 { on = 1 } on && /^$/ { exit } on' <<<"$1"; }
bad_default=() no_env=() undocumented=()
for key in $keys; do
  if [[ $key == *.* ]]; then heading="## [${key%%.*}]"; else heading="## Top level"; fi
  entry=$(toml_entry "$(toml_section "$heading")" "${key#*.}")
  if [[ -z $entry ]]; then undocumented+=("$key"); continue; fi
  [[ $(head -n 1 <<<"$entry") == "*${key#*.}* = ${default_of[$key]}" ]] || bad_default+=("$key")
  [[ $entry == *"*$(env_var "$key")*"* ]] || no_env+=("$key")
done
none_missing "acmo.toml(5) documents every key under '## [TABLE]' or '## Top level'" "${undocumented[@]}"
none_missing "acmo.toml(5) gives every key its default as 'acmo config show' prints it" "${bad_default[@]}"
none_missing "acmo.toml(5) names the environment variable of every key" "${no_env[@]}"
documented=$(sed -nE 's/^## (\[[a-z_]+\]|Top level)$/\1/p' <<<"$toml_text" |
  while read -r table; do
    prefix=''
    [[ $table == \[*\] ]] && { prefix=${table#[}; prefix=${prefix%]}.; }
    toml_section "## $table" | sed -nE "s/^\*([a-z_]+)\* = .*/$prefix\1/p"
  done)
none_missing "every key acmo.toml(5) documents is a key of the binary" $(missing_from "$documented" "$keys")

# The EXAMPLE of acmo.toml(5) is a file that acmo accepts.
section_of "# EXAMPLE" <"$toml_page" | awk '/^```/ { n++; next } n == 1' >"$tmp/example.toml"
if [[ ! -s $tmp/example.toml ]]; then
  not_ok "acmo.toml(5): EXAMPLE holds a file in a \`\`\` block"
elif result=$(acmo_clean "$acmo" --config "$tmp/example.toml" config check 2>&1); then
  ok "acmo.toml(5): acmo config check accepts the file of EXAMPLE"
else
  not_ok "acmo.toml(5): acmo config check accepts the file of EXAMPLE: $result"
fi

# acmo(1): ENVIRONMENT has a term line for every key's variable, "*KEY* (default DEFAULT)" or
# "*KEY* (default DEFAULT, ..." under it, and no ACMO_ variable that is neither a key's nor
# ACMO_CONFIG.
env_section=$(man_section "# ENVIRONMENT" | unescape)
env_terms=$(sed -nE 's/^\*(ACMO_[A-Z_]+)\*$/\1/p' <<<"$env_section")
key_vars=$(for key in $keys; do env_var "$key"; done)
none_missing "man page: ENVIRONMENT lists the variable of every key" $(missing_from "$key_vars" "$env_terms")
none_missing "man page: every ACMO_ variable of ENVIRONMENT is a key's or ACMO_CONFIG" \
  $(missing_from "$env_terms" "$key_vars ACMO_CONFIG")
none_missing "man page: ENVIRONMENT gives every key and its default under its variable" \
  $(for key in $keys; do
      awk -v term="*$(env_var "$key")*" -v want="*$key* (default ${default_of[$key]}" \
        '$0 == term { getline
          if (index($0, want) == 2 && substr($0, 2 + length(want), 1) ~ /[),]/) found = 1 }
        END { exit !found }' \
        <<<"$env_section" || echo "$key"
    done)

# examples/acmo.toml sets every key (acmo itself says it took each from the file), to its
# default, and acmo accepts it.
example=$root/examples/acmo.toml
if result=$(acmo_clean "$acmo" --config "$example" config check 2>&1); then
  ok "examples/acmo.toml: acmo config check accepts it"
else
  not_ok "examples/acmo.toml: acmo config check accepts it: $result"
fi
none_missing "examples/acmo-production.toml: acmo config check accepts it" \
  $(acmo_clean "$acmo" --config "$root/examples/acmo-production.toml" config check \
      2>&1 >/dev/null || echo "(exit $?)")
from_example=$(acmo_clean "$acmo" --config "$example" config show | show_rows)
none_missing "examples/acmo.toml sets every key of acmo config show --json" \
  $(for key in $keys; do
      grep -qE "^$key"$'\t'".*"$'\t'"${example//./\\.}:[0-9]+\$" <<<"$from_example" || echo "$key"
    done)
none_missing "examples/acmo.toml gives every key its default" \
  $(for key in $keys; do
      grep -qF "$key"$'\t'"${default_of[$key]}"$'\t' <<<"$from_example" || echo "$key"
    done)

# docs/configuration.md: its table of keys has a row "| `KEY` | `DEFAULT` |" for every key, with
# the default as `acmo config show` prints it, and no row for a key the binary does not have.
config_doc=$root/docs/configuration.md
doc_rows=$(sed -nE 's/^\| `([a-z_][a-z0-9_.]*)` \| `([^`]*)` \|.*/\1\t\2/p' "$config_doc" 2>/dev/null)
none_missing "docs/configuration.md lists every key with its default as 'acmo config show' prints it" \
  $(for key in $keys; do
      grep -qxF "$key"$'\t'"${default_of[$key]}" <<<"$doc_rows" || echo "$key"
    done)
none_missing "every key docs/configuration.md lists is a key of the binary" \
  $(missing_from "$(cut -f1 <<<"$doc_rows")" "$keys")

# --- the prose docs: no history, no broken links ---------------------------------------------

# README.md, ARCHITECTURE.md, docs/*.md and the man pages' sources describe acmo as it is: how
# it got there belongs in the commit messages. So they hold no commit hashes, issue numbers,
# dates, clock times or phrases of a work diary, every relative link leads to a file of the
# checkout (and an anchor to a heading of it), and the README stays short.
prose=()
for f in "$root"/README.md "$root"/ARCHITECTURE.md "$root"/docs/*.md "$root"/man/*.scd; do
  [[ -f $f ]] && prose+=("$f")
done
md=()
for f in "${prose[@]}"; do [[ $f == *.md ]] && md+=("$f"); done
if [[ ${#md[@]} -lt 3 || ! -f $root/docs/queue.md ]]; then
  not_ok "README.md, ARCHITECTURE.md and docs/*.md exist (found: ${prose[*]#"$root"/})"
fi
# "FILE:LINE: TEXT" for the matches of the extended regex $1 (case-insensitive with -i as $2)
# in the prose files, the path relative to the root.
prose_grep() {
  grep -nE ${2:-} -- "$1" "${prose[@]}" | sed "s|^$root/||"
}
# Hex words of 7 to 40 digits with both a letter and a digit: what a commit hash looks like.
hashes=$(for f in "${prose[@]}"; do
    awk -v file="${f#"$root"/}" '{ line = $0
        while (match(line, /[0-9A-Za-z_]+/)) {
          word = substr(line, RSTART, RLENGTH); line = substr(line, RSTART + RLENGTH)
          if (word ~ /^[0-9a-f]+$/ && length(word) >= 7 && length(word) <= 40 &&
              word ~ /[a-f]/ && word ~ /[0-9]/) print file ":" NR ":" word
        } }' "$f"
  done)
none_missing "the docs name no commit hashes (7-40 hex digits with a letter and a digit)" $hashes
none_missing "the docs cite no issue numbers ('issue N', 'issue #N')" \
  $(prose_grep '\bissues? #?[0-9]+' -i | cut -d: -f1,2)
none_missing "the docs hold no clock times (such as 02:00)" \
  $(prose_grep '(^|[^0-9:])[0-2][0-9]:[0-5][0-9]([^0-9:]|$)' | cut -d: -f1,2)
# A date on its own is history; a date followed by T is an example ISO 8601 timestamp.
none_missing "the docs hold no dates (such as 2026-11-27; timestamps in examples excepted)" \
  $(grep -noE '(^|[^0-9])[0-9]{4}-[01][0-9]-[0-3][0-9]([^0-9T]|$)' "${prose[@]}" |
    sed "s|^$root/||" | cut -d: -f1,2)
for phrase in 'earlier machine' 'earlier session' 'this session' 'tried[ -]and[ -]dropped' \
  'whoever comes next' 'before/after'; do
  none_missing "the docs do not say '${phrase//\[ -\]/ }'" $(prose_grep "$phrase" -i | cut -d: -f1,2)
done

# The headings of a Markdown file as GitHub anchors: lowercase, punctuation dropped, spaces as
# '-' ("## 2. FIFO per message group" -> "2-fifo-per-message-group").
anchors_of() {
  awk '/^```/ { code = !code } !code && /^#+ / { sub(/^#+ /, ""); h = tolower($0)
    gsub(/[^a-z0-9 _-]/, "", h); gsub(/ /, "-", h); print h }' "$1"
}
# Every [text](target) outside code blocks and code spans, as "FILE:LINE: TARGET", for targets
# that are not URLs.
links_of() {
  awk -v file="${1#"$root"/}" '/^```/ { code = !code; next } !code {
      line = $0; gsub(/`[^`]*`/, "", line)
      while (match(line, /\]\([^) ]+\)/)) {
        target = substr(line, RSTART + 2, RLENGTH - 3); line = substr(line, RSTART + RLENGTH)
        if (target !~ /^[a-z]+:/) print file ":" NR ": " target
      }
    }' "$1"
}
bad_links=()
link_count=0
for f in "${md[@]}"; do
  while IFS= read -r entry; do
    [[ -n $entry ]] || continue
    link_count=$((link_count + 1))
    target=${entry#*: }
    path=${target%%#*}
    anchor=''
    [[ $target == *#* ]] && anchor=${target#*#}
    if [[ -z $path ]]; then dest=$f; else dest=$(realpath -m "$(dirname "$f")/$path"); fi
    if [[ $dest != "$root"/* || ! -e $dest ]]; then
      bad_links+=("${entry%%: *}:$target")
    elif [[ -n $anchor && $dest == *.md ]] && ! anchors_of "$dest" | grep -qxF -- "$anchor"; then
      bad_links+=("${entry%%: *}:$target(no-such-heading)")
    fi
  done < <(links_of "$f")
done
if [[ $link_count -eq 0 ]]; then
  not_ok "the docs' relative links are found (none found: the link parser is broken)"
fi
none_missing "every relative link of the docs ($link_count) leads to a file of the checkout, and to a heading of it" \
  "${bad_links[@]}"

readme_lines=$(wc -l <"$root/README.md")
none_missing "README.md has at most 220 lines (it has $readme_lines; the rest belongs in docs/)" \
  $([[ $readme_lines -le 220 ]] || echo "README.md")

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
