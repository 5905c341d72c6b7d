"""Benchmarks, run as modules (`python -m bench.claim_scale`); not part of the test suite."""

from __future__ import annotations
