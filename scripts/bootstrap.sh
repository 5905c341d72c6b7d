#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for mqfleet: mosquitto from apt, then a .venv
# with the package and its extras. torch is pinned to 2.13.0 because an unpinned torch pulls a
# multi-GB CUDA build. Rerunnable: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_rr >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
# The state-store tests run against a throwaway PostgreSQL cluster of their own.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
# The deployment tests lint the install scripts with it.
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
# The web dashboard's browser tests drive Debian's Chromium through its chromedriver (selenium).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "bootstrap: installing ${need_apt[*]} from apt"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi

stamp="$VENV/.mqfleet-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing torch==$TORCH_VERSION and mqfleet[train,test,postgres] into $VENV"
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
    "$VENV/bin/pip" install -q -e ".[train,test,postgres]"
    touch "$stamp"
fi
