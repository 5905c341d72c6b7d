"""CLI start-up: what each command pays in imports, and the wall time an operator waits, against `python -c pass`.

Run: `python -m bench.cli_startup [--runs 7]`. A private broker and a coordinator subprocess
(bench/common.py) answer the commands, so `status`, `jobs`, `health` and `show` run their whole path:
the imports made lazily while a command runs count too. Import time is `python -X importtime`'s
(PYTHONPROFILEIMPORTTIME=1): the cumulative time of each top-level import of the process, summed,
the interpreter's own `site` included, so `python -c pass` under the same setting is the baseline.
The commands run as the operator types them, through the environment's `mqfleet` script; the rounds
are interleaved, so a slow spell of the shared machine hits every command alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    CoordinatorProc,
    Row,
    fleet_env,
    jobs_manifest,
    median,
    ms,
    new_prefix,
    p99,
    verdict,
)
from mqfleet.local.broker import LocalBroker
from mqfleet.local.process import Proc

#: Import time targets (issue 34), in seconds; and the wall time target of `health` against a live coordinator.
IMPORT_TARGET_S = {"--version": 0.060, "health --help": 0.060}
HEALTH_WALL_TARGET_S = 0.150


def mqfleet_argv() -> list[str]:
    """The command an operator types: the environment's `mqfleet` script, else `python -m mqfleet`."""
    script = Path(sys.executable).parent / "mqfleet"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mqfleet"]


#: Each timed command by its name in the report: argv after `mqfleet` (None: `python -c pass`).
COMMANDS: dict[str, list[str] | None] = {
    "python -c pass": None, "--version": ["--version"], "health --help": ["health", "--help"],
    "health": ["health"], "status": ["status"], "jobs": ["jobs"], "show": ["show", "{job}"],
}
#: The commands whose wall time is reported (issue 34's three).
WALL = ("python -c pass", "--version", "health --help", "health")


def import_total_s(stderr: str) -> float:
    """Seconds of import: each top-level line's cumulative microseconds of `-X importtime`, summed."""
    total_us = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        _, cumulative, name = line.split("|", 2)
        if cumulative.strip().isdigit() and not name.startswith("  "):  # nested imports are indented further
            total_us += int(cumulative)
    return total_us / 1e6


def run_once(name: str, env: dict[str, str], *, profile: bool, job: str = "") -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, import seconds or 0) of one run of the command `name`; `job` is the one `show`
    shows. CPU is the process's user+sys time: unlike wall time, hardly moved by other processes on the machine."""
    args = COMMANDS[name]
    argv = [sys.executable, "-c", "pass"] if args is None else [*mqfleet_argv(), *(a.format(job=job) for a in args)]
    run_env = {**env, "PYTHONPROFILEIMPORTTIME": "1"} if profile else env
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run's child is reaped: its time is in the delta
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr[-2000:]}")
    return wall, cpu, import_total_s(result.stderr) if profile else 0.0


def agent_start_import_s(workdir: Path, coord: CoordinatorProc, env: dict[str, str], host: str) -> float:
    """Import seconds of an agent from its start until the coordinator lists it online."""
    workdir.mkdir(parents=True, exist_ok=True)
    agent = Proc(host, [*mqfleet_argv(), "agent", "--host-id", host, "--work-dir", str(workdir / host), "--repo",
                        str(ROOT)], {**env, "PYTHONPROFILEIMPORTTIME": "1"}, workdir / f"{host}.log", cwd=ROOT)
    try:
        coord.wait_online(host, agent, 60)
    finally:
        agent.stop()
    return import_total_s(agent.log_path.read_text(errors="replace"))


def measure_cli_startup(workdir: Path, *, runs: int = 7, agent_runs: int = 3) -> dict[str, Any]:
    """Per command: import seconds and wall seconds of each run; the agent's start import seconds."""
    imports: dict[str, list[float]] = {name: [] for name in COMMANDS}
    walls: dict[str, list[float]] = {name: [] for name in WALL}
    cpus: dict[str, list[float]] = {name: [] for name in WALL}
    with LocalBroker(workdir / "broker") as broker:
        prefix = new_prefix("cli")
        coord = CoordinatorProc(workdir / "coord", broker.url, prefix, jobs_manifest(3))
        env = {**fleet_env(broker.url, prefix), "COLUMNS": "120"}
        env.pop("PYTHONPROFILEIMPORTTIME", None)
        try:
            job = str(coord.client.jobs()[0]["name"])
            for name in COMMANDS:  # a warm-up of each: the first run reads the files from disk
                run_once(name, env, profile=False, job=job)
            for _ in range(runs):
                for name in COMMANDS:
                    imports[name].append(run_once(name, env, profile=True, job=job)[2])
                for name in WALL:
                    wall, cpu, _ = run_once(name, env, profile=False, job=job)
                    walls[name].append(wall)
                    cpus[name].append(cpu)
            agent = [agent_start_import_s(workdir / "agents", coord, env, f"cli-start-{i}") for i in range(agent_runs)]
        finally:
            coord.stop()
    return {"runs": runs, "import_s": imports, "wall_s": walls, "cpu_s": cpus, "agent_start_import_s": agent,
            "python": sys.version.split()[0], "mqfleet": mqfleet_argv()[0]}


def cli_startup_rows(r: dict[str, Any]) -> list[Row]:
    base_import, base_wall = r["import_s"]["python -c pass"], r["wall_s"]["python -c pass"]
    rows = [Row("import time, `python -c pass` (the interpreter's own start, `site` included)", ms(median(base_import)),
                ms(p99(base_import)))]
    for name, values in r["import_s"].items():
        if name == "python -c pass":
            continue
        target = IMPORT_TARGET_S.get(name)
        rows.append(Row(f"import time, `mqfleet {name}`" + (" (live coordinator)" if name in ("health", "status", "jobs",
                                                                                              "show") else ""),
                        ms(median(values)), ms(p99(values)), f"python -c pass: {ms(median(base_import))}",
                        f"{median(values) / median(base_import):.1f}x", f"< {target * 1e3:.0f} ms" if target else "-",
                        verdict(median(values) < target if target else None)))
    agent = r["agent_start_import_s"]
    rows.append(Row("import time, `mqfleet agent` from start until online", ms(median(agent)), ms(p99(agent)),
                    f"python -c pass: {ms(median(base_import))}", f"{median(agent) / median(base_import):.1f}x"))
    for name in WALL[1:]:
        values = r["wall_s"][name]
        live = name == "health"
        rows.append(Row(f"wall time, `mqfleet {name}`" + (" against a live coordinator" if live else ""),
                        ms(median(values)), ms(p99(values)), f"python -c pass: {ms(median(base_wall))}",
                        f"{median(values) / median(base_wall):.1f}x",
                        f"< {HEALTH_WALL_TARGET_S * 1e3:.0f} ms" if live else "-",
                        verdict(median(values) < HEALTH_WALL_TARGET_S) if live else "-"))
    base_cpu = r["cpu_s"]["python -c pass"]
    for name in WALL[1:]:
        values = r["cpu_s"][name]
        rows.append(Row(f"CPU time (user+sys), `mqfleet {name}`", ms(median(values)), ms(p99(values)),
                        f"python -c pass: {ms(median(base_cpu))}", f"{median(values) / median(base_cpu):.1f}x"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        result = measure_cli_startup(Path(tmp), runs=args.runs)
    for row in cli_startup_rows(result):
        print(f"{row.figure}: {row.median} (p99 {row.p99}) vs {row.baseline} -> {row.ratio} [{row.target}: {row.verdict}]")
    if os.environ.get("BENCH_JSON"):
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
