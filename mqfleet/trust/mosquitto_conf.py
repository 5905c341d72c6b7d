"""Renders a runnable Mosquitto config from the project's root `mosquitto.conf`.

The root file is the single source: this module rewrites a known set of its lines (ports, the TLS
listener's address, the `/etc/mqfleet/broker` directory, persistence, the run-as user) and keeps
every other line, so a test broker runs the production settings. When the root file stops
holding one of those lines, rendering fails instead of quietly producing a different broker.
`anonymous_loopback` is the one departure, for the test suite's shared broker, whose tests connect
without credentials under client ids of their choosing: it lets anonymous clients in and stops
naming loopback clients by their user name. Nothing in production renders it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mqfleet.errors import ConfigurationError

#: Where the production config keeps certificates, the CRL and the ACL (see broker/install.sh).
BROKER_DIR = "/etc/mqfleet/broker"
#: The repository's production config; an installed wheel has no repository, so pass `template`.
ROOT_CONF = Path(__file__).resolve().parents[2] / "mosquitto.conf"
#: File names in BROKER_DIR, as `mqfleet broker ca|issue|acl|monitor` write them.
ACL_FILE = "acl"
PASSWD_FILE = "passwd"
CONF_FILE = "mosquitto.conf"
# Directives whose value is a file in BROKER_DIR; each must appear exactly once in the root file.
_FILE_DIRECTIVES = ("acl_file", "password_file", "cafile", "certfile", "keyfile", "crlfile")
_LOCAL_ADDR = "127.0.0.1"
# The loopback listener's own option that keeps local clients off the fleet's client ids.
_PINNED_IDS = "use_username_as_clientid"


@dataclass
class _Seen:
    """Which known lines the rewrite met, to prove the root file still has its expected shape."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1


def render_broker_conf(
    *,
    conf_dir: str | os.PathLike[str],
    port_tls: int = 8883,
    port_local: int = 1883,
    bind: str | None = None,
    persistence_dir: str | os.PathLike[str] | None = None,
    persistence: bool = True,
    user: str | None = None,
    template: str | os.PathLike[str] | None = None,
    anonymous_loopback: bool = False,
) -> str:
    """The root config with files under `conf_dir`, these ports, the TLS listener on `bind` (default: all).

    `persistence_dir` replaces the persistence location; `persistence=False` turns it off; `user`
    replaces the run-as user (`root` lets a test broker read files root owns). `anonymous_loopback`
    lets anonymous clients choose their client ids on the loopback listener: for tests only.
    """
    source = Path(template) if template is not None else ROOT_CONF
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigurationError(f"cannot read the broker config template {source}: {e}") from None
    for port in (port_tls, port_local):
        if not 0 < port < 65536:
            raise ConfigurationError(f"port {port} is out of range")
    seen = _Seen()
    out: list[str] = []
    listener = ""
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            out.append(line)
            continue
        key = words[0]
        if key == "listener" and len(words) == 3 and words[2] == _LOCAL_ADDR:
            seen.add("local listener")
            listener = "local"
            line = f"listener {port_local} {_LOCAL_ADDR}"
        elif key == "listener" and len(words) == 2:
            seen.add("TLS listener")
            listener = "TLS"
            line = f"listener {port_tls} {bind}" if bind else f"listener {port_tls}"
        elif key == "allow_anonymous" and words[1:] == ["false"]:
            seen.add("allow_anonymous false")
            line = "allow_anonymous true" if anonymous_loopback else line
        elif key == _PINNED_IDS and words[1:] == ["true"] and listener == "local":
            seen.add(f"{_PINNED_IDS} true under the loopback listener")
            line = f"# {line} (left out: anonymous loopback, tests only)" if anonymous_loopback else line
        elif key in _FILE_DIRECTIVES:
            seen.add(key)
            line = f"{key} {_moved(words[1], conf_dir)}"
        elif key == "persistence":
            seen.add(key)
            line = f"persistence {'true' if persistence else 'false'}"
        elif key == "persistence_location" and persistence_dir is not None:
            seen.add(key)
            # mosquitto appends the database file name to this string, so it must end in '/'
            line = f"persistence_location {os.path.join(os.fspath(persistence_dir), '')}"
        elif key == "user" and user is not None:
            seen.add(key)
            line = f"user {user}"
        out.append(line)
    expected = ["local listener", "TLS listener", "persistence", "allow_anonymous false",
                f"{_PINNED_IDS} true under the loopback listener", *_FILE_DIRECTIVES]
    expected += ["persistence_location"] if persistence_dir is not None else []
    expected += ["user"] if user is not None else []
    wrong = [k for k in expected if seen.counts.get(k) != 1]
    if wrong:
        raise ConfigurationError(f"{source}: expected exactly one line for each of: {', '.join(wrong)}")
    return "\n".join(out) + "\n"


def _moved(value: str, conf_dir: str | os.PathLike[str]) -> str:
    if any(c.isspace() for c in os.fspath(conf_dir)):
        raise ConfigurationError(f"{conf_dir}: mosquitto cannot read paths holding spaces")
    if os.path.dirname(value) != BROKER_DIR:
        raise ConfigurationError(f"{value} is not under {BROKER_DIR}; the renderer only moves files from there")
    return os.path.join(os.fspath(conf_dir), os.path.basename(value))
