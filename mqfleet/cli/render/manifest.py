"""Rendering of a valid manifest for `mqfleet validate`: the one-line verdict, its jobs by model and mode, its
hosts. Every name is the operator's own text, escaped so it prints as written."""

from __future__ import annotations

from collections import Counter

from rich.markup import escape
from rich.table import Table

from mqfleet.manifest.types import Manifest


def valid_line(path: str, manifest: Manifest) -> str:
    """`PATH: valid: N jobs (S from K sweeps), T trainers, H hosts`, as markup."""
    sweep_places = [place for place in manifest.places.values() if place.startswith("sweeps[")]
    counts = (
        f"{_count(len(manifest.jobs), 'job')} ({len(sweep_places)} from {_count(len(set(sweep_places)), 'sweep')}), "
        f"{_count(len(manifest.trainers), 'trainer')}, {_count(len(manifest.hosts), 'host')}"
    )
    return f"[green]{escape(path)}: valid[/green]: {counts}"


def jobs_table(manifest: Manifest) -> Table:
    per_kind = Counter((job.model, job.mode) for job in manifest.jobs)
    jobs = Table("model", "trainer", "mode", "jobs", title="jobs", title_justify="left")
    for (model, mode), count in sorted(per_kind.items()):
        trainer = manifest.trainers[model]
        jobs.add_row(*map(escape, (model, trainer.builtin or " ".join(trainer.command), mode)), str(count))
    return jobs


def hosts_table(manifest: Manifest) -> Table:
    hosts = Table("host", "slots", "allow", "deny", "labels", title="hosts", title_justify="left")
    for host in manifest.hosts.values():
        lists = (", ".join(host.allow_jobs), ", ".join(host.deny_jobs), ", ".join(host.labels))
        hosts.add_row(escape(host.id), str(host.slots), *map(escape, lists))
    return hosts


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
