"""The chaos soak: a real fleet under injected faults, and the invariants that must hold afterwards.

`python -m mqfleet.soak --duration S --agents N --jobs J --seed K` (or `make soak`).
"""

from __future__ import annotations
