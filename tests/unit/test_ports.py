"""Free ports for the local services (mqfleet/local/ports.py): inside MQFLEET_LOCAL_PORTS when it is set (each
parallel test worker has a range of its own), never one that is taken, each reserved one held until released."""

from __future__ import annotations

import os
import socket

import pytest

from mqfleet.defaults import ENV_LOCAL_PORTS
from mqfleet.errors import ConfigurationError
from mqfleet.local.ports import free_port, reserve_ports


@pytest.fixture
def span(monkeypatch: pytest.MonkeyPatch) -> range:
    """Ten ports of this worker's own, clear of every worker's service ports and of the kernel's ephemeral ones."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    low = 32_000 + int(worker.removeprefix("gw") or 0) % 70 * 10
    monkeypatch.setenv(ENV_LOCAL_PORTS, f"{low}-{low + 9}")
    return range(low, low + 10)


def test_ports_come_from_the_range_and_go_round_it(span: range) -> None:
    seen = {free_port() for _ in range(30)}
    assert seen <= set(span) and len(seen) >= 5


def test_a_taken_port_is_never_handed_out_and_reserved_ones_stay_held(span: range) -> None:
    ports, held = reserve_ports(4)
    try:
        assert len(set(ports)) == 4 and set(ports) <= set(span)
        for _ in range(20):
            assert free_port() not in ports
    finally:
        for s in held:
            s.close()


def test_a_full_range_is_refused_with_its_name(span: range) -> None:
    held = []
    for port in span:  # each one taken, by us or by someone else
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            held.append(s)
        except OSError:
            s.close()
    try:
        with pytest.raises(ConfigurationError, match=ENV_LOCAL_PORTS):
            free_port()
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("text", ["20000", "a-b", "30000-20000", "80-90"])
def test_a_malformed_range_is_refused(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(ENV_LOCAL_PORTS, text)
    with pytest.raises(ConfigurationError, match=ENV_LOCAL_PORTS):
        free_port()


def test_without_a_range_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_LOCAL_PORTS, raising=False)
    assert 1024 <= free_port() <= 65535
