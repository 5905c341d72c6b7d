"""One claimed job on an agent: run the trainer, keep the lease, store the artifact, report the end.

A JobRun owns two threads: its own, which runs the trainer and then packs,
uploads and completes; and a renewer, which keeps the lease alive for the whole
job (packing and uploading a big artifact can outlast a lease) and stops the
trainer the moment the coordinator says the lease is gone.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from enum import Enum
from typing import TYPE_CHECKING, Any

from mqfleet import defaults
from mqfleet.agent.command import build_trainer_argv, trainer_env
from mqfleet.agent.runner import TrainerRun
from mqfleet.bundle import pack_artifact
from mqfleet.errors import BrokerError, MqfleetError, RemoteError, RequestTimeoutError
from mqfleet.transfer import upload_to_url

if TYPE_CHECKING:
    from mqfleet.agent.daemon import Agent

logger = logging.getLogger(__name__)

#: Longest wait for one renewal's reply. A renewal sent while the coordinator or the broker was away is
#: never answered; waiting the full request timeout for it would hold back the renewal a reconnect asks
#: for, and a lease the will shortened to the grace would expire although the host came back in time.
RENEW_TIMEOUT_S = 3.0


class Ending(str, Enum):
    """Why a job run stopped before its trainer finished on its own."""

    CANCELLED = "cancelled"  # the coordinator cancelled the job
    LEASE_LOST = "lease_lost"  # the lease is no longer ours
    SHUTDOWN = "shutdown"  # the agent is stopping and hands the job back


class JobRun:
    """A claimed job from grant to completion or failure."""

    def __init__(self, agent: Agent, grant: dict[str, Any]) -> None:
        self.agent = agent
        self.grant = grant
        self.job_id: str = grant["job"]["id"]
        self.name: str = grant["spec"].get("name", self.job_id[:12])
        self.lease_id: str = grant["lease_id"]
        self.lease_s = float(grant.get("lease_s") or defaults.LEASE_S)
        self.dir = agent.config.work_dir / "jobs" / f"{self.job_id[:16]}-{grant['attempt']}"
        self.out_dir = self.dir / "out"
        self.trainer: TrainerRun | None = None
        self.ending: Ending | None = None
        self.done = threading.Event()
        self._stop_renewing = threading.Event()
        self._renew_now = threading.Event()
        self._ending_lock = threading.Lock()
        self._log_seq = 0
        self._thread = threading.Thread(target=self._run, name=f"job-{self.job_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    # --- signals from outside -----------------------------------------------------------

    def end(self, ending: Ending) -> None:
        """Stop the trainer for `ending` (first reason wins); the job thread reports it."""
        with self._ending_lock:
            if self.ending is not None:
                return
            self.ending = ending
        logger.warning("job %s: stopping trainer (%s)", self.name, ending.value)
        trainer = self.trainer
        if trainer is not None:
            threading.Thread(target=trainer.terminate, args=(self.agent.config.kill_grace_s,), daemon=True).start()

    def renew_now(self) -> None:
        """Renew at once, e.g. after a reconnect, when the coordinator may have shortened the lease."""
        self._renew_now.set()

    # --- the job thread -------------------------------------------------------------------

    def _run(self) -> None:
        renewer = threading.Thread(target=self._renew_loop, name=f"renew-{self.job_id[:8]}", daemon=True)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            exit_code = self._train(renewer)
            if self.ending is None:
                if exit_code == 0:
                    self._store_and_complete()
                else:
                    self._fail("app", exit_code, f"trainer exited with code {exit_code}")
            elif self.ending is Ending.SHUTDOWN:
                self._fail("shutdown", exit_code, "agent shut down; job handed back")
            else:
                logger.info("job %s: ended (%s); nothing to report", self.name, self.ending.value)
        except Exception as e:  # the agent must outlive any one job
            logger.exception("job %s: failed on the agent", self.name)
            if self.ending is None:
                self._fail("app", None, f"agent error: {type(e).__name__}: {e}")
        finally:
            self._stop_renewing.set()
            self._renew_now.set()
            if renewer.is_alive():
                renewer.join(timeout=5)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.done.set()
            self.agent.job_finished(self)

    def _train(self, renewer: threading.Thread) -> int:
        spec = dict(self.grant["spec"])
        spec.update(attempt=self.grant["attempt"], lease_id=self.lease_id)
        spec_path = self.dir / "spec.json"
        spec_path.write_text(json.dumps(spec, sort_keys=True, indent=2))
        cfg = self.agent.config
        argv = build_trainer_argv(self.grant["trainer"], spec, python=cfg.python)
        env = trainer_env(spec_path, self.out_dir, list(self.grant.get("gpus") or []), dict(cfg.trainer_base_env()))
        self.trainer = TrainerRun(
            argv=argv,
            cwd=cfg.repo,
            env=env,
            out_dir=self.out_dir,
            on_line=self._on_line,
            pidfile_dir=cfg.work_dir / "pids",
        )
        logger.info("job %s: attempt %s starting %s", self.name, self.grant["attempt"], " ".join(argv))
        self.trainer.start()
        renewer.start()
        if self.ending is not None:  # cancelled between claim and start
            self.trainer.terminate(cfg.kill_grace_s)
        exit_code = self.trainer.wait()
        self._flush_log()
        logger.info("job %s: trainer exited with code %s", self.name, exit_code)
        return int(exit_code if exit_code is not None else -1)

    def _store_and_complete(self) -> None:
        bundle_path = self.dir / "artifact.tar.zst"
        sha256, size = pack_artifact(self.out_dir, bundle_path)
        logger.info("job %s: packed %d bytes, sha256 %s", self.name, size, sha256[:12])
        upload = self._request("upload_url", sha256=sha256, size=size)
        if upload is None:
            return
        if not upload.get("exists"):
            upload_to_url(upload["url"], bundle_path)
        else:
            logger.info("job %s: artifact %s already stored; no upload", self.name, sha256[:12])
        progress = self.trainer.latest_progress if self.trainer else None
        metrics = (progress or {}).get("metrics") or {}
        reply = self._request(
            "complete",
            sha256=sha256,
            size=size,
            metrics=metrics if isinstance(metrics, dict) else {},
            output_tail=self.trainer.tail if self.trainer else "",
        )
        if reply is not None:
            logger.info("job %s: completed", self.name)

    def _fail(self, cause: str, exit_code: int | None, message: str) -> None:
        tail = self.trainer.tail if self.trainer else ""
        self._request("fail", cause=cause, exit_code=exit_code, output_tail=tail, error=message)

    def _request(self, verb: str, **fields: Any) -> dict[str, Any] | None:
        """An agent request on this lease; None when the coordinator refused it or stayed away (logged).

        Retries (same request id, so never run twice) for as long as the lease would last: a
        coordinator restart must not cost a finished job. Past that the lease has expired anyway.
        """
        attempts = max(3, math.ceil(self.lease_s / self.agent.config.request_timeout_s))
        try:
            return self.agent.request(verb, attempts=attempts, job_id=self.job_id, lease_id=self.lease_id, **fields)
        except BrokerError as e:
            logger.warning("job %s: %s not answered (%s); the lease will expire and the job run again", self.name, verb, e)
            return None
        except RemoteError as e:
            if e.code == "lease_lost":
                self.end(Ending.LEASE_LOST)
                logger.warning("job %s: %s refused, the lease is no longer ours", self.name, verb)
                return None
            if verb == "complete":
                # The artifact was refused (e.g. its bytes did not match): the attempt failed.
                self._fail("app", 0, f"artifact refused by the coordinator: {e}")
                return None
            logger.warning("job %s: %s refused: %s", self.name, verb, e)
            return None

    # --- the renewer ----------------------------------------------------------------------

    def _renew_loop(self) -> None:
        interval = max(0.2, self.lease_s * defaults.RENEW_FRACTION)
        timeout_s = min(self.agent.config.request_timeout_s, RENEW_TIMEOUT_S, max(1.0, interval / 2))
        next_ts = 0.0  # renew at once: moves the job to running
        while not self._stop_renewing.is_set():
            wait = next_ts - time.monotonic()
            if wait > 0:
                self._renew_now.wait(wait)
                self._renew_now.clear()
                if self._stop_renewing.is_set():
                    return
            progress = self.trainer.latest_progress if self.trainer else None
            try:
                self.agent.request("renew", job_id=self.job_id, lease_id=self.lease_id, progress=progress, attempts=1,
                                   timeout_s=timeout_s)
                next_ts = time.monotonic() + interval
            except RemoteError as e:
                if e.code == "lease_lost":
                    self.end(Ending.LEASE_LOST)
                    return
                logger.warning("job %s: renew refused: %s", self.name, e)
                next_ts = time.monotonic() + interval
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
        self.agent.publish_log(self.job_id, line)

    def _flush_log(self) -> None:
        self.agent.flush_log(self.job_id)

