"""An idle agent gets the one job it can run behind 600 better-ranked jobs that no host can run (issue 25,
item 1), through a real coordinator and broker, and `show` says why each waits.

Before, a claim examined at most 512 candidates and the rules only Python checks (here min_torch and
same_commit) ran on those: the agent was told "no job" forever while `show` called it eligible.
"""

from __future__ import annotations

from tests.fixtures.common import wait_until
from tests.fixtures.fleet import FAST_FLEET, Fleet, manifest_text

#: More than the old candidate cap (512), half waiting for a newer torch, half for the fleet's commit.
AHEAD = 600
#: A commit no host has checked out.
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _manifest() -> str:
    tags = ", ".join(f'"t{i}"' for i in range(AHEAD // 2))
    sweeps = "\n".join(
        f'[[sweeps]]\nname = "{name}"\nmodel = "ok"\nmode = "{name}"\npriority = 5\n{rule}\nhyper = {{ tag = [{tags}] }}\n'
        for name, rule in (("new-torch", 'min_torch = "99.0"'), ("moved-commit", "same_commit = true")))
    fleet = FAST_FLEET + f'commit = "{COMMIT}"\n'
    return manifest_text({"name": "runnable", "model": "ok", "mode": "m", "hyper": {"tag": "r"}}, fleet=fleet, extra=sweeps)


def test_an_idle_agent_gets_the_job_it_can_run_behind_600_that_no_host_can(fleet: Fleet) -> None:
    fleet.write_manifest(_manifest())
    fleet.start_coordinator()
    client = fleet.client()
    assert len(client.jobs()) == AHEAD + 1
    fleet.start_agent("a1")
    done = fleet.wait_for_status({"runnable": "completed"}, timeout_s=90)
    assert sum(j["status"] == "pending" for j in done) == AHEAD

    def why(name: str) -> str:
        return next(w.reason for w in client.job(name).why_waiting if w.host == "a1")

    assert "needs torch >= 99.0; host has" in why("new-torch-tag=t0")
    assert why("moved-commit-tag=t7").startswith(f"needs commit {COMMIT[:12]}; host has")
    # the agent stays idle, online and holding no lease: its claims find nothing more
    idle = wait_until(lambda: [w for w in client.workers() if w.id == "a1" and w.online and not w.jobs],
                      timeout_s=10, what="a1 idle")
    assert idle and idle[0].slots_used == 0
