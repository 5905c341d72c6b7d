"""The soak's verdict: invariants checked against the coordinator's database, the store and the process table.

Everything here runs after the fleet has drained and the coordinator has stopped,
so the database is read as it was left, read-only. The verdict is a `SoakReport`
(its `to_json()` is the JSON report); `render()` prints it as rich tables.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mqfleet.coordinator.sql.connection import SqlConnection, one_row
from mqfleet.coordinator.sql.postgres import is_postgres_url, open_state
from mqfleet.coordinator.sql.sqliteconnection import SqliteConnection
from mqfleet.errors import MqfleetError
from mqfleet.soak.fleet import SoakConfig
from mqfleet.soak.injectors import FaultRecord, trainer_processes
from mqfleet.soak.observer import Observer
from mqfleet.store.bundle import hash_file, unpack_artifact
from mqfleet.wire.topics import JsonObject


@dataclass
class SoakReport:
    """The soak's verdict: whether each invariant held, the problems behind a broken one, and the figures."""

    invariants: dict[str, bool]
    problems: list[str]
    #: what was measured, by section (jobs, faults, timings, ...), as the JSON report shows it
    figures: JsonObject

    @property
    def ok(self) -> bool:
        return all(self.invariants.values())

    def to_json(self) -> JsonObject:
        return {**self.figures, "invariants": dict(self.invariants), "ok": self.ok, "problems": list(self.problems)}


@dataclass(frozen=True)
class Resumes:
    """How the attempts that were given a checkpoint started (coordinator/tables/checkpoints.py): resumed or fresh, and
    from which attempt and progress; `backwards` lists resumes that did not continue an earlier attempt."""

    later_attempts: int
    given_a_checkpoint: int
    resumed: int
    started_fresh: int
    fresh_reasons: list[str]
    resumed_from_progress: JsonObject
    examples: list[str]
    backwards: list[str]

    def to_json(self) -> JsonObject:
        return asdict(self)  # every field is JSON already


def summary(values: list[float]) -> JsonObject:
    """n, min, median, max of a list of seconds."""
    if not values:
        return {"n": 0, "min": None, "median": None, "max": None}
    return {"n": len(values), "min": round(min(values), 2), "median": round(statistics.median(values), 2),
            "max": round(max(values), 2)}


def _running_elsewhere(record: FaultRecord, observer: Observer) -> JsonObject:
    """kill -9 of a host -> its job running on another host. Reported, not bounded: with every host busy the
    job waits for a free slot, and the restarted host itself may take it back first."""
    seconds: list[float] = []
    anywhere: list[float] = []
    back_on_same_host = 0
    for job_id, host, t0 in record.deaths:
        ran = observer.first_run_elsewhere(job_id, host, t0)
        again = observer.first_seen(job_id, ("running",), t0)
        if again is not None:
            anywhere.append(again - t0)
        if ran is not None and (again is None or ran <= again):
            seconds.append(ran - t0)
        elif again is not None:
            back_on_same_host += 1
    return {**summary(seconds), "ran_again_on_the_restarted_host": back_on_same_host,
            "not_run_again": len(record.deaths) - len(anywhere), "running_again_anywhere": summary(anywhere)}


def _verify_artifacts(conn: SqlConnection, store: Path) -> tuple[int, list[str]]:
    verified, bad = 0, []
    rows = conn.execute("SELECT job_id, sha256, size, name FROM job_artifacts ORDER BY job_id").fetchall()
    with tempfile.TemporaryDirectory(prefix="soak-verify-") as scratch:
        for row in rows:
            path = store / "artifacts" / f"{row['sha256']}.tar.zst"
            try:
                digest, size = hash_file(path)
                dest = Path(scratch) / row["job_id"]
                unpack_artifact(path, dest, expected_sha256=row["sha256"])
                result = json.loads((dest / "result.json").read_text(encoding="utf-8"))
            except (OSError, ValueError, MqfleetError) as e:
                bad.append(f"{row['name']}: artifact unreadable: {e}")
                continue
            if (digest, size) != (row["sha256"], row["size"]):
                bad.append(f"{row['name']}: store holds {digest[:12]} ({size} B), recorded {row['sha256'][:12]} ({row['size']} B)")
            elif result.get("name") != row["name"]:
                bad.append(f"{row['name']}: its artifact belongs to {result.get('name')}")
            else:
                verified += 1
    return verified, bad


def _resumes(conn: SqlConnection) -> Resumes:
    rows = conn.execute(
        "SELECT j.name, s.attempt, s.resumed, s.from_attempt, s.from_progress, s.note FROM checkpoint_starts s "
        "JOIN jobs j ON j.id = s.job_id ORDER BY s.ts").fetchall()
    later = int(one_row(conn.execute("SELECT COUNT(*) FROM attempts WHERE number > 1"))[0])
    resumed = [r for r in rows if r["resumed"]]
    fractions = [float((json.loads(r["from_progress"]) or {}).get("progress") or 0.0) for r in resumed if r["from_progress"]]
    backwards = [f"{r['name']} attempt {r['attempt']} resumed from attempt {r['from_attempt']}" for r in resumed
                 if r["from_attempt"] is None or r["from_attempt"] >= r["attempt"]]
    examples = [f"{r['name']} attempt {r['attempt']} from attempt {r['from_attempt']} at "
                f"{100 * float((json.loads(r['from_progress']) or {}).get('progress') or 0):.0f}%"
                for r in resumed[:10] if r["from_progress"]]
    return Resumes(later_attempts=later, given_a_checkpoint=len(rows), resumed=len(resumed),
                   started_fresh=len(rows) - len(resumed), fresh_reasons=[r["note"] for r in rows if not r["resumed"]][:5],
                   resumed_from_progress=summary(fractions), examples=examples, backwards=backwards)


def check(config: SoakConfig, db: str, store: Path, agents_dir: Path, observer: Observer,
          record: FaultRecord) -> SoakReport:
    """Every invariant of the soak, with the figures behind it; `db` is the SQLite file or the PostgreSQL URL."""
    state = open_state(db) if is_postgres_url(db) else None
    conn = state.conn if state is not None else SqliteConnection.open_reader(Path(db), read_only=True)
    try:
        jobs = {r["id"]: dict(r) for r in conn.execute("SELECT id, name, status FROM jobs")}
        completions = Counter({r[0]: r[1] for r in conn.execute(
            "SELECT job_id, COUNT(*) FROM attempts WHERE outcome = 'completed' GROUP BY job_id")})
        artifact_rows = Counter({r[0]: r[1] for r in conn.execute("SELECT job_id, COUNT(*) FROM job_artifacts GROUP BY job_id")})
        completed_events_db = Counter({r[0]: r[1] for r in conn.execute(
            "SELECT job_id, COUNT(*) FROM events WHERE to_status = 'completed' GROUP BY job_id")})
        causes = {r[0]: r[1] for r in conn.execute("SELECT COALESCE(outcome, 'open'), COUNT(*) FROM attempts GROUP BY 1")}
        integrity = (state.integrity_check() if state is not None
                     else "\n".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check")))
        verified, bad_artifacts = _verify_artifacts(conn, store)
        resumes = _resumes(conn)
    finally:
        conn.close()
    by_status = Counter(j["status"] for j in jobs.values())
    lost = sorted(j["name"] for j in jobs.values() if j["status"] != "completed")
    duplicated = sorted(jobs[j]["name"] for j in jobs if completions[j] > 1 or completed_events_db[j] > 1
                        or observer.completed_events[j] > 1)
    with observer.lock:
        retained = {j: row.status for j, row in observer.states.items()}
    stale_states = sorted(jobs[j]["name"] for j in jobs if retained.get(j) != jobs[j]["status"])
    missed_events = sum(1 for j in jobs if jobs[j]["status"] == "completed" and observer.completed_events[j] == 0)
    orphans = [p.pid for p in trainer_processes(agents_dir)]
    bound = config.detection_bound_s
    over_bound = [round(s, 2) for s in record.death_to_pending_s if s > bound]
    invariants = {
        "every job completed (0 lost)": not lost,
        "each job completed exactly once (0 duplicated)": not duplicated and all(
            completions[j] == 1 and artifact_rows[j] == 1 for j in jobs if jobs[j]["status"] == "completed"),
        "every artifact verified in the store": verified == len(jobs) and not bad_artifacts,
        "no orphan trainer processes": not orphans and not record.orphans_after_agent_kill and not record.stale_trainers,
        "redelivered requests answered, not re-executed": record.duplicate_mismatches == 0,
        "stale-lease requests refused with lease_lost": record.stale_accepted == 0,
        "every cancel reached its trainer": record.cancels_undelivered == 0,
        "every hung trainer ended stalled": record.hangs_not_stalled == 0,
        f"host death to pending within {bound:g}s": not over_bound and record.deaths_not_pending == 0,
        "no attempt left open": causes.get("open", 0) == 0,
        "retained job states agree with the database": not stale_states,
        f"{'PostgreSQL' if state is not None else 'SQLite'} integrity_check ok": integrity == "ok",
        "every resumed attempt continued an earlier attempt's checkpoint": not resumes.backwards,
    }
    problems = list(record.problems)
    problems += [f"not completed: {n}" for n in lost[:20]] + [f"duplicated: {n}" for n in duplicated[:20]]
    problems += bad_artifacts[:20] + [f"stale retained state: {n}" for n in stale_states[:20]]
    problems += resumes.backwards[:20]
    if orphans:
        problems.append(f"orphan trainer pids: {orphans}")
    if over_bound:
        problems.append(f"host death to pending over {bound:g}s: {over_bound}")
    figures: JsonObject = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "jobs": {"total": len(jobs), "by_status": dict(by_status), "completed": by_status.get("completed", 0),
                 "lost": len(lost), "duplicated": len(duplicated)},
        "attempts_by_cause": causes,
        "faults_injected": dict(sorted(record.injected.items())),
        "faults_skipped": dict(sorted(record.skipped.items())),
        "host_death_to_pending_s": {**summary(record.death_to_pending_s), "bound": bound,
                                    "completed_before_expiry": record.deaths_completed_first},
        "host_death_to_running_elsewhere_s": _running_elsewhere(record, observer),
        "stall_to_pending_s": summary(record.stall_to_pending_s),
        "stalls_within_grace": {"kept": record.stalls_kept, "lost": record.stalls_lost},
        "hang_to_stalled_s": {**summary(record.hang_to_stalled_s), "hangs": record.hangs,
                              "not_stalled": record.hangs_not_stalled},
        "duplicates": {"sent": record.duplicates_sent, "same_reply": record.duplicates_same_reply,
                       "unanswered_in_flight": record.duplicates_unanswered, "mismatched": record.duplicate_mismatches},
        "stale_lease_requests": {"sent": record.stale_sent, "refused": record.stale_refused,
                                 "accepted": record.stale_accepted},
        "cancels": {"done": record.cancels, "refused_already_ended": record.cancels_refused,
                    "undelivered": record.cancels_undelivered, "to_trainer_gone_s": summary(record.cancel_to_trainer_gone_s),
                    "requeued": record.requeues, "requeue_failures": record.requeue_failures},
        "coordinator_restart_to_answer_s": summary(record.coordinator_restart_s),
        "artifacts": {"verified": verified, "bad": len(bad_artifacts)},
        "orphans": {"at_end": len(orphans), "after_agent_kill": record.orphans_after_agent_kill,
                    "stale_trainers": record.stale_trainers},
        "events": {"observed": observer.events_seen, "completed_twice": len(duplicated),
                   "completed_not_observed": missed_events},
        "sqlite_integrity_check": integrity,
        "checkpoint_resumes": resumes.to_json(),
        "fault_log": [entry.to_json() for entry in record.log],
    }
    return SoakReport(invariants=invariants, problems=problems, figures=figures)


def render(report: SoakReport, console: Console) -> None:
    """The report as tables: invariants first, then the figures."""
    inv = Table(title="mqfleet soak: invariants")
    inv.add_column("invariant")
    inv.add_column("holds")
    for name, held in report.invariants.items():
        inv.add_row(name, "[green]yes[/]" if held else "[red]NO[/]")
    console.print(inv)
    figures = Table(title="mqfleet soak: figures")
    figures.add_column("figure")
    figures.add_column("value")
    for key in ("jobs", "attempts_by_cause", "faults_injected", "faults_skipped", "host_death_to_pending_s",
                "host_death_to_running_elsewhere_s",
                "stall_to_pending_s", "stalls_within_grace", "hang_to_stalled_s", "duplicates", "stale_lease_requests", "cancels",
                "coordinator_restart_to_answer_s", "artifacts", "orphans", "events", "checkpoint_resumes",
                "sqlite_integrity_check", "timing"):
        if key in report.figures:
            value = report.figures[key]
            figures.add_row(key, json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value))
    console.print(figures)
    for problem in report.problems[:40]:
        console.print(f"[red]problem[/] {problem}")
    console.print("[green]soak passed[/]" if report.ok else "[red]soak FAILED[/]")
