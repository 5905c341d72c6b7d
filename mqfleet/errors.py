"""The whole exception tree; each class carries the stable wire code of its error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class MqfleetError(Exception):
    """Base of every error mqfleet raises on purpose."""

    code = "error"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, at a dotted place such as `jobs[3].hyper.lr`."""

    place: str
    message: str

    def __str__(self) -> str:
        return f"{self.place}: {self.message}" if self.place else self.message


class ManifestError(MqfleetError):
    """Raised when a manifest is invalid; lists every problem at once."""

    code = "invalid_manifest"

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{head}{len(problems)} problem(s) in the manifest:\n{lines}")


class ConfigurationError(MqfleetError):
    """Raised when a role's runtime configuration is unusable."""

    code = "bad_config"


class InternalError(MqfleetError):
    """Raised when the coordinator fails a request for a reason of its own (a statement it cannot run, a failed
    commit), not the request's; the dispatcher answers any exception it did not expect with this code too.
    What went wrong is in its log, never in the reply."""

    code = "internal"


class ProtocolError(MqfleetError):
    """Raised when a message breaks the wire protocol (the base of the codes below; never raised itself)."""

    code = "protocol"


class DecodeError(ProtocolError):
    """Raised when a payload is not a JSON object of acceptable size."""

    code = "bad_payload"


class UnknownVerbError(ProtocolError):
    """Raised when a request names a verb nobody answers."""

    code = "unknown_verb"


class BadRequestError(ProtocolError):
    """Raised when a request's fields are missing or of the wrong type."""

    code = "bad_request"


class UnauthorizedError(ProtocolError):
    """Raised when an operator verb arrives without the right operator token."""

    code = "unauthorized"


class UnknownHostError(ProtocolError):
    """Raised when an agent verb names a host with neither a `[[hosts]]` entry nor a current advert."""

    code = "unknown_host"


class StateError(MqfleetError):
    """Raised when a request does not fit the current state of the fleet."""

    code = "conflict"


class IllegalTransitionError(StateError):
    """Raised when a job is asked to move to a status its current status does not allow."""

    code = "illegal_transition"


class LeaseLostError(StateError):
    """Raised when a request carries a lease that is no longer the job's current one."""

    code = "lease_lost"


class NotFoundError(StateError):
    """Raised when a job, host or artifact does not exist."""

    code = "not_found"


class AmbiguousError(StateError):
    """Raised when a job reference matches more than one job."""

    code = "ambiguous"

    def __init__(self, message: str, candidates: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        #: (id, name) of each job the reference matched: the refusal's `candidates`
        self.candidates = list(candidates)


class RateLimitedError(StateError):
    """Raised when a lease asks for store work (upload URLs, checks of uploads) faster than an honest agent would."""

    code = "rate_limited"


class StateStoreError(InternalError):
    """Raised when the state database fails a statement (an I/O error, a damaged file, a full disk, SQL it
    refuses); both engines raise it in place of their driver's errors (`coordinator/sql/`). A fault of the
    coordinator, never of the request: the dispatcher logs it and answers `internal`, remembering nothing."""


class ConstraintError(StateStoreError):
    """Raised when a write breaks a constraint of the schema (a duplicate key, a missing NOT NULL value);
    the statement wrote nothing."""


class DialectError(StateStoreError):
    """Raised when a statement uses SQL that only SQLite accepts (the PostgreSQL engine names the form both
    engines accept)."""


class UnavailableError(StateStoreError):
    """Raised when the coordinator's state database cannot be reached (a PostgreSQL outage); retry later.
    Answered with its code and never remembered, so the sender's retry runs the request again."""

    code = "unavailable"


class DatabaseBusyError(UnavailableError):
    """Raised when another writer held the state database's write lock past the wait (SQLite's busy timeout,
    PostgreSQL's lock_timeout); retry later."""


class ConnectionLostError(UnavailableError):
    """Raised when the connection to the state database broke (the server stopped or restarted, the network
    failed, the server ended an idle transaction); the next statement outside a transaction reconnects."""


class SchemaVersionError(ConfigurationError):
    """Raised when the state database was written by a newer mqfleet, whose schema this one does not know."""


class BrokerError(MqfleetError):
    """Raised when the broker cannot be used."""

    code = "broker"


class BrokerUnavailableError(BrokerError):
    """Raised when the broker cannot be reached or refuses the connection."""

    code = "broker_unavailable"


class NotAuthorizedError(BrokerError):
    """Raised when the broker refuses a publish (its ACL does not let this client write that topic)."""

    code = "not_authorized"


class RequestTimeoutError(BrokerError):
    """Raised when no reply arrives in time (the coordinator is not reached)."""

    code = "timeout"


class StoreError(MqfleetError):
    """Raised when the artifact store fails."""

    code = "store"


class ArtifactMismatchError(StoreError):
    """Raised when a stored object's size or sha256 is not what was claimed."""

    code = "artifact_mismatch"


class ObjectMissingError(StoreError):
    """Raised when an artifact object is not in the store."""

    code = "artifact_missing"


class BundleError(StoreError):
    """Raised when an output folder cannot be packed or an archive cannot be unpacked safely."""

    code = "bad_bundle"


class UnpackLimitError(BundleError):
    """Raised when an archive would unpack past a limit: `limit` is "bytes", "files" or "ratio"."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class TrainerInputError(MqfleetError):
    """Raised when a trainer's spec, flags or dataset cannot be used; the trainer exits 2 with its message."""

    code = "trainer_input"


class RemoteError(MqfleetError):
    """Raised client-side for an `{"ok": false}` reply; keeps the remote code."""

    def __init__(self, code: str, message: str, reply: dict[str, object] | None = None) -> None:
        self.code = code
        self.reply = reply or {}
        super().__init__(f"{code}: {message}")

    def is_a(self, error: type[MqfleetError]) -> bool:
        """True when the coordinator refused with `error`'s code (e.g. `e.is_a(LeaseLostError)`)."""
        return self.code == error.code
