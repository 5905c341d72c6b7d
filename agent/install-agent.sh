#!/usr/bin/env bash
# Enrol a Linux training host: install, update or remove the mqfleet agent as a systemd service.
#
# Writes /etc/mqfleet/agent.env (0600) and copies the TLS files to /etc/mqfleet/tls/ (0600), runs
# `mqfleet agent selftest` with exactly that configuration, and enables the service only when the
# selftest passes. Trainers run as a user of their own (--trainer-user, default mqfleet-trainer,
# created here): the agent then runs as root, with its capabilities bounded by a unit drop-in, so
# that no trainer can read its key file, environment or memory (docs/SECURITY.md, "Trainers"). Rerunnable: an existing config is kept unless --force (the unit is always
# refreshed). With --root DIR every path is put under DIR and nothing on the real system is touched
# (no useradd, chown or systemctl), which is how the tests run it.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
PROG=install-agent
UNIT_NAME=mqfleet-agent.service
STATE_DIR=/var/lib/mqfleet-agent
# The drop-in that runs the agent as root when trainers run as a user of their own.
DROPIN=trainer-user.conf
# The options and helpers both installers share: ROOT, DRY_RUN, VENV, ..., die, say, act, write_file.
# shellcheck source=../scripts/install-common.sh source-path=SCRIPTDIR
. "$SCRIPT_DIR/../scripts/install-common.sh"

BROKER=""
HOST_ID=""
CA=""
CERT=""
KEY=""
SLOTS=1
REPO=/opt/mqfleet
WORK_DIR="$STATE_DIR/work"
PREFIX=mqfleet
SKIP_SELFTEST=0
TRAINER_USER=mqfleet-trainer
OWNER_GROUP=""

usage() {
    cat <<EOF
Usage: $(basename "$0") --broker URL --host-id H [--ca F --cert F --key F] [options]

Enrol this host: write $DEFAULT_CONFIG_DIR/agent.env (0600), copy the TLS files to
$DEFAULT_CONFIG_DIR/tls/ (0600), run \`mqfleet agent selftest\`, then enable and start the agent.

  --broker URL        the broker, mqtts://HOST:8883 (mqtt:// only on a trusted network)
  --host-id H         this host's id: its certificate CN and its [[hosts]] id in the manifest
  --ca F --cert F --key F   fleet CA and this host's certificate and key (required for mqtts://)
  --slots N           concurrent jobs (default 1)
  --repo DIR          training repo, the trainers' working directory (default /opt/mqfleet)
  --work-dir DIR      where jobs run (default $STATE_DIR/work)
  --prefix PREFIX     topic prefix (default mqfleet)
  --venv DIR          virtualenv with mqfleet installed (default $DEFAULT_VENV)
  --user NAME         service user (default $DEFAULT_USER)
  --trainer-user NAME trainers run as this user, created if missing (default mqfleet-trainer); the
                      agent then runs as root with bounded capabilities (docs/SECURITY.md, "Trainers")
  --no-trainer-user   trainers run as the service user, as the agent does: they can read its key file
  --owner-group NAME  members of this group may pause the agent (mqfleet agent pause); written to
                      $DEFAULT_CONFIG_DIR/agent.toml, the machine owner's policy file (kept on reruns)
  --config-dir DIR    configuration directory (default $DEFAULT_CONFIG_DIR)
  --force             rewrite an existing config and TLS files (certificate rotation)
  --skip-selftest     enable the service without running the selftest first
  --uninstall         stop and remove the service, its unit, config and TLS files
  --purge             with --uninstall: also remove $STATE_DIR (work dir)
  --root DIR          install under DIR instead of / (tests): no useradd, chown or systemctl
  --dry-run           print what would be done and change nothing
  -h, --help          this help
EOF
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --broker) need_value "$@"; BROKER=$2; shift 2 ;;
        --host-id) need_value "$@"; HOST_ID=$2; shift 2 ;;
        --ca) need_value "$@"; CA=$2; shift 2 ;;
        --cert) need_value "$@"; CERT=$2; shift 2 ;;
        --key) need_value "$@"; KEY=$2; shift 2 ;;
        --slots) need_value "$@"; SLOTS=$2; shift 2 ;;
        --repo) need_value "$@"; REPO=$2; shift 2 ;;
        --work-dir) need_value "$@"; WORK_DIR=$2; shift 2 ;;
        --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
        --skip-selftest) SKIP_SELFTEST=1; shift ;;
        --trainer-user) need_value "$@"; TRAINER_USER=$2; shift 2 ;;
        --no-trainer-user) TRAINER_USER=""; shift ;;
        --owner-group) need_value "$@"; OWNER_GROUP=$2; shift 2 ;;
        *) take_common_option "$@" || { usage >&2; die "unknown option: $1"; }; shift "$TAKEN" ;;
    esac
done

# Paths and values are substituted into the unit and the EnvironmentFile: keep them plain.
check_path() {
    case "$2" in /*) ;; *) die "$1 $2: the path must be absolute" ;; esac
    case "$2" in *[!A-Za-z0-9._/-]*) die "$1 $2: only letters, digits and . _ / - in paths" ;; esac
}
check_path --venv "$VENV"
check_path --config-dir "$CONFIG_DIR"
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge only goes with --uninstall"
case "$SVC_USER" in ''|*[!a-z0-9_-]*) die "--user must be a plain user name" ;; esac
case "$TRAINER_USER" in *[!a-z0-9_-]*) die "--trainer-user must be a plain user name" ;; esac
case "$OWNER_GROUP" in *[!a-z0-9_-]*) die "--owner-group must be a plain group name" ;; esac
if [ -n "$TRAINER_USER" ] && [ "$TRAINER_USER" = "$SVC_USER" ]; then
    die "--trainer-user must differ from --user: trainers of the agent's own user can read its key file"
fi
if [ "$UNINSTALL" = 0 ]; then
    [ -n "$BROKER" ] || die "--broker URL is required"
    [ -n "$HOST_ID" ] || die "--host-id is required"
    case "$BROKER" in mqtt://*|mqtts://*) ;; *) die "--broker must be an mqtt:// or mqtts:// URL" ;; esac
    case "$BROKER" in *[\"\\\$\`\ ]*) die "--broker must not contain quotes, backslashes, \$, backticks or spaces" ;; esac
    case "$HOST_ID" in *[!A-Za-z0-9._-]*) die "--host-id: only letters, digits and . _ - (it is the certificate CN)" ;; esac
    case "$PREFIX" in ''|*[!A-Za-z0-9._/-]*) die "--prefix: only letters, digits and . _ / -" ;; esac
    case "$SLOTS" in ''|*[!0-9]*|0) die "--slots must be a positive integer" ;; esac
    check_path --repo "$REPO"
    check_path --work-dir "$WORK_DIR"
    if [ "${BROKER%%://*}" = mqtts ]; then
        if [ -z "$CA" ] || [ -z "$CERT" ] || [ -z "$KEY" ]; then die "an mqtts:// broker needs --ca, --cert and --key"; fi
    fi
    for file in "$CA" "$CERT" "$KEY"; do
        if [ -n "$file" ] && [ ! -r "$file" ]; then die "$file cannot be read"; fi
    done
fi

check_system

# Run the selftest with the installed configuration. Paths in the env file are the final ones; under
# --root the files lie under ROOT, so the TLS paths are mapped there for this run only.
run_selftest() {
    local env_file=$1 ca cert key trainer_user
    local -a run_as=()
    ca=$(env_value "$env_file" MQFLEET_CA)
    cert=$(env_value "$env_file" MQFLEET_CERT)
    key=$(env_value "$env_file" MQFLEET_KEY)
    trainer_user=$(env_value "$env_file" MQFLEET_TRAINER_USER)
    if [ -n "$trainer_user" ] && ! getent passwd "$trainer_user" >/dev/null; then
        # Only under --root, which creates no user: the selftest then trains as the current user.
        say "trainer user $trainer_user does not exist here; the selftest trains as $(id -un)"
        trainer_user=""
    fi
    if [ "$SYSTEM" = 1 ] && [ -z "$trainer_user" ] && [ "$(id -un)" != "$SVC_USER" ]; then
        # As the service user, so unreadable key files or repo fail here and not in the service. With a
        # trainer user the service runs as root, and the selftest trains as that user.
        run_as=(runuser -u "$SVC_USER" --)
    fi
    say "running the selftest as ${run_as[*]:+$SVC_USER}${run_as[*]:-$(id -un)}"
    (
        cd "$(at "$STATE_DIR")"
        "${run_as[@]}" env \
            HOME="$(at "$STATE_DIR")" \
            MQFLEET_HOST_ID="$(env_value "$env_file" MQFLEET_HOST_ID)" \
            MQFLEET_BROKER="$(env_value "$env_file" MQFLEET_BROKER)" \
            MQFLEET_PREFIX="$(env_value "$env_file" MQFLEET_PREFIX)" \
            MQFLEET_TRAINER_USER="$trainer_user" \
            MQFLEET_CA="${ca:+$ROOT$ca}" MQFLEET_CERT="${cert:+$ROOT$cert}" MQFLEET_KEY="${key:+$ROOT$key}" \
            "$VENV/bin/mqfleet" agent --slots "$(env_value "$env_file" MQFLEET_SLOTS)" \
            --repo "$(env_value "$env_file" MQFLEET_REPO)" selftest
    )
}

do_uninstall() {
    local tls_dir
    disable_service
    act rm -f -- "$(at "$UNIT_DIR/$UNIT_NAME")" "$(at "$CONFIG_DIR/agent.env")" "$(at "$UNIT_DIR/$UNIT_NAME.d/$DROPIN")" \
        "$(at "$CONFIG_DIR/agent.toml")"
    if [ -d "$(at "$UNIT_DIR/$UNIT_NAME.d")" ]; then
        act rmdir --ignore-fail-on-non-empty -- "$(at "$UNIT_DIR/$UNIT_NAME.d")"
    fi
    tls_dir=$(at "$CONFIG_DIR/tls")
    act rm -f -- "$tls_dir/agent.crt" "$tls_dir/agent.key"
    # The CA file is shared with a coordinator installed on the same host: it goes only with the last user.
    if [ -d "$tls_dir" ] && [ ! -e "$tls_dir/coordinator.crt" ]; then
        act rm -f -- "$tls_dir/ca.crt"
        act rmdir --ignore-fail-on-non-empty -- "$tls_dir"
    fi
    release_config_dir
    purge_state "work dir"
    say "agent uninstalled"
}

# The drop-in for trainers of their own user: the agent as root (it starts trainers as that user and
# touches their folders only with that user's rights), its capabilities bounded to what that takes, and
# a state dir the trainer user may pass through (not list) to reach its job folders.
render_dropin() {
    cat <<EOF
# Written by install-agent.sh: trainers run as $1 (MQFLEET_TRAINER_USER in agent.env), so they
# cannot read the agent's key file, environment or memory. Starting them as that user needs root.
[Service]
User=root
Group=root
CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER
StateDirectoryMode=0751
EOF
}

# The owner's policy file: agent/agent.toml.example (every setting commented out), with owner_group set when
# given. Never rewritten once there, --force included: it is the machine owner's, not the installer's.
write_owner_policy() {
    local file
    file=$(at "$CONFIG_DIR/agent.toml")
    if [ -f "$file" ]; then
        say "kept $file (the owner's policy file)"
        return
    fi
    {
        cat "$SCRIPT_DIR/agent.toml.example"
        if [ -n "$OWNER_GROUP" ]; then
            printf '\n# Set by install-agent.sh --owner-group.\nowner_group = "%s"\n' "$OWNER_GROUP"
        fi
    } | write_file "$file" 0644
    if [ -n "$OWNER_GROUP" ] && [ "$SYSTEM" = 1 ]; then
        getent group "$OWNER_GROUP" >/dev/null || die "--owner-group $OWNER_GROUP: no such group on this host"
        # the agent gives its socket to that group, which a process not in it may not do
        act usermod -a -G "$OWNER_GROUP" "$SVC_USER"
    fi
}

create_trainer_user() {
    if [ "$SYSTEM" = 1 ] && ! getent passwd "$TRAINER_USER" >/dev/null; then
        act useradd --system --user-group --create-home --home-dir "/var/lib/$TRAINER_USER" \
            --shell /usr/sbin/nologin "$TRAINER_USER"
    fi
}

do_install() {
    local env_file tls_dir unit name src key_owner trainer_user
    env_file=$(at "$CONFIG_DIR/agent.env")
    tls_dir=$(at "$CONFIG_DIR/tls")
    unit=$(at "$UNIT_DIR/$UNIT_NAME")

    check_unit_file
    if [ ! -x "$VENV/bin/mqfleet" ]; then
        [ "$DRY_RUN" = 1 ] || die "$VENV/bin/mqfleet not found: python3 -m venv $VENV && $VENV/bin/pip install 'mqfleet[train]' (or pass --venv)"
        say "warning: $VENV/bin/mqfleet not found"
    fi

    create_user_and_dirs
    [ -z "$TRAINER_USER" ] || create_trainer_user
    # With a trainer user the agent runs as root: its key is root's alone.
    key_owner=$SVC_USER
    [ -z "$TRAINER_USER" ] || key_owner=root

    if [ -f "$env_file" ] && [ "$FORCE" = 0 ]; then
        say "kept $env_file and $tls_dir; --force rewrites them (e.g. to rotate certificates)"
    else
        act install -d -m 0700 -- "$tls_dir"
        # The key is the host's identity: 0600 and owned by the service user, which must read it.
        for name in ca.crt agent.crt agent.key; do
            case "$name" in ca.crt) src=$CA ;; agent.crt) src=$CERT ;; *) src=$KEY ;; esac
            [ -n "$src" ] || continue
            write_file "$tls_dir/$name" 0600 <"$src"
            if [ "$SYSTEM" = 1 ]; then
                act chown "$key_owner:$key_owner" "$tls_dir/$name"
            fi
        done
        if [ "$SYSTEM" = 1 ]; then
            act chown "$key_owner:$key_owner" "$tls_dir"
        fi
        {
            printf '# mqfleet agent settings, written by install-agent.sh; mode 0600.\n'
            printf 'MQFLEET_HOST_ID="%s"\n' "$HOST_ID"
            printf 'MQFLEET_BROKER="%s"\n' "$BROKER"
            printf 'MQFLEET_CA="%s"\n' "${CA:+$CONFIG_DIR/tls/ca.crt}"
            printf 'MQFLEET_CERT="%s"\n' "${CERT:+$CONFIG_DIR/tls/agent.crt}"
            printf 'MQFLEET_KEY="%s"\n' "${KEY:+$CONFIG_DIR/tls/agent.key}"
            printf 'MQFLEET_PREFIX="%s"\n' "$PREFIX"
            printf 'MQFLEET_SLOTS="%s"\n' "$SLOTS"
            printf 'MQFLEET_REPO="%s"\n' "$REPO"
            printf 'MQFLEET_WORK_DIR="%s"\n' "$WORK_DIR"
            printf '# Trainers run as this user; empty: as the agent itself, which lets them read its key file.\n'
            printf 'MQFLEET_TRAINER_USER="%s"\n' "$TRAINER_USER"
        } | write_file "$env_file" 0600
    fi

    write_owner_policy
    render_unit | write_file "$unit" 0644
    # The config in force decides (a rerun without --force keeps it): root for the agent only with a trainer user.
    trainer_user=$TRAINER_USER
    if [ -f "$env_file" ]; then
        trainer_user=$(env_value "$env_file" MQFLEET_TRAINER_USER)
    fi
    if [ -n "$trainer_user" ]; then
        render_dropin "$trainer_user" | write_file "$unit.d/$DROPIN" 0644
    else
        act rm -f -- "$unit.d/$DROPIN"
    fi

    if [ "$DRY_RUN" = 1 ]; then
        printf 'would run: mqfleet agent selftest (as %s)\n' "$SVC_USER"
    elif [ "$SKIP_SELFTEST" = 1 ]; then
        say "selftest skipped (--skip-selftest)"
    elif ! run_selftest "$env_file"; then
        die "selftest failed: the service was NOT enabled. Fix what the table says, then rerun with --force."
    fi

    if [ "$SYSTEM" = 1 ]; then
        act systemctl daemon-reload
        act systemctl enable "$UNIT_NAME"
        # restart, not start: a rerun must pick up a new config, certificate or venv.
        act systemctl restart "$UNIT_NAME"
    fi
    say "agent $HOST_ID installed: unit $unit, config $env_file"
}

run_installer
