"""The docs against themselves and the code: every `docs/X.md, "Section"` and `X.md#anchor` reference, in the
code or in the docs, names a heading that exists, and every topic `Topics` builds is a row of docs/INTERNALS.md's
topics table. Each reader is shown to see a planted false reference first."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from mqfleet.wire.topics import Topics

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: Where references are written: the package, its tests and benchmarks, the scripts and install files, the docs.
SEARCHED = ("mqfleet", "tests", "bench", "scripts", "agent", "coordinator", "broker", "examples", "docs")
SUFFIXES = {".py", ".md", ".sh", ".ps1", ".toml", ".service", ".conf", ".txt"}

# `docs/SECURITY.md, "Replies"`, `SECURITY.md "Artifacts"` (in the docs, beside each other), across a line
# break and a comment's `#`; not a file name in quotes (`"README.md"`) nor a path's tail (`broker/README.md`).
_QUOTED = re.compile(r'(?<![\w./-])((?:docs/)?[A-Z][A-Z_]*\.md)(?:,\s*|\s+)(?:#\s*)?"([^"\n]+)"')
# `docs/CLI.md#exit-codes`, and a link inside one doc: `](#exit-codes)`
_ANCHOR = re.compile(r"(?<![\w./-])((?:docs/)?[A-Z][A-Z_]*\.md)#([a-z0-9][a-z0-9_-]*)")
_LINK_ANCHOR = re.compile(r"\]\(#([a-z0-9][a-z0-9_-]*)\)")
_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
# `## 4a. The manifest in force, ...`: references leave out a heading's number
_NUMBER = re.compile(r"^\d+[a-z]?\.\s+")


@dataclass(frozen=True)
class Reference:
    source: str  # path:line
    doc: str  # the doc as written
    section: str  # a heading's text, or an anchor after '#'
    is_anchor: bool


def headings(text: str) -> list[str]:
    """The headings of a markdown text, outside fenced code (a shell comment there is no heading), numbers dropped."""
    found, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := _HEADING.match(line)):
            found.append(_NUMBER.sub("", match.group(1)))
    return found


def slug(heading: str) -> str:
    """The anchor a markdown renderer (GitHub's) gives a heading: lower case, punctuation out, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def references(text: str, source: str, *, in_doc: str | None = None) -> list[Reference]:
    """The section references in `text`; `in_doc` names the doc `text` is, so `](#anchor)` links resolve."""
    out: list[Reference] = []

    def line_of(pos: int) -> str:
        return f"{source}:{text.count(chr(10), 0, pos) + 1}"

    for match in _QUOTED.finditer(text):
        out.append(Reference(line_of(match.start()), match.group(1), match.group(2), False))
    for match in _ANCHOR.finditer(text):
        out.append(Reference(line_of(match.start()), match.group(1), match.group(2), True))
    if in_doc is not None:
        for match in _LINK_ANCHOR.finditer(text):
            out.append(Reference(line_of(match.start()), in_doc, match.group(1), True))
    return out


def doc_path(name: str, root: Path) -> Path:
    """`docs/X.md` or `X.md` as a file: under docs/, else at the top (README.md)."""
    bare = name.removeprefix("docs/")
    return root / "docs" / bare if (root / "docs" / bare).exists() or name.startswith("docs/") else root / bare


def broken(refs: list[Reference], root: Path) -> list[str]:
    """Each reference whose doc is missing or has no such heading, with where it is written."""
    out = []
    cache: dict[Path, list[str]] = {}
    for ref in refs:
        path = doc_path(ref.doc, root)
        if not path.is_file():
            out.append(f"{ref.source}: {ref.doc} does not exist")
            continue
        if path not in cache:
            cache[path] = headings(path.read_text(encoding="utf-8"))
        names = [slug(h) for h in cache[path]] if ref.is_anchor else cache[path]
        if ref.section not in names:
            close = [h for h in cache[path] if ref.section.lower() in h.lower() or slug(h) == slug(ref.section)]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(f"{ref.source}: {ref.doc} has no heading {ref.section!r}{hint}")
    return out


def searched_files(root: Path) -> list[Path]:
    files = [root / "README.md"]
    for folder in SEARCHED:
        files += [p for p in sorted((root / folder).rglob("*")) if p.is_file() and p.suffix in SUFFIXES]
    return [p for p in files if "__pycache__" not in p.parts and p.exists()]


def all_references(root: Path) -> list[Reference]:
    refs: list[Reference] = []
    for path in searched_files(root):
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        in_doc = rel if path.suffix == ".md" and (path.parent == root / "docs" or path == root / "README.md") else None
        if rel == Path(__file__).relative_to(root).as_posix():
            continue  # this file's own examples
        refs += references(text, rel, in_doc=in_doc)
    return refs


def test_the_reference_reader_sees_each_form_and_a_heading_that_is_not_there(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "GUIDE.md").write_text(
        "# Guide\n\n## 4a. The manifest in force, restarts\n\n```sh\n# Not a heading\n```\n\n## Exit codes\n")
    text = ('x = 1  # (docs/GUIDE.md, "The manifest in force, restarts")\n'
            '"""see docs/GUIDE.md,\n    "Exit codes" and GUIDE.md "Not a heading"."""\n'
            "# docs/GUIDE.md#exit-codes, GUIDE.md#the-manifest-in-force-restarts, docs/GUIDE.md#restarts\n"
            'open("README.md", "r"); broker/README.md, "Elsewhere"; docs/NOPE.md, "Any"\n')
    refs = references(text, "code.py")
    assert [(r.doc, r.section) for r in refs] == [
        ("docs/GUIDE.md", "The manifest in force, restarts"), ("docs/GUIDE.md", "Exit codes"),
        ("GUIDE.md", "Not a heading"), ("docs/NOPE.md", "Any"), ("docs/GUIDE.md", "exit-codes"),
        ("GUIDE.md", "the-manifest-in-force-restarts"), ("docs/GUIDE.md", "restarts")]
    assert broken(refs, tmp_path) == [
        "code.py:3: GUIDE.md has no heading 'Not a heading'",
        "code.py:5: docs/NOPE.md does not exist",
        "code.py:4: docs/GUIDE.md has no heading 'restarts' (did you mean 'The manifest in force, restarts'?)",
    ]
    in_doc = references("See [the codes](#exit-codes) and [gone](#gone).", "docs/GUIDE.md", in_doc="docs/GUIDE.md")
    assert broken(in_doc, tmp_path) == ["docs/GUIDE.md:1: docs/GUIDE.md has no heading 'gone'"]


def test_every_section_reference_in_the_code_and_the_docs_names_an_existing_heading() -> None:
    refs = all_references(ROOT)
    assert len(refs) > 50, "the reader no longer finds the references (see its own test)"
    assert broken(refs, ROOT) == [], "point each at a heading that exists (or write that section)"


# --- the topics table -----------------------------------------------------------------------------------------

TOPICS_SECTION = "## Topics"
#: Members of `Topics` that build no topic, with why.
NOT_TOPICS = {
    "prefix": "the prefix itself",
    "client_id": "an MQTT client id",
    "is_reply_topic_allowed": "a check of a topic a requester gave",
    "parse_rpc": "reads a topic",
    "parse_log": "reads a topic",
    "parse_host_topic": "reads a topic",
}


def table_topics(text: str) -> list[str]:
    """The topic column of the table under TOPICS_SECTION, an optional tail (`[/...]`) dropped."""
    start = text.index(TOPICS_SECTION + "\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else len(text)]
    return [t.replace("[/...]", "") for t in re.findall(r"^\| `(\{prefix\}/[^`]*)` \|", section, re.M)]


def built_topics(topics: Topics) -> dict[str, str]:
    """What each member of `topics` builds, each argument given as a placeholder named like it (`{host}`)."""
    out = {}
    for name, member in inspect.getmembers(type(topics)):
        if name.startswith("_") or name in NOT_TOPICS:
            continue
        if isinstance(member, property):
            out[name] = getattr(topics, name)
            continue
        args = {p: SimpleNamespace(value="{role}") if p == "role" else f"{{{p}}}"
                for p in inspect.signature(member).parameters if p != "self"}
        out[name] = getattr(topics, name)(**args)
    return out


def is_listed(topic: str, rows: list[str]) -> bool:
    """`topic` is a row, or a subscription filter whose `+` levels each stand for a placeholder of one row."""
    levels = topic.split("/")
    for row in rows:
        parts = row.split("/")
        if len(parts) == len(levels) and all(
                a == b or (a == "+" and b.startswith("{")) for a, b in zip(levels, parts, strict=True)):
            return True
    return False


def unlisted_topics(doc_text: str) -> list[str]:
    rows = table_topics(doc_text)
    return [f"Topics.{name}: {topic}" for name, topic in built_topics(Topics("{prefix}")).items() if not is_listed(topic, rows)]


def test_the_topics_reader_sees_a_topic_the_table_lacks() -> None:
    text = (ROOT / "docs" / "INTERNALS.md").read_text(encoding="utf-8")
    assert "| `{prefix}/work` |" in text
    assert unlisted_topics(text.replace("| `{prefix}/work` |", "| `{prefix}/nudges` |")) == ["Topics.work: {prefix}/work"]
    assert unlisted_topics(text.replace("| `{prefix}/jobs/{job_id}/state` |", "| `{prefix}/jobs/{job_id}` |")) == [
        "Topics.all_job_states: {prefix}/jobs/+/state", "Topics.job_state: {prefix}/jobs/{job_id}/state"]


@pytest.mark.parametrize("name", sorted(built_topics(Topics("{prefix}"))))
def test_every_topic_topics_builds_is_a_row_of_the_internals_topics_table(name: str) -> None:
    missing = [line for line in unlisted_topics((DOCS / "INTERNALS.md").read_text(encoding="utf-8"))
               if line.startswith(f"Topics.{name}:")]
    assert missing == [], f"add a row to docs/INTERNALS.md, {TOPICS_SECTION[3:]!r} (or list it in NOT_TOPICS, with why)"
