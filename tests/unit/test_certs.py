"""Certificate profile, file modes, refusals and the CRL, read back with `cryptography`'s own verifier."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from mqfleet.errors import ConfigurationError
from mqfleet.trust.certs import CertRole, common_name, issue_cert, make_ca, revoke_cert


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    make_ca(d, days=30)
    return d


def test_ca_is_a_critical_path_length_zero_ca_that_signs_certificates_and_crls(ca_dir: Path) -> None:
    ca = _load(ca_dir / "ca.crt")
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    assert ca.issuer == ca.subject
    assert ca.signature_hash_algorithm is not None and ca.signature_hash_algorithm.name == "sha256"
    assert x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes()).is_signature_valid(ca.public_key())  # type: ignore[arg-type]


def test_keys_are_owner_only_and_the_directory_is_private(tmp_path: Path) -> None:
    d = tmp_path / "fresh"
    _, ca_key = make_ca(d, days=30)
    _, key = issue_cert(d, cn="gpu-box", role=CertRole.AGENT)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "gpu-box.crt").stat().st_mode) == 0o644


def test_existing_ca_is_not_replaced_without_force(ca_dir: Path) -> None:
    before = (ca_dir / "ca.crt").read_bytes()
    with pytest.raises(ConfigurationError, match="already holds a CA"):
        make_ca(ca_dir, days=30)
    assert (ca_dir / "ca.crt").read_bytes() == before
    make_ca(ca_dir, days=30, force=True)
    assert (ca_dir / "ca.crt").read_bytes() != before


def test_agent_certificate_has_host_cn_client_auth_san_and_key_identifiers(ca_dir: Path) -> None:
    cert_path, _ = issue_cert(ca_dir, cn="gpu-box", role=CertRole.AGENT, days=10)
    cert, ca = _load(cert_path), _load(ca_dir / "ca.crt")
    assert common_name(cert) == "gpu-box"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "agent"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["gpu-box"]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=9) < lifetime <= dt.timedelta(days=10)
    cert.verify_directly_issued_by(ca)


def test_client_and_server_certificates_pass_webpki_strict_verification(ca_dir: Path) -> None:
    ca = _load(ca_dir / "ca.crt")
    store = Store([ca])
    server = _load(issue_cert(ca_dir, cn="broker", role=CertRole.SERVER, sans=("pi.lan", "IP:10.0.0.2"))[0])
    client = _load(issue_cert(ca_dir, cn="gpu-box", role=CertRole.AGENT)[0])
    PolicyBuilder().store(store).build_server_verifier(x509.DNSName("pi.lan")).verify(server, [])
    PolicyBuilder().store(store).build_server_verifier(x509.IPAddress(ipaddress.ip_address("10.0.0.2"))).verify(
        server, []
    )
    verified = PolicyBuilder().store(store).build_client_verifier().verify(client, [])
    assert verified.chain[-1] == ca
    with pytest.raises(VerificationError):  # a client certificate is no server certificate
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("gpu-box")).verify(client, [])


def test_server_certificate_defaults_to_loopback_names_and_is_stored_as_server(ca_dir: Path) -> None:
    cert_path, key_path = issue_cert(ca_dir, cn="broker", role=CertRole.SERVER)
    assert (cert_path.name, key_path.name) == ("server.crt", "server.key")
    cert = _load(cert_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_operator_cn_gets_the_operator_prefix_once(ca_dir: Path) -> None:
    assert common_name(_load(issue_cert(ca_dir, cn="alice", role="operator")[0])) == "operator-alice"
    assert common_name(_load(issue_cert(ca_dir, cn="operator-bob", role="operator")[0])) == "operator-bob"


@pytest.mark.parametrize("cn", ["operator-eve", "coordinator", "a/b", "+", "a b", "x\ny", "", "-lead"])
def test_agent_cn_that_is_reserved_or_unsafe_as_a_topic_level_is_refused(ca_dir: Path, cn: str) -> None:
    with pytest.raises(ConfigurationError):
        issue_cert(ca_dir, cn=cn, role=CertRole.AGENT)


def test_zero_or_negative_days_give_an_already_expired_certificate(ca_dir: Path) -> None:
    cert = _load(issue_cert(ca_dir, cn="old-box", role=CertRole.AGENT, days=-1)[0])
    now = dt.datetime.now(dt.timezone.utc)
    assert cert.not_valid_before_utc < cert.not_valid_after_utc < now - dt.timedelta(hours=23)


def test_bad_san_is_refused(ca_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="bad SAN"):
        issue_cert(ca_dir, cn="broker", role=CertRole.SERVER, sans=("IP:not-an-ip",))


def test_issuing_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="mqfleet broker ca"):
        issue_cert(tmp_path, cn="gpu-box", role=CertRole.AGENT)


def test_revoked_serial_is_listed_in_a_crl_signed_by_the_ca_once(ca_dir: Path) -> None:
    cert_path, _ = issue_cert(ca_dir, cn="gpu-box", role=CertRole.AGENT)
    keep = _load(issue_cert(ca_dir, cn="cpu-box", role=CertRole.AGENT)[0])
    revoke_cert(ca_dir, cert_path)
    revoke_cert(ca_dir, cert_path)
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.is_signature_valid(_load(ca_dir / "ca.crt").public_key())  # type: ignore[arg-type]
    assert [r.serial_number for r in crl] == [_load(cert_path).serial_number]
    assert crl.get_revoked_certificate_by_serial_number(keep.serial_number) is None
    assert crl.next_update_utc is not None and crl.next_update_utc > dt.datetime.now(dt.timezone.utc)


def test_certificate_from_another_ca_cannot_be_revoked_here(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    make_ca(other, days=30)
    foreign, _ = issue_cert(other, cn="gpu-box", role=CertRole.AGENT)
    with pytest.raises(ConfigurationError, match="not issued by"):
        revoke_cert(ca_dir, foreign)
