"""`mqfleet agent selftest`: checks that a host is ready to train for the fleet, each failure with its fix.

Runs what the agent will run, the way the agent runs it: detects capability, connects to the broker
with the configured TLS files, asks the coordinator for `health`, looks for the training packages in
this interpreter, and trains a tiny xgboost model through `TrainerRun` (a subprocess with the job spec
and output folder in its environment). Installers run it before enabling the service, so a host with a
wrong broker URL or a missing package is caught at enrolment instead of in the service's journal.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from mqfleet import defaults
from mqfleet.errors import ConfigurationError, MqfleetError
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.wire.codec import WireMessage
from mqfleet.wire.requests import TrainerRef
from mqfleet.wire.topics import JsonObject

if TYPE_CHECKING:
    from mqfleet.client import FleetClient

logger = logging.getLogger(__name__)

#: Packages the built-in trainers need in the agent's interpreter.
TRAINING_PACKAGES = ("numpy", "xgboost", "torch")
#: Files the xgboost trainer must leave in its output folder.
TRAINER_OUTPUTS = ("model.xgb.json", "ckpt.json", "report.json")
#: Rows and boosting rounds of the tiny run: enough to exercise every step, over in seconds.
SELFTEST_ROWS = 200
SELFTEST_ROUNDS = 5
#: Longest the tiny run may take, data generation included, before it counts as failed.
TRAINER_TIMEOUT_S = 120.0


class Outcome(str, Enum):
    """How one check ended; only `fail` makes the selftest fail."""

    PASS = "pass"
    FAIL = "fail"
    INFO = "info"
    SKIP = "skip"


@dataclass(frozen=True)
class Check(WireMessage):
    """One line of the selftest table; `to_wire()` is its entry in `--json`'s `checks`."""

    name: str
    outcome: Outcome
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class SelftestConfig:
    """What the selftest checks against: the agent's own settings."""

    host_id: str
    #: the agent's broker options as given, not yet validated: a problem with them is a failed check, not an error
    broker: BrokerConfig
    prefix: str = defaults.TOPIC_PREFIX
    repo: Path | None = None
    slots: int = 1
    connect_wait_s: float = 5.0
    request_timeout_s: float = 5.0
    run_trainer: bool = True
    #: the agent's --trainer-user: the tiny training run runs as that user, as the agent's trainers would
    trainer_user: str = ""


def run_selftest(config: SelftestConfig) -> list[Check]:
    """Every check, in the order an operator would fix them."""
    checks = [check_capability(config)]
    checks += check_broker_and_coordinator(config)
    checks.append(check_packages())
    if config.trainer_user:
        checks.append(check_trainer_user(config))
    if config.run_trainer:
        checks.append(check_trainer_run(config))
    else:
        checks.append(Check("trainer run", Outcome.SKIP, "skipped (--no-train)"))
    return checks


def is_passing(checks: list[Check]) -> bool:
    """True when no check failed (informational and skipped ones do not count)."""
    return all(c.outcome is not Outcome.FAIL for c in checks)


def check_capability(config: SelftestConfig) -> Check:
    """The advert this host would publish; its CUDA state is informational."""
    from mqfleet.agent.capability import detect_advert

    try:
        advert = detect_advert(config.host_id, slots=config.slots, repo=(config.repo or Path.cwd()).resolve())
    except Exception as e:  # a detection bug must show up as a failed check, not a traceback
        logger.exception("capability detection failed")
        return Check("capability", Outcome.FAIL, f"detection failed: {type(e).__name__}: {e}",
                     "report this as a bug, with the output of `mqfleet capability --json`")
    gpus = ", ".join(f"{g.index}: {g.name} ({g.vram_gib} GiB)" for g in advert.gpus)
    cuda = f"CUDA yes ({gpus}; driver {advert.driver})" if advert.cuda else "CUDA no (CPU jobs only)"
    detail = (
        f"host {advert.host} on {advert.hostname}: {advert.os}, python {advert.python}, "
        f"{advert.cpu_cores} cores, {advert.ram_gib} GiB RAM, {config.slots} slot(s); {cuda}; "
        f"training repo commit {advert.git_commit or 'unknown'}"
    )
    return Check("capability", Outcome.PASS, detail)


def check_broker_and_coordinator(config: SelftestConfig) -> list[Check]:
    """Connect with the configured URL and TLS files, then ask the coordinator for `health`."""
    from mqfleet.client import FleetClient

    broker = config.broker
    url = broker.url
    skipped = Check("coordinator", Outcome.SKIP, "not asked: the broker was not reached")
    try:
        broker.validate()
        # A client id of its own: borrowing the host id would disconnect a running agent.
        client = FleetClient(broker, prefix=config.prefix, timeout_s=config.request_timeout_s,
                             client_id=f"selftest-{config.host_id}-{uuid.uuid4().hex[:6]}")
    except ConfigurationError as e:
        return [Check("broker", Outcome.FAIL, f"broker settings unusable: {e}",
                      "fix --broker/--ca/--cert/--key (or MQFLEET_BROKER/_CA/_CERT/_KEY in the agent's config)"), skipped]
    try:
        started = time.monotonic()
        try:
            client.connect(wait_s=config.connect_wait_s)
        except MqfleetError as e:
            cause = str(e).removeprefix(f"broker {url} not reached: ")
            return [Check("broker", Outcome.FAIL, f"broker not reachable at {url}: {cause}", _broker_fix(url)), skipped]
        tls = "mutual TLS" if broker.tls and broker.cert else "TLS" if broker.tls else "plain TCP"
        broker_check = Check("broker", Outcome.PASS,
                             f"connected to {url} ({tls}) in {(time.monotonic() - started) * 1000:.0f} ms")
        return [broker_check, _ask_health(client, url)]
    finally:
        client.close()


def _broker_fix(url: str) -> str:
    fix = f"check --broker ({url}) and that mosquitto runs there and is reachable from this host"
    if url.startswith("mqtts://"):
        fix += (
            "; for TLS errors check that --ca is the fleet CA, and that --cert/--key were issued for this "
            "host by `mqfleet broker issue --role agent` and are not revoked or expired"
        )
    return fix


def _ask_health(client: FleetClient, url: str) -> Check:
    try:
        health = client.health()
    except MqfleetError as e:
        return Check("coordinator", Outcome.FAIL, f"no health answer via {url}: {e}",
                     "start the coordinator (systemctl status mqfleet-coordinator on the Pi) and check that "
                     "--prefix matches its MQFLEET_PREFIX")
    problems = [name for name, ok in (("db_ok", health.db_ok), ("store_ok", health.store_ok)) if not ok]
    detail = (
        f"coordinator {health.version or '?'} answered: {health.hosts_online} host(s) online, "
        f"jobs {json.dumps(health.jobs_by_status, sort_keys=True)}"
    )
    if problems:
        return Check("coordinator", Outcome.FAIL, f"{detail}; unhealthy: {', '.join(problems)}",
                     "on the Pi: journalctl -u mqfleet-coordinator; check the database and the artifact store settings")
    return Check("coordinator", Outcome.PASS, detail)


def check_packages() -> Check:
    """numpy, xgboost and torch are installed in this interpreter (found, not imported: torch takes seconds)."""
    found, missing = [], []
    for name in TRAINING_PACKAGES:
        if importlib.util.find_spec(name) is None:
            missing.append(name)
            continue
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (no metadata)")
    detail = f"{sys.executable}: {', '.join(found) or 'none found'}"
    if missing:
        return Check("training packages", Outcome.FAIL, f"{detail}; missing: {', '.join(missing)}",
                     f"{sys.executable} -m pip install 'mqfleet[train]' (on Linux pin torch to the fleet's version)")
    return Check("training packages", Outcome.PASS, detail)


def check_trainer_user(config: SelftestConfig) -> Check:
    """The user trainers run as exists, is not root, and can read the repo and run this Python."""
    from mqfleet.agent.isolation import TrainerUser

    try:
        user = TrainerUser.resolve(config.trainer_user)
        user.check_access((config.repo or Path.cwd()).resolve(), sys.executable)
    except ConfigurationError as e:
        return Check("trainer user", Outcome.FAIL, str(e), "fix --trainer-user (MQFLEET_TRAINER_USER) as it says")
    return Check("trainer user", Outcome.PASS, f"trainers run as {user.name} (uid {user.uid}): they cannot read the "
                                               "agent's key file, environment or memory")


def check_trainer_run(config: SelftestConfig) -> Check:
    """Generate a tiny dataset and train the xgboost built-in on it exactly as the agent starts trainers."""
    from mqfleet.agent.command import build_trainer_argv, trainer_env
    from mqfleet.agent.isolation import TrainerUser, trainer_files
    from mqfleet.agent.runner import TrainerRun

    repo = (config.repo or Path.cwd()).resolve()
    if not repo.is_dir():
        return Check("trainer run", Outcome.FAIL, f"training repo {repo} is not a folder", "pass --repo DIR")
    fix = f"run it by hand to see why: {sys.executable} -m mqfleet.trainers.xgboost (with MQFLEET_SPEC/MQFLEET_OUT_DIR)"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mqfleet-selftest-") as tmp:
        tmp_dir = Path(tmp)
        dataset = tmp_dir / "data.csv"
        # The generator runs in a subprocess too: it needs numpy, which this process never imports.
        gen = subprocess.run(
            [sys.executable, "-m", "mqfleet.trainers.demo_data", str(dataset), "--rows", str(SELFTEST_ROWS)],
            capture_output=True, text=True, timeout=TRAINER_TIMEOUT_S, check=False,
        )
        if gen.returncode != 0:
            return Check("trainer run", Outcome.FAIL, f"demo dataset generation failed: {_last_line(gen.stdout + gen.stderr)}",
                         f"{sys.executable} -m pip install 'mqfleet[train]'")
        spec: JsonObject = {
            "id": "selftest", "name": "selftest", "model": "selftest", "mode": "selftest",
            "hyper": {"n_estimators": SELFTEST_ROUNDS, "max_depth": 3}, "seed": 0, "split_recipe": "random",
            "train_hosts": [], "dataset": str(dataset), "target": "failure", "group_column": "",
            "attempt": 1, "lease_id": "selftest",
        }
        spec_path = tmp_dir / "spec.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        out_dir = tmp_dir / "out"
        argv = build_trainer_argv(TrainerRef(name="selftest", argv=["{python}", "-m", "mqfleet.trainers.xgboost"]), spec)
        env = trainer_env(spec_path, out_dir, [])
        user = None
        if config.trainer_user:
            try:
                user = TrainerUser.resolve(config.trainer_user)
            except ConfigurationError as e:
                return Check("trainer run", Outcome.SKIP, f"not run: {e}")
            out_dir.mkdir()
            user.hand_over(tmp_dir)  # as the agent does with a job's folder
            env = user.env(env)
        run = TrainerRun(argv=argv, cwd=repo, env=env, out_dir=out_dir, user=user)
        try:
            run.start()
        except OSError as e:
            return Check("trainer run", Outcome.FAIL, f"cannot start {argv[0]}: {e}", fix)
        exit_code = run.wait(TRAINER_TIMEOUT_S)
        if exit_code is None:
            run.terminate()
            return Check("trainer run", Outcome.FAIL, f"no exit after {TRAINER_TIMEOUT_S:g}s; killed", fix)
        elapsed = time.monotonic() - started
        if exit_code != 0:
            return Check("trainer run", Outcome.FAIL, f"xgboost trainer exited {exit_code}: {_last_line(run.tail)}", fix)
        with trainer_files(user):
            missing = [name for name in TRAINER_OUTPUTS if not (out_dir / name).is_file()]
        if missing:
            return Check("trainer run", Outcome.FAIL, f"exited 0 but wrote no {', '.join(missing)}", fix)
        metrics = (run.latest_progress or {}).get("metrics")
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in list(metrics.items() if isinstance(metrics, dict) else ())[:3])
        return Check("trainer run", Outcome.PASS,
                     f"xgboost, {SELFTEST_ROWS} rows, {SELFTEST_ROUNDS} rounds in {elapsed:.1f}s in {repo}"
                     + (f" as {user.name}" if user else "")
                     + (f": {shown}" if shown else ""))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
