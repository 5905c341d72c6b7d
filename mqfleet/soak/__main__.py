"""Command line of the soak: `python -m mqfleet.soak --duration S --agents N --jobs J --seed K [--out F] [--dir D]
[--coordinators N --db postgresql]`.

Exit status 0 when every invariant held, 1 when one did not, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console

from mqfleet.soak.fleet import SoakConfig
from mqfleet.soak.invariants import render
from mqfleet.soak.runner import run_soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mqfleet.soak", description="Chaos soak of a local mqfleet fleet.")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of fault injection (default 600)")
    parser.add_argument("--agents", type=int, default=20, help="agent processes (default 20)")
    parser.add_argument("--jobs", type=int, default=500, help="jobs in the manifest (default 500)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the jobs, the fault order and the targets")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here (default DIR/report.json)")
    parser.add_argument("--dir", type=Path, default=Path(".soak"), help="work folder, emptied first (default .soak)")
    parser.add_argument("--drain-timeout", type=float, default=0.0, help="seconds to wait for the last jobs")
    parser.add_argument("--coordinators", type=int, default=1,
                        help="coordinators serving at once (default 1; more need --db postgresql)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the state: an SQLite file, or a throwaway local PostgreSQL server (default sqlite)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = Console()
    config = SoakConfig(duration_s=args.duration, agents=args.agents, jobs=args.jobs, seed=args.seed,
                        work_dir=args.dir.resolve(), drain_timeout_s=args.drain_timeout,
                        coordinators=args.coordinators, db=args.db)
    console.print(f"soak: {config.agents} agents, {config.jobs} jobs, {config.duration_s:g}s of faults, seed {config.seed}, "
                  f"in {config.work_dir}")
    try:
        report = run_soak(config)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; everything the soak started was stopped[/]")
        return 130
    report.figures["command"] = " ".join(["python -m mqfleet.soak", *(argv if argv is not None else sys.argv[1:])])
    out = args.out or config.work_dir / "report.json"
    out.write_text(json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    render(report, console)
    console.print(f"report: {out}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
