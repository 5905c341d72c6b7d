"""One host-id rule (mqfleet/hostid.py): the manifest, the agent, the ACL and the CA accept exactly the same ids,
so a host the manifest names can always be given a certificate and run an agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mqfleet.agent.daemon import AgentConfig
from mqfleet.errors import ConfigurationError, ManifestError
from mqfleet.hostid import check_host_id, host_id_problem
from mqfleet.manifest.load import parse_manifest
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.trust.acl import render_acl
from mqfleet.trust.certs import CertRole, issue_cert, make_ca

GOOD = ["gpu-box", "h1", "Pi.local", "rack_2-node.07", "x" * 64]
#: too long for a CN, a topic separator or wildcard, a blank, a control character, a leading dash; the names the
#: ACL grants an operator's, the coordinator's or a monitoring account's rights by
BAD = ["", "x" * 65, "a/b", "a+b", "a#", "a b", "tab\there", "x\ny", "trailing\n", "-lead", ".hidden", "héte",
       "operator-eve", "coordinator", "monitor", "monitor-nagios"]


def manifest_accepts(host_id: str) -> bool:
    text = f'[trainers.t]\ncommand = ["true"]\n\n[[hosts]]\nid = {json.dumps(host_id)}\n'
    try:
        parse_manifest(text, "test.toml")
    except ManifestError as e:
        assert [p.place for p in e.problems] == ["hosts[0].id"]
        return False
    return True


def agent_accepts(host_id: str, repo: Path) -> bool:
    try:
        AgentConfig(host_id=host_id, broker=BrokerConfig(), work_dir=repo / "work", repo=repo).validate()
    except ConfigurationError:
        return False
    return True


def ca_accepts(host_id: str, ca: Path) -> bool:
    try:
        issue_cert(ca, cn=host_id, role=CertRole.AGENT, out_dir=ca / "issued")
    except ConfigurationError:
        return False
    return True


def acl_accepts(host_id: str) -> bool:
    try:
        render_acl([host_id])
    except ConfigurationError:
        return False
    return True


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca")
    make_ca(directory, days=30)
    return directory


@pytest.mark.parametrize("host_id", GOOD + BAD)
def test_the_manifest_the_agent_the_acl_and_the_ca_agree_on_every_host_id(host_id: str, ca: Path, tmp_path: Path) -> None:
    expected = host_id in GOOD
    assert (host_id_problem(host_id) is None) is expected
    verdicts = {"manifest": manifest_accepts(host_id), "agent": agent_accepts(host_id, tmp_path),
                "acl": acl_accepts(host_id), "ca": ca_accepts(host_id, ca)}
    assert verdicts == dict.fromkeys(verdicts, expected)


def test_a_refused_host_id_says_what_a_host_id_may_be() -> None:
    with pytest.raises(ConfigurationError, match="1-64 characters of letters, digits"):
        check_host_id("x" * 100)
    with pytest.raises(ConfigurationError, match="operator, coordinator or monitoring rights"):
        check_host_id("operator-eve")
    message = parse_problem('id = "a b"')
    assert message.startswith('"a b" cannot be a host id: it must be 1-64 characters')


def parse_problem(line: str) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifest(f'[trainers.t]\ncommand = ["true"]\n\n[[hosts]]\n{line}\n', "test.toml")
    return info.value.problems[0].message
