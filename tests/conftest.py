from __future__ import annotations

# Fixtures live in one module per real part, so each can be read (and changed) alone.
pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.broker",
    "tests.fixtures.s3",
    "tests.fixtures.relay",
    "tests.fixtures.fleet",
    "tests.fixtures.tls",
    "tests.fixtures.postgres",
    "tests.fixtures.state",
    "tests.fixtures.users",
    "tests.fixtures.web",
]
