"""The typed capability advert: what a host's retained `hosts/{host}/advert` may hold, checked at the boundary.

An advert comes from the bus, so it is hostile input: every known field must have its type (a
`ram_gib` that is not a number, a `cpu_cores` that is a string), strings and lists are bounded, and
a few unknown scalar fields are kept so a newer agent can add some. A refused advert raises
`BadRequestError` naming the field; the coordinator then keeps the host's last good advert and
says why in `workers` (docs/SECURITY.md, "Adverts"). The agent builds an `Advert` (agent/capability.py) and
publishes its `to_wire()`; the coordinator reads one back with `parse_advert` (the host from the topic).
An advert is a WireMessage whose `from_wire` adds the bounds above to the type checks, and keeps extras.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from mqfleet.errors import BadRequestError
from mqfleet.wire.codec import Wire, WireMessage
from mqfleet.wire.owner import Availability, OwnerPolicy, checked_policy

#: Longest string any advert field may hold (names, versions, commits).
MAX_TEXT = 200
#: Most GPUs, labels and unknown extra fields an advert may list.
MAX_GPUS = 64
MAX_LABELS = 64
MAX_EXTRA_FIELDS = 32

#: An unknown advert field kept for a newer agent: a scalar only.
Extra = str | int | float | bool | None

#: The CPU architectures a job's `arch` may name: the names Linux's `uname -m` gives. Other systems name
#: some of them otherwise (Windows AMD64/ARM64, macOS arm64, BSD amd64): ARCH_ALIASES maps those here,
#: for the advert an agent sends and for a manifest that uses them.
ARCHES = ("x86_64", "aarch64", "armv7l", "armv6l", "i686", "riscv64", "ppc64le", "s390x", "loongarch64", "mips64")
ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64", "x86": "i686",
                "i386": "i686", "i586": "i686", "armhf": "armv7l", "armv7": "armv7l"}


def normalise_arch(name: str) -> str:
    """One name per CPU architecture: `platform.machine()` or a manifest's spelling, lower-cased, aliases
    mapped (amd64 -> x86_64, arm64 -> aarch64); a name it does not know comes back lower-cased."""
    lowered = name.strip().lower()
    return ARCH_ALIASES.get(lowered, lowered)


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML reported it: a part of the advert, read by the advert's own checks."""

    index: int
    name: str = ""
    uuid: str = ""
    vram_gib: float = 0.0
    vram_free_gib: float | None = None
    extra: dict[str, Extra] = field(default_factory=dict)

    def to_wire(self) -> Wire:
        wire = asdict(self)
        extra = wire.pop("extra")
        if self.vram_free_gib is None:
            del wire["vram_free_gib"]
        return {**extra, **wire}


@dataclass(frozen=True)
class Advert(WireMessage):
    """A host's capabilities; the coordinator takes `host` from the topic, never from the payload."""

    host: str
    hostname: str | None = None
    os: str | None = None
    os_version: str | None = None
    #: the CPU architecture, normalised (`x86_64`, `aarch64`, ...: see ARCHES)
    arch: str | None = None
    #: the OS family: on Linux the distribution's family (os-release ID_LIKE, else ID: `debian` for
    #: Debian, Ubuntu and Raspberry Pi OS), elsewhere the same as `os`
    os_family: str | None = None
    python: str | None = None
    cpu_cores: int | None = None
    ram_gib: float | None = None
    cuda: bool = False
    gpus: tuple[Gpu, ...] = ()
    driver: str | None = None
    torch: str | None = None
    xgboost: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    agent_version: str | None = None
    slots: int | None = None
    labels: tuple[str, ...] = ()
    ts: float | None = None
    #: the owner policy in force on the host (its agent's config over the manifest's defaults; docs/OPERATIONS.md,
    #: "Owner policies"); None from an agent that predates them
    owner_policy: OwnerPolicy | None = None
    #: whether the host takes work now, and why not (`outside hours until 22:00 (Europe/Berlin)`)
    availability: Availability | None = None
    extra: dict[str, Extra] = field(default_factory=dict)

    def to_wire(self) -> Wire:
        """The advert as published, stored and shown by `workers`: one JSON shape everywhere."""
        wire = asdict(self)
        extra = wire.pop("extra")
        wire["gpus"] = [g.to_wire() for g in self.gpus]
        wire["labels"] = list(self.labels)
        for name in ("owner_policy", "availability"):
            value = getattr(self, name)
            if value is None:
                del wire[name]  # an agent's advert before owner policies had neither
            else:
                wire[name] = value.to_wire()
        return {**extra, **wire}

    @classmethod
    def from_wire(cls, data: object, where: str = "") -> Advert:
        """An advert as its payload names its host; the coordinator uses parse_advert (the topic's host)."""
        host = _text(data, "host") if isinstance(data, dict) else None
        if host is None:
            raise BadRequestError("advert field 'host' is missing")
        return parse_advert(host, data)


def _text(obj: Wire, name: str, *, where: str = "") -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"advert field '{where}{name}' must be a string, not {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise BadRequestError(f"advert field '{where}{name}' is too long ({len(value)} characters, at most {MAX_TEXT})")
    return value


def _int(obj: Wire, name: str, *, where: str = "", minimum: int = 0) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(f"advert field '{where}{name}' must be an integer, not {type(value).__name__}")
    if not minimum <= value <= 1_000_000:
        raise BadRequestError(f"advert field '{where}{name}' is out of range ({value})")
    return value


def _number(obj: Wire, name: str, *, where: str = "") -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequestError(f"advert field '{where}{name}' must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise BadRequestError(f"advert field '{where}{name}' must be a finite number >= 0, not {value}")
    return float(value)


def _bool(obj: Wire, name: str) -> bool | None:
    value = obj.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise BadRequestError(f"advert field '{name}' must be true or false, not {type(value).__name__}")


def _gpus(value: object) -> tuple[Gpu, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_GPUS:
        raise BadRequestError(f"advert field 'gpus' must be a list of at most {MAX_GPUS} objects")
    gpus = []
    for i, g in enumerate(value):
        if not isinstance(g, dict):
            raise BadRequestError(f"advert field 'gpus[{i}]' must be an object, not {type(g).__name__}")
        where = f"gpus[{i}]."
        index = _int(g, "index", where=where)
        gpus.append(Gpu(index=i if index is None else index, name=_text(g, "name", where=where) or "",
                        uuid=_text(g, "uuid", where=where) or "", vram_gib=_number(g, "vram_gib", where=where) or 0.0,
                        vram_free_gib=_number(g, "vram_free_gib", where=where),
                        extra=_extra(g, frozenset(Gpu.__dataclass_fields__))))
    return tuple(gpus)


def _labels(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_LABELS:
        raise BadRequestError(f"advert field 'labels' must be a list of at most {MAX_LABELS} strings")
    for i, label in enumerate(value):
        if not isinstance(label, str) or len(label) > MAX_TEXT:
            raise BadRequestError(f"advert field 'labels[{i}]' must be a string of at most {MAX_TEXT} characters")
    return tuple(value)


def _extra(obj: Wire, known: frozenset[str]) -> dict[str, Extra]:
    extra: dict[str, Extra] = {}
    for name, value in obj.items():
        if name in known:
            continue
        if len(extra) >= MAX_EXTRA_FIELDS or len(name) > 64:
            continue  # a newer agent's extras are a courtesy, not a right: extras past the cap are dropped
        scalar = value is None or isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value))
        if scalar or (isinstance(value, str) and len(value) <= MAX_TEXT):
            extra[name] = value
    return extra


def parse_advert(host: str, obj: object) -> Advert:
    """The typed advert of `host` (named by the topic), or BadRequestError naming the first bad field."""
    if not isinstance(obj, dict):
        raise BadRequestError(f"advert must be a JSON object, not {type(obj).__name__}")
    cuda = _bool(obj, "cuda")
    return Advert(
        host=host,
        hostname=_text(obj, "hostname"),
        os=_text(obj, "os"),
        os_version=_text(obj, "os_version"),
        arch=_text(obj, "arch"),
        os_family=_text(obj, "os_family"),
        python=_text(obj, "python"),
        driver=_text(obj, "driver"),
        torch=_text(obj, "torch"),
        xgboost=_text(obj, "xgboost"),
        git_commit=_text(obj, "git_commit"),
        agent_version=_text(obj, "agent_version"),
        cpu_cores=_int(obj, "cpu_cores", minimum=1),
        ram_gib=_number(obj, "ram_gib"),
        cuda=bool(cuda),
        gpus=_gpus(obj.get("gpus")),
        git_dirty=_bool(obj, "git_dirty"),
        slots=_int(obj, "slots", minimum=1),
        labels=_labels(obj.get("labels")),
        ts=_number(obj, "ts"),
        owner_policy=checked_policy(obj["owner_policy"], "owner_policy") if obj.get("owner_policy") is not None else None,
        availability=(Availability.from_wire(obj["availability"], "availability").check("availability")
                      if obj.get("availability") is not None else None),
        extra=_extra(obj, frozenset(Advert.__dataclass_fields__)),
    )
