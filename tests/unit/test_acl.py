"""ACL rendering: per-user blocks for known hosts and operators, patterns for everyone, refusals of unsafe names."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqfleet.errors import ConfigurationError, ManifestError
from mqfleet.trust.acl import hosts_in_manifest, render_acl, write_acl


def _blocks(text: str) -> dict[str | None, list[str]]:
    """Rule lines per `user` block (None: before any user line), comments and blanks dropped."""
    blocks: dict[str | None, list[str]] = {None: []}
    user: str | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("user "):
            user = line.split(" ", 1)[1]
            blocks[user] = []
        else:
            blocks[user].append(line)
    return blocks


AGENT_VERBS = ["claim", "renew", "upload_url", "complete", "fail", "checkpoint_url", "checkpoint_saved",
               "checkpoint_start"]
QUERY_VERBS = ["jobs", "job", "workers", "health", "artifacts", "logs", "download_url", "compare", "manifest"]
OPERATOR_VERBS = ["cancel", "requeue", "reload", "drain", "undrain", "gc"]
PUBLIC = ["work", "events", "jobs/+/state", "coordinator/status", "hosts/+/advert", "hosts/+/status"]
PUBLIC_ONLY = [f"topic deny mqfleet/{level}/#" for level in ("rpc", "reply", "control")] + [
    f"topic read mqfleet/{t}" for t in PUBLIC]


def test_each_host_is_pinned_to_the_topics_an_agent_publishes_and_nothing_else_under_its_path() -> None:
    """Issue 25 item 9: `hosts/H/#` let a host retain any number of messages under its path."""
    blocks = _blocks(render_acl(["gpu-box", "pi"]))
    assert blocks["gpu-box"] == [
        "topic write mqfleet/hosts/gpu-box/advert",
        "topic write mqfleet/hosts/gpu-box/status",
        "topic write mqfleet/hosts/gpu-box/log/+",
        *[f"topic write mqfleet/rpc/agent/gpu-box/{verb}" for verb in AGENT_VERBS],
        "topic read mqfleet/control/gpu-box",
        "topic read mqfleet/control/gpu-box/policy",
    ]
    assert all("gpu-box" not in rule for rule in blocks["pi"])
    assert [rule for rules in _blocks(render_acl(["gpu-box"], operators=["a"])).values() for rule in rules
            if "write" in rule and rule.endswith(("/#", "/+/+"))] == ["topic readwrite mqfleet/#"]  # the coordinator


def test_patterns_give_everyone_public_reads_queries_and_their_own_replies_only() -> None:
    patterns = [r for r in _blocks(render_acl(["gpu-box"]))[None] if r.startswith("pattern ")]
    assert patterns == [
        "pattern read mqfleet/work",
        "pattern read mqfleet/events",
        "pattern read mqfleet/jobs/+/state",
        "pattern read mqfleet/coordinator/status",
        "pattern read mqfleet/hosts/+/advert",
        "pattern read mqfleet/hosts/+/status",
        *[f"pattern write mqfleet/rpc/query/%c/{verb}" for verb in QUERY_VERBS],
        "pattern read mqfleet/reply/%c/#",
    ]
    assert not any("write" in p and "query" not in p for p in patterns)


def test_monitoring_accounts_and_anonymous_clients_read_public_state_only_and_the_coordinator_gets_the_whole_tree(
) -> None:
    blocks = _blocks(render_acl([], coordinator="pi-coord", monitors=["monitor", "monitor-bob", "monitor"]))
    assert [line for line in blocks[None] if line.startswith("topic")] == PUBLIC_ONLY
    assert blocks["monitor"] == blocks["monitor-bob"] == PUBLIC_ONLY
    assert blocks["pi-coord"] == ["topic readwrite mqfleet/#", "topic read $SYS/broker/log/N"]
    assert "monitor" in _blocks(render_acl([]))


@pytest.mark.parametrize("monitors", [["alice"], ["coordinator"], ["host-a"], ["monitor/x"], ["operator-monitor"]])
def test_a_monitoring_account_outside_the_monitor_names_is_refused(monitors: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="monitor"):
        render_acl(["host-a"], monitors=monitors)


def test_operators_get_operator_verbs_and_logs_but_no_agent_topics() -> None:
    blocks = _blocks(render_acl(["gpu-box"], operators=["alice", "operator-bob", "alice"]))
    assert [u for u in blocks if u and u.startswith("operator-")] == ["operator-alice", "operator-bob"]
    assert blocks["operator-alice"] == [*[f"topic write mqfleet/rpc/operator/+/{verb}" for verb in OPERATOR_VERBS],
                                        "topic read mqfleet/hosts/+/log/+"]


def test_prefix_is_used_for_every_rule() -> None:
    text = render_acl(["gpu-box"], operators=["alice"], prefix="lab/fleet")
    rules = [r for rules in _blocks(text).values() for r in rules if "$SYS" not in r]
    assert rules and all(r.split()[-1].startswith("lab/fleet/") for r in rules)


@pytest.mark.parametrize("prefix", ["", "/mqfleet", "mqfleet/", "a/+/b", "a/#", "x%c", "two words", "a\nuser x"])
def test_prefix_that_is_not_plain_levels_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigurationError):
        render_acl(["gpu-box"], prefix=prefix)


@pytest.mark.parametrize(
    "hosts",
    [["a/b"], ["+"], ["box#1"], ["x\ntopic readwrite #"], ["operator-x"], ["coordinator"], ["gpu", "gpu"], [""],
     ["monitor"], ["monitor-box"]],
)
def test_host_that_could_escape_its_topics_or_take_another_role_is_refused(hosts: list[str]) -> None:
    with pytest.raises(ConfigurationError):
        render_acl(hosts)


def test_operator_clashing_with_a_host_or_coordinator_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        render_acl(["operator-x"], operators=["x"])
    with pytest.raises(ConfigurationError):
        render_acl([], operators=["x y"])


def test_hosts_come_from_the_manifest_in_file_order(tmp_path: Path) -> None:
    m = tmp_path / "fleet.toml"
    m.write_text('[fleet]\nlease_s = 90\n[[hosts]]\nid = "pi"\n[[hosts]]\nid = "gpu-box"\nslots = 2\n')
    assert hosts_in_manifest(m) == ["pi", "gpu-box"]


def test_every_bad_manifest_host_is_reported_at_once(tmp_path: Path) -> None:
    m = tmp_path / "fleet.toml"
    m.write_text('[[hosts]]\nid = "a/b"\n[[hosts]]\nslots = 1\n[[hosts]]\nid = "ok"\n[[hosts]]\nid = "ok"\n')
    with pytest.raises(ManifestError) as e:
        hosts_in_manifest(m)
    assert [p.place for p in e.value.problems] == ["hosts[0].id", "hosts[1].id", "hosts[3].id"]


def test_unreadable_manifest_is_a_manifest_error(tmp_path: Path) -> None:
    m = tmp_path / "fleet.toml"
    m.write_text("[[hosts]\n")
    with pytest.raises(ManifestError):
        hosts_in_manifest(m)


def test_write_acl_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "acl"
    target.write_text("old")
    write_acl(target, render_acl(["gpu-box"]))
    assert target.read_text() == render_acl(["gpu-box"])
    assert [p.name for p in tmp_path.iterdir()] == ["acl"]
