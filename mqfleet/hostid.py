"""The one rule for the names a certificate carries, and so for host ids.

A host id is its agent certificate's CN, which the broker takes as the user name and the ACL as a topic
level (`hosts/{host}/...`, `rpc/agent/{host}/...`). So a host id is what a CN may be (1-64 letters, digits,
'.', '_' or '-', starting with a letter or digit: no '/', '+', '#', blanks or control characters) and not
a name the ACL grants other rights by: an operator's, the coordinator's or a monitoring account's. The
agent, the manifest, the ACL and the CA all check through here, so a host the manifest accepts can always
be given a certificate.
"""

from __future__ import annotations

import re

from mqfleet.errors import ConfigurationError

#: Operators' CNs start with this, so the ACL can tell an operator from an agent by its user name.
OPERATOR_PREFIX = "operator-"
#: The coordinator's CN unless told otherwise.
COORDINATOR_CN = "coordinator"
#: The default monitoring account of the broker's loopback listener, and the prefix of any other.
MONITOR_USER = "monitor"
MONITOR_PREFIX = "monitor-"
#: What a CN may be, in words for the messages that refuse one.
NAME_RULE = "1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str, what: str = "name") -> str:
    """The name itself when it is safe as a CN, an MQTT user name and a topic level; else ConfigurationError."""
    if not _NAME.fullmatch(name):
        raise ConfigurationError(f"{what} {name!r} must be {NAME_RULE}")
    return name


def is_monitor_name(name: str) -> bool:
    """Whether `name` is reserved for monitoring accounts (`monitor`, `monitor-NAME`)."""
    return name == MONITOR_USER or name.startswith(MONITOR_PREFIX)


def host_id_problem(host_id: str, *, coordinator: str = COORDINATOR_CN) -> str | None:
    """Why `host_id` cannot name a host (the end of a sentence starting with the id), or None when it can."""
    if not _NAME.fullmatch(host_id):
        return f"must be {NAME_RULE}"
    if host_id.startswith(OPERATOR_PREFIX) or host_id == coordinator or is_monitor_name(host_id):
        return ("would get operator, coordinator or monitoring rights (no agent certificate carries it); "
                "rename the host")
    return None


def check_host_id(host_id: str, *, coordinator: str = COORDINATOR_CN) -> str:
    """The id itself when a host may carry it; else ConfigurationError saying why."""
    problem = host_id_problem(host_id, coordinator=coordinator)
    if problem is not None:
        raise ConfigurationError(f"host id {host_id!r} {problem}")
    return host_id
