"""`mqfleet capability`: print this host's capability advert as JSON, without touching the broker."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import click

from mqfleet.agent.capability import detect_advert
from mqfleet.cli import cli


@cli.command("capability")
@click.option("--host-id", default=None, help="Host id to advertise (default: this machine's short hostname).")
@click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Training repo whose git commit is reported.",
)
@click.option("--slots", type=click.IntRange(min=1), default=1, show_default=True, help="Concurrent jobs.")
@click.option("--label", "labels", multiple=True, help="A label to advertise (repeatable).")
def capability(host_id: str | None, repo: Path, slots: int, labels: tuple[str, ...]) -> None:
    """Print what this host can do (OS, CPU, RAM, GPUs, torch, git commit) as JSON."""
    host = host_id or socket.gethostname().split(".")[0]
    advert = detect_advert(host, slots=slots, labels=labels, repo=repo)
    click.echo(json.dumps(advert.to_wire(), indent=2, sort_keys=True))
