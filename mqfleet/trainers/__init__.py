"""Built-in trainers, run as `python -m mqfleet.trainers.<name>`. Their declarations (hyperparameters,
outputs, modules) are data the manifest checks read: they live in `mqfleet/manifest/builtins.py`.
"""

from __future__ import annotations
