"""Moving artifact bytes to and from presigned URLs: plain HTTP(S) or file://, never store credentials.

Agents upload and the CLI downloads through here, so neither needs the S3 SDK; only the
coordinator (store/base.py and its backends) holds credentials and signs URLs. An upload is a presigned
PUT or a POST form whose signed policy makes the store refuse any other length (`PresignedUpload`); a
download whose size is known reads no byte past it (docs/SECURITY.md, "Artifacts").
"""

from __future__ import annotations

import http.client
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

from mqfleet.errors import ArtifactMismatchError, ObjectMissingError, StoreError
from mqfleet.wire.requests import UploadMethod

logger = logging.getLogger(__name__)

__all__ = ["CHUNK_BYTES", "PresignedUpload", "download_from_url", "upload_to_url"]

#: Bytes moved per read/write; large enough that HTTP and hashing are not call-bound.
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class PresignedUpload:
    """Where one upload goes and how: a presigned PUT (`fields` empty), or a POST form whose `fields` carry
    the store's signed policy (which fixes the key and the exact length the store accepts)."""

    url: str
    method: UploadMethod = UploadMethod.PUT
    fields: dict[str, str] = field(default_factory=dict)


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


def _copy_at_most(src: BinaryIO, out: BinaryIO, size: int | None, what: str) -> int:
    """Copy src into out; with `size`, read no byte past it and refuse a shorter object (ArtifactMismatchError).

    The bytes past a known size are never read: a longer object either starts with the expected bytes (the
    hash check after passes and nothing more was needed) or it does not (the hash check refuses it).
    """
    copied = 0
    while size is None or copied < size:
        chunk = src.read(CHUNK_BYTES if size is None else min(CHUNK_BYTES, size - copied))
        if not chunk:
            break
        out.write(chunk)
        copied += len(chunk)
    if size is not None and copied != size:
        raise ArtifactMismatchError(f"{what}: the object ends after {copied} bytes, expected {size}")
    return copied


def _copy_atomically(src: Path, dest: Path, size: int | None = None) -> None:
    """Copy src (at most `size` bytes of it, when known) to dest through a temporary file beside dest, so
    readers never see a partial file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{os.urandom(4).hex()}.part")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            found = os.fstat(fin.fileno()).st_size
            if size is not None and found != size:
                raise ArtifactMismatchError(f"{src}: the object is {found} bytes, expected {size}")
            _copy_at_most(fin, fout, size, str(src))
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _form_parts(fields: Mapping[str, str], filename: str) -> tuple[bytes, bytes, str]:
    """The multipart/form-data bytes before and after the file, and the Content-Type naming their boundary.

    S3 reads the policy fields before the file, so the file comes last (and `file` is its name).
    """
    boundary = secrets.token_hex(16)
    for name, value in fields.items():
        if any(c in name + value for c in '\r\n"'):
            raise StoreError(f"upload form field {name[:40]!r}: a quote or line break cannot be sent")
    head = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                    for name, value in fields.items())
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head, f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _file_chunks(fh: BinaryIO, head: bytes, tail: bytes) -> Iterator[bytes]:
    yield head
    while chunk := fh.read(CHUNK_BYTES):
        yield chunk
    yield tail


def upload_to_url(url: str, path: Path, *, method: UploadMethod = UploadMethod.PUT, fields: Mapping[str, str] | None = None,
                  timeout_s: float = 600) -> None:
    """Send a file to a presigned PUT URL, a presigned POST form (`fields`: its policy), or a file:// URL;
    needs no credentials. Streamed with Content-Length: S3 takes no chunked encoding on either."""
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
            with open(path, "rb") as fh:
                if method == UploadMethod.PUT:
                    # Given Content-Length, http.client streams the file in blocks instead of chunked encoding.
                    conn.request("PUT", target, body=fh, headers={"Content-Length": str(size)})
                else:
                    head, tail, content_type = _form_parts(fields or {}, path.name)
                    length = len(head) + size + len(tail)
                    conn.request("POST", target, body=_file_chunks(fh, head, tail),
                                 headers={"Content-Length": str(length), "Content-Type": content_type})
                response = conn.getresponse()
            if not 200 <= response.status < 300:
                raise _refusal(method, url, response)
            response.read()
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as e:
        raise StoreError(f"{method} {_redact(url)}: {e}") from e
    logger.debug("upload %s: %d bytes sent", _redact(url), size)


def _object_size(response: http.client.HTTPResponse) -> int | None:
    """The whole object's size as a GET response states it: a 206's Content-Range total, a 200's
    Content-Length; None when it does not say."""
    if response.status == 206:
        total = (response.getheader("Content-Range") or "").rpartition("/")[2].strip()
    else:
        total = (response.getheader("Content-Length") or "").strip()
    return int(total) if total.isdigit() else None


def download_from_url(url: str, dest: Path, *, size: int | None = None, timeout_s: float = 600) -> None:
    """Fetch a presigned GET URL or a file:// URL into dest (streamed; dest appears only when complete).

    `size`, the object's size as recorded, is a hard cap: the server is asked for those bytes only (a
    Range, which a presigned GET leaves unsigned), an object of any other size is refused
    (ArtifactMismatchError) on the size the response states before its body is read, and no byte past
    `size` is ever read, all before anyone hashes it.
    """
    dest = Path(dest)
    if url.startswith("file:"):
        src = _file_url_path(url)
        try:
            _copy_atomically(src, dest, size)
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
            conn.request("GET", target, headers={"Range": f"bytes=0-{size - 1}"} if size else {})
            response = conn.getresponse()
            if response.status == 416 and size:  # nothing at offset 0: an empty object
                raise ArtifactMismatchError(f"GET {_redact(url)}: the object is empty, expected {size} bytes")
            if response.status not in (200, 206):
                raise _refusal("GET", url, response)
            total = _object_size(response)
            if size is not None and total is not None and total != size:
                raise ArtifactMismatchError(f"GET {_redact(url)}: the object is {total} bytes, expected {size}")
            announced = response.getheader("Content-Length")
            with open(tmp, "wb") as out:
                got = _copy_at_most(response, out, size, f"GET {_redact(url)}")
            if announced is not None and got != int(announced):
                raise StoreError(f"GET {_redact(url)}: got {got} of {announced} bytes")
        finally:
            conn.close()
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise StoreError(f"GET {_redact(url)}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
