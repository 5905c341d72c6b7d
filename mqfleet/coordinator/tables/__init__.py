"""The coordinator's state, one noun per module, each owning its SQL."""

from __future__ import annotations
