"""Where the MQTT broker is and how to prove who we are to it: `BrokerConfig` (URL and TLS files),
what a failed connection attempt means, in words an operator can act on, and the socket option
every broker connection sets (`set_nodelay`).

No paho here (`mqfleet.mqtt.connection` is its only importer).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from mqfleet import defaults
from mqfleet.errors import ConfigurationError

_SCHEMES = {"mqtt": 1883, "mqtts": 8883}
#: Added to a refusal over plain mqtt:// without a certificate: the project's loopback listener serves
#: monitoring accounts public state only (docs/SECURITY.md).
PLAIN_REFUSED_HINT = ("; the loopback listener serves monitoring accounts public state only: connect with mqtts:// "
                      "and a certificate (MQFLEET_CA, MQFLEET_CERT, MQFLEET_KEY)")
FLAG_OF = {"url": f"--broker / {defaults.ENV_BROKER}", "ca": f"--ca / {defaults.ENV_CA}",
            "cert": f"--cert / {defaults.ENV_CERT}", "key": f"--key / {defaults.ENV_KEY}"}


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and, for mqtts://, the files that prove who we are.

    TLS files are ignored for mqtt:// URLs, so a globally set MQFLEET_CA does not
    break a local plain connection.
    """

    url: str = defaults.BROKER_URL
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def _parts(self) -> tuple[str, str, int]:
        fix = f"(set {FLAG_OF['url']}, e.g. mqtt://127.0.0.1:1883 or mqtts://broker:8883)"
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError as e:
            raise ConfigurationError(f"broker URL {self.url!r} is not valid: {e} {fix}") from None
        if parts.scheme not in _SCHEMES:
            raise ConfigurationError(f"broker URL {self.url!r}: scheme must be mqtt or mqtts {fix}")
        if not parts.hostname:
            raise ConfigurationError(f"broker URL {self.url!r} names no host {fix}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigurationError(f"broker URL {self.url!r}: only scheme, host and port are allowed {fix}")
        return parts.scheme, parts.hostname, port if port is not None else _SCHEMES[parts.scheme]

    @property
    def host(self) -> str:
        return self._parts()[1]

    @property
    def port(self) -> int:
        return self._parts()[2]

    @property
    def tls(self) -> bool:
        return self._parts()[0] == "mqtts"

    def validate(self) -> None:
        """ConfigurationError for a bad URL, or for mqtts:// with TLS files that are missing or unusable."""
        self._parts()
        if self.tls:
            self.ssl_context()

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client TLS context: the given CA (or the system's) and our certificate, if any."""
        if bool(self.cert) != bool(self.key):
            missing = "key" if self.cert else "cert"
            raise ConfigurationError(f"a client certificate needs both cert and key; set {FLAG_OF[missing]}")
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is None:
                continue
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise ConfigurationError(f"{name} file {path!r} cannot be read ({e.strerror}); fix {FLAG_OF[name]}") from None
        try:
            context = ssl.create_default_context(cafile=self.ca)
            if self.cert and self.key:
                context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as e:
            raise ConfigurationError(
                f"TLS files are not usable ({e.reason or e}); check {FLAG_OF['ca']}, {FLAG_OF['cert']}, {FLAG_OF['key']}"
            ) from None
        return context


def describe_socket_error(error: BaseException | None) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS verification failed: {error.verify_message or error}"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake failed: {error.reason or error}"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is the broker running and listening there?)"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host name: {error.strerror}"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out opening the connection"
    if isinstance(error, OSError):
        return f"connection failed: {error.strerror or error}"
    return "connection failed"


def set_nodelay(sock: object) -> None:
    """TCP_NODELAY on a connection's socket: Nagle on either end meets delayed ACK on the other, 44-88 ms per
    round trip instead of under 1 ms (MQTT-NOTES section 8). Sockets without the option are left alone."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        pass
