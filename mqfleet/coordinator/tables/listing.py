"""Job listings read a page at a time with a keyset on `jobs.seq`, so a page costs the same at any depth.

A page is `WHERE seq > last ORDER BY seq LIMIT n` (or `<` and DESC, newest first):
the primary key serves both the filter and the order, so the 50th page of a
100,000-job listing reads no more rows than the first, where OFFSET re-read
every row before the page. The CLI streams the pages (docs/CLI.md, `jobs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mqfleet.coordinator.sql.connection import SqlConnection, one_row
from mqfleet.coordinator.tables.rows import JOB_SELECT, job_json
from mqfleet.errors import BadRequestError
from mqfleet.lifecycle import JobStatus
from mqfleet.wire.topics import JsonObject

#: Longest name pattern accepted: a glob is matched against every row's name.
MAX_GLOB_CHARS = 200


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing shows: one status and/or a name glob (`*`, `?`, `[abc]`, `[!abc]`)."""

    status: str | None = None
    name_glob: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in {s.value for s in JobStatus}:
            raise BadRequestError(f"unknown status '{self.status}' (one of {', '.join(s.value for s in JobStatus)})")
        if self.name_glob is not None and (not self.name_glob or len(self.name_glob) > MAX_GLOB_CHARS):
            raise BadRequestError(f"field 'name' must be a glob of 1 to {MAX_GLOB_CHARS} characters")

    def where(self, *, walk: bool = False) -> tuple[list[str], list[str | int]]:
        """SQL conditions on `jobs j` and their parameters. With `walk` (a page in keyset order) the columns are
        wrapped (`j.status || ''`) so no index on them is used: through one SQLite would sort every matching row
        (with each row's subqueries) before the LIMIT, 200 ms under the lock for 100,000 pending jobs; the keyset
        walk stops at the page's last row (0.5 ms), and a rare match costs a scan of the keys (some 10 ms)."""
        wrap = " || ''" if walk else ""
        terms: list[str] = []
        params: list[str | int] = []
        if self.status is not None:
            terms.append(f"(j.status{wrap}) = ?")
            params.append(self.status)
        if self.name_glob is not None:
            # SQLite's GLOB negates a set with ^, shell globs (fnmatch) with !; accept the shell's.
            terms.append(f"(j.name{wrap}) GLOB ?")
            params.append(self.name_glob.replace("[!", "[^"))
        return terms, params


def job_page(
    conn: SqlConnection, where: JobFilter, *, limit: int, after: int | None = None, newest_first: bool = False,
    offset: int | None = None,
) -> tuple[list[JsonObject], int | None]:
    """Up to `limit` job rows (each its JobRow's JSON object) after the keyset `after` (a `seq`), and the keyset of the next page (None at the end).

    `offset` serves clients that page by position (before keysets); it is only
    read when `after` is None, and costs a walk over the rows it skips.
    """
    terms, params = where.where(walk=True)
    if after is not None:
        terms.append("j.seq < ?" if newest_first else "j.seq > ?")
        params.append(after)
    sql = f"{JOB_SELECT.replace('SELECT ', 'SELECT j.seq AS seq, ', 1)}"
    if terms:
        sql += " WHERE " + " AND ".join(terms)
    sql += f" ORDER BY j.seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
    # one more row than asked says whether a next page exists without a count
    params.append(limit + 1)
    if after is None and offset:
        sql += " OFFSET ?"
        params.append(offset)
    rows = conn.execute(sql, params).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    page = [job_json(r) for r in rows]
    return page, (int(rows[-1]["seq"]) if more and rows else None)


def count_jobs(conn: SqlConnection, where: JobFilter) -> int:
    """How many jobs the filter matches (an index count for a status alone)."""
    terms, params = where.where()
    sql = "SELECT COUNT(*) FROM jobs j" + (" WHERE " + " AND ".join(terms) if terms else "")
    return int(one_row(conn.execute(sql, params))[0])
