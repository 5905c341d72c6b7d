"""The owner's say on this host: the policy in force, the owner's pause, and whether the host takes work now.

`OwnerGuard` combines the agent's own policy (flags and `agent.toml`, which win) with the manifest's defaults
the coordinator sends (`control/{host}/policy`), and looks once a second at the owner's pause, the hours and,
with `when_busy`, the processes outside the fleet. When the answer changes it calls the agent back with the
new `Availability` and what to do with running jobs (`on_yield`, or what the pause asked). Nothing here
talks to the bus: the agent advertises and hands jobs back (docs/OPERATIONS.md, "Owner policies").
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mqfleet.agent.busy import BusyState, OutsideUse
from mqfleet.owner.hours import describe_time, zone_named
from mqfleet.wire.owner import AVAILABLE, PAUSED, YIELDING, Availability, OwnerPolicy, hours_availability

logger = logging.getLogger(__name__)

#: How often the guard looks (hours, pause expiry, the owner's use of the machine).
LOOK_S = 1.0
#: The file in the agent's work dir that keeps an owner's pause across an agent restart.
PAUSE_FILE = "owner-pause.json"
#: What a pause asks of running jobs: `now` hands them back (a final checkpoint, or a kill with on_yield = kill),
#: `after_current` lets them finish; None does what on_yield says.
PAUSE_MODES = ("now", "after_current")


@dataclass(frozen=True)
class Pause:
    """The owner's pause: until when (None: until `resume`) and what it asks of running jobs."""

    mode: str | None = None
    until_ts: float | None = None


class OwnerGuard:
    """Whether this host takes work now, by its owner's policy and pause; calls `on_change(availability, on_yield)`."""

    def __init__(self, own: OwnerPolicy, *, state_dir: Path, fleet_pids: Callable[[], Iterable[int]],
                 on_change: Callable[[Availability, str], None], clock: Callable[[], float] = time.time) -> None:
        self.own = own
        self.zone_name = local_zone_name()
        self._defaults: OwnerPolicy | None = None
        self._state_dir = state_dir
        self._fleet_pids = fleet_pids
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._pause = self._load_pause()
        self._busy: BusyState | None = None
        self._outside: OutsideUse | None = None
        self.policy = own.resolved(self.zone_name)
        self.availability = Availability()
        self._rebuild_busy()
        self.availability = self._judge()
        self._stop = threading.Event()

    # --- the policy --------------------------------------------------------------------------------

    def set_defaults(self, defaults: OwnerPolicy | None) -> bool:
        """The manifest's defaults for this host, as the coordinator sent them; True when the policy in force changed."""
        with self._lock:
            self._defaults = defaults
            policy = self.own.over(defaults).resolved(self.zone_name)
            if policy == self.policy:
                return False
            self.policy = policy
            self._rebuild_busy()
        logger.info("owner policy in force: %s", json.dumps(policy.to_wire(), sort_keys=True))
        warn_if_never_works(policy)
        self.look()
        return True

    def _rebuild_busy(self) -> None:
        busy = self.policy.when_busy
        if busy is None:
            self._busy = self._outside = None
        elif self._busy is None or self._busy.policy != busy:
            self._busy = BusyState(busy)
            self._outside = OutsideUse(self._fleet_pids, busy.users, gpu=busy.gpu_percent is not None)

    # --- the owner's switch ------------------------------------------------------------------------

    def pause(self, mode: str | None, for_s: float | None) -> Availability:
        """Take no work until `for_s` from now (None: until resume); `mode` says what happens to running jobs."""
        if mode is not None and mode not in PAUSE_MODES:
            raise ValueError(f"pause mode {mode!r} is not one of {', '.join(PAUSE_MODES)}")
        until = self._clock() + for_s if for_s is not None else None
        with self._lock:
            self._pause = Pause(mode=mode, until_ts=until)
            self._save_pause()
        return self.look()

    def resume(self) -> Availability:
        with self._lock:
            self._pause = None
            self._save_pause()
        return self.look()

    # --- judging -----------------------------------------------------------------------------------

    def look(self) -> Availability:
        """Judge now; calls the agent back when the availability changed. Returns it."""
        with self._lock:
            fresh = self._judge()
            changed = fresh != self.availability
            self.availability = fresh
            on_yield = self.on_yield()
        if changed:
            logger.info("owner policy: %s", fresh.shown())
            self._on_change(fresh, on_yield)
        return fresh

    def on_yield(self) -> str:
        """What to do with running jobs while the host is not available: checkpoint, finish or kill."""
        policy_says = self.policy.on_yield or "checkpoint"
        pause = self._pause
        if self.availability.state == PAUSED and pause is not None and pause.mode is not None:
            return "finish" if pause.mode == "after_current" else ("kill" if policy_says == "kill" else "checkpoint")
        return policy_says

    def _judge(self) -> Availability:
        now = self._clock()
        pause = self._pause
        if pause is not None and pause.until_ts is not None and pause.until_ts <= now:
            logger.info("owner pause over; taking work again")
            self._pause = pause = None
            self._save_pause()
        if pause is not None:
            zone = zone_named(self.zone_name)
            until = f" until {describe_time(pause.until_ts, zone, now)}" if pause.until_ts is not None else ""
            jobs = " (running jobs finish)" if pause.mode == "after_current" else ""
            return Availability(PAUSED, f"paused by owner{until}{jobs}", pause.until_ts)
        hours = hours_availability(self.policy, now)
        if not hours.is_available:
            return hours
        if self._busy is not None and self._outside is not None:
            busy = self._busy.update(self._outside.sample(), time.monotonic())
            if busy:
                # the reason as it was when the yield began: the shares change every second, the advert should not
                current = self.availability
                return current if current.state == YIELDING else Availability(YIELDING, self._busy.reason())
        return Availability(AVAILABLE)

    # --- the thread --------------------------------------------------------------------------------

    def start(self) -> None:
        threading.Thread(target=self._loop, name="owner-guard", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(LOOK_S):
            try:
                self.look()
            except Exception:  # the guard must outlive a bad look (a vanished process, NVML hiccup)
                logger.exception("owner policy: look failed")

    # --- the pause on disk --------------------------------------------------------------------------

    def _load_pause(self) -> Pause | None:
        path = self._state_dir / PAUSE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8")[:4096])
            mode, until = data.get("mode"), data.get("until_ts")
            if (mode is None or mode in PAUSE_MODES) and (until is None or isinstance(until, (int, float))):
                pause = Pause(mode=mode, until_ts=float(until) if until is not None else None)
                logger.info("owner pause kept from before the restart (until %s)", until or "resume")
                return pause
        except (OSError, ValueError, AttributeError):
            pass
        return None

    def _save_pause(self) -> None:
        path = self._state_dir / PAUSE_FILE
        try:
            if self._pause is None:
                path.unlink(missing_ok=True)
            else:
                tmp = path.with_name(PAUSE_FILE + ".tmp")
                tmp.write_text(json.dumps({"mode": self._pause.mode, "until_ts": self._pause.until_ts}), encoding="utf-8")
                os.replace(tmp, path)
        except OSError as e:
            logger.warning("owner pause not saved in %s (%s): an agent restart forgets it", path, e)


def warn_if_never_works(policy: OwnerPolicy) -> None:
    """Log a warning when the policy in force never lets this host take work, or reads its hours in UTC only
    because the host's zone could not be found."""
    why = policy.never_allows_work()
    if why:
        logger.warning("owner policy: %s; check the agent's config and the manifest's [[hosts]] entry", why)
    if policy.hours is not None and policy.timezone == "UTC" and time.timezone != 0:
        logger.warning("owner policy: hours are read in UTC, but this host's clock is not; set timezone "
                       "(e.g. timezone = \"Europe/Berlin\") in the agent's config")


def local_zone_name() -> str:
    """This host's IANA time zone (`Europe/Berlin`): $TZ, else what /etc/localtime links to, else /etc/timezone;
    `UTC` when none names a zone this Python knows (`timezone` in the agent's config then says it)."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    try:
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                zone_named(name)
                return name
            except ValueError:
                continue
    return "UTC"
