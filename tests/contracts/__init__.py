"""Contract tests: one suite of behaviour run against every implementation of an interface."""

from __future__ import annotations
