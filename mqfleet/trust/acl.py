"""The broker's ACL file: who may publish and read which topic, rendered from the manifest's hosts.

Mosquitto (2.0.11, default ACL check) grants an access when a `topic` line of the client's own
`user` block matches, else when any `pattern` line matches; a `deny` line of the user's block,
checked before anything else, keeps the patterns from applying. So: patterns hold what every
authenticated client may do (read public state, ask query verbs, read its own reply topic); each
known agent host, operator and the coordinator gets an explicit `user` block; the monitoring
accounts of the loopback listener get public state only; a CN nobody listed gets the patterns
only. Lines before the first `user` would serve anonymous clients, which the shipped
mosquitto.conf no longer lets in; they stay read-only in case a config does.

Each role may publish only on the topics it uses, one line per verb, so nobody can park retained
messages on topics nothing reads (a retained message on a topic the ACL allows is cleared by the
coordinator; docs/SECURITY.md, "Replies"). Every topic comes from `wire.topics.Topics` and every verb
from the verb table (`wire.verbs.VERBS`), so the ACL cannot drift from the layout the code uses; a release that
adds a verb needs the ACL rendered again (broker/install.sh does).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from mqfleet.defaults import TOPIC_PREFIX
from mqfleet.errors import ConfigurationError, ManifestError, Problem
from mqfleet.hostid import COORDINATOR_CN, MONITOR_USER, OPERATOR_PREFIX, check_host_id, check_name, is_monitor_name
from mqfleet.trust.monitor_accounts import check_monitor_name
from mqfleet.wire.topics import BROKER_LOG_NOTICES, Role, Topics, Verb
from mqfleet.wire.verbs import VERBS

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
    monitors: Sequence[str] = (MONITOR_USER,),
) -> str:
    """The text of a Mosquitto ACL file for these agent hosts, operators (names or CNs), coordinator CN
    and loopback monitoring accounts."""
    t = Topics(_check_prefix(prefix))
    coordinator = check_name(coordinator, "coordinator CN")
    if is_monitor_name(coordinator):
        raise ConfigurationError(f"coordinator CN {coordinator!r} is a monitoring account name; pick another")
    host_ids = _check_hosts(hosts, coordinator=coordinator)
    operator_cns = _check_operators(operators, coordinator=coordinator, hosts=host_ids)
    monitor_names = list(dict.fromkeys(check_monitor_name(m) for m in monitors))
    everything = f"{t.prefix}/#"
    public = [t.work, t.events, t.all_job_states, t.coordinator_status, t.all_adverts, t.all_statuses]
    public_only = [f"topic deny {t.prefix}/{level}/#" for level in ("rpc", "reply", "control")]
    public_only += [f"topic read {topic}" for topic in public]
    lines = [
        "# mqfleet broker ACL: rendered by `mqfleet broker acl`; re-render it rather than edit it,",
        "# then send SIGHUP to mosquitto (`systemctl reload mosquitto`) to apply it.",
        f"# prefix {t.prefix!r}; {len(host_ids)} agent host(s); {len(operator_cns)} operator(s).",
        "",
        "# Anonymous clients: none with the shipped mosquitto.conf (allow_anonymous false). Were a config",
        "# to let them in, they would read public state only: the deny lines come first in Mosquitto's",
        "# check and also override the patterns below, which would otherwise let a client choose a",
        "# client id and read that client's replies. See docs/SECURITY.md.",
        *public_only,
        "",
        "# Every authenticated client, known or not: read public state, ask read-only queries,",
        "# read the replies addressed to its own client id.",
        *[f"pattern read {topic}" for topic in public],
        *[f"pattern write {t.rpc(Role.QUERY, _CLIENT, verb)}" for verb in _verbs(Role.QUERY)],
        f"pattern read {t.reply(_CLIENT)}/#",
        "",
        "# The coordinator answers every request and publishes all shared state; it reads the broker's",
        "# connection log lines to learn when another client takes its client id (mosquitto.conf, log_dest).",
        f"user {coordinator}",
        f"topic readwrite {everything}",
        f"topic read {BROKER_LOG_NOTICES}",
    ]
    for name in monitor_names:
        lines += [
            "",
            f"# monitoring account {name} (loopback listener, password file; its client id is its user name):",
            "# public state only, no request, reply, control message or log, and no publish",
            f"user {name}",
            *public_only,
        ]
    for cn in operator_cns:
        lines += [
            "",
            f"# operator {cn[len(OPERATOR_PREFIX) :]}: operator verbs (the coordinator still checks the token), live logs",
            f"user {cn}",
            *[f"topic write {t.rpc(Role.OPERATOR, '+', verb)}" for verb in _verbs(Role.OPERATOR)],
            f"topic read {t.all_logs}",
        ]
    for host in host_ids:
        lines += [
            "",
            f"# agent host {host}: its own advert, status (and will), log batches and RPCs; its own control messages",
            "# and the owner policy defaults the coordinator keeps for it",
            f"user {host}",
            f"topic write {t.advert(host)}",
            f"topic write {t.status(host)}",
            f"topic write {t.log(host, '+')}",
            *[f"topic write {t.rpc(Role.AGENT, host, verb)}" for verb in _verbs(Role.AGENT)],
            f"topic read {t.control(host)}",
            f"topic read {t.owner_defaults(host)}",
        ]
    return "\n".join(lines) + "\n"


def _verbs(role: Role) -> list[str]:
    """The verbs sent on `rpc/{role}/...`, in the order wire.topics.Verb lists them."""
    return [verb.value for verb in Verb if VERBS[verb].role is role]


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
