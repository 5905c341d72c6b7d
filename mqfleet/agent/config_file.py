"""The agent's config file (`mqfleet agent --config agent.toml`): the machine owner's policy and who may pause.

Every key is optional; what the file leaves unset comes from the manifest's `[[hosts]]` entry, then the
built-in defaults, and a flag given on the command line wins over the file (docs/OPERATIONS.md, "Owner policies").
A file with an unknown key, a bad value or bad TOML is refused whole, naming each place, and the agent does
not start: an owner's rule is never half applied. examples/agent.toml shows every key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from mqfleet.errors import ConfigurationError, Problem
from mqfleet.wire.owner import OWNER_KEYS, OwnerPolicy, policy_from_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Keys of the file besides the policy's.
AGENT_KEYS = ("owner_group", "owner_socket")
#: Largest config file read.
MAX_FILE_BYTES = 256 * 1024


@dataclass(frozen=True)
class AgentFile:
    """What an `agent.toml` sets."""

    policy: OwnerPolicy = OwnerPolicy()
    #: the group whose members may use `mqfleet agent pause` (besides root and the agent's own user)
    owner_group: str | None = None
    #: where the owner's switch listens (default: owner.sock in the work dir)
    owner_socket: str | None = None


def read_agent_file(path: Path) -> AgentFile:
    """The config file at `path`; ConfigurationError listing every problem, each at its key."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigurationError(f"--config {path}: larger than {MAX_FILE_BYTES // 1024} KiB; is it the right file?")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigurationError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigurationError(f"--config {path}: not valid TOML ({e})") from None
    problems = [Problem(key, f"unknown key (allowed: {', '.join((*OWNER_KEYS, *AGENT_KEYS))})")
                for key in data if key not in (*OWNER_KEYS, *AGENT_KEYS)]
    policy, policy_problems = policy_from_table(data)
    problems += policy_problems
    texts: dict[str, str | None] = {}
    for key in AGENT_KEYS:
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(Problem(key, f"must be a non-empty string, not {value!r}"))
            value = None
        texts[key] = value
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise ConfigurationError(f"--config {path}: {len(problems)} problem(s):\n{lines}")
    return AgentFile(policy=policy, owner_group=texts["owner_group"], owner_socket=texts["owner_socket"])
