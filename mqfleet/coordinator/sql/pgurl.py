"""The `--db postgresql://...` URL as mqfleet shows and checks it: every secret in it hidden, a
malformed one refused before psycopg sees it, and the password read from a file instead.

A password can sit in the user part (`postgresql://user:SECRET@host/db`) or in a query parameter
(`?password=SECRET`, `sslpassword=`); libpq echoes a malformed URL's text in its errors (`invalid
percent-encoded token: "SECRET"`). So every URL is printed through `redact_url`, every error text
that came from psycopg through `scrub`, and a URL libpq would refuse is refused here first, with a
message that names the fix and not the password. The password is best kept out of the URL, which
`ps` shows to every local user: `--db-password-file` (`MQFLEET_DB_PASSWORD_FILE`), libpq's own
`PGPASSFILE` (~/.pgpass), or `MQFLEET_DB_PASSWORD` (docs/SECURITY.md, "The state database password").
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from mqfleet.defaults import ENV_DB_PASSWORD, ENV_DB_PASSWORD_FILE
from mqfleet.errors import ConfigurationError

#: Query parameters of a libpq URL whose value is a secret.
SECRET_PARAMS = frozenset({"password", "sslpassword"})
#: A password file is one line; a larger file is the wrong file.
MAX_PASSWORD_FILE_BYTES = 4096
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HIDDEN = "***"
_FIX = (f"percent-encode the password's special characters (%25 for %, %40 for @, %2F for /, %3F for ?, %23 for #), "
        f"or better keep it out of the URL: --db-password-file FILE, PGPASSFILE or {ENV_DB_PASSWORD}")


def redact_url(url: str) -> str:
    """The URL with its password and secret query parameters replaced by `***`, for messages and logs.

    A URL that does not parse (a bad port, say, which is often a password holding a `/`, `?` or `#`
    that ended the host part early) is shown as its scheme alone: what follows may be a password.
    """
    scheme = url.partition("://")[0] if "://" in url else "postgresql"
    hidden = f"{scheme}://(URL hidden: it does not parse)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return hidden
    if "@" in parts.path or "@" in parts.fragment:
        return hidden
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:{_HIDDEN}@{hostport}" if sep else netloc
    query = "&".join(_redacted_param(pair) for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=""))


def _redacted_param(pair: str) -> str:
    name, sep, _ = pair.partition("=")
    return f"{name}={_HIDDEN}" if sep and unquote(name).lower() in SECRET_PARAMS else pair


def check_url(url: str) -> None:
    """ConfigurationError, naming the URL with its secrets hidden and the fix, for a URL libpq would refuse
    in a way that prints the password (a malformed `%` escape) or that mqfleet cannot show safely."""
    shown = redact_url(url)
    if shown.endswith("(URL hidden: it does not parse)"):
        raise ConfigurationError(f"--db {shown}: not a valid postgresql:// URL (a bad port, or a password holding "
                                 f"an unescaped '/', '?' or '#'); {_FIX}")
    if _BAD_ESCAPE.search(url):
        raise ConfigurationError(f"--db {shown}: a '%' in it does not start a %XX escape; {_FIX}")


def has_password(url: str) -> bool:
    """Whether the URL carries a password itself (user part or `password=` parameter): it then wins over a
    password from a file or the environment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.password is not None or any(
        unquote(pair.partition("=")[0]).lower() == "password" for pair in parts.query.split("&") if "=" in pair)


def url_secrets(url: str) -> list[str]:
    """The secrets written in the URL (the password and secret parameters), raw and decoded."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is not None:
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            found.append(userinfo.partition(":")[2])
        for pair in parts.query.split("&"):
            name, sep, value = pair.partition("=")
            if sep and unquote(name).lower() in SECRET_PARAMS:
                found.append(value)
    return [s for raw in found if raw for s in {raw, unquote(raw), quote(unquote(raw), safe="")} if s]


def scrub(text: str, url: str, *, password: str | None = None) -> str:
    """`text` (an error from psycopg, say) with the URL's secrets and `password` replaced by `***`."""
    secrets = url_secrets(url) + ([password] if password else [])
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, _HIDDEN)
    return text.replace(url, redact_url(url))


def read_password_file(path: str | os.PathLike[str]) -> str:
    """The first line of a password file, without its line end; ConfigurationError naming the file and the fix."""
    where = f"--db-password-file / {ENV_DB_PASSWORD_FILE} {os.fspath(path)}"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSWORD_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigurationError(f"{where}: cannot read it ({e.strerror or e}); give a readable file") from None
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        raise ConfigurationError(f"{where}: over {MAX_PASSWORD_FILE_BYTES} bytes, not a password file")
    try:
        line = data.decode("utf-8").splitlines()[0] if data.strip() else ""
    except UnicodeDecodeError:
        raise ConfigurationError(f"{where}: not UTF-8 text") from None
    if not line:
        raise ConfigurationError(f"{where}: the file is empty; its first line must be the password")
    return line
