"""Each benchmark runs end to end at the smallest sizes and the report renders; no timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import __main__ as suite
from bench.checkpoint import measure_sync_cost
from bench.claim_rtt import measure_claim_rtt
from bench.claim_scale import BESIDE, measure_beside
from bench.claim_scale import measure as measure_claim_scale
from bench.cli_startup import cli_startup_rows, measure_cli_startup
from bench.common import percentile
from bench.failover import measure_failover
from bench.reload_latency import measure_polling, measure_reload
from bench.throughput import measure_churn, measure_renewals
from mqfleet.local.broker import LocalBroker
from tests.fixtures.common import require_real_part

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _needs_mosquitto() -> None:
    require_real_part(LocalBroker.available(), "mosquitto")


def test_percentile_takes_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0


def test_claim_rtt_times_every_claim_and_its_raw_baseline(tmp_path: Path) -> None:
    result = measure_claim_rtt(6, tmp_path)
    assert result["claim_p50_s"] > 0 and result["raw_p50_s"] > 0
    assert suite.claim_rtt_rows(result)[0].verdict in ("PASS", "MISS")


def test_churn_counts_claims_and_deduplicated_completions(tmp_path: Path) -> None:
    result = measure_churn(3, 1.0, tmp_path, warmup_s=0.2)
    assert result["claims"] > 0 and result["completions"] > 0


def test_renewing_agents_keep_every_lease(tmp_path: Path) -> None:
    result = measure_renewals(5, 1.5, tmp_path, renew_s=0.5, lease_s=5)
    assert result["refused_or_lost"] == 0 and result["jobs_not_running"] == 0
    assert result["renewals"] >= 5


def test_reload_reaches_a_real_agent_and_the_poller_sees_each_job(tmp_path: Path) -> None:
    reload = measure_reload(1, tmp_path)
    assert 0 < reload["claimed_p50_s"] <= reload["running_p50_s"]
    poll = measure_polling(3, 0.05)
    assert poll["measured_p50_s"] <= 0.05 * 3
    assert poll["analytic_p50_s"] == 7.5


def test_failover_returns_the_killed_agents_job_to_pending_and_runs_it_on_the_idle_host(tmp_path: Path) -> None:
    result = measure_failover(1, tmp_path, grace_s=1, sweep_interval_s=0.2)
    assert 0.5 < result["p50_s"] < 30
    # running elsewhere follows pending, well before the idle poll would have claimed it
    assert result["p50_s"] <= result["running_p50_s"] < result["poll_baseline_p50_s"]


def test_claim_scale_claims_from_a_small_population() -> None:
    latencies, _fill_s = measure_claim_scale(100, 5)
    assert len(latencies) == 5


@pytest.mark.parametrize("kind", BESIDE)
def test_a_claim_beside_jobs_the_claimer_may_not_take_gets_the_open_job(kind: str) -> None:
    assert len(measure_beside(kind, 600, 3)) == 3


def test_report_renders_every_section_with_its_notes(tmp_path: Path) -> None:
    beside = {kind: ([0.0012, 0.0019], [0.0011, 0.0018]) for kind in ("foreign", "python-rejected", "retries-elsewhere")}
    rows = suite.claim_scale_rows([0.001, 0.002], [0.0011, 0.0021], 1000, [0.001, 0.002], beside, 10_000, 30)
    notes = tmp_path / "notes.md"
    notes.write_text("## Claim scale\nwhy it is flat\n")
    text = suite.render([("Claim scale", rows, suite._read_notes(notes)["claim scale"])], {"CPU": "x"}, "python -m bench",
                        "0 / 0", 1.0)
    assert "| claim cost, 1,000 pending (in-process DB) |" in text
    assert "why it is flat" in text and "PASS" in text
    assert ("| claim cost beside 10,000 better-ranked pending jobs the claimer may not take (allowed_hosts), "
            "in-process DB |") in text
    assert "(rules only Python checks: min_torch, same_commit, arch, prefer_cuda with a CUDA host online)" in text


def test_job_count_and_claim_floor_rows_compare_with_their_same_run_baselines() -> None:
    def size(n: int, rss: float, listing_s: float, restart_s: float) -> dict[str, float]:
        return {"jobs": n, "first_start_s": 1.0, "settled_s": 2.0, "rss_loaded_mib": rss, "rss_listed_mib": rss,
                "rss_end_mib": rss, "jobs_json_s": listing_s, "cli_peak_mib": 30.0, "reload_s": 0.5,
                "reload_renew_max_s": 0.2, "claim_p50_s": 0.002, "restart_health_s": restart_s,
                "restart_renew_s": restart_s}

    rows = suite.job_count_rows([size(1000, 40, 0.5, 1.0), size(10_000, 50, 1.0, 1.1), size(100_000, 80, 4.0, 1.5)])
    by_figure = {r.figure: r for r in rows}
    assert by_figure["coordinator RSS, 100,000 vs 10,000 jobs"].ratio == "1.60x"
    assert by_figure["coordinator RSS, 100,000 vs 10,000 jobs"].verdict == "MISS"
    assert by_figure["`jobs --json` at 100,000 jobs"].verdict == "MISS"
    assert by_figure["restart -> first answered request at 100,000 jobs"].verdict == "PASS"
    floor = suite.claim_floor_rows({"clients": 50, "seconds": 10.0,
                                    "floor": {"claims_per_s": 1000.0, "cpu_per_claim_s": 0.0003},
                                    "coordinator": {"claims_per_s": 250.0, "cpu_per_request_s": 0.0006}})
    assert floor[-1].median == "2.0x" and floor[-1].verdict == "PASS"


def test_state_store_rows_compare_each_store_with_sqlite_of_the_same_run() -> None:
    def result(label: str, ops: float, p50: float) -> dict[str, object]:
        return {"label": label, "agents": 50, "seconds": 10.0, "ops_per_s": ops, "coordinator_cpu_s": 1.0,
                "claim_p50_s": p50, "claim_p99_s": p50 * 3}

    rows = suite.state_store_rows([result("SQLite, 1 coordinator", 200, 0.002),
                                   result("PostgreSQL, 2 coordinators", 50, 0.008)])
    assert [r.ratio for r in rows] == ["1.00x", "0.25x", "1.00x", "4.00x"]
    assert rows[1].figure.startswith("claims+completions/s, PostgreSQL, 2 coordinators") and rows[1].median == "50/s"
def test_checkpoint_sync_cost_runs_both_ways_and_the_sync_uploads(tmp_path: Path) -> None:
    result = measure_sync_cost(tmp_path, seconds=1.5, rounds=1, size_mib=4, interval_s=0.5)
    assert result["base_steps_per_s"] > 0 and result["sync_steps_per_s"] > 0
    assert result["syncs"] >= 1
    rows = suite.checkpoint_rows(result, {"resumed": {"killed_at": 0.8, "kill_to_completed_s": 5.0},
                                          "restarted": {"killed_at": 0.8, "kill_to_completed_s": 20.0},
                                          "job_s": 20.0, "saving": 0.75})
    assert rows[0].verdict in ("PASS", "MISS") and rows[-1].verdict == "PASS"


def test_observability_rows_read_the_cost_against_the_same_traffic_unkept_and_keep_the_silent_comparison() -> None:
    def churn(ops: float, claim_s: float, cpu_ms: float) -> dict[str, float]:
        return {"ops_per_s": ops, "claim_p50_s": claim_s, "claim_p99_s": claim_s * 3,
                "coordinator_cpu_ms_per_job": cpu_ms, "agents_cpu_ms_per_job": 2.0}

    result = {"agents": 20, "seconds": 8.0, "rounds": 3, "scrape_p50_s": 0.01,
              "silent": churn(300, 0.030, 5.0), "unkept": churn(250, 0.035, 5.5), "observed": churn(240, 0.036, 5.7),
              "single_observed": {"claim_p50_s": 0.002, "claim_p99_s": 0.004},
              "single_unkept": {"claim_p50_s": 0.002, "claim_p99_s": 0.004},
              "vs_unkept": {"throughput_ratio": 0.96, "claim_p50_ratio": 36 / 35, "cpu_per_job_ratio": 5.7 / 5.5,
                            "single_claim_p50_ratio": 1.0},
              "vs_silent": {"throughput_ratio": 0.8, "claim_p50_ratio": 1.2, "cpu_per_job_ratio": 1.14,
                            "single_claim_p50_ratio": 1.0}}
    rows = suite.observability_rows(result)
    assert rows[0].ratio == "0.96x (+4% cost)" and rows[0].verdict == "PASS" and "keep_history = false" in rows[0].baseline
    assert rows[1].figure.startswith("coordinator CPU") and rows[1].verdict == "PASS"
    assert rows[4].figure.startswith("as first published") and rows[4].ratio.startswith("0.80x") and rows[4].verdict == "-"


@pytest.mark.timeout(180)  # some twenty CLI processes and an agent: slow on a shared machine
def test_cli_startup_times_each_command_against_python_pass_and_reports_every_target(tmp_path: Path) -> None:
    result = measure_cli_startup(tmp_path, runs=1, agent_runs=1)
    assert all(v[0] > 0 for v in result["import_s"].values()) and result["agent_start_import_s"][0] > 0
    rows = cli_startup_rows(result)
    assert [r.verdict for r in rows if r.target != "-"] != [] and all(
        r.verdict in ("PASS", "MISS") for r in rows if r.target != "-")
