"""What one lease may ask of the store through the coordinator: URLs at a pace, one check per checkpoint URL."""

from __future__ import annotations

import pytest

from mqfleet.coordinator.tables.upload_limits import (
    CHECKS_FAILED_MAX,
    CHECKS_HELD,
    LEASES_REMEMBERED,
    URL_BURST,
    UploadLimits,
)
from mqfleet.errors import RateLimitedError

LEASE, OTHER = "ab" * 16, "cd" * 16
SHA = "ee" * 32


def test_a_lease_gets_a_burst_of_urls_then_one_per_interval_and_other_leases_are_not_held_back() -> None:
    limits = UploadLimits()
    for _ in range(int(URL_BURST)):
        limits.take_url(LEASE, "checkpoint", 100.0, every_s=10)
    with pytest.raises(RateLimitedError, match="faster than one per 10 s"):
        limits.take_url(LEASE, "checkpoint", 100.0, every_s=10)
    limits.take_url(LEASE, "artifact", 100.0, every_s=60)  # each kind has its own pace
    limits.take_url(OTHER, "checkpoint", 100.0, every_s=10)
    with pytest.raises(RateLimitedError):
        limits.take_url(LEASE, "checkpoint", 105.0, every_s=10)
    limits.take_url(LEASE, "checkpoint", 110.5, every_s=10)  # one interval after the refusal's count
    with pytest.raises(RateLimitedError):
        limits.take_url(LEASE, "checkpoint", 111.0, every_s=10)


def test_a_checkpoint_url_earns_exactly_one_check_of_the_content_it_named() -> None:
    limits = UploadLimits()
    assert limits.take_check(LEASE, SHA, 10) is False  # nothing granted, nothing read
    limits.earn_check(LEASE, SHA, 10)
    assert limits.take_check(OTHER, SHA, 10) is False
    assert limits.take_check(LEASE, SHA, 11) is False
    assert limits.take_check(LEASE, SHA, 10) is True
    assert limits.take_check(LEASE, SHA, 10) is False
    limits.earn_check(LEASE, SHA, 10)
    limits.earn_check(LEASE, SHA, 10)
    assert [limits.take_check(LEASE, SHA, 10) for _ in range(3)] == [True, True, False]


def test_a_lease_holds_a_few_unchecked_contents_at_most_the_oldest_dropped() -> None:
    limits = UploadLimits()
    shas = [f"{i:064x}" for i in range(CHECKS_HELD + 1)]
    for sha in shas:
        limits.earn_check(LEASE, sha, 1)
    assert limits.take_check(LEASE, shas[0], 1) is False
    assert all(limits.take_check(LEASE, sha, 1) for sha in shas[1:])


def test_failed_checks_past_the_cap_refuse_further_reads_for_that_lease_only() -> None:
    limits = UploadLimits()
    for _ in range(CHECKS_FAILED_MAX):
        limits.check_reads_allowed(LEASE)
        limits.note_failed_check(LEASE)
    with pytest.raises(RateLimitedError, match="nothing more it uploads is read"):
        limits.check_reads_allowed(LEASE)
    limits.check_reads_allowed(OTHER)


def test_the_leases_remembered_are_bounded_the_one_unused_longest_forgotten_first() -> None:
    limits = UploadLimits()
    limits.earn_check(LEASE, SHA, 1)
    for i in range(LEASES_REMEMBERED):
        limits.take_url(f"{i:032x}", "artifact", 0.0, every_s=60)
    assert limits.take_check(LEASE, SHA, 1) is False
