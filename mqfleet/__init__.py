"""mqfleet: spread ML training jobs over a fleet of hosts through an MQTT v5 broker."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
