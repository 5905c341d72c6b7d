"""A status-filtered `jobs` page (the CLI's `--status`, the web dashboard's filter) walks the keyset and stops at
the page, instead of sorting every job of that status under the coordinator's lock."""

from __future__ import annotations

import sqlite3

from mqfleet.coordinator.sql import schema
from mqfleet.coordinator.tables.listing import JobFilter
from mqfleet.coordinator.tables.rows import JOB_SELECT


def test_a_status_filtered_page_is_read_in_keyset_order_without_sorting_the_status() -> None:
    conn = sqlite3.connect(":memory:")
    conn.executescript(schema.SCHEMA)
    for statement in schema.LATE_INDEXES:
        conn.execute(statement)
    terms, params = JobFilter(status="pending", name_glob="lr-*").where(walk=True)
    sql = JOB_SELECT + " WHERE " + " AND ".join(terms) + " ORDER BY j.seq DESC LIMIT 51"
    plan = " | ".join(str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert "TEMP B-TREE" not in plan, plan
