"""The SQLite dialect the noun modules write, translated to PostgreSQL's.

The noun modules (`catalog`, `hosts`, `claims`, `leases`, `artifacts`, ...) hold one SQL text per
statement and run it on either engine; `pgconnection.PgConnection` passes every statement through
`Translator.statement`, and the DDL of `coordinator/sql/schema.py` through `translate_ddl`. Translating beats
hand-porting each statement: tables and queries keep being added, and a statement that only one
engine understands would be a bug found in production. Where a translation would be fragile the
noun module writes a form both engines accept instead (e.g. `CAST(<boolean> AS INTEGER)`).

What is translated, and why:
- `?` placeholders become `%s` (and a literal `%` becomes `%%`, which psycopg reads as `%`);
- `INSERT OR IGNORE` becomes `ON CONFLICT DO NOTHING`; `INSERT OR REPLACE` becomes an upsert on
  the table's primary key (columns not listed keep their value, where SQLite would reset them);
- scalar `MIN(a, b)`/`MAX(a, b)` become `LEAST`/`GREATEST` (the one-argument aggregates stay);
- `json_extract(col, '$.key')` becomes `col::jsonb #> '{key}'` (select lists: psycopg returns the
  same Python value), `IFNULL` becomes `COALESCE`, `group_concat` `string_agg`, `==` becomes `=`, `rowid` becomes `ctid` (an order of physical rows
  only: a tie-break, never an identity), `x GLOB ?` a regular expression match built by
  `mqfleet_glob_regex` (created with the schema, `postgres.PG_EXTRAS`);
- DDL: `INTEGER PRIMARY KEY AUTOINCREMENT` an identity column, `INTEGER` `BIGINT` (SQLite's integers
  are 64-bit: sizes in bytes pass 2^31), `REAL` `DOUBLE PRECISION` (PostgreSQL's REAL is float4 and
  would round an epoch timestamp to minutes), `TEXT` `TEXT COLLATE "C"` (byte order, like SQLite's
  BINARY, so id-prefix ranges and ORDER BY agree on both engines), `BLOB` `BYTEA`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from mqfleet.errors import InternalError

# quoted literals and identifiers, and comments (whose apostrophes would otherwise open a literal)
_LITERAL = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*")
_MASK = re.compile(r"\x00(\d+)\x00")
_INSERT_OR = re.compile(r"^\s*INSERT\s+OR\s+(IGNORE|REPLACE)\s+INTO\s+(\w+)\s*(\(([^)]*)\))?", re.IGNORECASE)
_MIN_MAX = re.compile(r"\b(MIN|MAX)\s*\(", re.IGNORECASE)
_GLOB = re.compile(r"\bGLOB\s+%s", re.IGNORECASE)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)


class DialectError(InternalError):
    """Raised when a statement uses SQLite that has no PostgreSQL translation (write a form both accept)."""


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


def _scalar_min_max(sql: str) -> str:
    out, pos = [], 0
    for m in _MIN_MAX.finditer(sql):
        _, commas = _closing_paren(sql, m.end() - 1)
        out.append(sql[pos : m.start()])
        name = m.group(1).upper()
        out.append(("LEAST(" if name == "MIN" else "GREATEST(") if commas else sql[m.start() : m.end()])
        pos = m.end()
    out.append(sql[pos:])
    return "".join(out)


_GROUP_CONCAT = re.compile(r"\bgroup_concat\s*\(", re.IGNORECASE)


def _group_concat(sql: str) -> str:
    """`group_concat(x[, sep])` as `string_agg(x, sep)` (SQLite's default separator is a comma)."""
    while (m := _GROUP_CONCAT.search(sql)) is not None:
        close, commas = _closing_paren(sql, m.end() - 1)
        args = sql[m.end() : close] + ("" if commas else ", ','")
        sql = f"{sql[: m.start()]}string_agg({args}){sql[close + 1 :]}"
    return sql


_JSON_EXTRACT = re.compile(r"\bjson_extract\s*\(\s*([\w.]+)\s*,\s*\x00(\d+)\x00\s*\)", re.IGNORECASE)


def _json_path(m: re.Match[str], literals: list[str], sql: str) -> str:
    """`json_extract(col, '$.a.b')` as `jsonb #> '{a,b}'`: psycopg loads the jsonb into the same Python
    value (number, string, None) SQLite's json_extract returns; for the select list, not comparisons."""
    path = literals[int(m.group(2))].strip("'")
    if not re.fullmatch(r"\$(\.\w+)+", path):
        raise DialectError(f"json_extract translates only with a '$.key' path: {sql[:200]!r}")
    return f"(CAST({m.group(1)} AS jsonb) #> '{{{','.join(path.split('.')[1:])}}}')"


_UPSERT_SET = re.compile(r"\bDO\s+UPDATE\s+SET\b", re.IGNORECASE)
_INSERT_TABLE = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)", re.IGNORECASE)


def _qualify_upsert(code: str, table: str, columns: tuple[str, ...]) -> str:
    """In `DO UPDATE SET a = a + excluded.a`, SQLite reads a bare `a` as the target row's column;
    PostgreSQL calls it ambiguous (the target and `excluded` are both in scope): name the table."""
    m = _UPSERT_SET.search(code)
    if m is None or not columns:
        return code
    tail, out = code[m.end() :], []
    depth, expect_target = 0, True
    tokens = list(re.finditer(r"\w+|\S", tail))
    for i, tok in enumerate(tokens):
        text = tok.group(0)
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif text == "," and depth == 0:
            expect_target = True
        elif depth == 0 and text.upper() in ("WHERE", "RETURNING"):
            expect_target = False
        elif text in columns:
            before = tokens[i - 1].group(0) if i else ""
            after = tokens[i + 1].group(0) if i + 1 < len(tokens) else ""
            if expect_target:
                expect_target = False  # the column assigned to stays bare
            elif before != "." and after not in ("(", "."):
                out.append((tok.start(), tok.end(), f"{table}.{text}"))
    for start, end, text in reversed(out):
        tail = tail[:start] + text + tail[end:]
    return code[: m.end()] + tail


class Translator:
    """Translates statements once each (a coordinator runs a few dozen texts millions of times)."""

    def __init__(self, primary_keys: Callable[[str], tuple[str, ...]],
                 columns: Callable[[str], tuple[str, ...]] = lambda table: ()) -> None:
        self._primary_keys = primary_keys
        self._columns = columns
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def statement(self, sql: str) -> str:
        found = self._cache.get(sql)
        if found is None:
            found = self._translate(sql)
            with self._lock:
                if len(self._cache) > 4096:  # texts built per call (IN lists) must not grow it forever
                    self._cache.clear()
                self._cache[sql] = found
        return found

    def _translate(self, sql: str) -> str:
        code, literals = _mask_literals(sql)
        if re.match(r"\s*PRAGMA\b", code, re.IGNORECASE):
            raise DialectError(f"PRAGMA has no PostgreSQL translation: {sql[:200]!r}")
        if re.match(r"\s*(CREATE|ALTER)\s+TABLE\b", code, re.IGNORECASE):
            # DDL a module runs itself (its own tables): the same translation as coordinator/sql/schema.py's
            code = _TABLE_OPTIONS.sub(")", _COLUMN_TYPE.sub(_column_type, code))
        code = code.replace("%", "%%").replace("?", "%s").replace("==", "=")
        code = re.sub(r"\bIFNULL\s*\(", "COALESCE(", code, flags=re.IGNORECASE)
        code = re.sub(r"\browid\b", "ctid", code, flags=re.IGNORECASE)
        code = _GLOB.sub("~ mqfleet_glob_regex(%s)", code)
        if re.search(r"\bGLOB\b", code, re.IGNORECASE):
            raise DialectError(f"GLOB translates only with a parameter as its pattern: {sql[:200]!r}")
        code = _scalar_min_max(code)
        code = _group_concat(code)
        code = _JSON_EXTRACT.sub(lambda m: _json_path(m, literals, sql), code)
        code = self._insert_or(code, sql)
        target = _INSERT_TABLE.match(code)
        if target is not None and _UPSERT_SET.search(code):
            code = _qualify_upsert(code, target.group(1), self._columns(target.group(1)))
        return _unmask(code, literals, lambda lit: lit.replace("%", "%%"))

    def _insert_or(self, code: str, sql: str) -> str:
        m = _INSERT_OR.match(code)
        if m is None:
            return code
        verb, table, columns = m.group(1).upper(), m.group(2), m.group(4)
        body = f"INSERT INTO {table} {m.group(3) or ''}{code[m.end():]}".rstrip().rstrip(";")
        returning = ""
        r = _RETURNING.search(body)
        if r is not None:
            body, returning = body[: r.start()].rstrip(), " " + body[r.start() :]
        if verb == "IGNORE":
            return f"{body} ON CONFLICT DO NOTHING{returning}"
        if columns is None:
            raise DialectError(f"INSERT OR REPLACE must name its columns to translate: {sql[:200]!r}")
        keys = self._primary_keys(table)
        if not keys:
            raise DialectError(f"INSERT OR REPLACE into {table}, which has no primary key: {sql[:200]!r}")
        others = [c.strip() for c in columns.split(",") if c.strip() and c.strip() not in keys]
        action = ("DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in others)) if others else "DO NOTHING"
        return f"{body} ON CONFLICT ({', '.join(keys)}) {action}{returning}"


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


def translate_ddl(script: str) -> str:
    """SQLite DDL (CREATE TABLE/INDEX IF NOT EXISTS ...) as PostgreSQL DDL."""
    code, literals = _mask_literals(script)
    code = _TABLE_OPTIONS.sub(")", _COLUMN_TYPE.sub(_column_type, code))
    return _unmask(code, literals)


def table_info_sql(table: str) -> tuple[str, tuple[str]]:
    """`PRAGMA table_info(t)` as a query over information_schema with SQLite's column names."""
    return (
        "SELECT c.ordinal_position - 1 AS cid, c.column_name AS name, upper(c.data_type) AS type, "
        "CAST(c.is_nullable = 'NO' AS INTEGER) AS notnull, c.column_default AS dflt_value, "
        "CAST(EXISTS (SELECT 1 FROM information_schema.key_column_usage k JOIN information_schema.table_constraints t "
        "ON t.constraint_name = k.constraint_name AND t.table_name = k.table_name "
        "WHERE t.constraint_type = 'PRIMARY KEY' AND k.table_name = c.table_name AND k.column_name = c.column_name) AS INTEGER) AS pk "
        "FROM information_schema.columns c WHERE c.table_schema = current_schema() AND c.table_name = %s "
        "ORDER BY c.ordinal_position",
        (table,),
    )


def pragma_table(sql: str) -> str | None:
    """The table of a `PRAGMA table_info(t)` statement, else None."""
    m = re.match(r"\s*PRAGMA\s+table_info\s*\(\s*['\"]?(\w+)['\"]?\s*\)\s*;?\s*$", sql, re.IGNORECASE)
    return m.group(1) if m else None


def is_pragma_setting(sql: str) -> bool:
    """`PRAGMA name = value`: SQLite tuning (journal, sync, busy timeout) with no meaning on PostgreSQL."""
    return re.match(r"\s*PRAGMA\s+\w+\s*=", sql, re.IGNORECASE) is not None


def primary_keys_query() -> str:
    return (
        "SELECT t.table_name, k.column_name FROM information_schema.table_constraints t "
        "JOIN information_schema.key_column_usage k ON k.constraint_name = t.constraint_name AND k.table_name = t.table_name "
        "WHERE t.constraint_type = 'PRIMARY KEY' AND t.table_schema = current_schema() ORDER BY t.table_name, k.ordinal_position"
    )

