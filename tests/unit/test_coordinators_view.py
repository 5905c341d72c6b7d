"""`mqfleet status` and `health` list the coordinators sharing the state: id, role, version, host, heartbeat age."""

from __future__ import annotations

from mqfleet.cli.render import fleet
from mqfleet.wire.requests import CoordinatorPeer, Health, Presence

HEALTH = Health(
    state=Presence.ONLINE, version="1.2", uptime_s=5, ts=100.0, coordinator="c1", state_store="postgresql",
    coordinators=[
        CoordinatorPeer(id="c1", role="leader", version="1.2", host="pi", started_ts=1.0, heartbeat_ts=99.0, alive=True),
        CoordinatorPeer(id="[bold]c2", role="gone", version="1.1", host="nuc", started_ts=1.0, heartbeat_ts=40.0,
                        alive=False),
    ],
)


def _text(renderable: object) -> str:
    console = fleet.make_console()
    with console.capture() as out:
        console.print(renderable)
    return out.get()


def test_status_and_health_show_each_coordinator_its_role_version_and_heartbeat_age() -> None:
    for view in (fleet.status_view(HEALTH, []), fleet.health_view(HEALTH)):
        text = _text(view)
        assert "c1 leader  mqfleet 1.2 on pi, heartbeat 1s ago" in text
        assert "[bold]c2 gone  mqfleet 1.1 on nuc, heartbeat 1m00s ago" in text
        assert "state on postgresql; this answer from c1" in text


def test_a_health_reply_without_coordinators_shows_no_such_row() -> None:
    assert "coordinators" not in _text(fleet.health_view(Health(state=Presence.ONLINE, ts=1.0, version="1")))
