"""`run_soak()`: start the fleet, load it, inject faults for the duration, drain, stop everything, judge.

Everything started here is stopped here, on success, on failure, on Ctrl-C and
on SIGTERM; every wait is bounded.
"""

from __future__ import annotations

import logging
import platform
import shutil
import signal
import time

import psutil

from mqfleet.client import FleetClient
from mqfleet.errors import MqfleetError
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.soak import invariants
from mqfleet.soak.fleet import SoakConfig, SoakFleet
from mqfleet.soak.injectors import Injector, wait_for
from mqfleet.soak.observer import Observer
from mqfleet.wire.topics import JsonObject

logger = logging.getLogger(__name__)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def machine() -> JsonObject:
    """What the figures were measured on."""
    return {"cpus": psutil.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version()}


def run_soak(config: SoakConfig) -> invariants.SoakReport:
    """One soak run; the report (its `ok` says whether every invariant held)."""
    config.validate()
    if config.work_dir.exists():
        shutil.rmtree(config.work_dir)
    fleet = SoakFleet(config)
    fleet.prepare()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    observer: Observer | None = None
    injector: Injector | None = None
    client: FleetClient | None = None
    try:
        fleet.start_broker()
        assert fleet.broker is not None
        observer = Observer(fleet.broker.url, config.prefix)
        observer.start()
        fleet.start_coordinators()
        client = FleetClient(BrokerConfig(url=fleet.broker.url), prefix=config.prefix, token=fleet.token, timeout_s=3)

        def answering(c: FleetClient = client) -> bool:
            try:
                c.health()
                return True
            except MqfleetError:
                return False

        if not wait_for(answering, 60.0, interval_s=0.5):
            raise RuntimeError(f"the coordinator did not answer within 60s; see {fleet.dir / 'logs'}")
        for host in config.hosts:
            fleet.start_agent(host)
            time.sleep(0.1)  # two cores: a burst of 20 interpreters starting at once starves the coordinator
        started = time.monotonic()
        injector = Injector(fleet, observer, answering)
        injector.run(started + config.duration_s)
        fault_phase_s = time.monotonic() - started

        def drained(c: FleetClient = client) -> bool:
            try:
                return c.health().jobs_by_status.get("completed", 0) >= config.jobs
            except MqfleetError:
                return False

        drain_start = time.monotonic()
        wait_for(drained, config.drain_s, interval_s=1.0)
        drain_s = time.monotonic() - drain_start
        client.close()
        client = None
        fleet.stop_agents()
        fleet.stop_coordinators()
        # Let the last retained states reach the observer before comparing them with the database.
        time.sleep(1.0)
        report = invariants.check(config, fleet.state_target, fleet.store_path, fleet.agents_dir, observer, injector.record)
        report.figures["timing"] = {"fault_phase_s": round(fault_phase_s, 1), "drain_s": round(drain_s, 1)}
        report.figures["machine"] = machine()
        return report
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        if client is not None:
            client.close()
        if injector is not None:
            injector.close()
        if observer is not None:
            observer.stop()
        fleet.stop()
        signal.signal(signal.SIGTERM, previous)
