#!/usr/bin/env bash
# Drift test: the man page and the bash, zsh and fish completions cover every subcommand and
# every flag the acmo binary has, and mention none it does not have.
#
#   bash tests/cli/test_docs.sh path/to/acmo path/to/source-root
#
# The binary is the source of truth: its subcommands come from the "Subcommands:" section of
# `acmo --help`, their flags from the "Options:" section of `acmo SUB --help` (CLI11's format:
# "  -q,--quiet   text" or "  --data JSON|@FILE   text"). The bash completion is also run, with
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

passed=0
failed=0
ok() { echo "ok - $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $*"; failed=$((failed + 1)); }
skip() { echo "ok - # SKIP $*"; }

# Report one check: "check DESCRIPTION MISSING..." passes when nothing is missing.
check() {
  local what=$1
  shift
  if [[ $# -eq 0 ]]; then ok "$what"; else not_ok "$what (missing or wrong: $*)"; fi
}

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

top_help=$("$acmo" --help) || { not_ok "acmo --help exits 0"; }
subcommands=$(echo "$top_help" |
  awk '/^Subcommands:/ { on = 1; next } /^[^ ]/ || /^$/ { on = 0 } on { print $1 }')
global_flags=$(echo "$top_help" | help_flags)
declare -A sub_flags
for sub in $subcommands; do
  sub_flags[$sub]=$("$acmo" "$sub" --help | help_flags) || not_ok "acmo $sub --help exits 0"
done

# Guard against a parser that finds nothing (and so checks nothing).
if [[ -z $subcommands || $global_flags != *--data-dir* || ${sub_flags[send]:-} != *--order-id* ]]
then
  not_ok "parse acmo --help and acmo send --help (got subcommands: $(echo $subcommands);" \
    "global flags: $(echo $global_flags))"
  echo "$passed passed, $((failed)) failed"
  exit 1
fi
ok "the binary has subcommands: $(echo $subcommands); global flags: $(echo $global_flags)"

long_only() { tr ' ' '\n' <<<"$*" | grep -E '^--' ; }
short_only() { tr ' ' '\n' <<<"$*" | grep -E '^-[^-]' ; }
all_flags="$global_flags"
for sub in $subcommands; do all_flags+=" ${sub_flags[$sub]}"; done
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

# The text of one section of the man page: from the heading line $1 to the next heading.
man_section() {
  awk -v heading="$1" '$0 == heading { on = 1; next } on && /^#/ { on = 0 } on' "$man_page"
}
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
check "man page: GLOBAL OPTIONS describes every global flag" \
  $(not_described "$section" $global_flags)
for sub in $subcommands; do
  section=$(man_section "## acmo $sub")
  if [[ -z $section ]]; then
    not_ok "man page: a section '## acmo $sub'"
    continue
  fi
  ok "man page: a section '## acmo $sub'"
  # -h/--help is in every subcommand; GLOBAL OPTIONS covers it.
  check "man page: '## acmo $sub' describes every flag of acmo $sub" \
    $(not_described "$section" $(missing_from "${sub_flags[$sub]}" "$global_flags"))
done
man_sections=$(sed -n 's/^## acmo \([a-z-]*\)$/\1/p' "$man_page")
check "man page: every '## acmo X' section is a subcommand of the binary" \
  $(missing_from "$man_sections" "$subcommands")
man_long=$(grep -oE -- '(^|[^a-z-])--[a-z][a-z-]*' "$man_page" | grep -oE -- '--[a-z-]+' | sort -u)
check "man page: every --flag it names is a flag of the binary" \
  $(missing_from "$man_long" "$all_long")

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
check "bash: 'acmo <TAB>' offers every subcommand" $(missing_from "$subcommands" "$offered")
check "bash: 'acmo <TAB>' offers only subcommands" $(missing_from "$offered" "$subcommands")
for word in send stats purge; do
  check "bash: 'acmo <TAB>' offers $word" $(missing_from "$word" "$offered")
done

offered=$(bash_complete acmo -)
check "bash: 'acmo -<TAB>' offers every global flag" $(missing_from "$global_flags" "$offered")
check "bash: 'acmo -<TAB>' offers only global flags" $(missing_from "$offered" "$global_flags")

# After a subcommand: its own flags and the global ones (CLI11 lets them follow it), except
# --version, which belongs before the subcommand.
globals_after=$(missing_from "$global_flags" "--version -h --help")
for sub in $subcommands; do
  offered=$(bash_complete acmo "$sub" -)
  check "bash: 'acmo $sub -<TAB>' offers every flag of acmo $sub" \
    $(missing_from "${sub_flags[$sub]} $globals_after" "$offered")
  check "bash: 'acmo $sub -<TAB>' offers only flags of acmo $sub and global flags" \
    $(missing_from "$offered" "${sub_flags[$sub]} $global_flags")
done

offered=$(bash_complete acmo send --)
check "bash: 'acmo send --<TAB>' offers --order-id --data --file --dedup-id --group" \
  $(missing_from "--order-id --data --file --dedup-id --group" "$offered")
offered=$(bash_complete acmo --json send "")
check "bash: 'acmo --json send <TAB>' offers CREATE UPDATE DELETE" \
  $(missing_from "CREATE UPDATE DELETE" "$offered")
offered=$(bash_complete acmo send --file "")
check "bash: 'acmo send --file <TAB>' offers files" \
  $(missing_from "events.jsonl order.json" "$offered")
# bash splits "--data @o" into "--data" "@" "o" in COMP_WORDS, and "--data=@o" into
# "--data" "=@" "o"; readline's word is "@o" in both.
offered=$(bash_complete_as @o acmo send --data @ o)
check "bash: 'acmo send --data @o<TAB>' offers @order.json" $(missing_from "@order.json" "$offered")
offered=$(bash_complete_as @o acmo send --data =@ o)
check "bash: 'acmo send --data=@o<TAB>' offers @order.json" $(missing_from "@order.json" "$offered")
offered=$(bash_complete acmo --data-dir "")
check "bash: 'acmo --data-dir <TAB>' offers directories only" \
  $(missing_from "subdir" "$offered") $(missing_from "$offered" "subdir")
offered=$(bash_complete_as "" acmo --config =)  # "--config=": readline's word is empty
check "bash: 'acmo --config=<TAB>' offers files" $(missing_from "events.jsonl" "$offered")

# --- zsh ------------------------------------------------------------------------------------

# The lines of $zsh_file from the one that is $1 to the next line that is "}" or ")".
zsh_block() {
  awk -v start="$1" '$0 == start { on = 1; next } on && /^[})]$/ { on = 0 } on' "$zsh_file"
}
# The flags of $2.. that the zsh spec text $1 does not name as an option: "--json[",
# "--config=[", or in a {-q,--quiet} brace pair.
zsh_missing() {
  local text=$1 flag out=()
  shift
  for flag in "$@"; do
    [[ $text == *"'${flag}["* || $text == *"'${flag}=["* || $text == *"{${flag},"* ||
      $text == *",${flag}}"* || $text == *")${flag}["* || $text == *")${flag}=["* ]] ||
      out+=("$flag")
  done
  echo "${out[@]}"
}

zsh_globals=$(zsh_block "_acmo_global_opts=(")
zsh_top=$(zsh_block "_acmo() {")
check "zsh: _acmo and _acmo_global_opts name every global flag" \
  $(zsh_missing "$zsh_globals $zsh_top" $global_flags)
for sub in $subcommands; do
  check "zsh: the command list names $sub" \
    $(grep -qE "^ *'$sub:" "$zsh_file" || echo "$sub")
  check "zsh: _acmo_$sub names every flag of acmo $sub" \
    $(zsh_missing "$(zsh_block "_acmo_$sub() {")" ${sub_flags[$sub]})
done
zsh_commands=$(sed -n "s/^ *'\([a-z-]*\):.*/\1/p" "$zsh_file")
check "zsh: every command in the list is a subcommand of the binary" \
  $(missing_from "$zsh_commands" "$subcommands")
zsh_long=$(grep -oE -- "(^|[^a-z-])--[a-z][a-z-]*" "$zsh_file" | grep -oE -- '--[a-z-]+' | sort -u)
check "zsh: every --flag it names is a flag of the binary" $(missing_from "$zsh_long" "$all_long")
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
check "fish: every global flag is declared for any subcommand" \
  $(fish_missing "$(grep -v -- '__acmo_using' <<<"$fish_lines")" $global_flags)
for sub in $subcommands; do
  check "fish: $sub is offered as a subcommand" \
    $(grep -qE -- "-n __acmo_no_subcommand -a $sub( |$)" <<<"$fish_lines" || echo "$sub")
  check "fish: every flag of acmo $sub is declared for '__acmo_using $sub'" \
    $(fish_missing "$(grep -E -- "'__acmo_using $sub'| -l help" <<<"$fish_lines")" \
      ${sub_flags[$sub]})
done
fish_subs=$(sed -nE 's/.*-n __acmo_no_subcommand -a ([a-z-]+) .*/\1/p' <<<"$fish_lines")
check "fish: every subcommand it offers is a subcommand of the binary" \
  $(missing_from "$fish_subs" "$subcommands")
fish_long=$(grep -oE -- ' -l [a-z][a-z-]*' <<<"$fish_lines" | sed 's/ -l /--/' | sort -u)
check "fish: every -l flag it declares is a flag of the binary" \
  $(missing_from "$fish_long" "$all_long")
if command -v fish >/dev/null 2>&1; then
  fish_complete() {
    (cd "$tmp/work" && fish --no-config -c "source '$fish_file'; complete -C '$1'" | cut -f1)
  }
  offered=$(fish_complete "acmo ")
  check "fish: 'acmo <TAB>' offers exactly the subcommands" \
    $(missing_from "$subcommands" "$offered") $(missing_from "$offered" "$subcommands")
  offered=$(fish_complete "acmo send --")
  check "fish: 'acmo send --<TAB>' offers every long flag of acmo send" \
    $(missing_from "$(long_only ${sub_flags[send]})" "$offered")
  offered=$(fish_complete "acmo send ")
  check "fish: 'acmo send <TAB>' offers CREATE UPDATE DELETE" \
    $(missing_from "CREATE UPDATE DELETE" "$offered")
else
  skip "fish is not installed; acmo.fish not run"
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
