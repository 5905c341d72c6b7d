"""The typed capability advert: what a host's retained `hosts/{host}/advert` may hold, checked at the boundary.

An advert comes from the bus, so it is hostile input: every known field must have its type (a
`ram_gib` that is not a number, a `cpu_cores` that is a string), strings, numbers and lists are bounded,
and a few unknown scalar fields are kept so a newer agent can add some. The bounds are the fields'
annotations, checked by the wire codec like every other message's (mqfleet/wire/codec.py). A refused
advert raises `BadRequestError` naming the field; the coordinator then keeps the host's last good advert
and says why in `workers` (docs/SECURITY.md, "What the broker enforces and what the coordinator checks"). The agent builds an `Advert`
(agent/capability.py) and publishes its `to_wire()`; the coordinator reads one back with `parse_advert`
(the host from the topic).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from mqfleet.errors import BadRequestError
from mqfleet.wire.codec import OMIT_DEFAULT, Bounds, Extra, ExtraFields, WireMessage
from mqfleet.wire.owner import Availability, OwnerPolicy

#: Longest string any advert field may hold (names, versions, commits).
MAX_TEXT = 200
#: Most GPUs, labels and unknown extra fields an advert may list.
MAX_GPUS = 64
MAX_LABELS = 64
MAX_EXTRA_FIELDS = 32

#: An advert's text, a count (cores, slots), an index, an amount (GiB, a timestamp): bounded.
Text = Annotated[str, Bounds(max_chars=MAX_TEXT)]
Count = Annotated[int, Bounds(min=1, max=1_000_000)]
Index = Annotated[int, Bounds(min=0, max=1_000_000)]
Amount = Annotated[float, Bounds(min=0)]
#: The unknown fields kept (scalars, names of at most 64 characters); the others are dropped.
EXTRAS = {"extra": ExtraFields(max_fields=MAX_EXTRA_FIELDS, max_name_chars=64, max_chars=MAX_TEXT)}

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
class Gpu(WireMessage):
    """One GPU as NVML reported it."""

    index: Index
    name: Text = ""
    uuid: Text = ""
    vram_gib: Amount = 0.0
    vram_free_gib: Amount | None = field(default=None, metadata=OMIT_DEFAULT)
    extra: dict[str, Extra] = field(default_factory=dict, metadata=EXTRAS)


@dataclass(frozen=True)
class Advert(WireMessage):
    """A host's capabilities; the coordinator takes `host` from the topic, never from the payload."""

    host: Text
    hostname: Text | None = None
    os: Text | None = None
    os_version: Text | None = None
    #: the CPU architecture, normalised (`x86_64`, `aarch64`, ...: see ARCHES)
    arch: Text | None = None
    #: the OS family: on Linux the distribution's family (os-release ID_LIKE, else ID: `debian` for
    #: Debian, Ubuntu and Raspberry Pi OS), elsewhere the same as `os`
    os_family: Text | None = None
    python: Text | None = None
    cpu_cores: Count | None = None
    ram_gib: Amount | None = None
    cuda: bool = False
    gpus: Annotated[tuple[Gpu, ...], Bounds(max_items=MAX_GPUS)] = ()
    driver: Text | None = None
    torch: Text | None = None
    xgboost: Text | None = None
    git_commit: Text | None = None
    git_dirty: bool | None = None
    agent_version: Text | None = None
    slots: Count | None = None
    labels: Annotated[tuple[Text, ...], Bounds(max_items=MAX_LABELS)] = ()
    ts: Amount | None = None
    #: the owner policy in force on the host (its agent's config over the manifest's defaults; docs/OPERATIONS.md,
    #: "Owner policies"), checked like the rest (window syntax, ranges); None from an agent that predates them
    owner_policy: OwnerPolicy | None = field(default=None, metadata=OMIT_DEFAULT)
    #: whether the host takes work now, and why not (`outside hours until 22:00 (Europe/Berlin)`)
    availability: Availability | None = field(default=None, metadata=OMIT_DEFAULT)
    extra: dict[str, Extra] = field(default_factory=dict, metadata=EXTRAS)

    @classmethod
    def from_wire(cls, data: object, where: str = "") -> Advert:
        """An advert as its payload names its host (the coordinator uses parse_advert: the topic's host); a GPU
        listed without its `index` is the one at its place in the list."""
        gpus = data.get("gpus") if isinstance(data, dict) else None
        if isinstance(data, dict) and isinstance(gpus, list) and len(gpus) <= MAX_GPUS:
            data = {**data, "gpus": [_numbered(gpu, i) for i, gpu in enumerate(gpus)]}
        return super().from_wire(data, where)


def _numbered(gpu: Any, position: int) -> Any:
    return {**gpu, "index": position} if isinstance(gpu, dict) and gpu.get("index") is None else gpu


def parse_advert(host: str, obj: object) -> Advert:
    """The typed advert of `host` (named by the topic), or BadRequestError naming the first bad field."""
    if not isinstance(obj, dict):
        raise BadRequestError(f"advert must be a JSON object, not {type(obj).__name__}")
    return Advert.from_wire({**obj, "host": host})
