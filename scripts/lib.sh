# lib.sh -- sourced by scripts/curves.sh and scripts/mqar.sh, which define usage and die first:
#   parse_opts SPEC "$@"  the options, by a table: SPEC holds words --opt=var (--opt takes a value,
#                         stored in $var) and --flag:var=value (--flag sets var to value);
#                         -h/--help prints the usage; anything else is one die line
#   is_count X            X is a positive integer of at most 9 digits
parse_opts() {
    local _spec=$1 _s _v _found
    shift
    while [ $# -gt 0 ]; do
        case "$1" in -h|--help) usage; exit 0 ;; esac
        _found=0
        for _s in $_spec; do
            case "$_s" in
                "$1="*) [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see -h)"
                        printf -v "${_s#*=}" '%s' "$2"; shift 2; _found=1; break ;;
                "$1:"*) _v=${_s#*:}; printf -v "${_v%%=*}" '%s' "${_v#*=}"; shift; _found=1; break ;;
            esac
        done
        [ "$_found" -eq 1 ] || die "unknown option '$1' (see -h)"
    done
}
is_count() { case "$1" in ''|*[!0-9]*|0*) return 1 ;; esac; [ "${#1}" -le 9 ]; }
