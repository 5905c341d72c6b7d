"""The web dashboard the coordinator serves with `--web-port` (docs/OPERATIONS.md, "The web dashboard"): the fleet,
jobs, curves, live output and operator actions in a browser. Optional (`pip install 'mqfleet[web]'`), and imported only
when `--web-port` is given."""

from __future__ import annotations
