"""Jobs as rows: the rows a validated manifest becomes (built off the lock, so only the writes hold
it), and a stored spec read back into a `JobSpec`. Pure: no connection, no lock."""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Any

from mqfleet.coordinator.manifest_memo import manifest_digest
from mqfleet.spec import JobSpec, Manifest

#: Parsed specs kept (about 2 KB each): the candidates claims walk again and again.
SPEC_CACHE_SIZE = 2048


@dataclass(frozen=True)
class ManifestRows:
    """A validated manifest turned into jobs-table rows, ready for `Catalog.apply_manifest`."""

    #: The manifest without its jobs: what the coordinator keeps in memory once the rows are written.
    header: Manifest
    #: (id, spec JSON, column values in the INSERT's order after id) per job.
    rows: list[tuple[str, str, tuple[Any, ...]]]
    deps: list[tuple[str, str]]
    #: (sweep name, job id) for every job a [[sweeps]] entry made.
    sweeps: list[tuple[str, str]]
    #: (job id, host) for every job with allowed_hosts.
    allowed: list[tuple[str, str]]
    max_attempts: int
    #: `manifest_memo.manifest_digest` of the text, so a restart on the same file skips the load.
    digest: str
    #: The text as applied (the manifest history keeps it); the header in memory drops it.
    text: str


def manifest_rows(manifest: Manifest) -> ManifestRows:
    """The rows a manifest's jobs become; pure, so it runs off the lock (a reload's `prepare`)."""
    rows = []
    for spec in manifest.jobs:
        text = json.dumps(spec.to_dict(), sort_keys=True)
        cols = (spec.name, spec.model, spec.mode, text, spec.priority, int(spec.prefer_cuda), int(spec.require_cuda),
                spec.min_vram_gib, spec.min_ram_gib)
        rows.append((spec.id, text, cols))
    deps = [(spec.id, after) for spec in manifest.jobs for after in spec.after]
    sweeps = [(name, job_id) for name, ids in manifest.sweeps.items() for job_id in ids]
    # what stays in memory: no per-job data (jobs, their places, sweep members); those are rows
    header = dataclasses.replace(manifest, jobs=(), text="", places={}, sweeps={})
    allowed = [(spec.id, host) for spec in manifest.jobs for host in spec.allowed_hosts]
    return ManifestRows(header=header, rows=rows, deps=deps, sweeps=sweeps, allowed=allowed,
                        max_attempts=manifest.fleet.max_attempts,
                        digest=manifest_digest(manifest.text, manifest.source), text=manifest.text)


@functools.lru_cache(maxsize=SPEC_CACHE_SIZE)
def spec_from_json(text: str) -> JobSpec:
    """A JobSpec back from its stored `to_dict()` JSON; cached by the text (parsing specs was most of a
    claim's cost), so an unchanged spec is parsed once and a changed one is a new key."""
    d = json.loads(text)
    for name in ("train_hosts", "allowed_hosts", "after"):
        d[name] = tuple(d.get(name) or ())
    known = JobSpec.__dataclass_fields__
    return JobSpec(**{k: v for k, v in d.items() if k in known})
