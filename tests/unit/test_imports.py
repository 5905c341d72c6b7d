"""The package's import graph, read with `ast` (lazy and TYPE_CHECKING imports count too): no circles inside
`mqfleet/`, every module in a layer that imports only the layers below it, the agent never imports the
trainers (the grant carries the trainer's argv) nor the CLI, and no two modules of one package whose names
differ only by a suffix (docs/INTERNALS.md, "Modules and who owns what")."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mqfleet"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports, at any depth of its code (lazy imports count too)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            # `from pkg import mod` imports the module pkg.mod when there is one, else a name of pkg
            targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix for alias in node.names]
        for target in targets:
            # importing a.b.c runs a/__init__ and a/b/__init__ too, but those are not the edge that matters
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@functools.cache  # the tree does not change during a run; parsing it is most of these tests' time
def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_reader_sees_a_circle_and_relative_imports() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "mqfleet.coordinator.sql.sqlite" in graph["mqfleet.coordinator.tables.catalog"]
    assert "mqfleet.mqtt.connection" in graph["mqfleet.coordinator.service"]
    # a lazy import inside a function, and one under TYPE_CHECKING
    assert "mqfleet.client" in graph["mqfleet.agent.selftest"]
    assert "mqfleet.coordinator.sql.sqlite" in graph["mqfleet.coordinator.tables.garbage"]


def test_no_import_circles_inside_the_package() -> None:
    cycles = find_cycles(import_graph())
    assert cycles == [], "import circles (break them with a leaf module or a narrow Protocol):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def agent_modules_reaching(graph: dict[str, set[str]], package: str) -> dict[str, list[str]]:
    """Each agent module that reaches `package` through any chain of imports, with what it reaches there."""
    offenders = {
        name: sorted(t for t in reachable(graph, name) if t == package or t.startswith(package + "."))
        for name in graph
        if name.startswith("mqfleet.agent")
    }
    return {k: v for k, v in offenders.items() if v}


def test_the_agent_never_imports_the_trainers_even_through_another_module() -> None:
    found = agent_modules_reaching(import_graph(), "mqfleet.trainers")
    assert found == {}, "the grant carries the trainer's argv; the agent needs no registry"


def test_the_agent_never_imports_the_cli_even_through_another_module() -> None:
    found = agent_modules_reaching(import_graph(), "mqfleet.cli")
    assert found == {}, "the CLI builds what the agent needs and passes it in"


#: The layers of the package, lowest first. A module may import its own unit (a package, or one module),
#: the units of any lower layer, and nothing else: units that share a layer do not import each other
#: (except in the base, whose modules are leaves and may use one another).
LAYERS: tuple[tuple[str, ...], ...] = (
    # the base: the package itself (its version), exceptions, defaults, the host-id rule, the job state machine,
    # logging set-up
    ("mqfleet", "mqfleet.errors", "mqfleet.defaults", "mqfleet.hostid", "mqfleet.lifecycle", "mqfleet.logs"),
    # a machine owner's working hours and the local switch `agent pause` talks to: pure, the standard library
    ("mqfleet.owner",),
    # the bus contract both sides share: message types, topics, adverts, signatures; no I/O
    ("mqfleet.wire",),
    # the manifest's types and checks; the MQTT client; the artifact store; the broker's deployment files
    ("mqfleet.manifest", "mqfleet.mqtt", "mqfleet.store", "mqfleet.trust"),
    # FleetClient, the operator's Python API over the bus (the agent's selftest asks the coordinator through it)
    ("mqfleet.client",),
    # what a live view folds from the bus through a FleetClient (`watch`)
    ("mqfleet.fleet_picture",),
    # the roles: what runs on the coordinator host, on each agent host, and as each trainer process
    ("mqfleet.coordinator", "mqfleet.agent", "mqfleet.trainers"),
    # the web dashboard the coordinator's process serves (--web-port), over the coordinator's query handlers
    ("mqfleet.web",),
    # local copies of the real services (broker, S3, PostgreSQL) and the demo built on them
    ("mqfleet.local",),
    # the entry points: the command line and the chaos soak
    ("mqfleet.cli", "mqfleet.soak"),
    # `python -m mqfleet`, which runs the command line
    ("mqfleet.__main__",),
)

#: The coordinator's own layers, lowest first: the pure ranking, the SQL engines, the tables (one noun each,
#: over an engine), the verb handlers (over the tables), then the running parts that `Coordinator` is built from.
COORDINATOR_LAYERS: tuple[tuple[str, ...], ...] = (
    ("mqfleet.coordinator.scheduler",),
    ("mqfleet.coordinator.sql",),
    ("mqfleet.coordinator.tables",),
    ("mqfleet.coordinator.verbs",),
    ("mqfleet.coordinator",),
)

#: The CLI's own layers: all rich output below the commands that print it.
CLI_LAYERS: tuple[tuple[str, ...], ...] = (("mqfleet.cli.render",), ("mqfleet.cli",))


def unit_of(name: str, layers: tuple[tuple[str, ...], ...]) -> tuple[int, str] | None:
    """(layer index, unit) of a module: the longest unit that is the module or a package holding it."""
    best: tuple[int, str] | None = None
    for index, units in enumerate(layers):
        for unit in units:
            # the bare package is the unit of its __init__ only, never of everything below it
            holds = name == unit or (unit != "mqfleet" and name.startswith(unit + "."))
            if holds and (best is None or len(unit) > len(best[1])):
                best = (index, unit)
    return best


def layer_violations(graph: dict[str, set[str]], layers: tuple[tuple[str, ...], ...]) -> list[str]:
    """Each import of a module in `layers` that reaches its own layer's other units or a layer above."""
    out = []
    for name, targets in sorted(graph.items()):
        here = unit_of(name, layers)
        if here is None:
            continue
        for target in sorted(targets):
            there = unit_of(target, layers)
            if there is None or there[1] == here[1] or there[0] < here[0] or here[0] == there[0] == 0:
                continue
            out.append(f"{name} (layer {here[0]}, {here[1]}) imports {target} (layer {there[0]}, {there[1]})")
    return out


def test_the_layer_reader_sees_an_import_upwards_and_one_across_a_layer() -> None:
    graph = {"mqfleet.wire.topics": {"mqfleet.client"}, "mqfleet.mqtt.rpc": {"mqfleet.store.base"},
             "mqfleet.cli.jobs": {"mqfleet.agent.job", "mqfleet.cli.render.fleet"}, "mqfleet.errors": {"mqfleet.logs"}}
    assert layer_violations(graph, LAYERS) == [
        "mqfleet.mqtt.rpc (layer 3, mqfleet.mqtt) imports mqfleet.store.base (layer 3, mqfleet.store)",
        "mqfleet.wire.topics (layer 2, mqfleet.wire) imports mqfleet.client (layer 4, mqfleet.client)",
    ]
    assert layer_violations({"mqfleet.coordinator.tables.hosts": {"mqfleet.coordinator.outbox"}}, COORDINATOR_LAYERS) != []


def test_every_module_has_a_layer() -> None:
    missing = [name for name in modules() if unit_of(name, LAYERS) is None]
    assert missing == [], f"place these in LAYERS (tests/unit/test_imports.py): {missing}"


def test_no_module_imports_a_higher_layer() -> None:
    graph = import_graph()
    found = layer_violations(graph, LAYERS) + layer_violations(graph, COORDINATOR_LAYERS)
    found += layer_violations(graph, CLI_LAYERS)
    assert found == [], "imports against the layers (move the shared part down, or pass it in):\n" + "\n".join(found)


#: What a second module's name adds to a first one's when the two say the same thing twice.
SUFFIXES = ("s", "er", "ers", "ing")


def suffix_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Pairs of sibling module names where one is the other plus a suffix: `check`/`checker`, `render`/`render_jobs`."""
    return [(a, b) for a in sorted(names) for b in sorted(names)
            if a != b and b.startswith(a) and (b[len(a):].startswith("_") or b[len(a):] in SUFFIXES)]


def test_the_suffix_reader_sees_a_pair() -> None:
    assert suffix_pairs(["manifest_check", "manifest_checker", "render", "render_jobs", "cli", "client"]) == [
        ("manifest_check", "manifest_checker"), ("render", "render_jobs")]


def test_no_two_modules_of_one_package_differ_only_by_a_suffix() -> None:
    by_package: dict[str, list[str]] = {}
    for name in modules():  # a subpackage is named like a module among its siblings
        package, _, leaf = name.rpartition(".")
        by_package.setdefault(package, []).append(leaf)
    pairs = {package: suffix_pairs(leaves) for package, leaves in by_package.items() if suffix_pairs(leaves)}
    assert pairs == {}, "names that say the same thing twice: say what each holds"


#: The only modules that may import a database driver: each engine behind `SqlConnection`
#: (coordinator/sql/connection.py), which turns its driver's exceptions into the project's, and the
#: local PostgreSQL server, which proves its readiness with a query.
DRIVER_IMPORTERS = {
    "sqlite3": {"mqfleet.coordinator.sql.sqliteconnection"},
    "psycopg": {"mqfleet.coordinator.sql.pgconnection", "mqfleet.local.postgres"},
}


def driver_imports(source: str) -> set[str]:
    """The database drivers a module's source imports, at any depth (lazy and TYPE_CHECKING imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in DRIVER_IMPORTERS)
    return found


def test_the_driver_reader_sees_lazy_and_dotted_imports() -> None:
    assert driver_imports("def f():\n    import sqlite3\n    from psycopg import errors\n") == {"sqlite3", "psycopg"}
    assert driver_imports("import json\nfrom .sqlite3 import x\n") == set()


def test_only_the_engines_import_a_database_driver() -> None:
    found = {(name, driver) for name, path in modules().items() for driver in driver_imports(path.read_text())
             if name not in DRIVER_IMPORTERS[driver]}
    assert found == set(), "run SQL through SqlConnection (coordinator/sql/connection.py); catch mqfleet.errors' types"
