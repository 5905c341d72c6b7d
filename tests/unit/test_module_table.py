"""docs/INTERNALS.md's module table against the tree: every module of `mqfleet/` is a row of its own or sits in a
folder that is one, and every row names a module or folder that exists, so the table cannot drift from the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "INTERNALS.md"
SECTION = "## Modules and who owns what"


def table_rows(text: str) -> list[str]:
    """The first cell of each row of the table in SECTION: `mqfleet/x.py` or a folder `mqfleet/x/`."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end != -1 else len(text)]
    return re.findall(r"^\| `(mqfleet/[^`]*)` \|", section, re.M)


def holds_code(path: Path) -> bool:
    """A module that is more than a docstring and `from __future__ import annotations`."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return any(not (isinstance(node, ast.ImportFrom) and node.module == "__future__") for node in body)


def unlisted(rows: list[str], root: Path) -> list[str]:
    """Modules under root/mqfleet that no row covers; a package's __init__.py needs a row only when it holds code."""
    folders = [row for row in rows if row.endswith("/")]
    out = []
    for path in sorted((root / "mqfleet").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in rows or any(rel.startswith(folder) for folder in folders):
            continue
        if path.name == "__init__.py" and not holds_code(path):
            continue
        out.append(rel)
    return out


def test_the_table_reader_sees_a_missing_row_and_a_folder_row(tmp_path: Path) -> None:
    for rel, text in (("mqfleet/a.py", "x = 1\n"), ("mqfleet/b/__init__.py", '"""Doc."""\n'),
                      ("mqfleet/b/c.py", "y = 2\n"), ("mqfleet/d/e.py", "z = 3\n")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    doc = f"# x\n\n{SECTION}\n\n| module | owns |\n|---|---|\n| `mqfleet/a.py` | a |\n| `mqfleet/d/` | d |\n\n## Next\n"
    assert unlisted(table_rows(doc), tmp_path) == ["mqfleet/b/c.py"]


def test_every_module_is_in_the_internals_module_table() -> None:
    missing = unlisted(table_rows(DOC.read_text(encoding="utf-8")), ROOT)
    assert missing == [], f"add a row for each to docs/INTERNALS.md, {SECTION[3:]!r}: {missing}"


def test_every_row_of_the_module_table_exists() -> None:
    gone = [row for row in table_rows(DOC.read_text(encoding="utf-8")) if not (ROOT / row).exists()]
    assert gone == [], f"rows of docs/INTERNALS.md's module table naming nothing in the tree: {gone}"
