"""The state store's engines: SQLite and PostgreSQL connections, the dialect, migration."""

from __future__ import annotations
