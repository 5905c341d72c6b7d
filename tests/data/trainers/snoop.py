"""Attack workload: a trainer that tries to read its agent's secrets, and reports what it got.

It reads `/proc/<agent pid>/environ` (the agent is its parent: the PDEATHSIG wrapper exec()s the trainer
in place) and the file `--key PATH` (the agent's TLS key), and writes `report.json` to its output folder:
its own uid and dumpable flag, and for each target whether the read worked, the error if not, and what it
saw (the names of the MQFLEET_/AWS_ variables in the environment, the size of the key), never the secrets
themselves. Standard library only.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

PR_GET_DUMPABLE = 3


def flag(name: str, default: str) -> str:
    argv = sys.argv[1:]
    return argv[argv.index(f"--{name}") + 1] if f"--{name}" in argv[:-1] else default


def try_read(path: str) -> tuple[bytes | None, str]:
    try:
        with open(path, "rb") as fh:
            return fh.read(), ""
    except OSError as e:
        return None, f"{type(e).__name__}: {e.strerror or e}"


def main() -> int:
    agent = os.getppid()
    environ, environ_error = try_read(f"/proc/{agent}/environ")
    names = sorted({item.split(b"=", 1)[0].decode(errors="replace") for item in (environ or b"").split(b"\0") if item})
    key, key_error = try_read(flag("key", "/nonexistent"))
    report = {
        "uid": os.getuid(),
        "agent_pid": agent,
        "dumpable": ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
        "environ": {"read": environ is not None, "error": environ_error,
                    "secrets_seen": [n for n in names if n.startswith(("MQFLEET_", "AWS_"))]},
        "key": {"read": key is not None, "error": key_error, "bytes": len(key or b"")},
    }
    print("snoop.py: " + json.dumps(report, sort_keys=True), flush=True)
    out = Path(os.environ["MQFLEET_OUT_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, sort_keys=True, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
