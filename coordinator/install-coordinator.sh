#!/usr/bin/env bash
# Install, update or remove the mqfleet coordinator as a systemd service (on the Pi, next to mosquitto).
#
# Rerunnable: an existing config (and its operator token) and manifest are kept unless --force;
# the unit file is always refreshed. With --root DIR every path is put under DIR and nothing on
# the real system is touched (no useradd, no chown, no systemctl), which is how the tests run it.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
UNIT_NAME=mqfleet-coordinator.service
UNIT_DIR=/etc/systemd/system
STATE_DIR=/var/lib/mqfleet
DEFAULT_VENV=/opt/mqfleet/.venv
DEFAULT_CONFIG_DIR=/etc/mqfleet
DEFAULT_USER=mqfleet

ROOT=""
DRY_RUN=0
VENV=$DEFAULT_VENV
CONFIG_DIR=$DEFAULT_CONFIG_DIR
SVC_USER=$DEFAULT_USER
MANIFEST=""
STORE="file://$STATE_DIR/store"
TOKEN=""
BROKER="mqtt://127.0.0.1:1883"
PREFIX="mqfleet"
S3_ENDPOINT=""
FORCE=0
UNINSTALL=0
PURGE=0

usage() {
    cat <<EOF
Usage: $(basename "$0") [options]

Install the mqfleet coordinator service: service user, $DEFAULT_CONFIG_DIR/coordinator.env (0600),
the manifest, the systemd unit; then enable and start it.

  --venv DIR          virtualenv with mqfleet installed (default $DEFAULT_VENV)
  --manifest FILE     manifest to install as CONFIG_DIR/fleet.toml (default: keep, or a starter one)
  --store URL         artifact store: file:///PATH or s3://BUCKET/PREFIX (default file://$STATE_DIR/store)
  --s3-endpoint HOST:PORT   S3 endpoint for s3:// stores (credentials: edit the env file)
  --token TOKEN       operator token (default: generated, 64 hex digits)
  --broker URL        broker the coordinator uses (default mqtt://127.0.0.1:1883, the loopback listener)
  --prefix PREFIX     topic prefix (default mqfleet)
  --user NAME         service user (default $DEFAULT_USER)
  --config-dir DIR    configuration directory (default $DEFAULT_CONFIG_DIR)
  --force             rewrite an existing config and manifest (an existing token is kept unless --token)
  --uninstall         stop and remove the service, its unit and its config; keep the database
  --purge             with --uninstall: also remove $STATE_DIR (database, file store) and the user
  --root DIR          install under DIR instead of / (tests): no useradd, chown or systemctl
  --dry-run           print what would be done and change nothing
  -h, --help          this help
EOF
}

die() { printf 'install-coordinator: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'install-coordinator: %s\n' "$*"; }
need_value() {
    if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --venv) need_value "$@"; VENV=$2; shift 2 ;;
        --manifest) need_value "$@"; MANIFEST=$2; shift 2 ;;
        --store) need_value "$@"; STORE=$2; shift 2 ;;
        --s3-endpoint) need_value "$@"; S3_ENDPOINT=$2; shift 2 ;;
        --token) need_value "$@"; TOKEN=$2; shift 2 ;;
        --broker) need_value "$@"; BROKER=$2; shift 2 ;;
        --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
        --user) need_value "$@"; SVC_USER=$2; shift 2 ;;
        --config-dir) need_value "$@"; CONFIG_DIR=$2; shift 2 ;;
        --root) need_value "$@"; ROOT=${2%/}; shift 2 ;;
        --force) FORCE=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

# Values go into a systemd EnvironmentFile, double-quoted; refuse what the two parsers (systemd,
# and bash when the file is sourced by hand) would read differently.
check_value() {
    case "$2" in
        *[\"\\\$\`]*|*$'\n'*) die "$1 must not contain quotes, backslashes, \$, backticks or newlines" ;;
    esac
}
for pair in "--store:$STORE" "--token:$TOKEN" "--broker:$BROKER" "--prefix:$PREFIX" "--s3-endpoint:$S3_ENDPOINT"; do
    check_value "${pair%%:*}" "${pair#*:}"
done
case "$BROKER" in mqtt://*|mqtts://*) ;; *) die "--broker must be an mqtt:// or mqtts:// URL" ;; esac
case "$SVC_USER" in ''|*[!a-z0-9_-]*) die "--user must be a plain user name" ;; esac
# Paths are substituted into the unit file: plain absolute paths only.
for dir in "$VENV" "$CONFIG_DIR"; do
    case "$dir" in /*) ;; *) die "$dir: paths must be absolute" ;; esac
    case "$dir" in *[!A-Za-z0-9._/-]*) die "$dir: only letters, digits and . _ / - in paths" ;; esac
done
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge only goes with --uninstall"

# Users, ownership and systemd are touched only without --root (and under --dry-run only shown).
SYSTEM=0
[ -n "$ROOT" ] || SYSTEM=1
LIVE=0
if [ -z "$ROOT" ] && [ "$DRY_RUN" = 0 ]; then
    LIVE=1
    [ "$(id -u)" = 0 ] || die "run as root (or try --dry-run)"
fi

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

make_token() {
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}

render_unit() {
    sed -e "s#$DEFAULT_VENV#$VENV#g" \
        -e "s#$DEFAULT_CONFIG_DIR/#$CONFIG_DIR/#g" \
        -e "s#^User=$DEFAULT_USER\$#User=$SVC_USER#" \
        -e "s#^Group=$DEFAULT_USER\$#Group=$SVC_USER#" \
        "$SCRIPT_DIR/$UNIT_NAME"
}

starter_manifest() {
    cat <<'EOF'
# mqfleet manifest: trainers, host policy and jobs. Edit, check with `mqfleet validate FILE`,
# apply with `mqfleet reload` (no restart needed). See docs/OPERATIONS.md.
[fleet]
max_attempts = 3
lease_s = 90
EOF
}

do_uninstall() {
    local unit
    unit=$(at "$UNIT_DIR/$UNIT_NAME")
    if [ "$SYSTEM" = 1 ]; then
        act systemctl disable --now "$UNIT_NAME" || say "the service was not running"
    fi
    act rm -f -- "$unit" "$(at "$CONFIG_DIR/coordinator.env")" "$(at "$CONFIG_DIR/fleet.toml")"
    if [ "$SYSTEM" = 1 ]; then
        act systemctl daemon-reload
    fi
    # Shared with the agent and broker configs on the same host: removed only when nothing else is left.
    if [ -d "$(at "$CONFIG_DIR")" ]; then
        act rmdir --ignore-fail-on-non-empty -- "$(at "$CONFIG_DIR")"
    fi
    if [ "$PURGE" = 1 ]; then
        act rm -rf -- "$(at "$STATE_DIR")"
        if [ "$SYSTEM" = 1 ] && getent passwd "$SVC_USER" >/dev/null; then
            act userdel "$SVC_USER" || say "could not remove user $SVC_USER (an agent may still use it)"
        fi
    else
        say "kept $(at "$STATE_DIR") (database and file store); --purge removes it"
    fi
    say "coordinator uninstalled"
}

do_install() {
    local env_file manifest_file unit token
    env_file=$(at "$CONFIG_DIR/coordinator.env")
    manifest_file=$(at "$CONFIG_DIR/fleet.toml")
    unit=$(at "$UNIT_DIR/$UNIT_NAME")

    [ -f "$SCRIPT_DIR/$UNIT_NAME" ] || die "$SCRIPT_DIR/$UNIT_NAME is missing; run the script from its folder in the mqfleet tree"
    if [ ! -x "$VENV/bin/mqfleet" ]; then
        [ "$LIVE" = 0 ] || die "$VENV/bin/mqfleet not found: python3 -m venv $VENV && $VENV/bin/pip install mqfleet (or pass --venv)"
        say "warning: $VENV/bin/mqfleet not found (the service will not start until it is installed)"
    fi
    if [ -n "$MANIFEST" ] && [ ! -f "$MANIFEST" ]; then
        die "manifest $MANIFEST not found"
    fi

    if [ "$SYSTEM" = 1 ]; then
        if ! getent passwd "$SVC_USER" >/dev/null; then
            act useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin "$SVC_USER"
        fi
    fi
    act install -d -m 0755 -- "$(at "$CONFIG_DIR")"
    act install -d -m 0750 -- "$(at "$STATE_DIR")"
    if [ "$SYSTEM" = 1 ]; then
        act chown "$SVC_USER:$SVC_USER" "$STATE_DIR"
    fi

    if [ -f "$env_file" ] && [ "$FORCE" = 0 ]; then
        say "kept $env_file (and its operator token); --force rewrites it"
    else
        token=$TOKEN
        if [ -z "$token" ] && [ -f "$env_file" ]; then
            token=$(env_value "$env_file" MQFLEET_OPERATOR_TOKEN)
        fi
        if [ -z "$token" ]; then
            token=$(make_token)
            [ "$DRY_RUN" = 1 ] || say "generated an operator token; read it with: sudo grep TOKEN $CONFIG_DIR/coordinator.env"
        fi
        {
            printf '# mqfleet coordinator settings, written by install-coordinator.sh; mode 0600 (holds the operator token).\n'
            printf 'MQFLEET_BROKER="%s"\n' "$BROKER"
            printf 'MQFLEET_PREFIX="%s"\n' "$PREFIX"
            printf 'MQFLEET_OPERATOR_TOKEN="%s"\n' "$token"
            printf 'MQFLEET_STORE="%s"\n' "$STORE"
            if [ -n "$S3_ENDPOINT" ]; then
                printf 'MQFLEET_S3_ENDPOINT="%s"\n' "$S3_ENDPOINT"
            fi
            printf '# For s3:// stores, the credentials the coordinator presigns uploads with:\n'
            printf '#AWS_ACCESS_KEY_ID=""\n#AWS_SECRET_ACCESS_KEY=""\n'
        } | write_file "$env_file" 0600
    fi

    if [ -n "$MANIFEST" ]; then
        if [ -f "$manifest_file" ] && [ "$FORCE" = 0 ] && ! cmp -s -- "$MANIFEST" "$manifest_file"; then
            say "kept $manifest_file, which differs from $MANIFEST; --force replaces it"
        else
            write_file "$manifest_file" 0644 <"$MANIFEST"
        fi
    elif [ ! -f "$manifest_file" ]; then
        starter_manifest | write_file "$manifest_file" 0644
        say "wrote a starter manifest $manifest_file (no jobs yet)"
    fi
    # A broken manifest would only show up as a service that fails to start.
    if [ "$DRY_RUN" = 0 ] && [ -x "$VENV/bin/mqfleet" ]; then
        "$VENV/bin/mqfleet" validate "$manifest_file" >/dev/null || die "$manifest_file is not a valid manifest (see above)"
    fi

    render_unit | write_file "$unit" 0644
    if [ "$SYSTEM" = 1 ]; then
        act systemctl daemon-reload
        act systemctl enable --now "$UNIT_NAME"
        # enable --now leaves a running service alone: restart so a new venv or unit takes effect.
        act systemctl restart "$UNIT_NAME"
    fi
    say "coordinator installed: unit $unit, config $env_file, manifest $manifest_file"
}

if [ "$UNINSTALL" = 1 ]; then
    do_uninstall
else
    do_install
fi
