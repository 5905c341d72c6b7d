"""Both sides of the wire: topic names, verbs and roles, payload encoding and decoding.

Every topic is built here so the coordinator, the agent, the CLI and the ACL
renderer agree on one layout (docs/INTERNALS.md, "Topics").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeAlias

from mqfleet.defaults import MAX_REQUEST_BYTES, TOPIC_PREFIX
from mqfleet.errors import DecodeError
from mqfleet.wire.codec import Wire

#: Any JSON value, as `json.loads` returns it. Free-form user data (hyperparameters, progress metrics,
#: a manifest's job spec before it is checked) is typed with it, so a reader must narrow each value
#: with isinstance before using it; a message's known fields are typed dataclasses (mqfleet/wire/requests.py).
JsonValue: TypeAlias = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]
#: A JSON object: the free-form kind of JsonValue most fields hold.
JsonObject: TypeAlias = dict[str, JsonValue]

#: Where Mosquitto publishes its own notice-level log lines (connects, disconnects) with `log_dest topic`:
#: outside the prefix, readable by the coordinator alone (acl.py, coordinator/takeover.py).
BROKER_LOG_NOTICES = "$SYS/broker/log/N"
#: Longest request id: every remembered reply is keyed by it, so its length is the sender's to abuse.
MAX_REQUEST_ID_CHARS = 64
#: Longest trainer output line in a log batch (longer ones are cut), and most lines per batch
#: (agents split bigger flushes; the coordinator drops lines past it).
MAX_LOG_LINE_CHARS = 8192
MAX_LOG_LINES_PER_BATCH = 500
#: Characters of lines in one log batch: under the coordinator's MAX_REQUEST_BYTES even if JSON escapes each as \uXXXX.
MAX_LOG_BATCH_CHARS = 40 * 1024


def log_batches(lines: list[str]) -> list[list[str]]:
    """Lines split into batches the coordinator takes whole: at most MAX_LOG_LINES_PER_BATCH lines and
    MAX_LOG_BATCH_CHARS characters each (a single longer line goes alone; lines are cut before)."""
    batches: list[list[str]] = []
    current: list[str] = []
    size = 0
    for line in lines:
        if current and (len(current) >= MAX_LOG_LINES_PER_BATCH or size + len(line) > MAX_LOG_BATCH_CHARS):
            batches.append(current)
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        batches.append(current)
    return batches


class Role(str, Enum):
    """Who may send a request: the middle level of an RPC topic."""

    AGENT = "agent"
    OPERATOR = "operator"
    QUERY = "query"


class Verb(str, Enum):
    """Every RPC verb the coordinator answers; who may send each, and its request and reply types, are in
    the verb table (mqfleet/wire/verbs.py)."""

    CLAIM = "claim"
    RENEW = "renew"
    UPLOAD_URL = "upload_url"
    COMPLETE = "complete"
    FAIL = "fail"
    CHECKPOINT_URL = "checkpoint_url"
    CHECKPOINT_SAVED = "checkpoint_saved"
    CHECKPOINT_START = "checkpoint_start"
    CANCEL = "cancel"
    REQUEUE = "requeue"
    RELOAD = "reload"
    DRAIN = "drain"
    UNDRAIN = "undrain"
    GC = "gc"
    JOBS = "jobs"
    JOB = "job"
    WORKERS = "workers"
    HEALTH = "health"
    ARTIFACTS = "artifacts"
    LOGS = "logs"
    DOWNLOAD_URL = "download_url"
    COMPARE = "compare"
    MANIFEST = "manifest"


@dataclass(frozen=True)
class Topics:
    """Topic names under one prefix."""

    prefix: str = TOPIC_PREFIX

    def client_id(self, name: str) -> str:
        """The MQTT client id for a long-lived role (`coordinator`, `agent-HOST`).

        Fleets under other prefixes on the same broker get their own ids, so their
        persistent sessions never take each other over.
        """
        if self.prefix == TOPIC_PREFIX:
            return name
        return f"{name}@{self.prefix.replace('/', '_')}"

    # what agents publish, all under their own host path
    def advert(self, host: str) -> str:
        return f"{self.prefix}/hosts/{host}/advert"

    def status(self, host: str) -> str:
        return f"{self.prefix}/hosts/{host}/status"

    def log(self, host: str, job_id: str) -> str:
        return f"{self.prefix}/hosts/{host}/log/{job_id}"

    # what the coordinator sends to one agent (cancel, lease_lost), read only by that host
    def control(self, host: str) -> str:
        return f"{self.prefix}/control/{host}"

    def owner_defaults(self, host: str) -> str:
        """The manifest's owner policy defaults for one host, retained by the coordinator, read only by that host."""
        return f"{self.prefix}/control/{host}/policy"

    def rpc(self, role: Role, client: str, verb: Verb | str) -> str:
        verb_name = verb.value if isinstance(verb, Verb) else verb
        return f"{self.prefix}/rpc/{role.value}/{client}/{verb_name}"

    def reply(self, client: str) -> str:
        return f"{self.prefix}/reply/{client}"

    def reply_namespace(self, role: Role, client: str) -> str:
        """Where replies to a request on `rpc/{role}/{client}/...` may go: the requester's own reply topic.

        The broker's ACL ties the client level to the sender (the host for agent verbs, the client
        id for query and operator verbs), so a Response Topic outside this namespace is someone
        asking the coordinator to publish on their behalf (docs/SECURITY.md, "Replies").
        """
        identity = self.client_id(f"agent-{client}") if role is Role.AGENT else client
        return self.reply(identity)

    def is_reply_topic_allowed(self, role: Role, client: str, response_topic: str) -> bool:
        """True when `response_topic` is the requester's reply topic or a level below it, free of wildcards."""
        if not response_topic or "+" in response_topic or "#" in response_topic or "\0" in response_topic:
            return False
        base = self.reply_namespace(role, client)
        return response_topic == base or response_topic.startswith(base + "/")

    def job_state(self, job_id: str) -> str:
        return f"{self.prefix}/jobs/{job_id}/state"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def work(self) -> str:
        return f"{self.prefix}/work"

    @property
    def coordinator_status(self) -> str:
        return f"{self.prefix}/coordinator/status"

    # subscriptions
    @property
    def all_rpc(self) -> str:
        return f"{self.prefix}/rpc/+/+/+"

    @property
    def all_adverts(self) -> str:
        return f"{self.prefix}/hosts/+/advert"

    @property
    def all_statuses(self) -> str:
        return f"{self.prefix}/hosts/+/status"

    @property
    def all_logs(self) -> str:
        return f"{self.prefix}/hosts/+/log/+"

    @property
    def all_job_states(self) -> str:
        return f"{self.prefix}/jobs/+/state"

    def parse_rpc(self, topic: str) -> tuple[str, str, str] | None:
        """(role, client, verb) of an RPC topic, or None when the topic is not one."""
        head = f"{self.prefix}/rpc/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 3 or not all(parts):
            return None
        return parts[0], parts[1], parts[2]

    def parse_log(self, topic: str) -> tuple[str, str] | None:
        """(host, job id) of `{prefix}/hosts/{host}/log/{job_id}`, or None when the topic is not one."""
        head = f"{self.prefix}/hosts/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 3 or parts[1] != "log" or not parts[0] or not parts[2]:
            return None
        return parts[0], parts[2]

    def parse_host_topic(self, topic: str) -> tuple[str, str] | None:
        """(host, kind) of `{prefix}/hosts/{host}/{kind}`; kind is advert, status or log."""
        head = f"{self.prefix}/hosts/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) < 2 or not parts[0]:
            return None
        return parts[0], parts[1]


def encode(obj: Any) -> bytes:
    """Readable, compact JSON: what `mosquitto_sub -v` shows."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, default=str).encode()


def decode(payload: bytes, *, max_bytes: int = MAX_REQUEST_BYTES) -> Wire:
    """A JSON object from a payload, or DecodeError saying what is wrong with it."""
    if len(payload) > max_bytes:
        raise DecodeError(f"payload of {len(payload)} bytes is over the {max_bytes}-byte limit")
    if not payload:
        return {}
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise DecodeError(f"payload is not JSON: {e}") from None
    except RecursionError:
        # json recurses per nesting level: a payload of thousands of '[' exhausts the stack.
        raise DecodeError("payload is nested too deeply") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"payload must be a JSON object, not {type(obj).__name__}")
    return obj


def error(code: str, message: str) -> Wire:
    """A refusal reply, as it is encoded."""
    return {"ok": False, "error": code, "message": message}
