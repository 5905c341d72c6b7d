"""Broker URLs and TLS file checks: what BrokerConfig accepts, and what it tells the operator to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqfleet import defaults
from mqfleet.cli import main
from mqfleet.cli.exit_codes import EXIT_USAGE
from mqfleet.errors import ConfigurationError
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883, False),
        ("mqtt://broker.lan", "broker.lan", 1883, False),
        ("mqtts://broker.lan", "broker.lan", 8883, True),
        ("mqtts://pi:9883/", "pi", 9883, True),
        ("mqtt://[::1]:1999", "::1", 1999, False),
    ],
)
def test_url_gives_host_port_and_tls_with_scheme_default_ports(url: str, host: str, port: int, tls: bool) -> None:
    config = BrokerConfig(url=url)
    assert (config.host, config.port, config.tls) == (host, port, tls)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://broker:1883", "scheme must be mqtt or mqtts"),
        ("broker:1883", "scheme must be mqtt or mqtts"),
        ("mqtt://:1883", "names no host"),
        ("mqtt://broker:notaport", "not valid"),
        ("mqtt://broker:70000", "not valid"),
        ("mqtt://user:pw@broker:1883", "only scheme, host and port"),
        ("mqtt://broker:1883/topic", "only scheme, host and port"),
    ],
)
def test_bad_url_is_refused_naming_the_url_and_the_flag_to_fix(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        BrokerConfig(url=url).validate()
    assert complaint in str(e.value)
    assert url in str(e.value)
    assert defaults.ENV_BROKER in str(e.value)


def test_the_cli_takes_the_broker_from_its_flag_then_the_environment_and_checks_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(defaults.ENV_BROKER, "tcp://from-env")
    assert main(["status"]) == EXIT_USAGE
    assert "'tcp://from-env': scheme must be mqtt or mqtts" in capsys.readouterr().err
    assert main(["status", "--broker", "tcp://from-flag"]) == EXIT_USAGE
    assert "'tcp://from-flag'" in capsys.readouterr().err


def test_tls_files_are_ignored_for_a_plain_mqtt_url(tmp_path: Path) -> None:
    BrokerConfig(url="mqtt://127.0.0.1:1883", ca=str(tmp_path / "missing.pem")).validate()


def test_mqtts_with_a_missing_ca_file_names_the_ca_flag_and_env_var(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    with pytest.raises(ConfigurationError) as e:
        BrokerConfig(url="mqtts://pi", ca=str(missing)).validate()
    assert str(missing) in str(e.value)
    assert "--ca" in str(e.value) and defaults.ENV_CA in str(e.value)


def test_mqtts_with_a_cert_but_no_key_asks_for_the_key(tmp_path: Path) -> None:
    cert = tmp_path / "client.crt"
    cert.write_text("x")
    with pytest.raises(ConfigurationError) as e:
        BrokerConfig(url="mqtts://pi", cert=str(cert)).validate()
    assert defaults.ENV_KEY in str(e.value)


def test_mqtts_with_files_that_are_not_pem_is_refused_before_connecting(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match="TLS files are not usable"):
        BrokerConfig(url="mqtts://pi", ca=str(junk)).validate()


def test_the_cli_reads_tls_files_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(defaults.ENV_BROKER, "mqtts://pi")
    monkeypatch.setenv(defaults.ENV_CA, str(tmp_path / "absent-ca.pem"))
    assert main(["status"]) == EXIT_USAGE
    assert "absent-ca.pem" in capsys.readouterr().err


@pytest.mark.parametrize("client_id", ["", "a/b", "a+b", "a#"])
def test_client_id_that_would_break_the_reply_topic_is_refused(client_id: str) -> None:
    with pytest.raises(ConfigurationError, match="client id"):
        Connection(BrokerConfig(), client_id=client_id)


def test_reply_topic_sits_under_the_prefix_and_names_the_client() -> None:
    conn = Connection(BrokerConfig(), client_id="cli-abc", reply_prefix="fleet7")
    assert conn.reply_topic == "fleet7/reply/cli-abc"
