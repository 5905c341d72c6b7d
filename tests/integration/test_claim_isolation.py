"""Claims from a host that may run none of 10,000 pending jobs are cheap: another host keeps its lease.

An independent probe once loaded a sweep restricted by `allowed_hosts` to one host and
sent claims from another: each claim parsed every candidate's spec (140-280 ms), and a
third host's renewals waited behind them until its lease expired (issue 17).
"""

from __future__ import annotations

import threading
import time

from mqfleet.wire.topics import Verb
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import Fleet, manifest_text
from tests.fixtures.sim_agent import SimAgent

N_LIMITED = 10_000
CLAIMS = 200
FLEET = "[fleet]\nmax_attempts = 3\nlease_s = 6\ngrace_s = 2\n"


def _manifest() -> str:
    tags = ", ".join(f'"t{i}"' for i in range(N_LIMITED))
    limited = (f'[[sweeps]]\nname = "only-a"\nmodel = "ok"\nmode = "m"\nallowed_hosts = ["host-a"]\n'
               f"hyper = {{ tag = [{tags}] }}\n")
    held = '[[jobs]]\nname = "held"\nmodel = "ok"\nmode = "m"\nallowed_hosts = ["host-c"]\n'
    hosts = '[[hosts]]\nid = "host-b"\nslots = 4\n\n[[hosts]]\nid = "host-c"\n'
    return manifest_text(fleet=FLEET, extra=f"{hosts}\n{limited}\n{held}")


def test_two_hundred_claims_that_match_nothing_do_not_cost_another_host_its_lease(fleet: Fleet) -> None:
    fleet.write_manifest(_manifest())
    fleet.start_coordinator()
    keeper = SimAgent(fleet.broker_url, fleet.prefix, "host-c")
    claimer = SimAgent(fleet.broker_url, fleet.prefix, "host-b")
    grant = wait_until(lambda: keeper.call(Verb.CLAIM, timeout_s=5).get("job"), timeout_s=30, what="host-c's lease")
    lease = {"job_id": grant["job"]["id"], "lease_id": grant["lease_id"]}
    assert grant["job"]["name"] == "held"

    renewals: list[dict[str, object]] = []
    stop = threading.Event()

    def renew_every_second() -> None:
        # a third of the 6 s lease, as agents renew
        while not stop.is_set():
            renewals.append(keeper.call(Verb.RENEW, timeout_s=6, **lease))
            stop.wait(1.0)

    renewer = threading.Thread(target=renew_every_second, daemon=True)
    renewer.start()
    answers: list[dict[str, object]] = []
    lock = threading.Lock()

    def claim_many(n: int) -> None:
        for _ in range(n):
            reply = claimer.call(Verb.CLAIM, timeout_s=60)
            with lock:
                answers.append(reply)

    started = time.monotonic()
    threads = [threading.Thread(target=claim_many, args=(CLAIMS // 10,)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    took_s = time.monotonic() - started
    time.sleep(2.5)  # at least two more renewals after the burst
    stop.set()
    renewer.join(timeout=10)

    assert len(answers) == CLAIMS and all(a.get("ok") and a.get("job") is None for a in answers), answers[:3]
    assert renewals and all(r.get("ok") for r in renewals), [r for r in renewals if not r.get("ok")][:3]
    held = next(j for j in fleet.client().jobs(name="held"))
    assert held["status"] == "running" and held["host"] == "host-c" and held["attempts"] == 0, held
    print(f"{CLAIMS} claims over {N_LIMITED:,} jobs limited to another host answered in {took_s:.2f} s")
    keeper.stop()
    claimer.stop()
