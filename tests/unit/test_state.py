from __future__ import annotations

import pytest

from mqfleet.lifecycle import (
    AGENT_CAUSES,
    CAUSES,
    FAULT_CAUSES,
    LEASED,
    QUARANTINE_CAUSES,
    TERMINAL,
    TRANSITIONS,
    Cause,
    JobStatus,
    after_attempt_ended,
    counts_against_budget,
    is_allowed,
)

P, CL, R, CO, F, CA = (
    JobStatus.PENDING,
    JobStatus.CLAIMED,
    JobStatus.RUNNING,
    JobStatus.COMPLETED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)


def test_status_values_are_the_wire_strings() -> None:
    assert [s.value for s in JobStatus] == ["pending", "claimed", "running", "completed", "failed", "cancelled"]
    assert JobStatus("running") is R


def test_every_status_has_a_row_in_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(JobStatus)


def test_pending_job_may_only_be_claimed_or_cancelled() -> None:
    assert TRANSITIONS[P] == {CL, CA}


@pytest.mark.parametrize("leased", [CL, R])
def test_leased_job_may_return_to_pending_or_end_in_any_terminal_status(leased: JobStatus) -> None:
    assert {P, CO, F, CA} <= TRANSITIONS[leased]


def test_claimed_job_starts_running_but_running_job_never_goes_back_to_claimed() -> None:
    assert is_allowed(CL, R)
    assert not is_allowed(R, CL)


@pytest.mark.parametrize("terminal", [CO, F, CA])
def test_terminal_job_leaves_only_through_requeue_to_pending(terminal: JobStatus) -> None:
    assert TRANSITIONS[terminal] == {P}


def test_no_status_moves_to_itself() -> None:
    assert all(s not in TRANSITIONS[s] for s in JobStatus)


def test_terminal_and_leased_sets_split_the_statuses_with_pending() -> None:
    assert {CO, F, CA} == TERMINAL
    assert {CL, R} == LEASED
    assert TERMINAL | LEASED | {P} == set(JobStatus)


def test_only_a_hand_back_is_free() -> None:
    assert [c for c in Cause if not counts_against_budget(c)] == [Cause.SHUTDOWN, Cause.PREEMPTED]


def test_a_preemption_never_uses_up_an_attempt_never_quarantines_and_is_reported_by_agents() -> None:
    assert after_attempt_ended(Cause.PREEMPTED, attempts=1, max_attempts=1) is P
    assert Cause.PREEMPTED in AGENT_CAUSES
    assert Cause.PREEMPTED not in FAULT_CAUSES and Cause.PREEMPTED not in QUARANTINE_CAUSES


def test_an_oom_is_charged_and_moves_the_retry_but_does_not_quarantine_the_host() -> None:
    assert after_attempt_ended(Cause.OOM, attempts=3, max_attempts=3) is F
    assert Cause.OOM in AGENT_CAUSES and Cause.OOM in FAULT_CAUSES
    assert Cause.OOM not in QUARANTINE_CAUSES


def test_every_cause_has_its_rules_in_the_one_table() -> None:
    assert set(CAUSES) == set(Cause)


@pytest.mark.parametrize("cause", [Cause.APP, Cause.LOST, Cause.TIMEOUT, Cause.STALLED])
def test_counted_end_returns_job_to_pending_while_attempts_remain(cause: Cause) -> None:
    assert after_attempt_ended(cause, attempts=2, max_attempts=3) is P


@pytest.mark.parametrize("cause", [Cause.APP, Cause.LOST, Cause.TIMEOUT, Cause.STALLED])
def test_counted_end_on_the_last_attempt_fails_the_job(cause: Cause) -> None:
    assert after_attempt_ended(cause, attempts=3, max_attempts=3) is F


def test_shutdown_returns_job_to_pending_even_past_the_budget() -> None:
    assert after_attempt_ended(Cause.SHUTDOWN, attempts=3, max_attempts=3) is P


def test_cancelled_attempt_cancels_the_job_whatever_the_budget() -> None:
    assert after_attempt_ended(Cause.CANCELLED, attempts=1, max_attempts=3) is CA
    assert after_attempt_ended(Cause.CANCELLED, attempts=3, max_attempts=3) is CA
