"""The manifest: the one TOML file an operator edits. Loading refuses a file with every problem
it has. The types it builds and `job_id` live in the leaf `manifest/types.py`; the checks live in
`manifest/tables.py` (declarations), `manifest/jobs.py` (jobs, sweeps, names, ids, `after`) and
`manifest/values.py` (the `Checker` and single values by kind).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from mqfleet.errors import ManifestError, Problem
from mqfleet.manifest.jobs import JobDraft, link_jobs, read_jobs
from mqfleet.manifest.tables import TOP_KEYS, read_fleet, read_hosts, read_trainers
from mqfleet.manifest.types import Manifest
from mqfleet.manifest.values import Checker, TomlTable


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a manifest file; ManifestError lists every problem, a missing file included."""
    source = os.fspath(path)
    return parse_manifest(read_manifest_text(source), source)


def read_manifest_text(path: str | os.PathLike[str]) -> str:
    """A manifest file's text; ManifestError (one problem) when it is missing or unreadable."""
    source = os.fspath(path)
    try:
        return Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError([Problem("", f"no such file: {source}; check the path")], source) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(
            [Problem("", f"cannot read the manifest ({e}); it must be a readable UTF-8 file")], source
        ) from None


def parse_manifest(text: str, source: str = "<manifest>") -> Manifest:
    """Validate manifest text; ManifestError lists every problem found, each at its dotted place."""
    try:
        data: TomlTable = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem = Problem("", f"TOML syntax error: {e}; fix the syntax there (see https://toml.io)")
        raise ManifestError([problem], source) from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively; thousands of levels exhaust the stack.
        problem = Problem("", "TOML nested too deeply for the parser; a manifest needs a few levels at most")
        raise ManifestError([problem], source) from None
    ck = Checker()
    ck.keys(data, TOP_KEYS, "")
    fleet = read_fleet(ck, data)
    trainers = read_trainers(ck, ck.table(data, "trainers"))
    hosts = read_hosts(ck, ck.array(data, "hosts"))
    drafts = read_jobs(ck, ck.array(data, "jobs"), "jobs", trainers, fleet)
    drafts += read_jobs(ck, ck.array(data, "sweeps"), "sweeps", trainers, fleet)
    jobs = link_jobs(ck, drafts)
    if ck.problems:
        raise ManifestError(ck.problems, source)
    return Manifest(
        fleet=fleet,
        trainers={name: t for name, t in trainers.items() if t is not None},
        hosts=hosts,
        jobs=tuple(jobs),
        source=source,
        text=text,
        places={d.id: d.place for d in drafts},
        sweeps=_sweeps_of(drafts),
    )


def _sweeps_of(drafts: list[JobDraft]) -> dict[str, tuple[str, ...]]:
    sweeps: dict[str, list[str]] = {}
    for d in drafts:
        if d.sweep and d.id:
            sweeps.setdefault(d.sweep, []).append(d.id)
    return {name: tuple(ids) for name, ids in sweeps.items()}


def validate_manifest(text: str, source: str = "<manifest>") -> list[Problem]:
    """Every problem of manifest text; empty when it is valid."""
    try:
        parse_manifest(text, source)
    except ManifestError as e:
        return list(e.problems)
    return []
