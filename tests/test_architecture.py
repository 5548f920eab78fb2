"""The map in docs/architecture.md is the code's: every import (inside functions too) is read
with `ast`; no module imports itself back through others, and every import from one part of the
package into another is one the doc's "may import" table allows (the table is parsed from the doc)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "loftup"
DOC = ROOT / "docs" / "architecture.md"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the loftup modules it imports (a `from pkg import name` counts as pkg.name when that is a module)."""
    files = {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                found.update(f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on.discard(group[-1])
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def part_of(module: str) -> str:
    """`loftup.model.checkpoint` -> `model`; the root package is `loftup`."""
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else "loftup"


def may_import_table(text: str) -> dict[str, set[str] | None]:
    """part -> what it may import (parts or part.module names; None: anything), from the doc's table."""
    section = text.split("| part | owns | may import |", 1)[1].split("\n\n", 1)[0]
    table = {}
    for row in section.strip().splitlines()[1:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        allowed = None if cells[-1].startswith("anything") else set(re.findall(r"`([^`]+)`", cells[-1]))
        for part in re.findall(r"`([^`]+)`", cells[0]):
            table[part] = allowed
    return table


def disallowed(graph: dict[str, set[str]], table: dict[str, set[str] | None]) -> list[str]:
    """'a.b -> c.d' for each import between parts that the table does not allow."""
    bad = []
    for module, targets in sorted(graph.items()):
        allowed = table.get(part_of(module), set())
        for target in sorted(targets):
            if part_of(target) == part_of(module) or allowed is None:
                continue
            dotted = target.split(".", 1)[-1]
            if part_of(target) not in allowed and not any(dotted == a or dotted.startswith(a + ".") for a in allowed):
                bad.append(f"{module} -> {target}")
    return bad


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, f"import circles (a module that imports itself back through others): {found}"


def test_every_part_is_in_the_table_and_every_table_name_is_a_part():
    table = may_import_table(DOC.read_text())
    parts = {part_of(m) for m in import_graph()} | {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert parts == set(table), f"parts missing from the table: {parts - set(table)}; rows naming no part: {set(table) - parts}"
    named = {a.split(".")[0] for allowed in table.values() if allowed for a in allowed}
    assert named <= parts, f"the table allows imports of parts that do not exist: {named - parts}"


def test_every_import_between_parts_is_allowed_by_the_doc():
    bad = disallowed(import_graph(), may_import_table(DOC.read_text()))
    assert not bad, ("imports docs/architecture.md does not allow (change the code, or the table with its reason): "
                     + "; ".join(bad))


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "loftup"
    for folder in (pkg, pkg / "model", pkg / "kernels"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text("")
    (pkg / "model" / "a.py").write_text("from ..kernels import b\n")
    (pkg / "kernels" / "b.py").write_text("def f():\n    from loftup.model.a import g\n")  # lazy, still an edge
    graph = import_graph(pkg)
    assert graph["loftup.model.a"] == {"loftup.kernels.b"} and graph["loftup.kernels.b"] == {"loftup.model.a"}
    assert circles(graph) == [["loftup.kernels.b", "loftup.model.a"]]
    table = may_import_table("| part | owns | may import |\n|---|---|---|\n| `model` | x | `kernels` |\n| `kernels` | y | nothing |\n")
    assert disallowed(graph, table) == ["loftup.kernels.b -> loftup.model.a"]


@pytest.mark.parametrize("allowed,ok", [({"train"}, True), ({"train.masks"}, True), ({"train.stage1"}, False), (None, True)])
def test_a_module_entry_allows_that_module_only(allowed, ok):
    graph = {"loftup.eval.x": {"loftup.train.masks"}, "loftup.train.masks": set()}
    assert (disallowed(graph, {"eval": allowed, "train": set()}) == []) is ok
