"""The broker's ACL file: who may publish and read which topic, rendered from the manifest's hosts.

Mosquitto (2.0.11, default ACL check) grants an access when a `topic` line of the client's own
`user` block matches, else when any `pattern` line matches; lines before the first `user` serve
anonymous clients, who only exist on the loopback listener because the TLS listener names every
client by its certificate CN; they may only read public state (`deny` lines, checked before
anything else, keep the patterns from applying to them). So: patterns hold what every
authenticated client may do (read public state, ask query verbs, read its own reply topic); each known agent host, operator and the
coordinator gets an explicit `user` block; a CN nobody listed gets the patterns only. Every topic
comes from `protocol.Topics`, so the ACL cannot drift from the layout the code uses.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from mqfleet.defaults import TOPIC_PREFIX
from mqfleet.errors import ConfigurationError, ManifestError, Problem
from mqfleet.hostid import COORDINATOR_CN, OPERATOR_PREFIX, check_host_id, check_name
from mqfleet.wire.topics import Role, Topics

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Prefix levels are plain names: a '%' would be read as a pattern substitution, '+'/'#' as wildcards.
_PREFIX = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
# What Mosquitto substitutes in `pattern` lines: the connecting client's id.
_CLIENT = "%c"


def render_acl(
    hosts: Sequence[str],
    *,
    operators: Sequence[str] = (),
    coordinator: str = COORDINATOR_CN,
    prefix: str = TOPIC_PREFIX,
) -> str:
    """The text of a Mosquitto ACL file for these agent hosts, operators (names or CNs) and coordinator CN."""
    t = Topics(_check_prefix(prefix))
    coordinator = check_name(coordinator, "coordinator CN")
    host_ids = _check_hosts(hosts, coordinator=coordinator)
    operator_cns = _check_operators(operators, coordinator=coordinator, hosts=host_ids)
    everything = f"{t.prefix}/#"
    lines = [
        "# mqfleet broker ACL: rendered by `mqfleet broker acl`; re-render it rather than edit it,",
        "# then send SIGHUP to mosquitto (`systemctl reload mosquitto`) to apply it.",
        f"# prefix {t.prefix!r}; {len(host_ids)} agent host(s); {len(operator_cns)} operator(s).",
        "",
        "# Anonymous clients exist only on the loopback listener (the TLS listener requires a",
        "# certificate and takes its CN as the user name): any local account on the broker host.",
        "# They read public state (mosquitto_sub monitoring), nothing of rpc/, reply/, control/",
        "# or logs, and publish nothing; the coordinator and operators connect over TLS with their",
        "# certificates, on the broker host too. The deny lines come first in Mosquitto's check and",
        "# also override the patterns below, which would otherwise let a local process choose a",
        "# client id and read that client's replies. See docs/SECURITY.md.",
        f"topic deny {t.prefix}/rpc/#",
        f"topic deny {t.prefix}/reply/#",
        f"topic deny {t.prefix}/control/#",
        f"topic read {t.work}",
        f"topic read {t.events}",
        f"topic read {t.all_job_states}",
        f"topic read {t.coordinator_status}",
        f"topic read {t.all_adverts}",
        f"topic read {t.all_statuses}",
        "",
        "# Every authenticated client, known or not: read public state, ask read-only queries,",
        "# read the replies addressed to its own client id.",
        f"pattern read {t.work}",
        f"pattern read {t.events}",
        f"pattern read {t.all_job_states}",
        f"pattern read {t.coordinator_status}",
        f"pattern read {t.all_adverts}",
        f"pattern read {t.all_statuses}",
        f"pattern write {t.rpc(Role.QUERY, _CLIENT, '+')}",
        f"pattern read {t.reply(_CLIENT)}/#",
        "",
        "# The coordinator answers every request and publishes all shared state.",
        f"user {coordinator}",
        f"topic readwrite {everything}",
    ]
    for cn in operator_cns:
        lines += [
            "",
            f"# operator {cn[len(OPERATOR_PREFIX) :]}: operator verbs (the coordinator still checks the token), live logs",
            f"user {cn}",
            f"topic write {t.rpc(Role.OPERATOR, '+', '+')}",
            f"topic read {t.all_logs}",
        ]
    for host in host_ids:
        lines += [
            "",
            f"# agent host {host}: its own advert, status, logs and RPCs; its own control messages",
            f"user {host}",
            f"topic write {t.prefix}/hosts/{host}/#",
            f"topic write {t.rpc(Role.AGENT, host, '+')}",
            f"topic read {t.control(host)}",
        ]
    return "\n".join(lines) + "\n"


def hosts_in_manifest(path: str | os.PathLike[str]) -> list[str]:
    """The `[[hosts]]` ids of a manifest, in file order; ManifestError lists every malformed entry."""
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ManifestError([Problem("", f"cannot read: {e}")], source) from None
    entries = data.get("hosts", [])
    if not isinstance(entries, list):
        raise ManifestError([Problem("hosts", "must be an array of tables ([[hosts]])")], source)
    problems: list[Problem] = []
    ids: list[str] = []
    for i, entry in enumerate(entries):
        host = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(host, str):
            problems.append(Problem(f"hosts[{i}].id", "required, a string"))
            continue
        try:
            check_host_id(host)
        except ConfigurationError as e:
            problems.append(Problem(f"hosts[{i}].id", str(e)))
            continue
        if host in ids:
            problems.append(Problem(f"hosts[{i}].id", f"duplicate host id {host!r}"))
        ids.append(host)
    if problems:
        raise ManifestError(problems, source)
    return ids


def write_acl(path: str | os.PathLike[str], text: str) -> Path:
    """Replace the ACL file in one rename, so a SIGHUP never makes Mosquitto read half a file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, target)
    return target


def _check_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ConfigurationError(
            f"topic prefix {prefix!r} must be '/'-separated levels of letters, digits, '.', '_', '-'"
        )
    return prefix


def _check_hosts(hosts: Sequence[str], *, coordinator: str) -> list[str]:
    ids: list[str] = []
    for host in hosts:
        check_host_id(host, coordinator=coordinator)
        if host in ids:
            raise ConfigurationError(f"host id {host!r} is listed twice")
        ids.append(host)
    return ids


def _check_operators(operators: Sequence[str], *, coordinator: str, hosts: Sequence[str]) -> list[str]:
    cns: list[str] = []
    for name in operators:
        cn = name if name.startswith(OPERATOR_PREFIX) else OPERATOR_PREFIX + name
        check_name(cn, "operator CN")
        if cn == coordinator or cn in hosts:
            raise ConfigurationError(f"operator {cn!r} clashes with the coordinator or a host")
        if cn not in cns:
            cns.append(cn)
    return cns
