"""The fleet's certificate authority: makes the CA, issues broker and client certificates, keeps the CRL.

Every certificate follows one profile (EC P-256, SHA-256, critical basic constraints and key usage,
an EKU per role, SANs, key identifiers) that passes OpenSSL's strict verification, so Python 3.13's
`VERIFY_X509_STRICT` default and Mosquitto both accept it. Private keys are written 0600 in 0700
directories. The file names here are the ones `mosquitto.conf` and `broker/install.sh` expect.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mqfleet.errors import ConfigurationError
from mqfleet.hostid import OPERATOR_PREFIX, check_host_id, check_name

logger = logging.getLogger(__name__)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CRL = "crl.pem"
#: The broker's own certificate is always stored under this stem, whatever its CN.
SERVER_STEM = "server"
#: Default lifetimes in days: a CA outlives many leaf renewals; 825 is the longest leaf life clients accept.
CA_DAYS = 3650
LEAF_DAYS = 825

# A freshly issued certificate is valid slightly in the past, so a host whose clock lags still accepts it.
_CLOCK_SKEW = dt.timedelta(minutes=5)


class CertRole(str, Enum):
    """What a certificate is for; decides its EKU and what its CN may be."""

    AGENT = "agent"
    OPERATOR = "operator"
    COORDINATOR = "coordinator"
    SERVER = "server"


def make_ca(directory: str | os.PathLike[str], *, days: int = CA_DAYS, force: bool = False) -> tuple[Path, Path]:
    """Create a self-signed CA (and an empty CRL) in `directory`; refuse to replace one unless `force`."""
    d = _private_dir(directory)
    cert_path, key_path = d / CA_CERT, d / CA_KEY
    if not force and (cert_path.exists() or key_path.exists()):
        raise ConfigurationError(f"{d} already holds a CA; replacing it invalidates every certificate (use --force)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mqfleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, "mqfleet CA"),
        ]
    )
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        # path_length=0: this CA signs leaves only, so a stolen leaf key can never act as a CA
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write_crl(d, cert, key, revoked=[])
    logger.info("CA %s: made, valid until %s", cert_path, not_after.isoformat())
    return cert_path, key_path


def issue_cert(
    directory: str | os.PathLike[str],
    *,
    cn: str,
    role: CertRole | str,
    sans: Sequence[str] = (),
    days: int = LEAF_DAYS,
    out_dir: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """Issue a certificate signed by the CA in `directory`; returns (cert, key) written to `out_dir` or there.

    `days` may be zero or negative: the certificate is then already expired (for tests of refusal).
    An operator's CN gets the `operator-` prefix when it lacks it. `sans` are `DNS:name`, `IP:addr`
    or a bare name or address; a server without any gets localhost, 127.0.0.1 and ::1.
    """
    role = CertRole(role)
    cn = _role_cn(cn, role)
    ca_cert, ca_key = load_ca(directory)
    out = _private_dir(out_dir if out_dir is not None else directory)
    stem = SERVER_STEM if role is CertRole.SERVER else cn
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    eku = ExtendedKeyUsageOID.SERVER_AUTH if role is CertRole.SERVER else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mqfleet"),
                    # informational: the broker reads only the CN, the OU says what the certificate was issued as
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(sans, role=role, cn=cn)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out / f"{stem}.crt", out / f"{stem}.key"
    _write_key(key_path, key)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    logger.info(
        "certificate %s: issued to %s as %s, serial %x, until %s",
        cert_path,
        cn,
        role.value,
        cert.serial_number,
        not_after.isoformat(),
    )
    return cert_path, key_path


def revoke_cert(directory: str | os.PathLike[str], cert_file: str | os.PathLike[str]) -> Path:
    """Add a certificate issued by the CA in `directory` to its CRL; returns the CRL path.

    The broker checks the CRL at every TLS handshake; Mosquitto 2.0.11 rereads it on SIGHUP, which
    does not cut connections already open (see docs/SECURITY.md).
    """
    ca_cert, ca_key = load_ca(directory)
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    try:
        # every mqfleet CA has the same name, so only the signature tells them apart
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigurationError(f"{cert_file} was not issued by the CA in {directory}") from None
    d = Path(directory)
    revoked = list(_read_crl(d))
    if cert.serial_number not in {r.serial_number for r in revoked}:
        revoked.append(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(_now()).build()
        )
    path = _write_crl(d, ca_cert, ca_key, revoked=revoked)
    logger.info("CRL %s: revoked serial %x (%s)", path, cert.serial_number, common_name(cert))
    return path


def load_ca(directory: str | os.PathLike[str]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key in `directory`, or ConfigurationError when there is none."""
    d = Path(directory)
    try:
        cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as e:
        raise ConfigurationError(f"no CA in {d} (make one with `mqfleet broker ca --dir {d}`): {e.filename}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"{d / CA_KEY} is not an EC key")
    return cert, key


def common_name(cert: x509.Certificate) -> str:
    """The subject CN: what Mosquitto uses as the user name."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _role_cn(cn: str, role: CertRole) -> str:
    if role is CertRole.OPERATOR and not cn.startswith(OPERATOR_PREFIX):
        cn = OPERATOR_PREFIX + cn
    if role is CertRole.AGENT:
        # an agent's CN is its host id: an agent named like an operator or the coordinator would get their ACL rights
        return check_host_id(cn)
    return check_name(cn, "CN")


def _general_names(sans: Sequence[str], *, role: CertRole, cn: str) -> list[x509.GeneralName]:
    if not sans:
        sans = ("DNS:localhost", "IP:127.0.0.1", "IP:::1") if role is CertRole.SERVER else (f"DNS:{cn}",)
    names: list[x509.GeneralName] = []
    for san in sans:
        kind, sep, value = san.partition(":")
        kind = kind.upper()
        if not sep or kind not in ("DNS", "IP"):
            kind, value = "", san  # a bare name or address; an IPv6 address holds ':' itself
        try:
            if kind == "IP" or (not kind and _is_ip(value)):
                names.append(x509.IPAddress(ipaddress.ip_address(value)))
            elif value:
                names.append(x509.DNSName(value))
            else:
                raise ValueError(san)
        except ValueError:
            raise ConfigurationError(f"bad SAN {san!r}: use DNS:name or IP:address") from None
    return names


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = _now()
    not_after = now + dt.timedelta(days=days)
    # an already-expired certificate still needs a start before its end
    not_before = min(now - _CLOCK_SKEW, not_after - dt.timedelta(days=1))
    return not_before, not_after


def _read_crl(d: Path) -> list[x509.RevokedCertificate]:
    path = d / CRL
    if not path.exists():
        return []
    return list(x509.load_pem_x509_crl(path.read_bytes()))


def _write_crl(
    d: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *, revoked: list[x509.RevokedCertificate]
) -> Path:
    # OpenSSL refuses every client once the CRL's next update passes, so it lasts as long as the CA
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(_now() - _CLOCK_SKEW)
        .next_update(max(ca_cert.not_valid_after_utc, _now() + dt.timedelta(days=1)))
        .add_extension(x509.CRLNumber(int(_now().timestamp() * 1000)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    for r in revoked:
        builder = builder.add_revoked_certificate(r)
    path = d / CRL
    _write_public(path, builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


def _private_dir(directory: str | os.PathLike[str]) -> Path:
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_atomic(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, mode=0o644)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    # the key is created with its final mode, so it is never readable by others, not even for a moment
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask and ignored for an existing file
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
