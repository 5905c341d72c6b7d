"""`--timeout` bounds the whole wait of a CLI command, connecting included (issue 25).

`mqfleet health --timeout 0.1` with no broker waited 5 s: the connection always got at least 5 s. A
command now gives up within its timeout for the connect and again for each reply, plus at most about a
second of shutting paho's thread down; the bound checked is the one the issue names, timeout + 1.5 s.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from mqfleet.cli import main
from mqfleet.local.broker import BrokerPki, LocalBroker
from mqfleet.local.ports import free_port
from tests.fixtures.tls import OPERATOR

EXIT_UNREACHABLE = 3
SHUTDOWN_ALLOWANCE_S = 1.5


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a broker that hangs, a wrong service)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


def _timed(*argv: str) -> tuple[int, float]:
    started = time.monotonic()
    rc = main(list(argv))
    return rc, time.monotonic() - started


@pytest.mark.parametrize("timeout", [0.1, 1.0])
def test_health_with_no_broker_gives_up_within_its_timeout(timeout: float) -> None:
    rc, took = _timed("health", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--timeout", str(timeout))
    assert rc == EXIT_UNREACHABLE
    assert took <= timeout + SHUTDOWN_ALLOWANCE_S, took


@pytest.mark.parametrize("scheme", ["mqtt", "mqtts"])
def test_health_against_a_port_that_never_answers_gives_up_within_its_timeout(silent_port: int, scheme: str) -> None:
    rc, took = _timed("health", "--broker", f"{scheme}://127.0.0.1:{silent_port}", "--timeout", "0.3")
    assert rc == EXIT_UNREACHABLE
    assert took <= 0.3 + SHUTDOWN_ALLOWANCE_S, took


def test_health_over_tls_with_no_coordinator_waits_one_timeout_for_the_connect_and_one_for_the_reply(
    tls_broker: tuple[LocalBroker, BrokerPki],
) -> None:
    broker, pki = tls_broker
    cert, key = pki.cert(OPERATOR)
    rc, took = _timed("health", "--broker", broker.tls_url, "--ca", str(pki.ca), "--cert", str(cert), "--key",
                      str(key), "--timeout", "0.5")
    assert rc == EXIT_UNREACHABLE
    assert took <= 2 * 0.5 + SHUTDOWN_ALLOWANCE_S, took
