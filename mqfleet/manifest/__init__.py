"""The manifest: the operator's TOML file read, checked and turned into frozen types."""

from __future__ import annotations
