"""Test workload: a trainer that fails. Prints to stdout and stderr, reports some progress, then exits 3."""

from __future__ import annotations

import json
import sys

#: The exit status tests expect to see recorded for the attempt.
EXIT_STATUS = 3


def main() -> int:
    print("crash.py: loading data", flush=True)
    print("@mqfleet " + json.dumps({"progress": 0.2, "epoch": 1, "loss": 0.9}), flush=True)
    print("crash.py: training epoch 2", flush=True)
    print("crash.py: RuntimeError: simulated failure in epoch 2", file=sys.stderr, flush=True)
    return EXIT_STATUS


if __name__ == "__main__":
    sys.exit(main())
