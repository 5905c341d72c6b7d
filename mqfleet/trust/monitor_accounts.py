"""Monitoring accounts of the broker's loopback listener: Mosquitto's password file and the
`mosquitto_sub` options file that holds an account's password.

The loopback listener takes no anonymous clients and names each client by its user name
(`use_username_as_clientid`), so a local account can never take a fleet client id such as
`coordinator` or `agent-HOST` (docs/SECURITY.md, "Parties and listeners"). Monitoring then needs
a user name and password; their names are `monitor` or `monitor-NAME`, never a host id, an
operator or the coordinator, since the ACL grants by user name and a certificate CN is a user
name too. The ACL gives them public state only (`acl.render_acl`).

Hashes are Mosquitto 2.0's own `$7$` format (PBKDF2-HMAC-SHA512, a 12-byte salt, a 64-byte hash,
base64), as `mosquitto_passwd` writes them; passwords are random, so the iteration count only has
to match what the broker reads.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from mqfleet.errors import ConfigurationError
from mqfleet.hostid import MONITOR_PREFIX, MONITOR_USER, check_name, is_monitor_name

#: Mosquitto's PBKDF2 hash type, salt and hash sizes (src/password_mosq.h, 2.0.11).
_HASH_TYPE = 7
_SALT_BYTES = 12
_ITERATIONS = 1000
#: A password file line is short; one this long is not a password file.
_MAX_FILE_BYTES = 1 << 20


def check_monitor_name(name: str) -> str:
    """The name when it is a safe monitoring account name; else ConfigurationError saying what is allowed."""
    check_name(name, "monitoring account")
    if not is_monitor_name(name):
        raise ConfigurationError(
            f"monitoring account {name!r} must be {MONITOR_USER!r} or start with {MONITOR_PREFIX!r}: the ACL grants "
            "rights by user name, and other names belong to hosts, operators and the coordinator"
        )
    return name


def new_password() -> str:
    """A random password (URL-safe characters, no spaces, so an options file line holds it whole)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = _ITERATIONS) -> str:
    """`$7$ITERATIONS$SALT$HASH`, the form Mosquitto 2.0 reads from its password file."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"${_HASH_TYPE}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def set_password(path: str | os.PathLike[str], user: str, password: str) -> Path:
    """Put `user` with this password into the password file (other users' lines kept), in one rename."""
    check_monitor_name(user)
    target = Path(path)
    lines = _lines(target) if target.exists() else []
    kept = [line for line in lines if line.partition(":")[0] != user]
    _write_private(target, "\n".join([*kept, f"{user}:{hash_password(password)}"]) + "\n")
    return target


def accounts_in(path: str | os.PathLike[str]) -> list[str]:
    """The user names of a password file; ConfigurationError when one is not a monitoring account name, since
    the ACL would give it whatever a host, an operator or the coordinator of that name may do."""
    target = Path(path)
    users = [line.partition(":")[0] for line in _lines(target) if line.strip() and not line.startswith("#")]
    wrong = [u for u in users if not is_monitor_name(u)]
    if wrong:
        raise ConfigurationError(f"{target}: {', '.join(map(repr, wrong))} cannot be loopback accounts; names are "
                                 f"{MONITOR_USER!r} or {MONITOR_PREFIX}NAME (remove them with mosquitto_passwd -D)")
    return [check_monitor_name(u) for u in users]


def _lines(target: Path) -> list[str]:
    try:
        if target.stat().st_size > _MAX_FILE_BYTES:
            raise ConfigurationError(f"{target} is over {_MAX_FILE_BYTES} bytes: not a Mosquitto password file")
        return target.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"cannot read the password file {target}: {e}") from None


def write_options(path: str | os.PathLike[str], *, user: str, password: str, port: int | None = 1883) -> Path:
    """A `mosquitto_sub` options file for this account on the loopback listener.

    mosquitto_sub reads one option per line from `$XDG_CONFIG_HOME/mosquitto_sub`, so
    `XDG_CONFIG_HOME=DIR mosquitto_sub -v -t 'mqfleet/#'` logs in without the password ever
    reaching a command line, where `ps` would show it to every local user.
    """
    check_monitor_name(user)
    lines = ["# mqfleet monitoring account: XDG_CONFIG_HOME=<this directory> mosquitto_sub -v -t 'mqfleet/#'",
             "-h 127.0.0.1"]
    if port is not None:
        lines.append(f"-p {port}")
    lines += [f"-u {user}", f"-P {password}"]
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigurationError(f"cannot make the directory of {target}: {e.strerror or e}") from None
    _write_private(target, "\n".join(lines) + "\n")
    return target


def _write_private(target: Path, text: str) -> None:
    """Write 0640 through a temporary file and one rename: a reload never reads half a file."""
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o640)
        os.replace(tmp, target)
    except OSError as e:
        raise ConfigurationError(f"cannot write {target}: {e.strerror or e}") from None
