"""Logging set-up; called only by entry points, never by library code."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(verbosity: int = 0, *, name: str = "mqfleet") -> None:
    """INFO by default, DEBUG with -v (every MQTT message), WARNING with -q."""
    level = logging.INFO
    if verbosity > 0:
        level = logging.DEBUG
    elif verbosity < 0:
        level = logging.WARNING
    level_name = os.environ.get("MQFLEET_LOG_LEVEL")
    if level_name:
        level = getattr(logging, level_name.upper(), level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger(name)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # paho's own chatter only matters when something is wrong
    logging.getLogger("mqfleet.mqtt.paho").setLevel(max(level, logging.WARNING))
