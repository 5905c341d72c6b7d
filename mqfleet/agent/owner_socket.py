"""The agent's side of the owner's switch (mqfleet/owner/switch.py says who may use it and how).

POSIX: a Unix socket, created mode 0660 with the owner group (`owner_group`), the caller's uid read from the
kernel with SO_PEERCRED: root, the agent's own user and the owner group's members are answered, anyone else
(who got a connection through a looser mode) is told no. Windows: a loopback TCP listener whose callers
must answer a challenge with the secret in `owner.key` (the keyed form, which also runs on POSIX).
A request is one bounded JSON object; a malformed one gets an error, never a crash.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import socket
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mqfleet.errors import ConfigurationError
from mqfleet.owner.switch import (
    CHALLENGE_BYTES,
    KEY_NAME,
    check_request,
    decode_message,
    encode_message,
    keyed_answer,
    read_exactly,
    read_message,
    write_key_file,
)

logger = logging.getLogger(__name__)

#: How long one caller may take to send its request.
_REQUEST_TIMEOUT_S = 5.0
SOCKET_MODE = 0o660
#: The longest Unix socket path Linux takes (sun_path is 108 bytes with its NUL).
_MAX_SOCKET_PATH = 107

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class OwnerSwitch:
    """Serves `pause`/`resume`/`status` to the host's owner through `handle` (the agent's)."""

    def __init__(self, handle: Handler, *, socket_path: Path | None, owner_group: str = "",
                 key_dir: Path | None = None, required: bool = True) -> None:
        self._handle = handle
        self.socket_path = socket_path
        #: False for the default place (the work dir): an agent whose work dir cannot hold a socket (a path past
        #: the 107 bytes a Unix socket's may have) runs without the switch and says so, rather than not at all
        self.required = required
        self.key_file = key_dir / KEY_NAME if key_dir is not None else None
        self._group = _group_id(owner_group) if owner_group else None
        self.owner_group = owner_group
        self._server: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Listen (the Unix socket where there is one, else the keyed loopback form); ConfigurationError with
        the fix when the place cannot be used."""
        if self.socket_path is not None and sys.platform != "win32":
            self._start_unix(self.socket_path)
        elif self.key_file is not None:
            self._start_keyed(self.key_file)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
            for path in (self.socket_path, self.key_file):
                if path is not None:
                    path.unlink(missing_ok=True)

    # --- Unix socket ----------------------------------------------------------------------------

    def _start_unix(self, path: Path) -> None:
        try:
            if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
                raise OSError(f"the path is longer than the {_MAX_SOCKET_PATH} bytes a Unix socket's may be")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # a socket left by a killed agent
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)  # never a moment with a wider mode than 0600, then exactly 0660
            try:
                server.bind(str(path))
            finally:
                os.umask(old)
            if self._group is not None:
                os.chown(path, -1, self._group)
            os.chmod(path, SOCKET_MODE)
            server.listen(8)
        except OSError as e:
            if not self.required:
                logger.warning("owner switch: not available, cannot listen at %s (%s); give --owner-socket PATH (a short "
                               "path in a folder the owner can reach) so that `mqfleet agent pause` works", path, e)
                return
            raise ConfigurationError(f"--owner-socket {path}: cannot listen there ({e}); pick a writable folder and a "
                                     "short path") from e
        self._server = server
        threading.Thread(target=self._serve, args=(server, self._reply_unix), name="owner-switch", daemon=True).start()
        logger.info("owner switch: %s (mode %o%s)", path, SOCKET_MODE,
                    f", group {self.owner_group}" if self.owner_group else ", no owner group: root and this user only")

    def _serve(self, server: socket.socket, reply_to: Callable[[socket.socket], bytes | None]) -> None:
        """Answer one caller at a time, each within _REQUEST_TIMEOUT_S: `reply_to` reads its request and says what
        to send back (None: close without a word)."""
        while not self._stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed by stop()
            with conn:
                try:
                    conn.settimeout(_REQUEST_TIMEOUT_S)
                    reply = reply_to(conn)
                    if reply is not None:
                        conn.sendall(reply)
                except (OSError, ValueError) as e:
                    logger.info("owner switch: a request failed (%s)", e)

    def _reply_unix(self, conn: socket.socket) -> bytes:
        refusal = self._refusal(_peer_uid(conn))
        return encode_message({"ok": False, "error": refusal} if refusal else self._answer(read_message(conn)))

    def _refusal(self, uid: int | None) -> str:
        """'' when the caller may use the switch, else the message it gets."""
        if uid is None:
            return "the agent could not tell who is asking (no SO_PEERCRED); refused"
        if uid in (0, os.geteuid()) or self._in_owner_group(uid):
            return ""
        who = _user_name(uid)
        logger.warning("owner switch: refused a request from %s (uid %d): not root, the agent's user or in group %s",
                       who, uid, self.owner_group or "(none)")
        group = f"members of group {self.owner_group}" if self.owner_group else "(no owner_group is set)"
        return (f"user {who} may not pause this agent: only root, the agent's own user and {group} may; "
                "ask the machine's owner, or add yourself to that group")

    def _in_owner_group(self, uid: int) -> bool:
        if self._group is None:
            return False
        import grp
        import pwd

        try:
            user = pwd.getpwuid(uid)
            return user.pw_gid == self._group or user.pw_name in grp.getgrgid(self._group).gr_mem
        except KeyError:
            return False

    # --- keyed loopback (Windows) ---------------------------------------------------------------------

    def _start_keyed(self, key_file: Path) -> None:
        key = secrets.token_bytes(32)
        try:
            server = socket.create_server(("127.0.0.1", 0))
            write_key_file(key_file, server.getsockname()[:2], key)
        except OSError as e:
            raise ConfigurationError(f"owner switch: cannot listen on loopback or write {key_file} ({e})") from e
        self._server = server
        threading.Thread(target=self._serve, args=(server, lambda conn: self._reply_keyed(conn, key)),
                         name="owner-switch", daemon=True).start()
        logger.info("owner switch: loopback port %d, key in %s", server.getsockname()[1], key_file)

    def _reply_keyed(self, conn: socket.socket, key: bytes) -> bytes | None:
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        conn.sendall(challenge)
        answer = read_exactly(conn, len(keyed_answer(key, challenge)))
        if not hmac.compare_digest(answer, keyed_answer(key, challenge)):
            logger.warning("owner switch: a caller without the key was refused")
            return None  # it proved nothing: closed without a word
        return encode_message(self._answer(read_message(conn)))

    # --- the request -------------------------------------------------------------------------------

    def _answer(self, raw: bytes) -> dict[str, Any]:
        try:
            request = check_request(decode_message(raw))
        except ValueError as e:
            return {"ok": False, "error": f"bad request: {e}"}
        try:
            return {"ok": True, **self._handle(request)}
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # the agent must outlive a bad request
            logger.exception("owner switch: %s failed", request.get("action"))
            return {"ok": False, "error": f"the agent failed to {request.get('action')}: {type(e).__name__}"}


def _peer_uid(conn: socket.socket) -> int | None:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _group_id(name: str) -> int:
    if sys.platform == "win32":
        raise ConfigurationError("owner_group is for POSIX hosts; on Windows the ACL of owner.key says who may pause")
    import grp

    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigurationError(f"owner_group {name!r}: no such group on this host; create it or name another") from None


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
