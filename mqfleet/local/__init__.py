"""Private copies of the real external services (broker, S3 store, PostgreSQL) for tests, the demo, the soak and benchmarks; the demo."""

from __future__ import annotations
