# shellcheck shell=bash
# Helpers shared by the Linux installers agent/install-agent.sh and coordinator/install-coordinator.sh,
# which both source this file: the options they have in common and their defaults, messages, the
# --root/--dry-run plumbing (at, act, write_file), the unit rendering, and the steps of an install
# and an uninstall that are the same for both services.
#
# Before sourcing it an installer sets PROG (its name in messages), SCRIPT_DIR (its folder, where
# its unit file lies), UNIT_NAME and STATE_DIR; it defines usage() and, for run_installer,
# do_install() and do_uninstall().
: "${PROG:?}" "${SCRIPT_DIR:?}" "${UNIT_NAME:?}" "${STATE_DIR:?}"

# shellcheck disable=SC2034  # read by the installers
UNIT_DIR=/etc/systemd/system
DEFAULT_VENV=/opt/mqfleet/.venv
DEFAULT_CONFIG_DIR=/etc/mqfleet
DEFAULT_USER=mqfleet

ROOT=""
DRY_RUN=0
VENV=$DEFAULT_VENV
CONFIG_DIR=$DEFAULT_CONFIG_DIR
SVC_USER=$DEFAULT_USER
FORCE=0
UNINSTALL=0
PURGE=0

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }
say() { printf '%s: %s\n' "$PROG" "$*"; }
need_value() {
    if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi
}

# take_common_option "$@": take one of the options both installers have. Sets TAKEN to the number of
# arguments it used (for the caller's shift), or returns 1 when $1 is not one of them.
# shellcheck disable=SC2034  # TAKEN and FORCE are read by the installers
take_common_option() {
    TAKEN=2
    case "$1" in
        --venv) need_value "$@"; VENV=$2 ;;
        --user) need_value "$@"; SVC_USER=$2 ;;
        --config-dir) need_value "$@"; CONFIG_DIR=$2 ;;
        --root) need_value "$@"; ROOT=${2%/} ;;
        --force) FORCE=1; TAKEN=1 ;;
        --uninstall) UNINSTALL=1; TAKEN=1 ;;
        --purge) PURGE=1; TAKEN=1 ;;
        --dry-run) DRY_RUN=1; TAKEN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) return 1 ;;
    esac
}

# Users, ownership and systemd are touched only without --root (and under --dry-run only shown):
# sets SYSTEM to 1 when installing onto the real system, which needs root unless --dry-run.
check_system() {
    SYSTEM=0
    [ -n "$ROOT" ] || SYSTEM=1
    if [ "$SYSTEM" = 1 ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
        die "run as root (or try --dry-run)"
    fi
}

at() { printf '%s%s' "$ROOT" "$1"; }

# Run a command, or under --dry-run only show it.
act() {
    if [ "$DRY_RUN" = 1 ]; then
        printf 'would run: %s\n' "$*"
    else
        "$@"
    fi
}

# write_file PATH MODE: stdin becomes PATH, in one rename, never readable by others while written.
write_file() {
    local path=$1 mode=$2 tmp
    if [ "$DRY_RUN" = 1 ]; then
        printf 'would write: %s (mode %s)\n' "$path" "$mode"
        cat >/dev/null
        return
    fi
    mkdir -p -- "$(dirname -- "$path")"
    tmp=$(umask 077 && mktemp "$(dirname -- "$path")/.mqfleet.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    mv -f -- "$tmp" "$path"
}

# The value of KEY in an env file we wrote (KEY="value"), or nothing.
env_value() {
    sed -n "s/^$2=\"\\(.*\\)\"\$/\\1/p" "$1" | tail -n 1
}

# The unit file next to the installer, with the venv, config dir and user of this install.
render_unit() {
    sed -e "s#$DEFAULT_VENV#$VENV#g" \
        -e "s#$DEFAULT_CONFIG_DIR/#$CONFIG_DIR/#g" \
        -e "s#^User=$DEFAULT_USER\$#User=$SVC_USER#" \
        -e "s#^Group=$DEFAULT_USER\$#Group=$SVC_USER#" \
        "$SCRIPT_DIR/$UNIT_NAME"
}

check_unit_file() {
    [ -f "$SCRIPT_DIR/$UNIT_NAME" ] || die "$SCRIPT_DIR/$UNIT_NAME is missing; run the script from its folder in the mqfleet tree"
}

# Install, first steps: the service user (on the real system), CONFIG_DIR and STATE_DIR.
create_user_and_dirs() {
    if [ "$SYSTEM" = 1 ] && ! getent passwd "$SVC_USER" >/dev/null; then
        act useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin "$SVC_USER"
    fi
    act install -d -m 0755 -- "$(at "$CONFIG_DIR")"
    act install -d -m 0750 -- "$(at "$STATE_DIR")"
    if [ "$SYSTEM" = 1 ]; then
        act chown "$SVC_USER:$SVC_USER" "$STATE_DIR"
    fi
}

# Uninstall, first step: on the real system, stop and disable the service.
disable_service() {
    if [ "$SYSTEM" = 1 ]; then
        act systemctl disable --now "$UNIT_NAME" || say "the service was not running"
    fi
}

# Uninstall, once the unit and config files are removed: reload systemd, and remove CONFIG_DIR,
# which the agent, coordinator and broker configs on one host share, only when nothing is left in it.
release_config_dir() {
    if [ "$SYSTEM" = 1 ]; then
        act systemctl daemon-reload
    fi
    if [ -d "$(at "$CONFIG_DIR")" ]; then
        act rmdir --ignore-fail-on-non-empty -- "$(at "$CONFIG_DIR")"
    fi
}

# purge_state WHAT: with --purge remove STATE_DIR, else say it was kept (WHAT says what it holds).
purge_state() {
    if [ "$PURGE" = 1 ]; then
        act rm -rf -- "$(at "$STATE_DIR")"
    else
        say "kept $(at "$STATE_DIR") ($1); --purge removes it"
    fi
}

run_installer() {
    if [ "$UNINSTALL" = 1 ]; then
        do_uninstall
    else
        do_install
    fi
}
