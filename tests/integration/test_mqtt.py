"""mqfleet.mqtt.connection against a real mosquitto: request/reply, handlers, persistent sessions, wills, outages, refusals, TLS."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mqfleet.errors import BrokerUnavailableError, RequestTimeoutError
from mqfleet.local.broker import LocalBroker
from mqfleet.local.ports import free_port
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Message
from mqfleet.wire import topics
from tests.fixtures.common import wait_until

Connect = Callable[..., Connection]
ROOT = Path(__file__).resolve().parents[2]


def echo_responder(conn: Connection) -> Callable[[Message], None]:
    """A handler that answers every request with what it asked plus what the transport carried."""

    def handle(msg: Message) -> None:
        conn.reply(msg, {"ok": True, "echo": msg.json(), "response_topic": msg.response_topic,
                         "correlation": (msg.correlation_data or b"").hex()})

    return handle


def serve_echo(connect: Connect, topic_filter: str, **kwargs: Any) -> Connection:
    server = connect(start=False, **kwargs)
    server.subscribe(topic_filter, echo_responder(server))
    server.start()
    return server


@contextmanager
def private_broker(tmp_path: Path, body: str) -> Iterator[LocalBroker]:
    """A broker with a hand-written config (listener line and logging added here)."""
    head = "listener {port} 127.0.0.1\nlog_dest stderr\nset_tcp_nodelay true\n"
    user = "user root\n" if os.geteuid() == 0 else ""
    broker = LocalBroker(tmp_path / "private-broker", conf_text=head + user + body)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# -- request / reply ---------------------------------------------------------------------------------------------


def test_request_gets_the_reply_carrying_its_response_topic_and_correlation_data(
        mqtt_connect: Connect, topic_prefix: str) -> None:
    serve_echo(mqtt_connect, f"{topic_prefix}/rpc/#")
    client = mqtt_connect("cli-roundtrip")
    reply = client.request(f"{topic_prefix}/rpc/query/cli-roundtrip/health", {"request_id": "r1"}, timeout_s=5)
    assert reply["ok"] is True
    assert reply["echo"] == {"request_id": "r1"}
    assert reply["response_topic"] == f"{topic_prefix}/reply/cli-roundtrip"
    assert len(bytes.fromhex(reply["correlation"])) == 16


def test_concurrent_requests_from_many_threads_each_get_their_own_reply(
        mqtt_connect: Connect, topic_prefix: str) -> None:
    serve_echo(mqtt_connect, f"{topic_prefix}/rpc/#")
    client = mqtt_connect()
    results: dict[int, Any] = {}

    def ask(n: int) -> None:
        try:
            results[n] = client.request(f"{topic_prefix}/rpc/query/x/echo", {"n": n}, timeout_s=10)["echo"]["n"]
        except Exception as e:  # recorded, so the assertion below names it
            results[n] = e

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert results == {n: n for n in range(16)}


def test_request_nobody_answers_raises_request_timeout_naming_broker_and_topic(
        mqtt_connect: Connect, topic_prefix: str, broker_url: str) -> None:
    client = mqtt_connect()
    topic = f"{topic_prefix}/rpc/query/x/nobody"
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError) as e:
        client.request(topic, {"request_id": "r"}, timeout_s=0.5)
    assert time.monotonic() - started < 2.0
    assert topic in str(e.value) and broker_url in str(e.value)


def test_handler_may_call_request_without_deadlocking_its_own_dispatcher(
        mqtt_connect: Connect, topic_prefix: str) -> None:
    serve_echo(mqtt_connect, f"{topic_prefix}/rpc/#")
    relay = mqtt_connect(start=False)
    answers: list[dict[str, Any]] = []
    relay.subscribe(f"{topic_prefix}/nudge",
                    lambda m: answers.append(relay.request(f"{topic_prefix}/rpc/query/r/echo", {"from": "handler"},
                                                           timeout_s=5)))
    relay.start()
    mqtt_connect().publish(f"{topic_prefix}/nudge", b"go")
    wait_until(lambda: answers, timeout_s=8, what="the handler's request to be answered")
    assert answers[0]["echo"] == {"from": "handler"}


def test_reply_to_a_message_without_response_topic_is_dropped_quietly(
        mqtt_connect: Connect, topic_prefix: str) -> None:
    conn = mqtt_connect()
    plain = Message(topic=f"{topic_prefix}/x", payload=b"{}", retain=False, dup=False, qos=1,
                    response_topic=None, correlation_data=None)
    conn.reply(plain, {"ok": True})


def test_mosquitto_rr_gets_a_reply_from_a_connection_based_responder(
        mqtt_connect: Connect, topic_prefix: str, mosquitto: LocalBroker) -> None:
    serve_echo(mqtt_connect, f"{topic_prefix}/rpc/query/+/+")
    out = subprocess.run(
        ["mosquitto_rr", "-h", "127.0.0.1", "-p", str(mosquitto.port), "--nodelay",
         "-t", f"{topic_prefix}/rpc/query/rr/health", "-e", f"{topic_prefix}/reply/rr",
         "-m", '{"request_id":"rr-1"}', "-W", "5"],
        capture_output=True, timeout=10, check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    reply = topics.decode(out.stdout.strip())
    assert reply["ok"] is True and reply["echo"] == {"request_id": "rr-1"}
    assert reply["response_topic"] == f"{topic_prefix}/reply/rr"


# -- handlers ----------------------------------------------------------------------------------------------------


def test_handler_that_raises_does_not_stop_the_next_message_being_handled(
        mqtt_connect: Connect, topic_prefix: str) -> None:
    seen: list[bytes] = []

    def fragile(msg: Message) -> None:
        seen.append(msg.payload)
        if msg.payload == b"boom":
            raise ValueError("handler bug")

    conn = mqtt_connect(start=False)
    conn.subscribe(f"{topic_prefix}/in", fragile)
    conn.start()
    sender = mqtt_connect()
    sender.publish_wait(f"{topic_prefix}/in", b"boom")
    sender.publish_wait(f"{topic_prefix}/in", b"after")
    wait_until(lambda: b"after" in seen, timeout_s=5, what="the message after the failing one")
    assert conn.connected


def test_overlapping_subscriptions_call_each_handler_once_per_message(
        mqtt_connect: Connect, topic_prefix: str) -> None:
    wide: list[str] = []
    narrow: list[str] = []
    conn = mqtt_connect(start=False)
    conn.subscribe(f"{topic_prefix}/#", lambda m: wide.append(m.topic))
    conn.subscribe(f"{topic_prefix}/jobs/+/state", lambda m: narrow.append(m.topic))
    conn.start()
    sender = mqtt_connect()
    sender.publish_wait(f"{topic_prefix}/jobs/j1/state", {"status": "pending"})
    sender.publish_wait(f"{topic_prefix}/events", {"n": 1})
    wait_until(lambda: len(wide) >= 2, timeout_s=5, what="both messages on the wide filter")
    sender.publish_wait(f"{topic_prefix}/end", b"")
    wait_until(lambda: f"{topic_prefix}/end" in wide, timeout_s=5)
    assert wide == [f"{topic_prefix}/jobs/j1/state", f"{topic_prefix}/events", f"{topic_prefix}/end"]
    assert narrow == [f"{topic_prefix}/jobs/j1/state"]


def test_message_json_decodes_the_payload_and_retained_copies_say_so(
        mqtt_connect: Connect, topic_prefix: str) -> None:
    topic = f"{topic_prefix}/hosts/h1/status"
    mqtt_connect().publish_wait(topic, {"state": "online"}, retain=True)
    got: list[Message] = []
    late = mqtt_connect(start=False)
    late.subscribe(topic, got.append)
    late.start()
    wait_until(lambda: got, timeout_s=5, what="the retained status")
    assert got[0].retain and got[0].json() == {"state": "online"}


# -- sessions, wills, outages ------------------------------------------------------------------------------------


def test_persistent_session_receives_qos1_message_published_while_it_was_away(
        mqtt_connect: Connect, topic_prefix: str) -> None:
    topic = f"{topic_prefix}/control/h1"
    first = mqtt_connect("agent-h1", persistent=True, start=False)
    first.subscribe(topic, lambda m: None)
    twin = mqtt_connect("agent-h1-clean", start=False)
    twin.subscribe(topic, lambda m: None)
    for conn in (first, twin):
        conn.start()
        conn.stop()

    mqtt_connect().publish_wait(topic, {"action": "cancel", "job_id": "j1"})

    sessions: list[bool] = []
    got: list[Message] = []
    back = mqtt_connect("agent-h1", persistent=True, start=False, on_connect=sessions.append)
    back.subscribe(topic, got.append)
    twin_got: list[bytes] = []
    twin_back = mqtt_connect("agent-h1-clean", start=False)
    twin_back.subscribe(topic, lambda m: twin_got.append(m.payload))
    back.start()
    twin_back.start()
    wait_until(lambda: got, timeout_s=5, what="the queued control message")
    assert got[0].json() == {"action": "cancel", "job_id": "j1"} and got[0].qos == 1
    assert sessions == [True]
    # A clean session lost it: the first thing it sees is a marker sent after it came back.
    mqtt_connect().publish_wait(topic, b"marker")
    wait_until(lambda: twin_got, timeout_s=5)
    assert twin_got == [b"marker"]


def test_will_announces_offline_when_the_client_process_is_killed(
        mqtt_connect: Connect, topic_prefix: str, broker_url: str) -> None:
    topic = f"{topic_prefix}/hosts/victim/status"
    script = (
        "import sys, time\n"
        "from mqfleet.mqtt.connection import BrokerConfig, Connection\n"
        "c = Connection(BrokerConfig(sys.argv[1]), client_id='victim', will=(sys.argv[2], b'offline', True))\n"
        "c.start(wait_s=10)\n"
        "c.publish_wait(sys.argv[2], b'online', retain=True)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, broker_url, topic], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready and proc.stdout.readline() == b"ready\n"
        states: list[bytes] = []
        watcher = mqtt_connect(start=False)
        watcher.subscribe(topic, lambda m: states.append(m.payload))
        watcher.start()
        wait_until(lambda: states == [b"online"], timeout_s=5, what="the retained online status")
        os.kill(proc.pid, signal.SIGKILL)
        wait_until(lambda: b"offline" in states, timeout_s=5, what="the will")
        assert states == [b"online", b"offline"]
    finally:
        proc.kill()
        proc.wait(5)


def test_after_broker_restart_connections_resubscribe_and_requests_work_again(
        mqtt_connect: Connect, topic_prefix: str, broker: LocalBroker) -> None:
    connects: list[bool] = []
    lost: list[bool] = []
    serve_echo(mqtt_connect, f"{topic_prefix}/rpc/#", url=broker.url, on_connect=connects.append,
               on_disconnect=lambda: lost.append(True))
    client = mqtt_connect(url=broker.url)
    assert client.request(f"{topic_prefix}/rpc/query/c/echo", {"n": 1}, timeout_s=5)["echo"] == {"n": 1}
    broker.restart()
    wait_until(lambda: len(connects) >= 2 and client.connected, timeout_s=15, what="both clients to reconnect")
    assert lost == [True]
    assert client.request(f"{topic_prefix}/rpc/query/c/echo", {"n": 2}, timeout_s=5)["echo"] == {"n": 2}


def test_requests_time_out_while_the_broker_is_down_and_work_once_it_is_back(
        mqtt_connect: Connect, topic_prefix: str, broker: LocalBroker) -> None:
    serve_echo(mqtt_connect, f"{topic_prefix}/rpc/#", url=broker.url)
    client = mqtt_connect(url=broker.url)
    broker.kill()
    wait_until(lambda: not client.connected, timeout_s=5)
    with pytest.raises(RequestTimeoutError, match="not connected"):
        client.request(f"{topic_prefix}/rpc/query/c/echo", {"n": 1}, timeout_s=0.3)
    broker.restart()
    wait_until(lambda: client.connected, timeout_s=15, what="the client to reconnect")
    reply = wait_until(lambda: _try_request(client, f"{topic_prefix}/rpc/query/c/echo"), timeout_s=15)
    assert reply["ok"] is True


def _try_request(client: Connection, topic: str) -> dict[str, Any] | None:
    # The responder may reconnect a moment after the requester; a miss here is retried by wait_until.
    try:
        return client.request(topic, {"n": 2}, timeout_s=1)
    except RequestTimeoutError:
        return None


def test_final_messages_are_delivered_by_stop_while_a_clean_disconnect_discards_the_will(
        mqtt_connect: Connect, topic_prefix: str) -> None:
    topic = f"{topic_prefix}/hosts/h2/status"
    states: list[bytes] = []
    watcher = mqtt_connect(start=False)
    watcher.subscribe(topic, lambda m: states.append(m.payload))
    watcher.start()
    leaving = mqtt_connect("h2", will=(topic, b"will", True))
    leaving.stop(final=[(topic, b"offline", True)])
    wait_until(lambda: states, timeout_s=5)
    mqtt_connect().publish_wait(f"{topic}", b"marker")
    wait_until(lambda: b"marker" in states, timeout_s=5)
    assert states == [b"offline", b"marker"]


def test_start_without_waiting_connects_once_the_broker_comes_up(
        mqtt_connect: Connect, topic_prefix: str, tmp_path: Path) -> None:
    late = LocalBroker(tmp_path / "late-broker", port=free_port())
    connects: list[bool] = []
    early = mqtt_connect(url=late.url, wait_s=None, on_connect=connects.append)
    assert not early.connected
    with late:
        wait_until(lambda: connects, timeout_s=10, what="the early client to connect")
        assert early.connected


def test_publish_after_stop_raises_broker_unavailable(mqtt_connect: Connect, topic_prefix: str) -> None:
    conn = mqtt_connect()
    conn.stop()
    with pytest.raises(BrokerUnavailableError, match="not running"):
        conn.publish(f"{topic_prefix}/x", b"late")


# -- refusals ----------------------------------------------------------------------------------------------------


def test_start_against_a_port_with_nothing_listening_raises_within_the_wait() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    conn = Connection(BrokerConfig(url=url), client_id="nobody-home")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as e:
        conn.start(wait_s=1.5)
    assert time.monotonic() - started < 5.0
    assert url in str(e.value) and "refused" in str(e.value)
    assert not conn.connected


def test_refused_connack_fails_start_at_once_with_the_reason(tmp_path: Path) -> None:
    with private_broker(tmp_path, "allow_anonymous false\n") as broker:
        conn = Connection(BrokerConfig(url=broker.url), client_id="anon")
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError) as e:
            conn.start(wait_s=10)
        assert time.monotonic() - started < 3.0
        assert "Not authorized" in str(e.value) and broker.url in str(e.value)


def test_publish_wait_raises_when_the_broker_acl_refuses_the_topic(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite open/#\n")
    with private_broker(tmp_path, f"allow_anonymous true\nacl_file {acl}\n") as broker:
        conn = Connection(BrokerConfig(url=broker.url), client_id="limited")
        conn.start(wait_s=5)
        try:
            conn.publish_wait("open/x", b"fine", timeout_s=5)
            with pytest.raises(BrokerUnavailableError, match="refused publish to closed/x"):
                conn.publish_wait("closed/x", b"denied", timeout_s=5)
        finally:
            conn.stop()


def test_mqtts_with_client_certificate_round_trips_and_a_foreign_ca_fails_verification(tmp_path: Path) -> None:
    from mqfleet.trust import certs

    ca_dir, other_dir = tmp_path / "ca", tmp_path / "other-ca"
    ca_cert, _ = certs.make_ca(ca_dir)
    server_cert, server_key = certs.issue_cert(ca_dir, cn="broker", role="server")
    client_cert, client_key = certs.issue_cert(ca_dir, cn="h1", role="agent")
    other_ca, _ = certs.make_ca(other_dir)
    tls = (f"cafile {ca_cert}\ncertfile {server_cert}\nkeyfile {server_key}\n"
           "require_certificate true\nuse_identity_as_username true\n")
    with private_broker(tmp_path, tls) as broker:
        url = f"mqtts://localhost:{broker.port}"
        good = BrokerConfig(url=url, ca=str(ca_cert), cert=str(client_cert), key=str(client_key))
        server = Connection(good, client_id="tls-server")
        server.subscribe("rpc/#", echo_responder(server))
        client = Connection(good, client_id="tls-client")
        try:
            server.start(wait_s=5)
            client.start(wait_s=5)
            assert client.request("rpc/q", {"n": 1}, timeout_s=5)["echo"] == {"n": 1}
        finally:
            client.stop()
            server.stop()

        stranger = Connection(BrokerConfig(url=url, ca=str(other_ca), cert=str(client_cert), key=str(client_key)),
                              client_id="tls-stranger")
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError, match="TLS verification failed"):
            stranger.start(wait_s=10)
        assert time.monotonic() - started < 5.0
