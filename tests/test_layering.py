"""The import graph of ``mmgen_lightning``: no circle among its modules, and no import from a lower floor up.

Every module is parsed with ``ast`` and every ``import`` statement counts: at the top, inside functions (a
deferred import still makes the lower module lean on the upper one) and under ``TYPE_CHECKING``. Importing
``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``, so an import reaches every package it passes
through, bar the importer's own (already running): ``models/__init__.py`` imports every family, so a module
that imports ``mmgen_lightning.models.layers.x`` reaches the families too. A class imported by the path a
checkpoint or a recipe names (``importlib.import_module``) is data, not an edge.

The floors, lowest first, are ARCHITECTURE.md's layout read bottom up: the ground (errors, option groups,
knobs, the tokenizer) and the modalities, which import no network; data and losses; the plain networks of
``models/layers``; the objectives, pure functions of (networks, batch); the families that wire them; metrics and
callbacks, which score and watch families; the generation service; the commands on top, which nothing imports
(``cli.py`` least of all). A module may import its own floor (without a circle) and the floors below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "mmgen_lightning"
ROOT = Path(__file__).resolve().parents[1]

#: lowest first; a module sits on the floor of its longest matching name (``models.layers.dit`` on "layers",
#: ``models.flow`` on "families"); ``""`` is the package's own ``__init__.py``
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("", "errors", "config", "knobs", "tokenizer", "checkpoint_io")),
    ("modalities", ("modalities", "batch")),
    ("data and losses", ("datamodules", "losses")),
    ("layers", ("models.layers",)),
    ("objectives", ("objectives",)),
    ("families", ("models",)),  # models/__init__.py, base, optim and one module per family
    ("metrics and callbacks", ("metrics", "callbacks")),
    ("service", ("service", "generate")),  # generate.py goes when branch service-module lands
    ("commands", ("serve", "retrieve", "metrics.report", "cli")),
]


# --- the graph ------------------------------------------------------------------------------------
def modules(root: Path, package: str) -> dict[str, str]:
    """Every module of ``package`` under ``root``: its name relative to the package (``""`` for the package
    itself, ``models.flow``) -> its file relative to the package (``__init__.py``, ``models/flow.py``)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root / package).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path.relative_to(root / package).as_posix()
    return found


def _ancestors(name: str) -> list[str]:
    """The packages above ``name`` inside the package: ``models.layers.dit`` -> ``models``, ``models.layers``."""
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports(root: Path = ROOT, package: str = PACKAGE) -> dict[str, dict[str, str]]:
    """The package-internal import graph: importer -> {imported module: where, for messages}."""
    found = modules(root, package)

    def resolve(absolute: str) -> str | None:
        """The deepest module of the package that ``absolute`` names (an attribute resolves to its module)."""
        if absolute != package and not absolute.startswith(package + "."):
            return None
        name = absolute[len(package) + 1:]
        while name not in found:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, dict[str, str]] = {name: {} for name in found}
    for name, file in found.items():
        here = name if file.endswith("__init__.py") else name.rpartition(".")[0]
        path = root / package / file
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [resolve(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the importer's package, one level up per extra dot
                    base = [package, *here.split(".")] if here else [package]
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [resolve(f"{source}.{alias.name}") for alias in node.names]
            else:
                continue
            for target in filter(lambda t: t is not None, targets):
                own = set(_ancestors(name)) | {name}
                for reached in [*_ancestors(target), target]:
                    if reached not in own and reached not in graph[name]:
                        via = "" if reached == target else f" (through {target}, which runs {found[reached]})"
                        graph[name][reached] = f"{file}:{node.lineno}{via}"
    return graph


def floor_of(name: str, floors: list[tuple[str, tuple[str, ...]]] = FLOORS) -> int | None:
    """The index of ``name``'s floor (the longest matching name wins), or None when no floor names it."""
    best, best_length = None, -1
    for index, (_, names) in enumerate(floors):
        for prefix in names:
            matches = name == prefix or (prefix != "" and name.startswith(prefix + "."))
            if matches and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One circle of ``graph`` as the list of its modules, the first repeated at the end; None without one."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once every path from it was walked
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for successor in sorted(graph.get(node, {})):
            if state.get(successor) == "open":
                return path[path.index(successor):] + [successor]
            if successor not in state and (cycle := walk(successor)) is not None:
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)) is not None:
            return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, str]]) -> str:
    return " -> ".join(FILES[name] for name in cycle) + "; the imports: " + ", ".join(
        graph[a][b] for a, b in zip(cycle, cycle[1:]))


FILES = modules(ROOT, PACKAGE)


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, str]]:
    return imports()


# --- the rules ------------------------------------------------------------------------------------
def test_every_module_stands_on_a_floor(graph):
    unplaced = [FILES[name] for name in graph if floor_of(name) is None]
    assert not unplaced, f"add these modules to FLOORS in tests/test_layering.py: {', '.join(unplaced)}"


def test_no_import_from_a_lower_floor_up(graph):
    upward = []
    for importer, imported in graph.items():
        for target, where in imported.items():
            low, high = floor_of(importer), floor_of(target)
            if low is not None and high is not None and high > low:
                upward.append(f"{where} imports {FILES[target]}: floor {FLOORS[low][0]!r} reaches up to "
                              f"{FLOORS[high][0]!r}")
    assert not upward, "imports from a lower floor up:\n" + "\n".join(upward)


def test_no_import_cycle(graph):
    # a circle through cli.py needs an import of it, which the next test forbids on its own: this one names
    # every other circle
    without_cli = {name: {t: w for t, w in imported.items() if t != "cli"} for name, imported in graph.items()}
    cycle = find_cycle(without_cli)
    assert cycle is None, "import circle: " + describe(cycle, without_cli)


def test_nothing_imports_the_cli(graph):
    importers = [imported["cli"] for imported in graph.values() if "cli" in imported]
    assert not importers, "cli.py is imported by " + ", ".join(importers) + "; circle: " + describe(
        find_cycle(graph), graph)


# --- the checker itself, on a package made for it -------------------------------------------------
def test_the_checker_sees_deferred_package_and_relative_imports(tmp_path):
    files = {
        "toy/__init__.py": "",
        "toy/low.py": "def helper():\n    from toy.high import Thing\n    return Thing\n",
        "toy/high.py": "from . import low\n\nThing = low\n",
        "toy/upstairs/__init__.py": "from toy.upstairs.family import Family\n",
        "toy/upstairs/family.py": "from toy.upstairs.layers import block\n\nFamily = block\n",
        "toy/upstairs/layers/__init__.py": "",
        "toy/upstairs/layers/block.py": "import torch\n",
        "toy/middle.py": "from toy.upstairs.layers.block import torch\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = imports(tmp_path, "toy")
    assert set(graph["low"]) == {"high"}  # inside a function
    assert set(graph["high"]) == {"low"}  # relative
    assert set(graph["middle"]) == {"upstairs", "upstairs.layers", "upstairs.layers.block"}  # the packages it runs
    assert set(graph["upstairs.family"]) == {"upstairs.layers", "upstairs.layers.block"}  # not its own package
    assert find_cycle(graph) == ["high", "low", "high"]
    floors = [("low", ("low", "middle", "upstairs.layers")), ("high", ("high", "upstairs"))]
    assert floor_of("upstairs.layers.block", floors) == 0 and floor_of("upstairs.family", floors) == 1
    assert floor_of("middle", floors) < floor_of("upstairs", floors)  # middle -> upstairs/__init__.py: up
