#!/usr/bin/env bash
# Install, update or remove the mqfleet coordinator as a systemd service (on the Pi, next to mosquitto).
#
# Rerunnable: an existing config (and its operator token) and manifest are kept unless --force;
# the unit file is always refreshed. With --root DIR every path is put under DIR and nothing on
# the real system is touched (no useradd, no chown, no systemctl), which is how the tests run it.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
PROG=install-coordinator
UNIT_NAME=mqfleet-coordinator.service
STATE_DIR=/var/lib/mqfleet
# The options and helpers both installers share: ROOT, DRY_RUN, VENV, ..., die, say, act, write_file.
# shellcheck source=../scripts/install-common.sh source-path=SCRIPTDIR
. "$SCRIPT_DIR/../scripts/install-common.sh"

MANIFEST=""
STORE="file://$STATE_DIR/store"
TOKEN=""
TOKEN_FILE=""
BROKER=""
CA=""
CERT=""
KEY=""
PREFIX="mqfleet"
S3_ENDPOINT=""

usage() {
    cat <<EOF
Usage: $(basename "$0") [options]

Install the mqfleet coordinator service: service user, $DEFAULT_CONFIG_DIR/coordinator.env (0600),
the manifest, the systemd unit; then enable and start it.

  --venv DIR          virtualenv with mqfleet installed (default $DEFAULT_VENV)
  --manifest FILE     manifest to install as CONFIG_DIR/fleet.toml (default: keep, or a starter one)
  --store URL         artifact store: file:///PATH or s3://BUCKET/PREFIX (default file://$STATE_DIR/store)
  --s3-endpoint HOST:PORT   S3 endpoint for s3:// stores (credentials: edit the env file)
  --token-file FILE   read the operator token from FILE, or from stdin with '-' (default: generated,
                      64 hex digits); never on the command line, where ps shows it to every user
  --broker URL        broker the coordinator uses (default mqtts://localhost:8883: the TLS listener, since the
                      loopback listener serves monitoring accounts public reads only)
  --ca F --cert F --key F   fleet CA and the coordinator's certificate and key (CN coordinator; required
                      for mqtts://): mqfleet broker issue --role coordinator --cn coordinator
  --prefix PREFIX     topic prefix (default mqfleet)
  --user NAME         service user (default $DEFAULT_USER)
  --config-dir DIR    configuration directory (default $DEFAULT_CONFIG_DIR)
  --force             rewrite an existing config and manifest (an existing token is kept unless --token-file)
  --uninstall         stop and remove the service, its unit and its config; keep the database
  --purge             with --uninstall: also remove $STATE_DIR (database, file store) and the user
  --root DIR          install under DIR instead of / (tests): no useradd, chown or systemctl
  --dry-run           print what would be done and change nothing
  -h, --help          this help
EOF
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --manifest) need_value "$@"; MANIFEST=$2; shift 2 ;;
        --store) need_value "$@"; STORE=$2; shift 2 ;;
        --s3-endpoint) need_value "$@"; S3_ENDPOINT=$2; shift 2 ;;
        --token-file) need_value "$@"; TOKEN_FILE=$2; shift 2 ;;
        --token|--token=*) die "--token would put the operator token on a command line (ps shows it to every user); use --token-file FILE, or --token-file - to read it from stdin" ;;
        --broker) need_value "$@"; BROKER=$2; shift 2 ;;
        --ca) need_value "$@"; CA=$2; shift 2 ;;
        --cert) need_value "$@"; CERT=$2; shift 2 ;;
        --key) need_value "$@"; KEY=$2; shift 2 ;;
        --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
        *) take_common_option "$@" || { usage >&2; die "unknown option: $1"; }; shift "$TAKEN" ;;
    esac
done

if [ -n "$TOKEN_FILE" ]; then
    if [ "$TOKEN_FILE" = - ]; then
        IFS= read -r TOKEN || [ -n "$TOKEN" ] || die "--token-file -: no token on stdin"
    else
        [ -r "$TOKEN_FILE" ] || die "--token-file $TOKEN_FILE: not a readable file"
        IFS= read -r TOKEN < "$TOKEN_FILE" || [ -n "$TOKEN" ] || die "--token-file $TOKEN_FILE: empty"
    fi
    [ -n "$TOKEN" ] || die "--token-file: the token is empty"
fi

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
BROKER=${BROKER:-mqtts://localhost:8883}
case "$BROKER" in mqtt://*|mqtts://*) ;; *) die "--broker must be an mqtt:// or mqtts:// URL" ;; esac
if [ "$UNINSTALL" = 0 ] && [ "${BROKER%%://*}" = mqtts ]; then
    if [ -z "$CA" ] || [ -z "$CERT" ] || [ -z "$KEY" ]; then
        die "the coordinator connects to the TLS listener as CN coordinator: pass --ca, --cert and --key (mqfleet broker issue --role coordinator --cn coordinator), or --broker mqtt://... for a broker whose ACL lets it in otherwise"
    fi
    for file in "$CA" "$CERT" "$KEY"; do
        [ -r "$file" ] || die "$file cannot be read"
    done
fi
case "$SVC_USER" in ''|*[!a-z0-9_-]*) die "--user must be a plain user name" ;; esac
# Paths are substituted into the unit file: plain absolute paths only.
for dir in "$VENV" "$CONFIG_DIR"; do
    case "$dir" in /*) ;; *) die "$dir: paths must be absolute" ;; esac
    case "$dir" in *[!A-Za-z0-9._/-]*) die "$dir: only letters, digits and . _ / - in paths" ;; esac
done
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge only goes with --uninstall"

check_system

make_token() {
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
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
    local unit tls_dir
    unit=$(at "$UNIT_DIR/$UNIT_NAME")
    disable_service
    act rm -f -- "$unit" "$(at "$CONFIG_DIR/coordinator.env")" "$(at "$CONFIG_DIR/fleet.toml")"
    tls_dir=$(at "$CONFIG_DIR/tls")
    act rm -f -- "$tls_dir/coordinator.crt" "$tls_dir/coordinator.key"
    # The CA file is shared with an agent installed on the same host: it goes only with the last user.
    if [ -d "$tls_dir" ] && [ ! -e "$tls_dir/agent.crt" ]; then
        act rm -f -- "$tls_dir/ca.crt"
        act rmdir --ignore-fail-on-non-empty -- "$tls_dir"
    fi
    release_config_dir
    purge_state "database and file store"
    if [ "$PURGE" = 1 ] && [ "$SYSTEM" = 1 ] && getent passwd "$SVC_USER" >/dev/null; then
        act userdel "$SVC_USER" || say "could not remove user $SVC_USER (an agent may still use it)"
    fi
    say "coordinator uninstalled"
}

do_install() {
    local env_file manifest_file unit token tls_dir name src
    env_file=$(at "$CONFIG_DIR/coordinator.env")
    manifest_file=$(at "$CONFIG_DIR/fleet.toml")
    unit=$(at "$UNIT_DIR/$UNIT_NAME")

    check_unit_file
    if [ ! -x "$VENV/bin/mqfleet" ]; then
        # Fatal only on the real system: under --root or --dry-run the venv may come later.
        if [ "$SYSTEM" = 1 ] && [ "$DRY_RUN" = 0 ]; then
            die "$VENV/bin/mqfleet not found: python3 -m venv $VENV && $VENV/bin/pip install mqfleet (or pass --venv)"
        fi
        say "warning: $VENV/bin/mqfleet not found (the service will not start until it is installed)"
    fi
    if [ -n "$MANIFEST" ] && [ ! -f "$MANIFEST" ]; then
        die "manifest $MANIFEST not found"
    fi

    create_user_and_dirs

    if [ -f "$env_file" ] && [ "$FORCE" = 0 ]; then
        say "kept $env_file (and its operator token); --force rewrites it"
    else
        if [ -n "$CA" ]; then
            tls_dir=$(at "$CONFIG_DIR/tls")
            act install -d -m 0700 -- "$tls_dir"
            # The key is the coordinator's identity on the bus: 0600, owned by the service user.
            for name in ca.crt coordinator.crt coordinator.key; do
                case "$name" in ca.crt) src=$CA ;; coordinator.crt) src=$CERT ;; *) src=$KEY ;; esac
                write_file "$tls_dir/$name" 0600 <"$src"
                if [ "$SYSTEM" = 1 ]; then
                    act chown "$SVC_USER:$SVC_USER" "$tls_dir/$name"
                fi
            done
            if [ "$SYSTEM" = 1 ]; then
                act chown "$SVC_USER:$SVC_USER" "$tls_dir"
            fi
        fi
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
            if [ -n "$CA" ]; then
                printf 'MQFLEET_CA="%s"\nMQFLEET_CERT="%s"\nMQFLEET_KEY="%s"\n' \
                    "$CONFIG_DIR/tls/ca.crt" "$CONFIG_DIR/tls/coordinator.crt" "$CONFIG_DIR/tls/coordinator.key"
            fi
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

run_installer
