"""The agent's side of its owner's say: the guard (agent/policy.py), the owner's switch (agent/owner_socket.py),
the manifest's defaults the coordinator sends, and the running jobs handed back when the host is taken back.

The agent builds one and asks it only whether the host takes work (`takes_work`) and what the policy in force
is (`guard.policy`, for the advert and the trainers' limits); it calls back the agent through the three
callables it was given: the running jobs, a forced advert refresh and a wake of the claim loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from mqfleet.agent.outcome import Ending
from mqfleet.agent.owner_socket import OwnerSwitch
from mqfleet.agent.policy import OwnerGuard, warn_if_never_works
from mqfleet.agent.runner import TrainerRun
from mqfleet.errors import MqfleetError
from mqfleet.mqtt.inbox import Message
from mqfleet.owner.switch import SOCKET_NAME
from mqfleet.wire.owner import Availability, OwnerPolicy

logger = logging.getLogger(__name__)

#: Largest defaults message read from the coordinator.
MAX_DEFAULTS_BYTES = 64 * 1024


class RunningJob(Protocol):
    """What the owner's side needs of a running job (agent/job.py JobRun)."""

    name: str
    trainer: TrainerRun | None

    def end(self, ending: Ending, detail: str = "", *, grace_s: float | None = None) -> None: ...


class OwnerLink:
    """The owner's policy, pause and switch of one agent, and what they do to its jobs."""

    def __init__(self, host_id: str, own: OwnerPolicy, *, work_dir: Path, socket_path: Path | None, owner_group: str,
                 running: Callable[[], Sequence[RunningJob]], refresh_advert: Callable[[], object],
                 wake: Callable[[], None]) -> None:
        """`socket_path`: where the owner's switch listens; None: `owner.sock` in the work dir."""
        self.host_id = host_id
        self._running = running
        self._refresh_advert = refresh_advert
        self._wake = wake
        self.guard = OwnerGuard(own, state_dir=work_dir, fleet_pids=self._fleet_pids, on_change=self._on_availability)
        self.switch = OwnerSwitch(self._on_request, socket_path=socket_path or work_dir / SOCKET_NAME,
                                  owner_group=owner_group, key_dir=work_dir, required=socket_path is not None)

    @property
    def takes_work(self) -> bool:
        return self.guard.availability.is_available

    def start_switch(self) -> None:
        """Before the broker: the owner can pause an agent that cannot reach its coordinator yet."""
        warn_if_never_works(self.guard.policy)
        self.switch.start()

    def start_guard(self) -> None:
        self.guard.start()

    def stop(self) -> None:
        self.guard.stop()
        self.switch.stop()

    def _on_availability(self, availability: Availability, on_yield: str) -> None:
        """The owner's policy or pause changed whether this host takes work: advertise it, then hand back or claim."""
        self._refresh_advert()  # before any hand-back, so the coordinator offers the job elsewhere
        if availability.is_available:
            self._wake()
        else:
            self._yield(availability, on_yield)

    def yield_jobs(self) -> None:
        """Apply the current unavailability to the running jobs (a job claimed while the owner took the host back)."""
        self._yield(self.guard.availability, self.guard.on_yield())

    def _yield(self, availability: Availability, on_yield: str) -> None:
        """Running jobs handed back as `preempted` after a final checkpoint sync, stopped at once (`kill`), or
        left to finish (`finish`)."""
        if on_yield == "finish" or availability.is_available:
            return
        for job in self._running():
            detail = f"preempted: {availability.shown()} (on_yield = {on_yield}); job handed back"
            job.end(Ending.PREEMPTED, detail, grace_s=0.0 if on_yield == "kill" else None)

    def on_defaults(self, msg: Message) -> None:
        """The manifest's defaults for this host's policy, retained by the coordinator on `control/{host}/policy`
        (an empty payload: none). A malformed one is logged and the previous ones stay."""
        try:
            defaults = OwnerPolicy.from_wire(msg.json(max_bytes=MAX_DEFAULTS_BYTES), "defaults") if msg.payload else None
        except MqfleetError as e:
            logger.warning("owner policy defaults from the coordinator ignored: %s", e)
            return
        if self.guard.set_defaults(defaults):
            self._refresh_advert()

    def _on_request(self, request: dict[str, object]) -> dict[str, object]:
        """`mqfleet agent pause` / `resume` / `status` from the owner's switch (checked by mqfleet/owner/switch.py)."""
        if request["action"] == "pause":
            mode, for_s = request.get("mode"), request.get("for_s")
            self.guard.pause(mode if isinstance(mode, str) else None,
                             float(for_s) if isinstance(for_s, (int, float)) else None)
        elif request["action"] == "resume":
            self.guard.resume()
        availability = self.guard.availability
        return {"host": self.host_id, "state": availability.state, "message": availability.shown(),
                "until_ts": availability.until_ts, "running": [j.name for j in self._running()],
                "on_yield": self.guard.on_yield(), "policy": self.guard.policy.to_wire()}

    def _fleet_pids(self) -> list[int]:
        """The processes of this agent's trainers, for `when_busy` (besides the agent's own descendants)."""
        pids: list[int] = []
        for job in self._running():
            trainer = job.trainer
            if trainer is not None and trainer.pid is not None:
                pids += [trainer.pid, *(pid for pid, _ in trainer.tree_info())]
        return pids
