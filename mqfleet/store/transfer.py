"""Moving artifact bytes to and from presigned URLs: plain HTTP(S) or file://, never store credentials.

Agents upload and the CLI downloads through here, so neither needs the S3 SDK; only the
coordinator (store/base.py and its backends) holds credentials and signs URLs.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from mqfleet.errors import ObjectMissingError, StoreError

logger = logging.getLogger(__name__)

__all__ = ["CHUNK_BYTES", "download_from_url", "upload_to_url"]

#: Bytes moved per read/write; large enough that HTTP and hashing are not call-bound.
CHUNK_BYTES = 1 << 20


def _file_url_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise StoreError(f"{url}: only local file:// URLs can be used")
    return Path(url2pathname(parts.path))


def _connection(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise StoreError(f"{_redact(url)}: no host in URL")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    # A 1 MiB blocksize: http.client's default 8 KiB makes a file body upload needlessly slow.
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout_s, blocksize=CHUNK_BYTES)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s, blocksize=CHUNK_BYTES)
    return conn, target


def _redact(url: str) -> str:
    """The URL without its query, which holds the presigned signature."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _refusal(method: str, url: str, response: http.client.HTTPResponse) -> StoreError:
    body = response.read(2048).decode("utf-8", "replace").strip()
    excerpt = " ".join(body.split())[:300]
    message = f"{method} {_redact(url)}: HTTP {response.status} {response.reason}: {excerpt}"
    if response.status == 404:
        return ObjectMissingError(message)
    return StoreError(message)


def _copy_atomically(src: Path, dest: Path) -> None:
    """Copy src to dest through a temporary file beside dest, so readers never see a partial file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{os.urandom(4).hex()}.part")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, CHUNK_BYTES)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def upload_to_url(url: str, path: Path, *, timeout_s: float = 600) -> None:
    """Send a file to a presigned PUT URL (streamed, with Content-Length) or a file:// URL; needs no credentials."""
    path = Path(path)
    if url.startswith("file:"):
        try:
            _copy_atomically(path, _file_url_path(url))
        except OSError as e:
            raise StoreError(f"copy {path} to {url}: {e}") from e
        return
    if not url.startswith(("http://", "https://")):
        raise StoreError(f"{_redact(url)}: expected an http(s):// or file:// URL")
    try:
        size = path.stat().st_size
        conn, target = _connection(url, timeout_s)
        try:
            with open(path, "rb") as body:
                # Content-Length given, so http.client streams the file in blocks instead of chunked encoding,
                # which presigned S3 PUTs do not accept.
                conn.request("PUT", target, body=body, headers={"Content-Length": str(size)})
                response = conn.getresponse()
            if not 200 <= response.status < 300:
                raise _refusal("PUT", url, response)
            response.read()
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as e:
        raise StoreError(f"PUT {_redact(url)}: {e}") from e
    logger.debug("upload %s: %d bytes sent", _redact(url), size)


def download_from_url(url: str, dest: Path, *, timeout_s: float = 600) -> None:
    """Fetch a presigned GET URL or a file:// URL into dest (streamed; dest appears only when complete)."""
    dest = Path(dest)
    if url.startswith("file:"):
        src = _file_url_path(url)
        try:
            _copy_atomically(src, dest)
        except FileNotFoundError as e:
            raise ObjectMissingError(f"{url}: no such object") from e
        except OSError as e:
            raise StoreError(f"copy {url} to {dest}: {e}") from e
        return
    if not url.startswith(("http://", "https://")):
        raise StoreError(f"{_redact(url)}: expected an http(s):// or file:// URL")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{os.urandom(4).hex()}.part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        conn, target = _connection(url, timeout_s)
        try:
            conn.request("GET", target)
            response = conn.getresponse()
            if response.status != 200:
                raise _refusal("GET", url, response)
            with open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, CHUNK_BYTES)
            expected = response.getheader("Content-Length")
            if expected is not None and tmp.stat().st_size != int(expected):
                raise StoreError(f"GET {_redact(url)}: got {tmp.stat().st_size} of {expected} bytes")
        finally:
            conn.close()
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException) as e:
        raise StoreError(f"GET {_redact(url)}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
