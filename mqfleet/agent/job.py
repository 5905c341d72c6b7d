"""One claimed job on an agent: run the trainer, keep the lease, store the artifact, report the end.

A JobRun owns two threads: its own, which runs the trainer and then packs,
uploads and completes; and a renewer, which keeps the lease alive for the whole
job (packing and uploading a big artifact can outlast a lease) and stops the
trainer the moment the coordinator says the lease is gone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mqfleet import defaults
from mqfleet.agent.checkpoint import CheckpointPlan, CheckpointSync
from mqfleet.agent.command import build_trainer_argv, trainer_env
from mqfleet.agent.isolation import JOB_DIR_MODE, TrainerUser, for_agent, trainer_files
from mqfleet.agent.limits import LimitSettings
from mqfleet.agent.outcome import Ending, limit_of, missing_message, missing_outputs
from mqfleet.agent.progress import PendingReports
from mqfleet.agent.runner import TrainerRun
from mqfleet.errors import (
    BadRequestError,
    BrokerError,
    LeaseLostError,
    MqfleetError,
    RemoteError,
    RequestTimeoutError,
    UnavailableError,
)
from mqfleet.lifecycle import Cause
from mqfleet.store.bundle import pack_artifact
from mqfleet.store.transfer import upload_to_url
from mqfleet.wire import verbs
from mqfleet.wire.reports import ProgressReport, Usage
from mqfleet.wire.requests import (
    CompleteRequest,
    FailRequest,
    Grant,
    RenewRequest,
    UploadMethod,
    UploadUrlRequest,
)
from mqfleet.wire.topics import JsonObject
from mqfleet.wire.verbs import Rep, Req, VerbSpec

logger = logging.getLogger(__name__)

#: Longest wait for one renewal's reply. A renewal sent while the coordinator or the broker was away is
#: never answered; waiting the full request timeout for it would hold back the renewal a reconnect asks
#: for, and a lease the will shortened to the grace would expire although the host came back in time.
RENEW_TIMEOUT_S = 3.0
#: How often the job thread looks at the clock while its trainer runs, for timeout_s and stall_s.
LIMIT_CHECK_S = 0.25
#: A look that comes this much later than due means the agent itself was paused (SIGSTOP, starved).
AGENT_PAUSE_S = 1.0


@dataclass(frozen=True)
class JobSettings:
    """The agent's settings a job run needs."""

    work_dir: Path
    repo: Path
    python: str
    kill_grace_s: float
    request_timeout_s: float
    #: the trainer's environment before the job's own variables (docs/INTERNALS.md, "Trainers")
    base_env: Mapping[str, str]
    #: the user trainers run as, when not the agent's own (docs/SECURITY.md, "Trainers")
    trainer_user: TrainerUser | None = None
    #: the owner policy's priority and memory cap for trainers (agent/limits.py)
    limits: LimitSettings = LimitSettings()


class JobHost(Protocol):
    """What a job run needs of its agent: requests on its lease, its output lines sent on, and word
    when it ends. The agent implements it; a job run never sees the rest of the agent."""

    def request(self, verb: VerbSpec[Req, Rep], message: Req, *, attempts: int = 3,
                timeout_s: float | None = None) -> Rep: ...
    def publish_log(self, job_id: str, line: str, *, attempt: int = 0) -> None: ...
    def flush_log(self, job_id: str) -> None: ...
    def job_finished(self, job: JobRun) -> None: ...


class JobRun:
    """A claimed job from grant to completion or failure."""

    def __init__(self, host: JobHost, settings: JobSettings, grant: Grant) -> None:
        self.host = host
        self.settings = settings
        self.grant = grant
        self.job_id = grant.job.id
        name = grant.spec.get("name", self.job_id[:12])
        self.name = name if isinstance(name, str) else self.job_id[:12]
        self.lease_id = grant.lease_id
        self.lease_s = grant.lease_s or defaults.LEASE_S
        self.dir = settings.work_dir / "jobs" / f"{self.job_id[:16]}-{grant.attempt}"
        self.out_dir = self.dir / "out"
        self.trainer: TrainerRun | None = None
        self.checkpoint: CheckpointSync | None = None
        self.ending: Ending | None = None
        #: what the ending was about, for the attempt's error ("no end after timeout_s = 5 s ...")
        self.ending_detail = ""
        self.timeout_s = limit_of(grant.spec, "timeout_s")
        self.stall_s = limit_of(grant.spec, "stall_s")
        self.done = threading.Event()
        self._stop_renewing = threading.Event()
        self._renew_now = threading.Event()
        self._ending_lock = threading.Lock()
        self._log_seq = 0
        self.attempt = grant.attempt
        self._reports = PendingReports()
        self._thread = threading.Thread(target=self._run, name=f"job-{self.job_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    # --- signals from outside -----------------------------------------------------------

    def end(self, ending: Ending, detail: str = "", *, grace_s: float | None = None) -> None:
        """Stop the trainer for `ending` (first reason wins) within `grace_s` (the kill grace); the job thread reports it."""
        with self._ending_lock:
            if self.ending is not None:
                return
            self.ending = ending
            self.ending_detail = detail
        logger.warning("job %s: stopping trainer (%s%s)", self.name, ending.value, f": {detail}" if detail else "")
        trainer = self.trainer
        if trainer is not None:
            grace = self.settings.kill_grace_s if grace_s is None else grace_s
            threading.Thread(target=trainer.terminate, args=(grace,), daemon=True).start()

    def renew_now(self) -> None:
        """Renew at once, e.g. after a reconnect, when the coordinator may have shortened the lease."""
        self._renew_now.set()

    # --- the job thread -------------------------------------------------------------------

    def _run(self) -> None:
        renewer = threading.Thread(target=self._renew_loop, name=f"renew-{self.job_id[:8]}", daemon=True)
        try:
            self._make_dirs()
            exit_code = self._train(renewer)
            limits = self.trainer.limits if self.trainer is not None else None
            if self.ending is None and limits is not None and (oom := limits.out_of_memory(exit_code)):
                self.end(Ending.OOM, oom)  # the memory limit ended it (agent/limits.py)
            cause = self.ending.cause if self.ending is not None else None
            if self.checkpoint is not None:
                # Before the hand-back: the next attempt, on any host, starts from what this one saved.
                completing = self.ending is None and exit_code == 0
                self.checkpoint.stop(final_sync=not completing and self.ending is not Ending.CANCELLED)
                self._flush_log()  # what the sync said belongs in the job's log before the hand-back
            if self.ending is None:
                with self._files():
                    missing = missing_outputs(self.out_dir, self.grant.trainer.outputs) if exit_code == 0 else []
                if exit_code != 0 or missing:
                    self._fail(Cause.APP, exit_code, missing_message(missing) if missing else f"trainer exited with code {exit_code}")
                else:
                    self._store_and_complete()
            elif cause is not None:
                self._fail(cause, exit_code, self.ending_detail or cause.value)
            else:
                logger.info("job %s: ended (%s); nothing to report", self.name, self.ending.value)
        except Exception as e:  # the agent must outlive any one job
            logger.exception("job %s: failed on the agent", self.name)
            if self.ending is None:
                self._fail(Cause.APP, None, f"agent error: {type(e).__name__}: {e}")
        finally:
            if self.checkpoint is not None:
                self.checkpoint.stop(final_sync=False)
            self._stop_renewing.set()
            self._renew_now.set()
            if renewer.is_alive():
                renewer.join(timeout=5)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.done.set()
            self.host.job_finished(self)

    def _files(self) -> AbstractContextManager[None]:
        """File access in the job's folder once the trainer has it: with the trainer user's rights when trainers
        run as another user, so nothing a trainer puts there (a symlink, a swapped file) makes the agent reach
        further than the trainer can."""
        return trainer_files(self.settings.trainer_user)

    def _make_dirs(self) -> None:
        if self.settings.trainer_user is not None:
            # the agent's own until the trainer starts (_train hands it over): nobody else can put anything in it
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(mode=JOB_DIR_MODE)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _train(self, renewer: threading.Thread) -> int:
        spec: JsonObject = {**self.grant.spec, "attempt": self.grant.attempt, "lease_id": self.lease_id}
        spec_path = self.dir / "spec.json"
        spec_path.write_text(json.dumps(spec, sort_keys=True, indent=2))
        cfg = self.settings
        argv = build_trainer_argv(self.grant.trainer, spec, python=cfg.python)
        env = trainer_env(spec_path, self.out_dir, list(self.grant.gpus), dict(cfg.base_env))
        if cfg.trainer_user is not None:
            env = cfg.trainer_user.env(env)
        env.pop(defaults.ENV_CHECKPOINT_DIR, None)  # a non-resumable job gets no folder, not the agent's own
        renewer.start()  # before a restore, which may take a while for a big checkpoint
        plan = CheckpointPlan.from_grant(self.grant)
        if plan is not None:
            self.checkpoint = CheckpointSync(
                plan=plan, job_id=self.job_id, lease_id=self.lease_id, folder=self.dir / "checkpoint", scratch=self.dir,
                request=self._checkpoint_request, log=self._on_line, progress=lambda: self.trainer.latest_progress if self.trainer else None,
                name=self.name, user=cfg.trainer_user,
            )
            self.checkpoint.restore()
            env[defaults.ENV_CHECKPOINT_DIR] = str(self.checkpoint.folder)
        if cfg.trainer_user is not None:
            cfg.trainer_user.hand_over(self.dir)
        self.trainer = TrainerRun(
            argv=argv,
            cwd=cfg.repo,
            env=env,
            out_dir=self.out_dir,
            # The whole output stays on this host until the job ends, whatever the coordinator keeps.
            log_path=self.dir / "trainer.log",
            on_line=self._on_line,
            on_progress=self._reports.add,
            pidfile_dir=cfg.work_dir / "pids",
            user=cfg.trainer_user,
            limits=cfg.limits.for_job(limit_of(self.grant.spec, "max_memory_gib"), self.job_id[:12]),
        )
        logger.info("job %s: attempt %s starting %s", self.name, self.grant.attempt, " ".join(argv))
        self.trainer.start()
        if self.checkpoint is not None:
            self.checkpoint.start()
        if self.ending is not None:  # cancelled between claim and start
            self.trainer.terminate(cfg.kill_grace_s)
        exit_code = self._wait_within_limits(self.trainer)
        self._flush_log()
        logger.info("job %s: trainer exited with code %s", self.name, exit_code)
        return int(exit_code if exit_code is not None else -1)

    def _wait_within_limits(self, trainer: TrainerRun) -> int | None:
        """Wait for the trainer to end, stopping it (SIGTERM, kill grace, whole tree) once it runs past
        timeout_s or stays silent for stall_s; its exit code."""
        if self.timeout_s is None and self.stall_s is None:
            return trainer.wait()
        started = last_look = heard_floor = time.monotonic()
        while True:
            exit_code = trainer.wait(LIMIT_CHECK_S)
            if exit_code is not None or trainer.poll() is not None:
                return exit_code
            if self.ending is not None:
                continue  # already being stopped; the wait above ends when the tree is gone
            now = time.monotonic()
            if now - last_look > LIMIT_CHECK_S + AGENT_PAUSE_S:
                # This agent was stopped or starved, not the trainer: its lines wait unread in the pipe,
                # so silence counts again from now (a SIGSTOPped agent must not kill a healthy trainer).
                heard_floor = now
            last_look = now
            ran_s = now - started
            silent_s = now - max(trainer.last_output_monotonic or started, heard_floor)
            if self.timeout_s is not None and ran_s >= self.timeout_s:
                self.end(Ending.TIMEOUT, f"timeout: still running {ran_s:.1f} s after its start (timeout_s = {self.timeout_s:g}); stopped")
            elif self.stall_s is not None and silent_s >= self.stall_s:
                self.end(
                    Ending.STALLED,
                    f"stalled: no output line or progress for {silent_s:.0f} s (stall_s = {self.stall_s:g}) "
                    f"after running {ran_s:.0f} s; stopped",
                )
            else:
                continue
            # end() stops the tree on a thread of its own; the loop waits until it is gone

    def _store_and_complete(self) -> None:
        bundle_path = self.dir / "artifact.tar.zst"
        with self._files():  # the trainer's files, read with its rights
            sha256, size = pack_artifact(self.out_dir, bundle_path)
        logger.info("job %s: packed %d bytes, sha256 %s", self.name, size, sha256[:12])
        upload = self._request(verbs.UPLOAD_URL, UploadUrlRequest(self.job_id, self.lease_id, sha256, size))
        if upload is None:
            return
        if not upload.exists:
            if not upload.url:
                raise BadRequestError("the upload_url reply has neither exists nor a url")
            with self._files(), for_agent(self.settings.trainer_user, bundle_path) as bundle:
                upload_to_url(upload.url, bundle, method=upload.method or UploadMethod.PUT, fields=upload.fields)
        else:
            logger.info("job %s: artifact %s already stored; no upload", self.name, sha256[:12])
        progress = self.trainer.latest_progress if self.trainer else None
        metrics = (progress or {}).get("metrics")
        usage, reports = self._ending_fields()
        done = self._request(verbs.COMPLETE, CompleteRequest(
            self.job_id, self.lease_id, sha256, size, metrics=metrics if isinstance(metrics, dict) else {},
            output_tail=self.trainer.tail if self.trainer else "", usage=usage, progress_reports=reports,
        ))
        if done is not None:
            logger.info("job %s: completed", self.name)

    def _fail(self, cause: Cause, exit_code: int | None, message: str) -> None:
        tail = self.trainer.tail if self.trainer else ""
        usage, reports = self._ending_fields()
        self._request(verbs.FAIL, FailRequest(self.job_id, self.lease_id, cause, exit_code=exit_code, output_tail=tail,
                                             error=message, usage=usage, progress_reports=reports))

    def _ending_fields(self) -> tuple[Usage | None, list[ProgressReport]]:
        """What complete and fail carry besides the outcome: the usage and the last progress reports."""
        return (self.trainer.usage() if self.trainer else None), self._reports.to_send()

    def _request(self, verb: VerbSpec[Req, Rep], message: Req) -> Rep | None:
        """An agent request on this lease; None when the coordinator refused it or stayed away (logged).

        Retries (same request id, so never run twice) for as long as the lease would last: a
        coordinator restart must not cost a finished job. Past that the lease has expired anyway.
        """
        attempts = max(3, math.ceil(self.lease_s / self.settings.request_timeout_s))
        try:
            return self.host.request(verb, message, attempts=attempts)
        except BrokerError as e:
            logger.warning("job %s: %s not answered (%s); the lease will expire and the job run again", self.name, verb.verb.value, e)
            return None
        except RemoteError as e:
            if e.is_a(LeaseLostError):
                self.end(Ending.LEASE_LOST)
                logger.warning("job %s: %s refused, the lease is no longer ours", self.name, verb.verb.value)
                return None
            if e.is_a(UnavailableError):
                # Not refused: the coordinator's database stayed away past our retries; the lease expires
                # and the job runs again, which is what a coordinator gone for that long means anyway.
                logger.warning("job %s: %s not handled, coordinator unavailable for the whole lease: %s", self.name,
                               verb.verb.value, e)
                return None
            if verb is verbs.COMPLETE:
                # The artifact was refused (e.g. its bytes did not match): the attempt failed.
                self._fail(Cause.APP, 0, f"artifact refused by the coordinator: {e}")
                return None
            if isinstance(message, FailRequest) and message.cause is Cause.PREEMPTED and e.code == "bad_request":
                # a coordinator older than `preempted`: its `shutdown` is the same free hand-back
                return self._request(verb, dataclasses.replace(message, cause=Cause.SHUTDOWN))
            logger.warning("job %s: %s refused: %s", self.name, verb.verb.value, e)
            return None

    def _checkpoint_request(self, verb: VerbSpec[Req, Rep], message: Req, *, timeout_s: float | None = None) -> Rep:
        """A checkpoint verb on this lease; its failures are the sync's to log, never the attempt's end."""
        return self.host.request(verb, message, attempts=2, timeout_s=timeout_s)

    # --- the renewer ----------------------------------------------------------------------

    def _renew_loop(self) -> None:
        interval = max(0.2, self.lease_s * defaults.RENEW_FRACTION)
        timeout_s = min(self.settings.request_timeout_s, RENEW_TIMEOUT_S, max(1.0, interval / 2))
        next_ts = 0.0  # renew at once: moves the job to running
        while not self._stop_renewing.is_set():
            wait = next_ts - time.monotonic()
            if wait > 0:
                self._renew_now.wait(wait)
                self._renew_now.clear()
                if self._stop_renewing.is_set():
                    return
            progress = self.trainer.latest_progress if self.trainer else None
            reports = self._reports.to_send()
            try:
                request = RenewRequest(self.job_id, self.lease_id, progress=progress, progress_reports=reports)
                self.host.request(verbs.RENEW, request, attempts=1, timeout_s=timeout_s)
                self._reports.sent(reports)
                next_ts = time.monotonic() + interval
            except RemoteError as e:
                if e.is_a(LeaseLostError):
                    self.end(Ending.LEASE_LOST)
                    return
                logger.warning("job %s: renew refused: %s", self.name, e)
                # unavailable: the coordinator's database is away; keep training, try again soon
                next_ts = time.monotonic() + (min(interval, 2.0) if e.code == "unavailable" else interval)
            except RequestTimeoutError as e:
                # Unanswered (e.g. sent just before a restarted coordinator subscribed): the wait for the
                # reply already paced us, so try again at once; a will may have cut the lease to the grace.
                logger.warning("job %s: renew not answered (%s); retrying", self.name, e)
                next_ts = time.monotonic()
            except MqfleetError as e:
                # Broker away (not connected): keep training and try again soon; the lease has slack.
                logger.warning("job %s: renew not sent (%s); retrying", self.name, e)
                next_ts = time.monotonic() + min(interval, 2.0)

    # --- trainer output -------------------------------------------------------------------

    def _on_line(self, line: str) -> None:
        self.host.publish_log(self.job_id, line, attempt=self.attempt)

    def _flush_log(self) -> None:
        self.host.flush_log(self.job_id)
