"""The owner's switch: `mqfleet agent pause` and `resume` talking to the agent on the same host, never the bus.

POSIX: a Unix socket (`owner.sock` in the agent's work dir, or `--owner-socket`), mode 0660 with the owner's
group; the agent reads the caller's uid from the kernel (SO_PEERCRED) and answers only root, its own user and
the owner group's members. Windows (no SO_PEERCRED): a loopback TCP connection on which the caller proves it
holds the secret in `owner.key`, a file only the agent's user and the owner may read (the key file is the
permission): the agent sends a random challenge, the caller answers HMAC-SHA256(key, challenge) before its
request. One JSON object each way, at most MAX_MESSAGE_BYTES.

This module is what the CLI imports: the standard library only, none of the agent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from mqfleet.errors import ConfigurationError

#: Largest request or reply on the switch.
MAX_MESSAGE_BYTES = 4096
#: How long a caller waits for the agent's answer (a pause with --now answers before the hand-back ends).
TIMEOUT_S = 10.0
#: The socket and key file names in the agent's work dir, and where a system install puts the socket.
SOCKET_NAME = "owner.sock"
KEY_NAME = "owner.key"
SYSTEM_SOCKET = Path("/run/mqfleet-agent/owner.sock")
#: The longest pause one request may ask for.
MAX_PAUSE_S = 366 * 86400.0
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


class SwitchError(ConfigurationError):
    """Raised when the agent's switch cannot be reached or refuses the request; the message says what to do."""


def parse_duration(text: str) -> float:
    """Seconds of `2h`, `90m`, `1h30m`, `45s`, `1d` or a bare number of seconds; ValueError with the fix."""
    raw = text.strip().lower()
    if raw.startswith("-"):
        raise ValueError(f"a pause cannot last a negative time ({text}); give how long, e.g. --for 2h")
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    else:
        parts = _DURATION.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw.replace(" ", ""):
            raise ValueError(f"{text!r} is not a duration; write e.g. 2h, 90m, 1h30m or 45s")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a pause must last more than 0 seconds, not {text!r}")
    if seconds > MAX_PAUSE_S:
        raise ValueError(f"{text!r} is longer than a year; pause without --for and resume by hand")
    return seconds


def check_request(data: object) -> dict[str, Any]:
    """A request as the agent accepts it: `{"action": "pause", "mode": null|"now"|"after_current", "for_s":
    null|seconds}`, `{"action": "resume"}` or `{"action": "status"}`; ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("a request must be a JSON object")
    action = data.get("action")
    if action in ("resume", "status"):
        return {"action": action}
    if action != "pause":
        raise ValueError(f"unknown action {action!r}; use pause, resume or status")
    mode, for_s = data.get("mode"), data.get("for_s")
    if mode not in (None, "now", "after_current"):
        raise ValueError(f"pause mode {mode!r} is not now or after_current")
    if for_s is not None:
        if isinstance(for_s, bool) or not isinstance(for_s, (int, float)) or not math.isfinite(for_s):
            raise ValueError("for_s must be a number of seconds")
        if for_s <= 0:
            raise ValueError(f"a pause cannot last a negative or zero time ({for_s} s); give how long, e.g. --for 2h")
        if for_s > MAX_PAUSE_S:
            raise ValueError("a pause may last a year at most; pause without --for and resume by hand")
    return {"action": "pause", "mode": mode, "for_s": float(for_s) if for_s is not None else None}


def encode_message(message: dict[str, Any]) -> bytes:
    data = (json.dumps(message, sort_keys=True) + "\n").encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {len(data)} bytes, over {MAX_MESSAGE_BYTES}")
    return data


def decode_message(data: bytes) -> object:
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of more than {MAX_MESSAGE_BYTES} bytes")
    return json.loads(data.decode("utf-8", errors="strict"))


def read_message(sock: socket.socket) -> bytes:
    """One newline-ended message from a stream socket, bounded; what came when it closed early."""
    data = b""
    while b"\n" not in data and len(data) <= MAX_MESSAGE_BYTES:
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


# --- the caller's side -----------------------------------------------------------------------------------


def socket_candidates(work_dir: Path | None, host_id: str) -> list[Path]:
    """Where `agent pause` looks for the socket, in order: --work-dir (or MQFLEET_WORK_DIR), a system install's
    /run/mqfleet-agent, then the agent's default work dir for this user and host id."""
    found = [work_dir / SOCKET_NAME] if work_dir is not None else []
    return [*found, SYSTEM_SOCKET, Path.home() / ".mqfleet" / "work" / host_id / SOCKET_NAME]


def ask_agent(request: dict[str, Any], *, socket_path: Path | None = None, key_file: Path | None = None,
              timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Send one request to the local agent and return its reply; SwitchError with the fix when it cannot."""
    if socket_path is not None and sys.platform != "win32":
        raw = _ask_unix(socket_path, encode_message(request), timeout_s)
    elif key_file is not None:
        raw = _ask_keyed(key_file, encode_message(request), timeout_s)
    else:
        raise SwitchError("no agent socket to ask: pass --socket PATH (the agent's work dir holds owner.sock)")
    try:
        reply = decode_message(raw)
    except ValueError as e:
        raise SwitchError(f"the agent's answer could not be read ({e})") from None
    if not isinstance(reply, dict):
        raise SwitchError("the agent's answer is not a JSON object")
    if not reply.get("ok"):
        raise SwitchError(str(reply.get("error") or "the agent refused the request"))
    return reply


def _ask_unix(path: Path, data: bytes, timeout_s: float) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(str(path))
        except PermissionError:
            raise SwitchError(f"not allowed to talk to the agent at {path}: only root, the agent's own user and its "
                              "owner group may pause it (agent.toml owner_group, or --owner-group)") from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise SwitchError(f"no agent listens at {path}; is it running? (--socket PATH, or --work-dir of the "
                              "agent)") from None
        sock.sendall(data)
        raw = read_message(sock)
    except TimeoutError:
        raise SwitchError(f"the agent at {path} did not answer within {timeout_s:g} s") from None
    finally:
        sock.close()
    if not raw:
        raise SwitchError(f"the agent at {path} closed the connection without an answer")
    return raw


def _ask_keyed(key_file: Path, data: bytes, timeout_s: float) -> bytes:
    try:
        address, key = read_key_file(key_file)
    except PermissionError:
        raise SwitchError(f"not allowed to read {key_file}: only the agent's user and the host's owner may pause "
                          "the agent") from None
    except (OSError, ValueError) as e:
        raise SwitchError(f"cannot read the agent's key file {key_file} ({e}); is the agent running?") from None
    try:
        with socket.create_connection(address, timeout=timeout_s) as sock:
            challenge = read_exactly(sock, CHALLENGE_BYTES)
            sock.sendall(keyed_answer(key, challenge) + data)
            raw = read_message(sock)
    except OSError as e:
        raise SwitchError(f"the agent's switch at {address[0]}:{address[1]} did not answer ({e})") from None
    if not raw:
        raise SwitchError(f"the agent's switch at {address[0]}:{address[1]} refused the key in {key_file}")
    return raw


#: The random challenge of the keyed form, and its answer: HMAC-SHA256 of it under the key.
CHALLENGE_BYTES = 32


def keyed_answer(key: bytes, challenge: bytes) -> bytes:
    return hmac.new(key, challenge, hashlib.sha256).digest()


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """`size` bytes from a stream socket (its timeout bounds the wait); OSError when it closes first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def read_key_file(path: Path) -> tuple[tuple[str, int], bytes]:
    """(loopback address, secret) from an `owner.key` file: `127.0.0.1 PORT HEXKEY`."""
    host, port, key = path.read_text(encoding="ascii").split()[:3]
    if host != "127.0.0.1":
        raise ValueError("the switch listens on loopback only")
    return (host, int(port)), bytes.fromhex(key)


def write_key_file(path: Path, address: tuple[str, int], key: bytes) -> None:
    """The key file, replaced in one rename, readable by the agent's user and group only (0640)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(f"{address[0]} {address[1]} {key.hex()}\n")
    os.replace(tmp, path)
