"""The choice of manifest at start, and the stored history, on a real SQLite file."""

from __future__ import annotations

from mqfleet.coordinator.sql.postgres import open_state
from mqfleet.coordinator.tables.manifests import (
    MANIFESTS_KEPT,
    ORIGIN_FILE,
    ORIGIN_SENT,
    ManifestHistory,
    StoredManifest,
    choose_at_start,
    text_sha256,
)

PATH = "/etc/mqfleet/fleet.toml"


def stored(text: str, *, source: str = PATH, origin: str = ORIGIN_FILE, ts: float = 1_800_000_000.0) -> StoredManifest:
    return StoredManifest(text=text, source=source, sha256=text_sha256(text), applied_ts=ts, origin=origin)


def test_the_file_is_used_when_nothing_was_applied_before() -> None:
    assert choose_at_start(PATH, "a", None, None).use_file


def test_an_unchanged_file_keeps_a_manifest_sent_with_reload_file() -> None:
    choice = choose_at_start(PATH, "a", stored("b", source="/home/op/b.toml", origin=ORIGIN_SENT), stored("a"))
    assert not choice.use_file and "keeping the manifest in force" in choice.why


def test_a_file_changed_since_it_was_last_applied_wins() -> None:
    choice = choose_at_start(PATH, "a2", stored("b", origin=ORIGIN_SENT), stored("a"))
    assert choice.use_file and "changed on disk" in choice.why


def test_a_path_never_applied_before_replaces_the_manifest_in_force() -> None:
    assert choose_at_start(PATH, "a", stored("b", source="/old/path.toml"), None).use_file


def test_an_unreadable_file_keeps_the_manifest_in_force() -> None:
    assert not choose_at_start(PATH, None, stored("b"), stored("b")).use_file


def test_history_keeps_the_text_exactly_and_only_the_newest_manifests(state_target: str) -> None:
    state = open_state(state_target)
    history = ManifestHistory(state)
    text = "# é\r\n[fleet]\n"
    history.record(text, PATH, ORIGIN_FILE, 1.0)
    for i in range(MANIFESTS_KEPT + 5):
        history.record(f"# {i}\n", "/home/op/x.toml", ORIGIN_SENT, 2.0 + i)
    in_force = history.in_force()
    assert in_force is not None and in_force.text == f"# {MANIFESTS_KEPT + 4}\n" and in_force.origin == ORIGIN_SENT
    # older than the newest MANIFESTS_KEPT, but the last one read from its path, which the choice at start needs
    kept = history.last_from_file(PATH)
    assert kept is not None and kept.text == text
    assert state.read_one("SELECT COUNT(*) FROM manifests")[0] == MANIFESTS_KEPT + 1  # type: ignore[index]
    history.record(text, PATH, ORIGIN_FILE, 100.0)
    again = history.last_from_file(PATH)
    assert again is not None and again.text == text and again.sha256 == text_sha256(text)
    state.close()
