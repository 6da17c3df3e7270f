"""The house: every module has a floor, imports only run down or sideways, and no modules import each other in a loop.

The table below is the architecture (README "Layout", docs/architecture.md). A new module must be placed in it,
so this test fails until someone decides where it stands. Every import counts, lazy ones inside functions too;
only imports under `if TYPE_CHECKING:` (type annotations, never executed) are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Longest prefix wins. Floors run from the ground (0) up; a module may import its own floor or any below it.
FLOORS: dict[str, int] = {
    # ground: what every room may use
    "stp_edge._version": 0, "stp_edge.errors": 0, "stp_edge._deps": 0,
    "stp_edge.frames": 1, "stp_edge.config": 1, "stp_edge.geometry": 1, "stp_edge.results": 1,
    "stp_edge.outputs": 1, "stp_edge.media_files": 1, "stp_edge.machine": 1, "stp_edge.metrics": 1,
    "stp_edge.datasets": 1, "stp_edge.records": 1,
    # the parts a stage is built from
    "stp_edge.preprocess": 2, "stp_edge.cuda": 2, "stp_edge.bundle": 2, "stp_edge.report": 2, "stp_edge.model": 2,
    "stp_edge.backends": 3,
    "stp_edge.pipeline": 4,
    # sources, pictures and the two doors of the runtime
    "stp_edge.av_source": 5, "stp_edge.nvdec": 5, "stp_edge.video": 5, "stp_edge.sources": 5, "stp_edge.visualize": 5,
    "stp_edge.api": 6,
    "stp_edge.run": 7,
    # below every wing that uses them; camera apps (events, sinks, clips, the service, the GStreamer element)
    "stp_edge.synthetic": 8, "stp_edge.apps": 8,
    "stp_edge.export": 9,
    # wings: none imports another
    "stp_edge.eval": 10, "stp_edge.demo": 10, "stp_edge.bench": 10, "stp_edge.scale": 10,
    "stp_edge.cli": 11, "stp_edge": 11,
}
WINGS = ("stp_edge.eval", "stp_edge.demo", "stp_edge.bench", "stp_edge.scale")


def _modules() -> dict[str, Path]:
    """Module name -> file, for stp_edge/ and export/ (installed as stp_edge.export)."""
    found = {}
    for root, prefix in ((REPO / "stp_edge", "stp_edge"), (REPO / "export", "stp_edge.export")):
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


def _executed_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import nodes that can run: everything but the body of `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in _executed_imports_of(child))
            continue
        yield from _executed_imports_of(node)


def _executed_imports_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _executed_imports(node)


def _targets(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules one file imports (the deepest module each import names)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _executed_imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            candidates = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for cand in candidates:
            while cand and cand not in modules:
                cand = cand.rpartition(".")[0]
            if cand and cand != name:
                out.add(cand)
    return out


def _floor(module: str) -> int | None:
    keys = [k for k in FLOORS if module == k or module.startswith(k + ".")]
    return FLOORS[max(keys, key=len)] if keys else None


def _wing(module: str) -> str | None:
    return next((w for w in WINGS if module == w or module.startswith(w + ".")), None)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _targets(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_floor():
    assert "stp_edge.api" in _graph()  # the scan sees the package
    unplaced = sorted(m for m in _graph() if _floor(m) is None)
    assert not unplaced, f"place these modules in FLOORS (tests/test_house.py) and the README layout: {unplaced}"


def test_no_import_runs_back_up():
    graph = _graph()
    upward = sorted(f"{src} (floor {_floor(src)}) -> {dst} (floor {_floor(dst)})"
                    for src, dsts in graph.items() for dst in dsts
                    if _floor(src) is not None and _floor(dst) is not None and _floor(dst) > _floor(src))
    assert not upward, "imports from a lower floor to a higher one:\n" + "\n".join(upward)


def test_no_wing_imports_another():
    crossing = sorted(f"{src} -> {dst}" for src, dsts in _graph().items() for dst in dsts
                      if _wing(src) and _wing(dst) and _wing(src) != _wing(dst))
    assert not crossing, "wings importing each other:\n" + "\n".join(crossing)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_import_circle():
    assert not _cycles(_graph())


def test_the_circle_finder_finds_a_circle():
    """The check above can fail: a loop of three and a self-contained pair are both found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["d", "e"]]


def test_imports_under_type_checking_are_left_out_and_lazy_ones_counted(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import stp_edge.api\n"
                   "def f():\n    from stp_edge.run import run_video\n")
    assert _targets("stp_edge.x", mod, {"stp_edge.api": mod, "stp_edge.run": mod}) == {"stp_edge.run"}
