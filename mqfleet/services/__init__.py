"""Private copies of the real external services (broker, S3 store) for tests, the demo, the soak and benchmarks."""

from __future__ import annotations
