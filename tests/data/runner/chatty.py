"""Runner test trainer: prints numbered lines and progress lines, then exits with the code given."""

from __future__ import annotations

import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--lines", type=int, default=3)
parser.add_argument("--exit", type=int, default=0)
args = parser.parse_args()

print(f"cwd={os.getcwd()}")
print(f"out_dir={os.environ.get('MQFLEET_OUT_DIR', '')}")
for i in range(args.lines):
    print(f"line {i}")
print('@mqfleet {"progress": 0.5, "epoch": 1}')
print("@mqfleet {not json")
print('@mqfleet {"progress": 1.0, "epoch": 2, "metrics": {"loss": 0.25}}')
print("to stderr", file=sys.stderr)
print("caf\u00e9 \u2713")
sys.exit(args.exit)
