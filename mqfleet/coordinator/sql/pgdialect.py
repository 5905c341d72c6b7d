"""The boundary between the SQL the table modules write and the SQL PostgreSQL runs.

The table modules hold one SQL text per statement and run it on either engine. They write the
forms both engines accept: `COALESCE`, `=`, `INSERT ... ON CONFLICT ... DO NOTHING / DO UPDATE` with
the target table named where a column could also be `excluded`'s, `CASE` or a `WHERE` instead of
SQLite's scalar `MIN(a, b)`/`MAX(a, b)`, an ordering by columns instead of `rowid`.
`pgconnection.PgConnection` passes each statement through `Translator.statement` (once per text),
and the schema's DDL through `translate_ddl`, for what remains different:

- `?` placeholders become `%s` (and a literal `%` becomes `%%`, which psycopg reads as `%`): psycopg
  has no `?`, SQLite no `%s`;
- `x GLOB ?` becomes a regular expression match built by `mqfleet_glob_regex` (created with the
  schema, `postgres.PG_EXTRAS`): PostgreSQL has no GLOB, and `jobs --name` is a shell glob;
- `json_extract(col, '$.key')` becomes `(CAST(col AS jsonb) #> '{key}')`, for select lists (psycopg
  loads it into the number, string or None SQLite returns): neither engine reads the other's JSON syntax;
- `group_concat(x, sep)` becomes `string_agg(x, sep)` (SQLite has `string_agg` only from 3.44);
- in DDL, SQLite's column types become PostgreSQL's: `INTEGER PRIMARY KEY AUTOINCREMENT` an identity
  column, `INTEGER` `BIGINT` (SQLite's integers are 64-bit: sizes in bytes pass 2^31), `REAL` `DOUBLE
  PRECISION` (PostgreSQL's REAL is float4 and would round an epoch timestamp to minutes), `TEXT`
  `TEXT COLLATE "C"` (byte order, like SQLite's BINARY, so id-prefix ranges and ORDER BY agree on
  both engines), `BLOB` `BYTEA`, and `WITHOUT ROWID` goes. The schema stays one text, and SQLite's
  files keep the schema they have.

Everything else passes as written. The SQLite-only forms that have a portable spelling are refused
by name with that spelling (`DialectError`), so a new statement is fixed in its module instead of
here; so is `PRAGMA`, which only the SQLite engine runs.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from mqfleet.errors import DialectError

# quoted literals and identifiers, and comments (whose apostrophes would otherwise open a literal)
_LITERAL = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*")
_MASK = re.compile(r"\x00(\d+)\x00")
_GLOB = re.compile(r"\bGLOB\s+%s", re.IGNORECASE)
_MIN_MAX = re.compile(r"\b(MIN|MAX)\s*\(", re.IGNORECASE)
_GROUP_CONCAT = re.compile(r"\bgroup_concat\s*\(", re.IGNORECASE)
_JSON_EXTRACT = re.compile(r"\bjson_extract\s*\(\s*([\w.]+)\s*,\s*\x00(\d+)\x00\s*\)", re.IGNORECASE)

#: SQLite-only forms with a spelling both engines accept: (form, its pattern, what to write instead).
_NOT_PORTABLE = (
    ("PRAGMA", re.compile(r"^\s*PRAGMA\b", re.IGNORECASE), "ask the engine (SqlConnection.columns), or run it on SQLite only"),
    ("INSERT OR IGNORE", re.compile(r"\bINSERT\s+OR\s+IGNORE\b", re.IGNORECASE), "write INSERT ... ON CONFLICT DO NOTHING"),
    ("INSERT OR REPLACE", re.compile(r"\b(INSERT\s+OR\s+REPLACE|REPLACE\s+INTO)\b", re.IGNORECASE),
     "write INSERT ... ON CONFLICT (its key) DO UPDATE SET column = excluded.column, ..."),
    ("IFNULL", re.compile(r"\bIFNULL\s*\(", re.IGNORECASE), "write COALESCE"),
    ("==", re.compile(r"=="), "write ="),
    ("rowid", re.compile(r"(?<!WITHOUT )\browid\b", re.IGNORECASE), "order by columns (the primary key) instead"),
)


def _mask_literals(sql: str) -> tuple[str, list[str]]:
    """The SQL with every quoted literal or identifier replaced by a marker, and the literals."""
    literals: list[str] = []

    def keep(m: re.Match[str]) -> str:
        literals.append(m.group(0))
        return f"\x00{len(literals) - 1}\x00"

    return _LITERAL.sub(keep, sql), literals


def _unmask(sql: str, literals: list[str], fix: Callable[[str], str] = lambda s: s) -> str:
    return _MASK.sub(lambda m: fix(literals[int(m.group(1))]), sql)


def _closing_paren(sql: str, open_at: int) -> tuple[int, int]:
    """The index of the parenthesis closing the one at `open_at`, and how many top-level commas it holds."""
    depth, commas = 0, 0
    for i in range(open_at, len(sql)):
        ch = sql[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i, commas
        elif ch == "," and depth == 1:
            commas += 1
    raise DialectError(f"unbalanced parentheses in SQL: {sql[:200]!r}")


def _refuse_sqlite_only(code: str, sql: str) -> None:
    """DialectError naming the portable spelling of the first SQLite-only form in `code`."""
    for form, pattern, fix in _NOT_PORTABLE:
        if pattern.search(code):
            raise DialectError(f"{form} is SQLite's alone: {fix} (both engines accept it): {sql[:200]!r}")
    for m in _MIN_MAX.finditer(code):
        if _closing_paren(code, m.end() - 1)[1]:
            raise DialectError(f"scalar {m.group(1).upper()}(a, b) is SQLite's alone: write CASE WHEN a < b THEN ... "
                               f"or a WHERE (both engines accept it): {sql[:200]!r}")


def _group_concat(sql: str) -> str:
    """`group_concat(x[, sep])` as `string_agg(x, sep)` (SQLite's default separator is a comma)."""
    while (m := _GROUP_CONCAT.search(sql)) is not None:
        close, commas = _closing_paren(sql, m.end() - 1)
        args = sql[m.end() : close] + ("" if commas else ", ','")
        sql = f"{sql[: m.start()]}string_agg({args}){sql[close + 1 :]}"
    return sql


def _json_path(m: re.Match[str], literals: list[str], sql: str) -> str:
    """`json_extract(col, '$.a.b')` as `jsonb #> '{a,b}'`: psycopg loads the jsonb into the same Python
    value (number, string, None) SQLite's json_extract returns; for the select list, not comparisons."""
    path = literals[int(m.group(2))].strip("'")
    if not re.fullmatch(r"\$(\.\w+)+", path):
        raise DialectError(f"json_extract translates only with a '$.key' path: {sql[:200]!r}")
    return f"(CAST({m.group(1)} AS jsonb) #> '{{{','.join(path.split('.')[1:])}}}')"


class Translator:
    """Translates statements once each (a coordinator runs a few dozen texts millions of times)."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def statement(self, sql: str) -> str:
        found = self._cache.get(sql)
        if found is None:
            found = translate(sql)
            with self._lock:
                if len(self._cache) > 4096:  # texts built per call (IN lists) must not grow it forever
                    self._cache.clear()
                self._cache[sql] = found
        return found


def translate(sql: str) -> str:
    """One statement of the table modules as PostgreSQL's (the module docstring lists what changes)."""
    code, literals = _mask_literals(sql)
    _refuse_sqlite_only(code, sql)
    if re.match(r"\s*(CREATE|ALTER)\s+TABLE\b", code, re.IGNORECASE):
        # DDL a module runs itself (its own tables): the same translation as coordinator/sql/schema.py's
        code = _ddl(code)
    code = code.replace("%", "%%").replace("?", "%s")
    code = _GLOB.sub("~ mqfleet_glob_regex(%s)", code)
    if re.search(r"\bGLOB\b", code, re.IGNORECASE):
        raise DialectError(f"GLOB translates only with a parameter as its pattern: {sql[:200]!r}")
    code = _group_concat(code)
    code = _JSON_EXTRACT.sub(lambda m: _json_path(m, literals, sql), code)
    return _unmask(code, literals, lambda lit: lit.replace("%", "%%"))


#: A column's declared type: an identifier, then an upper-case SQLite type (names are lower case, so a
#: column called `text` keeps its name).
_COLUMN_TYPE = re.compile(r"(\b[a-z_][a-z_0-9]*\s+)(INTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT|INTEGER|REAL|TEXT|BLOB)\b")
_PG_TYPE = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "TEXT": 'TEXT COLLATE "C"', "BLOB": "BYTEA"}
_TABLE_OPTIONS = re.compile(r"\)\s*(WITHOUT\s+ROWID|STRICT)\b", re.IGNORECASE)


def _column_type(m: re.Match[str]) -> str:
    sqlite_type = m.group(2)
    if sqlite_type.startswith("INTEGER") and sqlite_type != "INTEGER":
        return m.group(1) + "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    return m.group(1) + _PG_TYPE[sqlite_type]


def _ddl(code: str) -> str:
    return _TABLE_OPTIONS.sub(")", _COLUMN_TYPE.sub(_column_type, code))


def translate_ddl(script: str) -> str:
    """SQLite DDL (CREATE TABLE/INDEX IF NOT EXISTS ...) as PostgreSQL DDL."""
    code, literals = _mask_literals(script)
    return _unmask(_ddl(code), literals)
