"""The chaos soak: a real fleet under injected faults, and the invariants that must hold afterwards.

`python -m mqfleet.soak --duration S --agents N --jobs J --seed K` (or `make soak`).
"""

from __future__ import annotations

from mqfleet.soak.fleet import SoakConfig
from mqfleet.soak.runner import run_soak

__all__ = ["SoakConfig", "run_soak"]
