"""Logging set-up; called only by entry points, never by library code."""

from __future__ import annotations

import logging
import os
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

from mqfleet.defaults import ENV_LOG_LEVEL

#: A --log-file rotates at this size and keeps this many old files beside it (PATH.1 ... PATH.5).
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5


def setup_logging(verbosity: int = 0, *, name: str = "mqfleet", log_file: Path | None = None) -> None:
    """INFO by default, DEBUG with -v (every MQTT message), WARNING with -q.

    With `log_file` the same lines also go to that file, rotated by size, for hosts where nothing
    collects stderr (a Windows Scheduled Task, a bare nohup). OSError when it cannot be opened.
    """
    level = logging.INFO
    if verbosity > 0:
        level = logging.DEBUG
    elif verbosity < 0:
        level = logging.WARNING
    level_name = os.environ.get(ENV_LOG_LEVEL)
    if level_name:
        level = getattr(logging, level_name.upper(), level)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handlers: list[logging.Handler] = [handler]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        rotating = RotatingFileHandler(log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8")
        rotating.setFormatter(formatter)
        handlers.append(rotating)
    root = logging.getLogger(name)
    root.handlers[:] = handlers
    root.setLevel(level)
    root.propagate = False
    # paho's own chatter only matters when something is wrong
    logging.getLogger("mqfleet.mqtt.connection.paho").setLevel(max(level, logging.WARNING))
