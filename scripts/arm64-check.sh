#!/usr/bin/env bash
# The arm64 check (`make arm64-check`, docs/OPERATIONS.md "The arm64 check"): a Debian 12 arm64 system built
# under qemu user emulation from Debian's own packages, the package and its `postgres` extra installed there
# from the project's package index, then a broker, a coordinator, an agent and 20 jobs on SQLite and 5 on
# PostgreSQL (scripts/arm64_fleet.py inside the system). Prints the timings; cleans up every process it started.
#
# Needs root (debootstrap, chroot, mounts) and binfmt_misc: the kernel must hand arm64 programs to qemu,
# because every program the emulated ones start (dpkg's scripts, pip's, the agent's trainers) is arm64 too.
# Settings (environment): ARM64_DIR (the system and its work, default .arm64/ in the repository, ignored by
# git), ARM64_MIRROR (Debian mirror), BASELINE_REF (a git ref: its CLI timed beside this tree's),
# ARM64_TIMEOUT_S (bound of each step inside the system), ARM64_FRESH=1 (rebuild the system).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mkdir -p "${ARM64_DIR:-$ROOT/.arm64}" && cd "${ARM64_DIR:-$ROOT/.arm64}" && pwd)"
SYSROOT="$WORK/rootfs"
MIRROR="${ARM64_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
STEP_TIMEOUT_S="${ARM64_TIMEOUT_S:-3600}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
# In the first stage: enough for apt and Python. The rest comes from apt inside the system (packages_stage).
BASE_PACKAGES=python3,python3-venv,ca-certificates,procps
EXTRA_PACKAGES=(mosquitto postgresql-15 libpq5)

say() { printf '[arm64] %s\n' "$*"; }
die() { printf '[arm64] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: debootstrap, chroot and the mounts of /proc, /sys and /dev need it"
[ -x "$PY" ] || die "no $PY: run 'make setup' first (the wheel is built with the project's own Python)"

exec 9>"$WORK/lock"
flock -n 9 || die "another arm64 check runs on $WORK"

MOUNTED=()
SYSTEM_FACT="?"
PLACEHOLDERS=()  # files and folders made inside the system only to mount over; removed after
inside_pids() {
  # Every process whose root is the system: all were started by this script, inside it.
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$SYSROOT" ] && echo "${p#/proc/}"
  done
  return 0
}
cleanup() {
  local rc=$? pids i
  mapfile -t pids < <(inside_pids)
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping what is left inside the system: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for i in $(seq 1 20); do mapfile -t pids < <(inside_pids); [ ${#pids[@]} = 0 ] && break; sleep 0.5; done
    [ ${#pids[@]} = 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
  for (( i=${#MOUNTED[@]}-1; i>=0; i-- )); do
    umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" 2>/dev/null || say "could not unmount ${MOUNTED[i]}"
  done
  for (( i=${#PLACEHOLDERS[@]}-1; i>=0; i-- )); do
    mountpoint -q "${PLACEHOLDERS[i]}" || rmdir "${PLACEHOLDERS[i]}" 2>/dev/null || rm -f "${PLACEHOLDERS[i]}" 2>/dev/null || true
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_in() { # mount_in TARGET (under the system) ARGS... ; remembered for the clean-up
  local target="$SYSROOT$1"; shift
  mkdir -p "$target"
  mount "$@" "$target"
  MOUNTED+=("$target")
}

# --- the host: Debian's emulation packages, and the kernel's binfmt_misc handler for arm64 ------------------

host_packages() {
  local need=() p
  for p in qemu-user-static binfmt-support debootstrap; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
  fi
}

binfmt_ready() {
  grep -qs '^enabled' /proc/sys/fs/binfmt_misc/status && grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64
}

binfmt() {
  if ! binfmt_ready; then
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  fi
  binfmt_ready || die "binfmt_misc has no enabled qemu-aarch64 handler and none could be registered (a container \
without the privilege to mount binfmt_misc?). Register it on the host: update-binfmts --enable qemu-aarch64. \
Running qemu-aarch64-static by hand is not enough: the programs the emulated ones start fail with 'Exec format error'."
  say "binfmt_misc: qemu-aarch64 enabled, flags $(sed -n 's/^flags: //p' /proc/sys/fs/binfmt_misc/qemu-aarch64)"
}

# --- the arm64 system: debootstrap's two stages, then apt inside it ------------------------------------------

system_mounts() {
  # debootstrap made the device nodes in the system's /dev: the host's /dev is never bound into it
  mount_in /proc -t proc proc
  mount_in /sys -t sysfs -o ro sysfs
  mount_in /dev/pts -t devpts -o newinstance,ptmxmode=0666 devpts
  mount_in /dev/shm -t tmpfs -o mode=1777 shm
  cp /etc/resolv.conf "$SYSROOT/etc/resolv.conf"
}

inside() { # a command inside the system, with a clean environment plus the host's PIP_* settings
  local env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
             DEBIAN_FRONTEND=noninteractive)
  while IFS= read -r line; do env+=("$line"); done < <(env | grep '^PIP_' || true)
  chroot "$SYSROOT" /usr/bin/env -i "${env[@]}" "$@"
}

build_system() {
  if [ "${ARM64_FRESH:-}" = 1 ] || [ ! -e "$SYSROOT/.mqfleet-packages" ]; then
    [ -z "$(inside_pids)" ] || die "processes still run inside $SYSROOT"
    ! grep -qF " $SYSROOT/" /proc/mounts || die "something is still mounted under $SYSROOT (see /proc/mounts)"
    rm -rf --one-file-system "$SYSROOT"
    local t0=$SECONDS
    say "debootstrap --arch=arm64 --foreign $SUITE (first stage, on the host) ..."
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$SYSROOT" "$MIRROR" \
      >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed: see $WORK/debootstrap.log"
    # The handler's interpreter: inside the system too, for a registration without the F (fix binary) flag.
    cp /usr/bin/qemu-aarch64-static "$SYSROOT/usr/bin/"
    local interp; interp="$(sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-aarch64)"
    if [ -n "$interp" ] && [ ! -e "$SYSROOT$interp" ]; then mkdir -p "$SYSROOT$(dirname "$interp")"; cp "$interp" "$SYSROOT$interp"; fi
    say "debootstrap --second-stage (emulated) ..."
    chroot "$SYSROOT" /debootstrap/debootstrap --second-stage >>"$WORK/debootstrap.log" 2>&1 \
      || die "second stage failed: see $WORK/debootstrap.log"
    say "  base system in $((SECONDS - t0)) s"
    SYSTEM_FACT="was built from Debian's packages in this run (debootstrap's two stages $((SECONDS - t0)) s"
    t0=$SECONDS
    system_mounts
    # No service starts inside the system: the check starts its own broker and database, and stops them.
    printf '#!/bin/sh\nexit 101\n' >"$SYSROOT/usr/sbin/policy-rc.d"; chmod 755 "$SYSROOT/usr/sbin/policy-rc.d"
    say "apt-get install ${EXTRA_PACKAGES[*]} (emulated) ..."
    {
      inside apt-get update
      inside apt-get install -y --no-install-recommends postgresql-common
      # the check makes throwaway clusters of its own; Debian's default `main` cluster would only cost time
      sed -i 's/^#\?\s*create_main_cluster.*/create_main_cluster = false/' "$SYSROOT/etc/postgresql-common/createcluster.conf"
      inside apt-get install -y --no-install-recommends "${EXTRA_PACKAGES[@]}"
      inside apt-get clean
    } >>"$WORK/apt.log" 2>&1 || die "apt-get inside the system failed: see $WORK/apt.log"
    say "  packages in $((SECONDS - t0)) s"
    SYSTEM_FACT="$SYSTEM_FACT, mosquitto and postgresql-15 $((SECONDS - t0)) s)"
    touch "$SYSROOT/.mqfleet-packages"
  else
    say "reusing the arm64 system in $SYSROOT (ARM64_FRESH=1 rebuilds it)"
    SYSTEM_FACT="was reused from an earlier run (ARM64_FRESH=1 rebuilds it)"
    system_mounts
  fi
  # shellcheck disable=SC2016  # dpkg-query's own fields
  local format='${Package} ${Version}, '
  say "system: $(inside uname -m), Debian $(inside cat /etc/debian_version), $(inside python3 --version), \
$(inside dpkg-query -W -f "$format" mosquitto postgresql-15)"
}

# --- the project's package index inside the system ----------------------------------------------------------

bind_ro() { # bind_ro PATH: a host file or folder, read-only at the same path inside the system
  local target="$SYSROOT$1"
  if [ ! -e "$target" ]; then
    mkdir -p "$(dirname "$target")"
    if [ -d "$1" ]; then mkdir -p "$target"; else touch "$target"; fi
    PLACEHOLDERS+=("$target")
  fi
  mount --bind "$1" "$target"
  MOUNTED+=("$target")
  mount -o remount,bind,ro "$target" 2>/dev/null || true
}

pip_index() {
  # The host's pip configuration files, and every local file or folder they and PIP_* name (a CA bundle, a
  # find-links folder, a file:// index), read-only at the same paths: pip inside resolves exactly as on the host.
  local path
  for path in /etc/pip.conf /etc/xdg/pip /root/.config/pip /root/.pip; do
    [ -e "$path" ] && bind_ro "$path"
  done
  for path in $( { "$PY" -m pip config list 2>/dev/null; env | grep '^PIP_' || true; } \
                 | grep -o "\(file://\)\?/[^ '\"]*" | sed 's|^file://||; s|/$||' | sort -u); do
    # a PEP 503 index folder links to its files beside it (../../files/...): its parent goes in
    if [ -d "$path" ] && [ "$(basename "$path")" = simple ]; then path="$(dirname "$path")"; fi
    [ -e "$path" ] || continue
    # already there: under a folder bound above, or the same file in the system
    if [ -f "$path" ] && cmp -s "$path" "$SYSROOT$path"; then continue; fi
    mountpoint -q "$SYSROOT$path" 2>/dev/null || bind_ro "$path"
  done
  say "pip inside the system: the host's configuration and index ($(inside python3 -c \
'import os; print(", ".join(k for k in sorted(os.environ) if k.startswith("PIP_")) or "no PIP_* settings")'))"
}

wheels() {
  rm -rf "$SYSROOT/check"; mkdir -p "$SYSROOT/check/wheel" "$SYSROOT/check/baseline"
  say "building the wheel of this tree ..."
  "$PY" -m pip wheel --no-deps --no-build-isolation -q -w "$SYSROOT/check/wheel" "$ROOT" >"$WORK/wheel.log" 2>&1 \
    || die "building the wheel failed: see $WORK/wheel.log"
  if [ -n "${BASELINE_REF:-}" ]; then
    local src; src="$(mktemp -d)"
    git -C "$ROOT" archive --format=tar "$BASELINE_REF" | tar -x -C "$src"
    say "building the wheel of $BASELINE_REF ($(git -C "$ROOT" rev-parse --short "$BASELINE_REF")) ..."
    "$PY" -m pip wheel --no-deps --no-build-isolation -q -w "$SYSROOT/check/baseline" "$src" >>"$WORK/wheel.log" 2>&1 \
      || die "building the wheel of $BASELINE_REF failed: see $WORK/wheel.log"
    rm -rf "$src"
  fi
  cp "$ROOT/scripts/arm64_fleet.py" "$ROOT/tests/data/trainers/ok.py" "$SYSROOT/check/"
}

# --- the check ------------------------------------------------------------------------------------------------

started=$SECONDS
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
host_packages
binfmt
build_system
pip_index
wheels
wheel="$(ls "$SYSROOT"/check/wheel/*.whl)"; wheel="/check/wheel/$(basename "$wheel")"
baseline=()
if [ -n "${BASELINE_REF:-}" ]; then baseline=(--baseline "/check/baseline/$(basename "$(ls "$SYSROOT"/check/baseline/*.whl)")"); fi
timeout "$STEP_TIMEOUT_S" chroot "$SYSROOT" true  # the emulation answers
inside timeout "$STEP_TIMEOUT_S" python3 /check/arm64_fleet.py install "$wheel" "${baseline[@]}"
inside timeout "$STEP_TIMEOUT_S" /opt/mqfleet/bin/python /check/arm64_fleet.py fleet /check/work
say "----- summary ($((SECONDS - started)) s in all) -----"
inside python3 /check/arm64_fleet.py report | tee "$WORK/report.txt"
cp "$SYSROOT/check/results.json" "$WORK/results.json"
commit="$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- mqfleet pyproject.toml || echo '+changes')"
baseline_fact="baseline"
if [ -n "${BASELINE_REF:-}" ]; then baseline_fact="$BASELINE_REF ($(git -C "$ROOT" rev-parse --short "$BASELINE_REF"))"; fi
PYTHONPATH="$ROOT" "$PY" "$ROOT/scripts/arm64_fleet.py" document "$WORK/results.json" "$ROOT/docs/BENCHMARKS.md" \
  --fact "host=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(nproc) cores, shared" \
  --fact "qemu=$(qemu-aarch64-static --version | head -1 | sed 's/ version / /')" \
  --fact "commit=$commit" --fact "when=$(date -u +%F)" --fact "elapsed=$((SECONDS - started)) s" \
  --fact "load=$load_start / $(cut -d' ' -f1-3 /proc/loadavg)" --fact "baseline=$baseline_fact" \
  --fact "system=$SYSTEM_FACT"
say "figures in $WORK/results.json; docs/BENCHMARKS.md, \"Pi-class, emulated\" rewritten from them"
