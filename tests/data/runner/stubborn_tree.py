"""Runner test trainer: ignores SIGTERM and starts a child that ignores it too; prints both pids.

With `--exit-now` the trainer exits at once, leaving its child behind.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

CHILD = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(120)\n"

signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", CHILD])
print(f"child {child.pid}", flush=True)
print("ready", flush=True)
if "--exit-now" in sys.argv:
    sys.exit(0)
time.sleep(120)
