"""Mutual TLS and per-host ACLs, enforced by a real Mosquitto running the project's own mosquitto.conf.

The broker here is the root config rendered by `mosquitto_conf.render_broker_conf` with certificates
from `certs` and an ACL from `acl.render_acl`: only ports, paths, persistence and the user differ
from production. Clients are paho (with strict X.509 verification) or the mosquitto command-line
tools, so nothing in the checks is ours.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from mqfleet.errors import ConfigurationError
from mqfleet.hostid import MONITOR_USER
from mqfleet.local.ports import free_port
from mqfleet.trust.acl import render_acl, write_acl
from mqfleet.trust.certs import CertRole, issue_cert, make_ca, revoke_cert
from mqfleet.trust.monitor_accounts import set_password, write_options
from mqfleet.trust.mosquitto_conf import CONF_FILE, PASSWD_FILE, ROOT_CONF, render_broker_conf
from mqfleet.wire.topics import BROKER_LOG_NOTICES, Role, Topics, Verb

T = Topics()
HOSTS = ["host-a", "host-b"]
OPERATORS = ["alice"]
NOT_AUTHORIZED = 0x87
WAIT_S = 5.0
MONITOR_PASSWORD = "monitor-test-password"
#: How long a raw TLS client listens for the broker's refusal before it sends CONNECT.
ALERT_WAIT_S = 1.0

if shutil.which("mosquitto") is None:  # pragma: no cover
    if os.environ.get("CI"):
        raise RuntimeError("mosquitto is not installed; CI needs the real broker")
    pytest.skip("mosquitto is not installed", allow_module_level=True)


@dataclass
class Broker:
    """A running mosquitto started from the rendered production config."""

    dir: Path
    port_tls: int
    port_local: int
    proc: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    def cert(self, stem: str) -> tuple[Path, Path]:
        return self.dir / f"{stem}.crt", self.dir / f"{stem}.key"

    def reload(self, *, hosts: list[str], operators: list[str] = OPERATORS) -> None:
        """Re-render the ACL and SIGHUP, as an operator does; returns once the broker logged the reload."""
        mark = len(self.log)
        write_acl(self.dir / "acl", render_acl(hosts, operators=operators))
        self.proc.send_signal(signal.SIGHUP)
        _wait_until(lambda: any("Reloading config" in line for line in self.log[mark:]), "the broker reloaded")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with the broker's, coordinator's, agents', an operator's and some bad certificates."""
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, days=30)
    issue_cert(d, cn="broker", role=CertRole.SERVER, sans=("DNS:localhost", "IP:127.0.0.1"))
    issue_cert(d, cn="coordinator", role=CertRole.COORDINATOR)
    for host in [*HOSTS, "stranger", "late-host"]:
        issue_cert(d, cn=host, role=CertRole.AGENT)
    issue_cert(d, cn="alice", role=CertRole.OPERATOR)
    # a known host's name, but expired: the name must not help it in
    issue_cert(d, cn="host-a", role=CertRole.AGENT, days=-1, out_dir=d / "expired")
    other = d / "other-ca"
    make_ca(other, days=30)
    issue_cert(other, cn="host-a", role=CertRole.AGENT)
    issue_cert(d, cn="host-a", role=CertRole.AGENT, out_dir=d / "revoked")
    revoke_cert(d, d / "revoked" / "host-a.crt")
    set_password(d / PASSWD_FILE, MONITOR_USER, MONITOR_PASSWORD)
    write_options(d / "monitor" / "mosquitto_sub", user=MONITOR_USER, password=MONITOR_PASSWORD, port=None)
    return d


@pytest.fixture
def start_broker(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[list[str]], Broker]]:
    """Starts brokers from the root mosquitto.conf on free ports; stops each by PID when the test ends."""
    started: list[Broker] = []

    def start(hosts: list[str]) -> Broker:
        d = tmp_path_factory.mktemp("broker")
        shutil.copytree(pki, d, dirs_exist_ok=True)
        write_acl(d / "acl", render_acl(hosts, operators=OPERATORS))
        for _ in range(3):  # the free-port trick can race with another process
            port_tls, port_local = free_port(), free_port()
            conf = d / CONF_FILE
            conf.write_text(
                render_broker_conf(
                    conf_dir=d,
                    port_tls=port_tls,
                    port_local=port_local,
                    bind="127.0.0.1",
                    persistence_dir=d / "persist",
                    user="root",
                )
            )
            (d / "persist").mkdir(exist_ok=True)
            broker = _spawn(d, conf, port_tls, port_local)
            started.append(broker)
            if broker.proc.poll() is None:
                return broker
        raise AssertionError("mosquitto did not start:\n" + "\n".join(broker.log))

    yield start
    for broker in started:
        _stop(broker.proc)


@pytest.fixture
def broker(start_broker: Callable[[list[str]], Broker]) -> Broker:
    return start_broker(HOSTS)


class Peer:
    """One paho MQTT v5 client over mutual TLS, with bounded waits for every acknowledgement."""

    def __init__(self, broker: Broker, stem: str, *, client_id: str) -> None:
        ctx = ssl.create_default_context(cafile=str(broker.dir / "ca.crt"))
        # the profile must pass strict verification (Python 3.13's default) on the client side too
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        cert, key = broker.cert(stem)
        ctx.load_cert_chain(str(cert), str(key))
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._acks: dict[int, ReasonCode] = {}
        self._cond = threading.Condition()
        self._connected: ReasonCode | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = lambda c, u, mid, codes, p: self._on_ack(c, u, mid, codes[0], p)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.connect("127.0.0.1", broker.port_tls, keepalive=10)
        self.client.loop_start()
        with self._cond:
            assert self._cond.wait_for(lambda: self._connected is not None, WAIT_S), f"{stem}: no CONNACK"
        assert self._connected is not None and not self._connected.is_failure, f"{stem}: {self._connected}"

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: ReasonCode, props: object) -> None:
        with self._cond:
            self._connected = rc
            self._cond.notify_all()

    def _on_ack(self, client: mqtt.Client, userdata: object, mid: int, rc: ReasonCode, props: object) -> None:
        with self._cond:
            self._acks[mid] = rc
            self._cond.notify_all()

    def _wait_ack(self, mid: int) -> ReasonCode:
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._acks, WAIT_S), f"no acknowledgement of mid {mid}"
            return self._acks.pop(mid)

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> ReasonCode:
        """The PUBACK reason code of a QoS 1 publish."""
        return self._wait_ack(self.client.publish(topic, payload, qos=1, retain=retain).mid)

    def subscribe(self, topic_filter: str) -> None:
        _, mid = self.client.subscribe(topic_filter, qos=1)
        assert mid is not None, "subscribe was not sent"
        assert not self._wait_ack(mid).is_failure

    def receive_until(self, topic: str) -> list[tuple[str, str]]:
        """Every (topic, payload) received up to and including the first on `topic`."""
        got: list[tuple[str, str]] = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            got.append((msg.topic, msg.payload.decode()))
            if msg.topic == topic:
                return got
        raise AssertionError(f"nothing arrived on {topic} within {WAIT_S}s; got {got}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers(broker: Broker) -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def connect(stem: str, client_id: str | None = None) -> Peer:
        peer = Peer(broker, stem, client_id=client_id or f"agent-{stem}")
        made.append(peer)
        return peer

    yield connect
    for peer in made:
        peer.close()


def test_agent_publishes_its_own_advert_and_rpc_and_the_coordinator_receives_them(peers: Callable[..., Peer]) -> None:
    coordinator = peers("coordinator", "coordinator")
    coordinator.subscribe(f"{T.prefix}/#")
    agent = peers("host-a")
    assert not agent.publish(T.advert("host-a"), "advert-a").is_failure
    assert not agent.publish(T.rpc(Role.AGENT, "host-a", Verb.CLAIM), "claim-a").is_failure
    got = coordinator.receive_until(T.rpc(Role.AGENT, "host-a", Verb.CLAIM))
    assert (T.advert("host-a"), "advert-a") in got


def test_agent_cannot_publish_another_hosts_advert_or_rpc(peers: Callable[..., Peer]) -> None:
    coordinator = peers("coordinator", "coordinator")
    coordinator.subscribe(f"{T.prefix}/#")
    agent = peers("host-a")
    assert agent.publish(T.advert("host-b"), "forged advert").value == NOT_AUTHORIZED
    assert agent.publish(T.rpc(Role.AGENT, "host-b", Verb.CLAIM), "forged claim").value == NOT_AUTHORIZED
    assert agent.publish(T.status("host-b"), "forged status").value == NOT_AUTHORIZED
    assert not agent.publish(T.advert("host-a"), "marker").is_failure
    got = coordinator.receive_until(T.advert("host-a"))
    assert [m for m in got if "host-b" in m[0]] == []


def test_agent_cannot_read_another_hosts_control_messages(peers: Callable[..., Peer]) -> None:
    agent = peers("host-a")
    agent.subscribe(f"{T.prefix}/control/#")  # granted: Mosquitto filters at delivery
    coordinator = peers("coordinator", "coordinator")
    assert not coordinator.publish(T.control("host-b"), "cancel on b").is_failure
    assert not coordinator.publish(T.control("host-a"), "cancel on a").is_failure
    assert agent.receive_until(T.control("host-a")) == [(T.control("host-a"), "cancel on a")]


def test_each_client_reads_replies_to_its_own_client_id_only(peers: Callable[..., Peer]) -> None:
    agent = peers("host-a")
    agent.subscribe(f"{T.prefix}/reply/#")
    coordinator = peers("coordinator", "coordinator")
    assert not coordinator.publish(T.reply("agent-host-b"), "lease for b").is_failure
    assert not coordinator.publish(T.reply("cli-1234"), "reply to a cli").is_failure
    assert not coordinator.publish(T.reply("agent-host-a"), "lease for a").is_failure
    assert agent.receive_until(T.reply("agent-host-a")) == [(T.reply("agent-host-a"), "lease for a")]


def test_agent_certificate_cannot_publish_operator_verbs(peers: Callable[..., Peer]) -> None:
    agent = peers("host-a")
    assert agent.publish(T.rpc(Role.OPERATOR, "agent-host-a", Verb.CANCEL), "{}").value == NOT_AUTHORIZED
    assert agent.publish(T.rpc(Role.OPERATOR, "cli-1", Verb.RELOAD), "{}").value == NOT_AUTHORIZED


def test_operator_certificate_publishes_operator_verbs_but_not_agent_ones(peers: Callable[..., Peer]) -> None:
    coordinator = peers("coordinator", "coordinator")
    coordinator.subscribe(T.all_rpc)
    operator = peers("operator-alice", "cli-77")
    cancel = T.rpc(Role.OPERATOR, "cli-77", Verb.CANCEL)
    assert operator.publish(T.rpc(Role.AGENT, "host-a", Verb.COMPLETE), "{}").value == NOT_AUTHORIZED
    assert not operator.publish(cancel, '{"job": "x"}').is_failure
    assert coordinator.receive_until(cancel) == [(cancel, '{"job": "x"}')]


def test_unknown_certificate_gets_public_reads_and_queries_only(peers: Callable[..., Peer]) -> None:
    coordinator = peers("coordinator", "coordinator")
    coordinator.subscribe(T.all_rpc)
    stranger = peers("stranger", "cli-stranger")
    stranger.subscribe(f"{T.prefix}/#")
    query = T.rpc(Role.QUERY, "cli-stranger", Verb.JOBS)
    assert stranger.publish(T.advert("stranger"), "i am new").value == NOT_AUTHORIZED
    assert stranger.publish(T.rpc(Role.AGENT, "stranger", Verb.CLAIM), "{}").value == NOT_AUTHORIZED
    assert stranger.publish(T.rpc(Role.QUERY, "cli-someone-else", Verb.JOBS), "{}").value == NOT_AUTHORIZED
    assert not stranger.publish(query, "{}").is_failure
    assert coordinator.receive_until(query) == [(query, "{}")]
    assert not coordinator.publish(T.log("host-a", "job1"), "a log line").is_failure
    assert not coordinator.publish(T.control("stranger"), "not for strangers").is_failure
    assert not coordinator.publish(T.events, "public event").is_failure
    assert stranger.receive_until(T.events) == [(T.events, "public event")]


def test_agent_will_fires_on_its_own_status_topic_only(broker: Broker, peers: Callable[..., Peer]) -> None:
    coordinator = peers("coordinator", "coordinator")
    coordinator.subscribe(f"{T.prefix}/hosts/#")
    forged = _sub_with_will(broker, "host-a", T.status("host-b"))
    own = _sub_with_will(broker, "host-a", T.status("host-a"), client_id="agent-host-a-2")
    for proc in (forged, own):  # a crash: the socket closes without DISCONNECT, so the will goes out
        proc.kill()
        proc.wait(WAIT_S)
    got = coordinator.receive_until(T.status("host-a"))
    assert (T.status("host-a"), "offline") in got
    assert [m for m in got if m[0] == T.status("host-b")] == []


@pytest.mark.parametrize(
    ("cert", "alert", "broker_says"),
    [
        (None, "CERTIFICATE_REQUIRED", "peer did not return a certificate"),
        ("other-ca/host-a", "", "certificate verify failed"),
        ("expired/host-a", "CERTIFICATE_EXPIRED", "certificate verify failed"),
        ("revoked/host-a", "CERTIFICATE_REVOKED", "certificate verify failed"),
    ],
    ids=["no client certificate", "another CA", "expired", "revoked"],
)
def test_bad_client_certificate_is_refused_at_the_handshake_quickly(
    broker: Broker, cert: str | None, alert: str, broker_says: str
) -> None:
    mark = len(broker.log)
    started = time.monotonic()
    outcome = _try_mqtt_connect(broker, cert)
    assert time.monotonic() - started < WAIT_S, "the refusal took too long"
    assert outcome.startswith("tls alert") and alert in outcome, outcome
    _wait_until(lambda: any(broker_says in line for line in broker.log[mark:]), f"the broker logged {broker_says!r}")


def test_good_client_certificate_passes_the_same_raw_connect(broker: Broker) -> None:
    # the control for the refusal test above: the same bytes with a valid certificate get a CONNACK
    assert _try_mqtt_connect(broker, "host-a") == "connack"


class LocalClient:
    """A paho MQTT v5 client on the loopback listener, as any local account could run one."""

    def __init__(self, broker: Broker, client_id: str, *, login: tuple[str, str] | None = None) -> None:
        self.seen: queue.Queue[str] = queue.Queue()
        self.acks: dict[int, ReasonCode] = {}
        self.connack: ReasonCode | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                  reconnect_on_failure=False)
        if login is not None:
            self.client.username_pw_set(*login)
        self.client.on_message = lambda c, u, msg: self.seen.put(msg.topic)
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc)
        self.client.on_connect = lambda c, u, flags, rc, p: setattr(self, "connack", rc)
        self.client.connect("127.0.0.1", broker.port_local, keepalive=10)
        self.client.loop_start()
        _wait_until(lambda: self.connack is not None, "the loopback listener's CONNACK")

    def publish(self, topic: str) -> ReasonCode:
        mid = self.client.publish(topic, "local", qos=1).mid
        _wait_until(lambda: mid in self.acks, f"PUBACK for {topic}")
        return self.acks[mid]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_loopback_listener_refuses_anonymous_clients_so_none_can_take_the_coordinators_client_id(
    broker: Broker, peers: Callable[..., Peer]
) -> None:
    """Issue 25 item 2 (X1): any local account connected without a certificate as `coordinator`, which
    disconnected the coordinator and ended its session. Now the loopback listener takes no anonymous client."""
    coordinator = peers("coordinator", "coordinator")
    agent = peers("host-a", "agent-host-a")
    mark = len(broker.log)
    for client_id in ("coordinator", "agent-host-a"):
        intruder = LocalClient(broker, client_id)
        try:
            assert intruder.connack is not None and intruder.connack.getName() == "Not authorized", intruder.connack
        finally:
            intruder.close()
    assert not any("already connected" in line for line in broker.log[mark:]), broker.log[mark:]
    assert coordinator.client.is_connected() and agent.client.is_connected()
    assert not agent.publish(T.advert("host-a"), "still here").is_failure


def test_monitoring_account_reads_public_state_only_under_its_own_user_name_whatever_client_id_it_asks(
    broker: Broker, peers: Callable[..., Peer]
) -> None:
    """The loopback listener's monitoring account (`mqfleet broker monitor`): `mosquitto_sub` still shows
    the fleet, but no operator request, reply, control message, log or broker log, it can publish nothing,
    and asking for a fleet client id gets it its user name instead, so it takes no one's session."""
    coordinator = peers("coordinator", "coordinator")
    operator = peers("operator-alice", "cli-alice")
    agent = peers("host-a", "agent-host-a")
    mark = len(broker.log)
    local = LocalClient(broker, "agent-host-a", login=(MONITOR_USER, MONITOR_PASSWORD))
    try:
        assert local.connack is not None and not local.connack.is_failure, local.connack
        _wait_until(lambda: any(f"as {MONITOR_USER} " in line for line in broker.log[mark:]), "the broker named it")
        assert not any("already connected" in line for line in broker.log[mark:])
        assert agent.client.is_connected()
        local.client.subscribe([(f"{T.prefix}/#", 1), ("$SYS/broker/log/#", 1)])
        _wait_until(lambda: coordinator.publish(T.coordinator_status, "{}") is not None and not local.seen.empty(),
                    "the monitoring account to get public state")
        for peer, topic in ((operator, T.rpc(Role.OPERATOR, "cli-alice", Verb.CANCEL)),
                            (coordinator, T.reply("cli-alice")), (coordinator, T.control("host-a")),
                            (coordinator, T.reply("agent-host-a")), (coordinator, T.reply(MONITOR_USER)),
                            (agent, T.log("host-a", "job-1")), (agent, T.rpc(Role.AGENT, "host-a", Verb.CLAIM))):
            assert not peer.publish(topic, '{"token": "would-be-secret"}').is_failure, topic
        agent.publish(T.advert("host-a"), "{}")
        got: list[str] = []
        while len(got) < 50:
            try:
                got.append(local.seen.get(timeout=1.0))
            except queue.Empty:
                break
        assert T.advert("host-a") in got
        assert not [t for t in got if "/rpc/" in t or "/reply/" in t or "/control/" in t or "/log/" in t], got
        for topic in (T.rpc(Role.AGENT, "host-b", Verb.CLAIM), T.rpc(Role.OPERATOR, "x", Verb.CANCEL),
                      T.rpc(Role.QUERY, MONITOR_USER, Verb.HEALTH), T.advert("host-b"), T.control("host-a"),
                      T.coordinator_status):
            assert local.publish(topic).value == NOT_AUTHORIZED, topic
    finally:
        local.close()


def test_a_wrong_monitoring_password_is_refused(broker: Broker) -> None:
    local = LocalClient(broker, "monitor", login=(MONITOR_USER, "not-it"))
    try:
        assert local.connack is not None and local.connack.is_failure
    finally:
        local.close()


def test_mosquitto_sub_reads_public_state_through_the_monitoring_accounts_options_file(
    broker: Broker, peers: Callable[..., Peer]
) -> None:
    """As docs/OPERATIONS.md says: `XDG_CONFIG_HOME=/etc/mqfleet/monitor mosquitto_sub -v -t 'mqfleet/#'`."""
    coordinator = peers("coordinator", "coordinator")
    assert not coordinator.publish(T.coordinator_status, '{"state": "online"}', retain=True).is_failure
    env = {**os.environ, "XDG_CONFIG_HOME": str(broker.dir / "monitor")}
    done = subprocess.run(["mosquitto_sub", "-p", str(broker.port_local), "-v", "-t", f"{T.prefix}/#", "-C", "1",
                           "-W", "5"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f'{T.coordinator_status} {{"state": "online"}}'
    anonymous = subprocess.run(["mosquitto_sub", "-p", str(broker.port_local), "-t", f"{T.prefix}/#", "-C", "1",
                                "-W", "5"], capture_output=True, text=True, timeout=30)
    assert anonymous.returncode != 0 and "not authorised" in anonymous.stderr


def test_only_the_coordinator_reads_the_brokers_connection_log(broker: Broker, peers: Callable[..., Peer]) -> None:
    coordinator = peers("coordinator", "coordinator-watch")
    coordinator.subscribe(BROKER_LOG_NOTICES)
    agent = peers("host-a", "agent-host-a")
    agent.subscribe(BROKER_LOG_NOTICES)
    operator = peers("operator-alice", "cli-alice")
    operator.subscribe(BROKER_LOG_NOTICES)
    peers("host-b", "agent-host-b")
    lines: list[str] = []
    for _ in range(20):  # a line per connection event; host B's connect is among the next few
        lines += [payload for _, payload in coordinator.receive_until(BROKER_LOG_NOTICES)]
        if any("as agent-host-b " in line for line in lines):
            break
    assert any("New client connected from 127.0.0.1:" in line and "as agent-host-b " in line for line in lines), lines
    assert agent.messages.empty() and operator.messages.empty()


def test_a_host_cannot_retain_messages_under_its_path_beyond_advert_status_and_logs(peers: Callable[..., Peer]) -> None:
    """Issue 25 item 9 (X6): `hosts/H/#` let a host park any number of retained messages on the broker."""
    agent = peers("host-a")
    for topic in (f"{T.prefix}/hosts/host-a/junk", f"{T.prefix}/hosts/host-a/advert/deeper",
                  f"{T.prefix}/hosts/host-a/log/job-1/more", f"{T.prefix}/rpc/agent/host-a/no-such-verb"):
        assert agent.publish(topic, "x" * 1000, retain=True).value == NOT_AUTHORIZED, topic
    for topic in (T.advert("host-a"), T.status("host-a"), T.log("host-a", "job-1"),
                  T.rpc(Role.AGENT, "host-a", Verb.CLAIM)):
        assert not agent.publish(topic, "{}").is_failure, topic


def test_a_certificate_can_send_only_real_query_verbs_on_its_own_client_id(peers: Callable[..., Peer]) -> None:
    stranger = peers("stranger", "cli-stranger")
    assert stranger.publish(T.rpc(Role.QUERY, "cli-stranger", "no-such-verb"), "{}").value == NOT_AUTHORIZED
    assert stranger.publish(T.rpc(Role.QUERY, "cli-stranger", Verb.HEALTH), "{}").value != NOT_AUTHORIZED
    operator = peers("operator-alice", "cli-alice")
    assert operator.publish(T.rpc(Role.OPERATOR, "cli-alice", "no-such-verb"), "{}").value == NOT_AUTHORIZED


def test_enrolled_host_gets_its_topics_after_acl_rerender_and_sighup(
    broker: Broker, peers: Callable[..., Peer]
) -> None:
    late = peers("late-host")
    assert late.publish(T.advert("late-host"), "hello").value == NOT_AUTHORIZED
    broker.reload(hosts=[*HOSTS, "late-host"])
    assert not late.publish(T.advert("late-host"), "hello").is_failure


def test_removed_host_loses_its_rights_on_sighup_even_while_connected(
    broker: Broker, peers: Callable[..., Peer]
) -> None:
    agent = peers("host-b")
    agent.subscribe(T.control("host-b"))
    agent.subscribe(T.events)
    assert not agent.publish(T.advert("host-b"), "still enrolled").is_failure
    broker.reload(hosts=["host-a"])
    assert agent.publish(T.advert("host-b"), "still here?").value == NOT_AUTHORIZED
    coordinator = peers("coordinator", "coordinator")
    assert not coordinator.publish(T.control("host-b"), "cancel").is_failure
    assert not coordinator.publish(T.events, "marker").is_failure
    assert agent.receive_until(T.events) == [(T.events, "marker")]


def test_revoked_certificate_is_refused_after_sighup_without_restart(broker: Broker) -> None:
    assert _try_mqtt_connect(broker, "host-b") == "connack"
    revoke_cert(broker.dir, broker.dir / "host-b.crt")
    broker.reload(hosts=HOSTS)
    assert _try_mqtt_connect(broker, "host-b") != "connack"


def test_rendered_config_differs_from_the_root_file_only_in_ports_paths_persistence_and_user(tmp_path: Path) -> None:
    root = ROOT_CONF.read_text().splitlines()
    rendered = render_broker_conf(
        conf_dir=tmp_path, port_tls=18883, port_local=11883, persistence_dir=tmp_path / "p", user="root"
    ).splitlines()
    assert len(root) == len(rendered)
    changed = {a.split()[0] for a, b in zip(root, rendered, strict=True) if a != b}
    assert changed == {
        "listener",
        "acl_file",
        "password_file",
        "cafile",
        "certfile",
        "keyfile",
        "crlfile",
        "persistence_location",
        "user",
    }
    assert f"acl_file {tmp_path}/acl" in rendered and "require_certificate true" in rendered


def test_anonymous_loopback_for_tests_changes_only_the_anonymous_and_client_id_lines(tmp_path: Path) -> None:
    production, tests = (render_broker_conf(conf_dir=tmp_path, anonymous_loopback=a).splitlines() for a in (False, True))
    changed = [(a, b) for a, b in zip(production, tests, strict=True) if a != b]
    assert changed == [("allow_anonymous false", "allow_anonymous true"),
                       ("use_username_as_clientid true",
                        "# use_username_as_clientid true (left out: anonymous loopback, tests only)")]


def test_template_that_pins_client_ids_on_the_wrong_listener_or_lets_anonymous_in_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "mosquitto.conf"
    root = ROOT_CONF.read_text()
    moved = root.replace("use_username_as_clientid true\n", "").replace("tls_version", "use_username_as_clientid true\ntls_version")
    for text in (moved, root.replace("allow_anonymous false", "allow_anonymous true")):
        template.write_text(text)
        with pytest.raises(ConfigurationError, match="use_username_as_clientid|allow_anonymous"):
            render_broker_conf(conf_dir=tmp_path, template=template)


def test_template_missing_an_expected_line_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "mosquitto.conf"
    template.write_text(ROOT_CONF.read_text().replace("crlfile ", "#crlfile "))
    with pytest.raises(ConfigurationError, match="crlfile"):
        render_broker_conf(conf_dir=tmp_path, template=template)


def test_operator_workflow_through_the_cli_yields_a_broker_that_pins_hosts(tmp_path: Path) -> None:
    d = tmp_path / "broker"
    manifest = tmp_path / "fleet.toml"
    manifest.write_text('[[hosts]]\nid = "host-a"\n[[hosts]]\nid = "host-b"\n')
    port_tls, port_local = free_port(), free_port()
    for args in (
        ["ca", "--dir", str(d), "--days", "30"],
        ["issue", "--dir", str(d), "--cn", "broker", "--role", "server"],
        ["issue", "--dir", str(d), "--cn", "host-a", "--role", "agent"],
        ["acl", "--manifest", str(manifest), "--operators", "alice", "--out", str(d / "acl")],
        ["monitor", "--passwd", str(d / "passwd"), "--options", str(d / "monitor" / "mosquitto_sub"),
         "--port", str(port_local)],
        [
            "render-conf",
            "--out",
            str(d),
            "--port-tls",
            str(port_tls),
            "--port-local",
            str(port_local),
            "--bind",
            "127.0.0.1",
            "--no-persistence",
            "--user",
            "root",
        ],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "mqfleet", "broker", *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{args[0]}: {done.stderr}"
    again = subprocess.run(
        [sys.executable, "-m", "mqfleet", "broker", "ca", "--dir", str(d)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1 and "already holds a CA" in again.stderr
    broker = _spawn(d, d / CONF_FILE, port_tls, port_local)
    try:
        assert broker.proc.poll() is None, broker.log
        agent = Peer(broker, "host-a", client_id="agent-host-a")
        try:
            assert not agent.publish(T.advert("host-a"), '{"slots": 1}', retain=True).is_failure
            assert agent.publish(T.advert("host-b"), "{}").value == NOT_AUTHORIZED
        finally:
            agent.close()
        # the monitoring account `broker monitor` made, through its options file alone
        monitor = subprocess.run(["mosquitto_sub", "-v", "-t", f"{T.prefix}/#", "-C", "1", "-W", "5"],
                                 env={**os.environ, "XDG_CONFIG_HOME": str(d / "monitor")}, capture_output=True,
                                 text=True, timeout=30)
        assert monitor.returncode == 0 and monitor.stdout.strip() == f'{T.advert("host-a")} {{"slots": 1}}', monitor
    finally:
        _stop(broker.proc)


# helpers


def _spawn(d: Path, conf: Path, port_tls: int, port_local: int) -> Broker:
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    broker = Broker(dir=d, port_tls=port_tls, port_local=port_local, proc=proc)

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            broker.log.append(line.rstrip())

    threading.Thread(target=read, daemon=True).start()
    _wait_until(lambda: proc.poll() is not None or any(" running" in line for line in broker.log), "mosquitto ran")
    return broker


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT_S)


def _wait_until(pred: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def _sub_with_will(
    broker: Broker, stem: str, will_topic: str, client_id: str = "agent-host-a"
) -> subprocess.Popen[str]:
    cert, key = broker.cert(stem)
    mark = len(broker.log)
    proc = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port_tls),
            "-V",
            "5",
            "--cafile",
            str(broker.dir / "ca.crt"),
            "--cert",
            str(cert),
            "--key",
            str(key),
            "-i",
            client_id,
            "-t",
            T.control(stem),
            "--will-topic",
            will_topic,
            "--will-payload",
            "offline",
            "--will-qos",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    _wait_until(lambda: any(f"as {client_id} " in line for line in broker.log[mark:]), f"{client_id} connected")
    return proc


def _try_mqtt_connect(broker: Broker, stem: str | None) -> str:
    """'connack' when a raw MQTT v5 CONNECT over TLS is answered; else how the connection ended."""
    ctx = ssl.create_default_context(cafile=str(broker.dir / "ca.crt"))
    if stem is not None:
        ctx.load_cert_chain(str(broker.dir / f"{stem}.crt"), str(broker.dir / f"{stem}.key"))
    client_id = b"probe"
    body = b"\x00\x04MQTT\x05\x02\x00\x0a\x00" + len(client_id).to_bytes(2, "big") + client_id
    try:
        with (
            socket.create_connection(("127.0.0.1", broker.port_tls), timeout=WAIT_S) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            # TLS 1.3 ends the client's handshake before the broker checks its certificate; the
            # broker's alert follows at once. Writing first could meet a reset that hides the alert.
            tls.settimeout(ALERT_WAIT_S)
            try:
                first = tls.recv(1)
            except TimeoutError:
                tls.settimeout(WAIT_S)
                tls.sendall(bytes([0x10, len(body)]) + body)
                first = tls.recv(1)
    except ssl.SSLError as e:
        return f"tls alert: {e.reason or type(e).__name__}"
    except (ConnectionResetError, BrokenPipeError) as e:
        return f"reset: {e}"
    return "connack" if first == b"\x20" else f"closed: {first!r}"
