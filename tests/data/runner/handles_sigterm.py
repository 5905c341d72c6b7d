"""Runner test trainer: on SIGTERM saves a checkpoint into MQFLEET_OUT_DIR and exits 143."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def save_and_exit(signum: int, frame: object) -> None:
    Path(os.environ["MQFLEET_OUT_DIR"], "checkpoint.txt").write_text("saved\n")
    print("checkpoint saved", flush=True)
    sys.exit(143)


signal.signal(signal.SIGTERM, save_and_exit)
print("ready", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.1)
sys.exit(1)
