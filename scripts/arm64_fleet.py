"""The inside of `scripts/arm64-check.sh`: run in the arm64 Debian system it built, under qemu user emulation.

`install` (Debian's python3, standard library only) makes the virtual environments and times each `pip install`
from the project's package index: the package with the `postgres` extra (binary wheels only), the 32-bit
Raspberry Pi OS line (`mqfleet 'psycopg>=3.1'`, Debian's libpq5, no psycopg-binary) and, when a baseline
wheel is given, the same package at another commit for the CLI's before/after. `fleet` (the main
environment's python) runs a broker, a coordinator and an agent: 20 jobs on SQLite, 5 on PostgreSQL with each
psycopg, checks /metrics, times the CLI, reads RSS. `report` prints what both wrote in results.json; `document`
(on the host) writes it into docs/BENCHMARKS.md, "Pi-class, emulated".
Every process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `install` runs under Debian's python3, before mqfleet is installed
    from mqfleet.local.process import Proc

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
#: The environments `install` makes: the postgres extra (binary wheels), the armv7l line (libpq5), the baseline.
MAIN_VENV, LIBPQ_VENV, BASELINE_VENV = Path("/opt/mqfleet"), Path("/opt/mqfleet-libpq"), Path("/opt/mqfleet-baseline")
SQLITE_JOBS, PG_JOBS = 20, 5
#: Runs of each timed CLI command; the median is reported.
CLI_RUNS = 5
#: Upper bounds of the waits, generous for emulation (tens of times slower than native).
JOBS_TIMEOUT_S, START_TIMEOUT_S = 900.0, 300.0


def save(**figures: Any) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(figures)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def say(text: str) -> None:
    print(f"[arm64] {text}", flush=True)


# --- install -----------------------------------------------------------------------------------------------


def pip_install(venv: Path, *requirements: str) -> float:
    """A fresh venv with `requirements` installed from wheels only (nothing built from source); the seconds it took."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    started = time.monotonic()
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--only-binary", ":all:", *requirements],
                   check=True)
    return time.monotonic() - started


def installed(venv: Path) -> dict[str, str]:
    out = subprocess.run([str(venv / "bin/python"), "-m", "pip", "list", "--format", "json"], check=True,
                         capture_output=True, text=True).stdout
    return {p["name"].lower(): p["version"] for p in json.loads(out)}


def psycopg_impl(venv: Path) -> str:
    """Which libpq binding psycopg loaded: `binary` (psycopg-binary's own libpq) or `python` (the system libpq5)."""
    return subprocess.run([str(venv / "bin/python"), "-c", "import psycopg; print(psycopg.pq.__impl__)"], check=True,
                          capture_output=True, text=True).stdout.strip()


def install(wheel: Path, baseline: Path | None) -> None:
    # pip's cache survives in the reused system: a second run downloads nothing, and says so in its figures
    cache = Path.home() / ".cache" / "pip"
    cache_mib = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / (1 << 20) if cache.exists() else 0.0
    say(f"pip install '{wheel.name}[postgres]' (wheels only; pip's cache holds {cache_mib:.0f} MiB) ...")
    main_s = pip_install(MAIN_VENV, f"{wheel}[postgres]")
    packages = installed(MAIN_VENV)
    say(f"  {main_s:.0f} s; psycopg {psycopg_impl(MAIN_VENV)}; {len(packages)} packages")
    say("the armv7l line: pip install mqfleet 'psycopg>=3.1' with Debian's libpq5, no psycopg-binary ...")
    libpq_s = pip_install(LIBPQ_VENV, str(wheel), "psycopg>=3.1")
    libpq_packages = installed(LIBPQ_VENV)
    if "psycopg-binary" in libpq_packages:
        raise SystemExit("psycopg-binary was installed by the armv7l line: it must work without it")
    impl = psycopg_impl(LIBPQ_VENV)
    if impl != "python":
        raise SystemExit(f"psycopg in {LIBPQ_VENV} uses the {impl} libpq binding, not the system's libpq5")
    say(f"  {libpq_s:.0f} s; psycopg {impl} (the system libpq5), psycopg-binary absent")
    baseline_s = None
    if baseline is not None:
        say(f"baseline for the CLI times: pip install {baseline.name} ...")
        baseline_s = pip_install(BASELINE_VENV, str(baseline))
    save(install_s=main_s, install_packages=packages, pip_cache_mib=cache_mib, libpq_install_s=libpq_s, libpq_impl=impl,
         libpq_has_binary="psycopg-binary" in libpq_packages, baseline_install_s=baseline_s,
         machine=os.uname().machine, python=sys.version.split()[0])


# --- fleet -------------------------------------------------------------------------------------------------


def manifest(n_jobs: int, tag: str, trainer: Path) -> str:
    tags = ", ".join(f'"{tag}-{i}"' for i in range(n_jobs))
    return f"""\
[fleet]
max_attempts = 3
lease_s = 120
grace_s = 30

[trainers.ok]
command = ["{{python}}", "{trainer}"]
[trainers.ok.hyper]
sleep = {{ type = "float", default = 0.0, min = 0.0 }}
size_kib = {{ type = "int", default = 1, min = 0 }}
tag = {{ type = "str", default = "" }}

[[sweeps]]
name = "{tag}"
model = "ok"
mode = "arm64"
hyper = {{ tag = [{tags}] }}
"""


@contextmanager
def started(name: str, argv: list[str], env: dict[str, str], log: Path) -> Iterator[Proc]:
    """The project's Proc (stopped by its PID, SIGTERM then SIGKILL) for the length of a `with`."""
    from mqfleet.local.process import Proc

    proc = Proc(name, argv, env, log, cwd=log.parent)
    try:
        yield proc
    finally:
        proc.stop(timeout_s=60)


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, *procs: Proc) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise SystemExit(f"{proc.name} exited with {proc.popen.returncode} waiting for {what}:\n{proc.log_tail()}")
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout_s:g} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_jobs(work: Path, *, python: Path, db: str, n_jobs: int, broker_url: str, label: str,
             db_env: dict[str, str] | None = None) -> dict[str, Any]:
    """A coordinator (with /metrics) and an agent of `python`'s environment run `n_jobs`; figures of the run."""
    import psutil

    from mqfleet.client import FleetClient
    from mqfleet.errors import MqfleetError
    from mqfleet.mqtt.config import BrokerConfig

    work.mkdir(parents=True, exist_ok=True)
    (work / "fleet.toml").write_text(manifest(n_jobs, label, HERE / "ok.py"))
    prefix, token, metrics_port = f"arm64-{label}", "arm64-check-token", free_port()
    env = {**os.environ, "MQFLEET_BROKER": broker_url, "MQFLEET_PREFIX": prefix, "MQFLEET_OPERATOR_TOKEN": token,
           "PYTHONUNBUFFERED": "1", **(db_env or {})}
    mqfleet = [str(python), "-m", "mqfleet"]
    client = FleetClient(BrokerConfig(url=broker_url), prefix=prefix, token=token, timeout_s=10.0)

    def answers() -> bool:
        try:
            client.health()
            return True
        except MqfleetError:
            return False

    def completed() -> list[dict[str, Any]] | None:
        try:
            jobs = client.jobs()
        except MqfleetError:
            return None
        return jobs if len(jobs) == n_jobs and all(j["status"] == "completed" for j in jobs) else None

    began = time.monotonic()
    with started("coordinator", [*mqfleet, "coordinator", "--manifest", str(work / "fleet.toml"), "--db", db,
                  "--store", (work / "artifacts").as_uri(), "--metrics-port", str(metrics_port)], env,
                 work / "coordinator.log") as coordinator, \
         started("agent", [*mqfleet, "agent", "--host-id", f"pi-{label}", "--slots", "2", "--work-dir", str(work / "agent"),
                  "--repo", str(HERE)], env, work / "agent.log") as agent:
        try:
            wait_until(answers, START_TIMEOUT_S, "the coordinator to answer", coordinator, agent)
            answered_s = time.monotonic() - began
            jobs = wait_until(completed, JOBS_TIMEOUT_S, f"{n_jobs} jobs to complete", coordinator, agent)
            jobs_s = time.monotonic() - began - answered_s
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as response:
                metrics = response.read().decode()
            done = next((line for line in metrics.splitlines() if line.startswith('mqfleet_jobs{status="completed"}')), "")
            if not done or float(done.split()[-1]) != n_jobs:
                raise SystemExit(f"/metrics does not count {n_jobs} completed jobs: {done!r}")
            # Under qemu a process's RSS is the emulator's with the guest inside it: an idle interpreter of the
            # same environment, measured now, is the floor each figure is read against.
            with started("idle python", [str(python), "-c", "import time; time.sleep(600)"], env,
                         work / "idle.log") as idle:
                time.sleep(3)
                rss = {name: psutil.Process(p.pid).memory_info().rss / (1 << 20)
                       for name, p in (("coordinator", coordinator), ("agent", agent), ("idle python", idle))}
            figures = {"jobs": n_jobs, "coordinator_answers_s": answered_s, "jobs_s": jobs_s,
                       "coordinator_rss_mib": rss["coordinator"], "agent_rss_mib": rss["agent"],
                       "idle_python_rss_mib": rss["idle python"],
                       "metrics_completed": float(done.split()[-1]), "first_job": jobs[0]["name"]}
            if label == "sqlite":
                figures["cli"] = cli_times(env, jobs[0]["name"])
            return figures
        finally:
            client.close()


def cli_times(env: dict[str, str], job: str) -> dict[str, dict[str, float]]:
    """Median wall seconds of each command, in each environment installed, against the live coordinator."""
    commands = {"python -c pass": None, "mqfleet --version": ["--version"], "mqfleet health --help": ["health", "--help"],
                "mqfleet health": ["health"], "mqfleet status": ["status"], "mqfleet jobs": ["jobs"],
                "mqfleet show": ["show", job]}
    venvs = {"this tree": MAIN_VENV, **({"baseline": BASELINE_VENV} if BASELINE_VENV.exists() else {})}
    samples: dict[str, dict[str, list[float]]] = {v: {c: [] for c in commands} for v in venvs}
    for _ in range(CLI_RUNS):  # interleaved, so a slow spell of the shared machine hits every command alike
        for venv_name, venv in venvs.items():
            for name, args in commands.items():
                argv = [str(venv / "bin/python"), "-c", "pass"] if args is None else [str(venv / "bin/mqfleet"), *args]
                started_at = time.monotonic()
                result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
                samples[venv_name][name].append(time.monotonic() - started_at)
                if result.returncode != 0:
                    raise SystemExit(f"{' '.join(argv)} exited {result.returncode}: {result.stderr[-2000:]}")
    return {v: {c: statistics.median(s) for c, s in by.items()} for v, by in samples.items()}


def fleet(work: Path) -> None:
    from mqfleet.local.broker import LocalBroker
    from mqfleet.local.postgres import LocalPostgres

    say(f"broker, coordinator, agent and {SQLITE_JOBS} jobs on SQLite ...")
    with LocalBroker(work / "broker") as broker:
        sqlite = run_jobs(work / "sqlite", python=MAIN_VENV / "bin/python", db=str(work / "sqlite" / "fleet.db"),
                          n_jobs=SQLITE_JOBS, broker_url=broker.url, label="sqlite")
        save(sqlite=sqlite)
        say(f"  {SQLITE_JOBS} jobs completed in {sqlite['jobs_s']:.1f} s; coordinator RSS "
            f"{sqlite['coordinator_rss_mib']:.1f} MiB, agent {sqlite['agent_rss_mib']:.1f} MiB")
        say("PostgreSQL (Debian's postgresql-15, a throwaway cluster) ...")
        postgres = LocalPostgres(work / "postgres").start(timeout_s=START_TIMEOUT_S)
        try:
            db_env = {"MQFLEET_DB_PASSWORD": postgres.password}
            for label, venv in (("pg-binary", MAIN_VENV), ("pg-libpq", LIBPQ_VENV)):
                name = label.replace("-", "_")
                url = postgres.create_database(name).replace(f":{postgres.password}@", "@")  # the password by env
                say(f"  {PG_JOBS} jobs on PostgreSQL through {venv} ...")
                figures = run_jobs(work / label, python=venv / "bin/python", db=url, n_jobs=PG_JOBS,
                                   broker_url=broker.url, label=label, db_env=db_env)
                save(**{name: figures})
                say(f"  {PG_JOBS} jobs completed in {figures['jobs_s']:.1f} s")
        finally:
            postgres.stop()


# --- report ------------------------------------------------------------------------------------------------


def report() -> None:
    r = json.loads(RESULTS.read_text())
    lines = [f"arm64 check ({r.get('machine')}, Python {r.get('python')}, qemu user emulation)",
             f"install: mqfleet[postgres] {r['install_s']:.0f} s ({len(r['install_packages'])} packages, wheels only); "
             f"armv7l line (mqfleet 'psycopg>=3.1' + libpq5) {r['libpq_install_s']:.0f} s, psycopg {r['libpq_impl']}, "
             f"psycopg-binary {'present' if r['libpq_has_binary'] else 'absent'}"]
    for key, what in (("sqlite", "SQLite"), ("pg_binary", "PostgreSQL, psycopg[binary]"),
                      ("pg_libpq", "PostgreSQL, psycopg + libpq5")):
        if key in r:
            f = r[key]
            lines.append(f"{what}: {f['jobs']} jobs completed in {f['jobs_s']:.1f} s (coordinator answered after "
                         f"{f['coordinator_answers_s']:.1f} s); /metrics completed={f['metrics_completed']:.0f}; "
                         f"RSS (qemu + guest) coordinator {f['coordinator_rss_mib']:.1f} MiB, agent "
                         f"{f['agent_rss_mib']:.1f} MiB, an idle python {f['idle_python_rss_mib']:.1f} MiB")
    cli = r.get("sqlite", {}).get("cli", {})
    order = ("python -c pass", "mqfleet --version", "mqfleet health --help", "mqfleet health", "mqfleet status",
             "mqfleet jobs", "mqfleet show")
    for venv, times in cli.items():
        lines.append(f"CLI wall ({venv}, median of {CLI_RUNS}): " + ", ".join(f"{c} {times[c]:.2f} s" for c in order))
    if "this tree" in cli and "baseline" in cli:
        mine, base = cli["this tree"], cli["baseline"]
        lines.append("CLI this tree / baseline: " + ", ".join(f"{c} {mine[c] / base[c]:.2f}x" for c in order[1:]))
    print("\n".join(lines), flush=True)


def markdown(r: dict[str, Any], facts: dict[str, str]) -> str:
    """The docs/BENCHMARKS.md section of a run: each figure with its same-run baseline."""
    cached = r.get("pip_cache_mib")
    pip_cache = ("-" if cached is None else f"pip's cache before: {cached:.0f} MiB (an earlier run's downloads)" if cached
                 else "an empty pip cache: every wheel downloaded")
    out = [f"Produced by `make arm64-check` (scripts/arm64-check.sh, docs/OPERATIONS.md \"The arm64 check\"): "
           f"Debian 12 {r['machine']} with Python {r['python']} under qemu user emulation ({facts.get('qemu', '?')}) on "
           f"{facts.get('host', '?')}; git {facts.get('commit', '?')}, {facts.get('when', '?')}, "
           f"{facts.get('elapsed', '?')} in all, load average at start / end {facts.get('load', '?')}; the arm64 system "
           f"{facts.get('system', '?')}. Emulation runs Python about ten times slower than this machine runs it natively "
           "(compare `python -c pass` below with docs/BENCHMARKS.md, \"CLI start-up\"), and a real Pi's absolute figures "
           "differ again: read each figure against its baseline from the same run. RSS under qemu is the emulator's "
           "with the guest inside, so an idle interpreter of the same environment is the floor it is read against.", "",
           "| figure | value | baseline (same run) | ratio |", "|---|---|---|---|",
           f"| `pip install 'mqfleet[postgres]'`, wheels only (`--only-binary :all:`), {len(r['install_packages'])} "
           f"packages | {r['install_s']:.0f} s | {pip_cache} | - |",
           f"| the 32-bit line `pip install mqfleet 'psycopg>=3.1'` with Debian's libpq5 | {r['libpq_install_s']:.0f} s | "
           f"psycopg loads `{r['libpq_impl']}` (the system libpq), psycopg-binary "
           f"{'present' if r['libpq_has_binary'] else 'absent'} | - |"]
    for key, what in (("sqlite", "SQLite"), ("pg_binary", "PostgreSQL through psycopg[binary]"),
                      ("pg_libpq", "PostgreSQL through psycopg + libpq5 (the 32-bit line)")):
        f = r.get(key)
        if not f:
            continue
        out += [f"| {f['jobs']} jobs on {what}: coordinator + agent (2 slots), all completed | {f['jobs_s']:.1f} s | "
                f"/metrics counts {f['metrics_completed']:.0f} completed | - |",
                f"| coordinator start until it answers `health`, {what} | {f['coordinator_answers_s']:.1f} s | - | - |",
                f"| RSS of the coordinator / the agent after the jobs, {what} | {f['coordinator_rss_mib']:.0f} / "
                f"{f['agent_rss_mib']:.0f} MiB | an idle python: {f['idle_python_rss_mib']:.0f} MiB | "
                f"{f['coordinator_rss_mib'] / f['idle_python_rss_mib']:.2f}x / "
                f"{f['agent_rss_mib'] / f['idle_python_rss_mib']:.2f}x |"]
    cli = r.get("sqlite", {}).get("cli", {})
    mine, base = cli.get("this tree", {}), cli.get("baseline")
    for command in ("mqfleet --version", "mqfleet health --help", "mqfleet health", "mqfleet status", "mqfleet jobs",
                    "mqfleet show"):
        if command not in mine:
            continue
        against = f"python -c pass: {mine['python -c pass']:.2f} s"
        ratio = f"{mine[command] / mine['python -c pass']:.1f}x"
        if base:
            against += f"; {facts.get('baseline', 'baseline')}: {base[command]:.2f} s"
            ratio += f"; {mine[command] / base[command]:.2f}x"
        out.append(f"| `{command}` wall time (median of {CLI_RUNS}), live coordinator | {mine[command]:.2f} s | "
                   f"{against} | {ratio} |")
    return "\n".join(out) + "\n"


def document(results: Path, doc: Path, facts: list[str]) -> None:
    """Put the run's section into docs/BENCHMARKS.md in place of the last one (on the host, from the repository)."""
    from bench.common import PI_SECTION, replace_sections

    section = markdown(json.loads(results.read_text()), dict(f.split("=", 1) for f in facts))
    old = doc.read_text() if doc.exists() else "# mqfleet benchmarks\n"
    doc.write_text(replace_sections(old, f"\n## {PI_SECTION}\n\n{section}", [PI_SECTION], ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("install")
    p.add_argument("wheel", type=Path)
    p.add_argument("--baseline", type=Path, default=None)
    sub.add_parser("fleet").add_argument("work", type=Path)
    sub.add_parser("report")
    p = sub.add_parser("document")
    p.add_argument("results", type=Path)
    p.add_argument("doc", type=Path)
    p.add_argument("--fact", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    if args.step == "install":
        install(args.wheel, args.baseline)
    elif args.step == "fleet":
        fleet(args.work)
    elif args.step == "document":
        document(args.results, args.doc, args.fact)
    else:
        report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
