"""`mqfleet jobs` over a listing of several pages: streamed, whole, newest first in the table, filtered by name."""

from __future__ import annotations

import fnmatch
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from mqfleet.wire.topics import Verb
from tests.fixtures.fleet import Fleet, manifest_text

#: More than two pages of the coordinator's 2,000-row replies.
N_JOBS = 4500


def _sweep(n: int) -> str:
    tags = ", ".join(f'"t{i}"' for i in range(n))
    return f'[[sweeps]]\nname = "grid"\nmodel = "ok"\nmode = "m"\nhyper = {{ tag = [{tags}] }}\n'


@pytest.fixture
def listed(fleet: Fleet) -> Iterator[Fleet]:
    fleet.write_manifest(manifest_text(extra=_sweep(N_JOBS)))
    fleet.start_coordinator()
    yield fleet


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_jobs_listing_of_several_pages_is_whole_ordered_and_filtered(listed: Fleet) -> None:
    everything = _json(listed.cli("jobs", "--json"))
    names = [j["name"] for j in everything]
    assert len(names) == N_JOBS and len(set(names)) == N_JOBS
    assert names[:2] == ["grid-tag=t0", "grid-tag=t1"] and names[-1] == f"grid-tag=t{N_JOBS - 1}"
    assert all(j["status"] == "pending" and j["host"] is None for j in everything)

    newest = _json(listed.cli("jobs", "--json", "--limit", "3"))
    assert [j["name"] for j in newest] == names[-3:]

    glob = "grid-tag=t1?"
    matched = _json(listed.cli("jobs", "--json", "--name", glob))
    assert [j["name"] for j in matched] == [n for n in names if fnmatch.fnmatchcase(n, glob)]
    assert _json(listed.cli("jobs", "--json", "--name", "no-such-*")) == []
    assert _json(listed.cli("jobs", "--json", "--status", "running")) == []

    # clients that page by position (before keysets) still get every job once
    with listed.client() as client:
        offset: int | None = 0
        seen: list[str] = []
        while offset is not None:
            reply = client.call_json(Verb.JOBS, offset=offset)
            seen += [j["name"] for j in reply["jobs"]]
            offset = reply["next_offset"]
        assert seen == names and reply["total"] == N_JOBS


def test_jobs_table_shows_the_newest_first_and_counts_the_rest(listed: Fleet) -> None:
    table = listed.cli("jobs", "--limit", "5")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if "grid-tag=" in line]
    assert [r.split()[0] for r in rows] == [f"grid-tag=t{i}" for i in range(N_JOBS - 1, N_JOBS - 6, -1)]
    assert f"newest 5 of {N_JOBS:,} jobs; {N_JOBS - 5:,} older not shown" in table.stdout

    default = listed.cli("jobs")
    assert default.returncode == 0 and f"{N_JOBS - 100:,} older not shown" in default.stdout

    every = listed.cli("jobs", "--limit", "0", "--name", "grid-tag=t4??")
    assert every.returncode == 0, every.stderr
    assert sum("grid-tag=t4" in line for line in every.stdout.splitlines()) == 100
    assert "100 jobs" in every.stdout


def test_a_name_pattern_too_long_is_refused_with_the_field_named(listed: Fleet) -> None:
    result = listed.cli("jobs", "--name", "x" * 300)
    assert result.returncode == 1 and "field 'name'" in result.stderr
