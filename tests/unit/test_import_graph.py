"""The package's import graph: no cycles, and the dependency direction of DESIGN.md.

The graph is built from the source, not from what happens to be imported at run time, so
it sees every import: at module level, inside functions (lazy imports), under
`if TYPE_CHECKING:`, relative and absolute, and modules named in a string by a module
that imports by name (`importlib.import_module`, e.g. the lazy export tables).

Edges are precise about packages: `from . import tensor` is an edge to the submodule
`tensor`, not to the package's __init__; `from .model import Site` is an edge to
model/__init__. Importing a submodule also runs its parent packages' __init__, but that
is implied for every module and not counted (else every __init__ that imports its own
submodules would be a cycle).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pytest_streamorder"


# ------------------------------------------------------------------------ the graph


@dataclass(frozen=True)
class Import:
    """One edge: `source` imports `target`, at `path`:`line` (the statement, quoted)."""

    source: str
    target: str
    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}  ({self.path}:{self.line}: {self.text})"


def find_modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package."""
    base = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` statement names as X."""
    if not node.level:
        return node.module or ""
    # Level 1 is the module's own package (for a package's __init__: the package itself).
    anchor = module.split(".") if is_package else module.split(".")[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _imports_by_name(tree: ast.AST) -> bool:
    """Whether the module imports modules by name at run time (importlib.import_module)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "import_module":
            return True
        if isinstance(node, ast.Name) and node.id in ("import_module", "__import__"):
            return True
    return False


def build_graph(package_dir: Path) -> tuple[dict[str, Path], list[Import]]:
    """Every module of the package, and every import edge between two of them."""
    modules = find_modules(package_dir)
    edges: list[Import] = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source, str(path))
        rel = os.path.relpath(path, package_dir.parent)

        def add(target: str, node: ast.AST) -> None:
            if target in modules and target != module:
                text = lines[node.lineno - 1].strip()
                edges.append(Import(module, target, rel, node.lineno, text))

        for node in ast.walk(tree):  # every statement, at any depth
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(module, is_package, node)
                attributes = False
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        add(sub, node)  # `from pkg import submodule`
                    else:
                        attributes = True  # a name defined in base's own file
                if attributes:
                    add(base, node)
        if _imports_by_name(tree):
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    add(node.value, node)
    return modules, edges


def find_cycles(modules, edges: list[Import]) -> list[tuple[list[str], list[Import]]]:
    """(group, cycle) for every group of modules that import each other in a circle (a
    strongly connected component): the modules, and one shortest cycle as its edges."""
    out: dict[str, list[Import]] = {m: [] for m in modules}
    for e in edges:
        out[e.source].append(e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in out[v]:
            w = e.target
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 10 * len(modules) + 100))
    try:
        for m in sorted(modules):
            if m not in index:
                visit(m)
    finally:
        sys.setrecursionlimit(old_limit)
    return [(group, _cycle_in(group, out)) for group in groups]


def _cycle_in(group: list[str], out: dict[str, list[Import]]) -> list[Import]:
    """A shortest cycle through the group's first module, staying inside the group."""
    members = set(group)
    start = group[0]
    paths: dict[str, list[Import]] = {start: []}
    frontier = [start]
    while frontier:  # breadth first, so the cycle printed is a shortest one
        nxt = []
        for v in frontier:
            for e in out[v]:
                if e.target == start:
                    return paths[v] + [e]
                if e.target in members and e.target not in paths:
                    paths[e.target] = paths[v] + [e]
                    nxt.append(e.target)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {group}")  # Tarjan said there is one


def path_between(edges: list[Import], sources, targets) -> list[Import] | None:
    """The edges of a shortest import chain from a module in `sources` to one in `targets`."""
    out: dict[str, list[Import]] = {}
    for e in edges:
        out.setdefault(e.source, []).append(e)
    paths = {s: [] for s in sources}
    frontier = list(sources)
    while frontier:
        nxt = []
        for v in frontier:
            for e in out.get(v, ()):
                if e.target in paths:
                    continue
                paths[e.target] = paths[v] + [e]
                if e.target in targets:
                    return paths[e.target]
                nxt.append(e.target)
        frontier = nxt
    return None


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _describe(chain: list[Import]) -> str:
    return "\n".join(f"  {e}" for e in chain)


# ------------------------------------------------------------------------ the package


@pytest.fixture(scope="module")
def graph():
    return build_graph(PACKAGE)


def test_the_graph_sees_the_package(graph):
    """Sanity: the builder finds the modules and the edges we know exist (a lazy import
    inside a function, a TYPE_CHECKING import, a string-named lazy export)."""
    modules, edges = graph
    pairs = {(e.source, e.target) for e in edges}
    for module in ("pytest_streamorder", "pytest_streamorder.model.hb",
                   "pytest_streamorder.errors", "pytest_streamorder.backend",
                   "pytest_streamorder.plugin", "pytest_streamorder.sim.device"):
        assert module in modules
    assert ("pytest_streamorder.model.hb", "pytest_streamorder.model.report") in pairs
    # inside a function: plugin.StreamOrderRun.open_device
    assert ("pytest_streamorder.plugin", "pytest_streamorder.sim.device") in pairs
    # under TYPE_CHECKING: errors.py names the model's Race for its annotation
    assert ("pytest_streamorder.errors", "pytest_streamorder.model") in pairs
    # a lazy export table read by importlib.import_module
    assert ("pytest_streamorder", "pytest_streamorder.sim.device") in pairs


def test_no_import_cycles(graph):
    modules, edges = graph
    cycles = find_cycles(modules, edges)
    message = [f"{len(cycles)} import cycle(s) in pytest_streamorder (imports inside "
               f"functions and under TYPE_CHECKING count):"]
    for group, cycle in cycles:
        short = [m.replace("pytest_streamorder.", "") for m in group]
        names = [e.source for e in cycle] + [cycle[0].source]
        message.append(f"- {len(group)} modules import each other: {', '.join(short)}; "
                       f"a shortest cycle through {short[0]}:")
        message.append("  " + " -> ".join(n.replace("pytest_streamorder.", "") for n in names))
        message.append(_describe(cycle))
    assert not cycles, "\n".join(message)


@pytest.mark.parametrize("importer, imported", [("sim", "gpu"), ("gpu", "sim")])
def test_sim_and_gpu_never_import_each_other(graph, importer, imported):
    """Directly or through another module: what both need lives in a shared layer."""
    modules, edges = graph
    src = {m for m in modules if _in(m, f"pytest_streamorder.{importer}")}
    dst = {m for m in modules if _in(m, f"pytest_streamorder.{imported}")}
    chain = path_between(edges, src, dst)
    assert chain is None, f"{importer}/ imports {imported}/:\n{_describe(chain)}"


def test_model_imports_nothing_of_ours_outside_model(graph):
    modules, edges = graph
    outside = [e for e in edges if _in(e.source, "pytest_streamorder.model")
               and not _in(e.target, "pytest_streamorder.model")]
    assert not outside, "model/ must import only model/:\n" + _describe(outside)


def test_scheduling_imports_neither_sim_nor_gpu(graph):
    """The scheduling policies decide from what they are shown, not from a backend."""
    modules, edges = graph
    scheduling = {m for m in modules if _in(m, "pytest_streamorder.scheduling")}
    if not scheduling:
        pytest.skip("no pytest_streamorder/scheduling/ package in this tree yet")
    backends = {m for m in modules if _in(m, "pytest_streamorder.sim")
                or _in(m, "pytest_streamorder.gpu")}
    chain = path_between(edges, scheduling, backends)
    assert chain is None, "scheduling/ reaches a backend:\n" + _describe(chain)


def test_reference_impl_imports_nothing_of_ours():
    """reference_impl is the code under test: it must not lean on the tool testing it."""
    ours = []
    for path in sorted((ROOT / "reference_impl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            ours += [f"{path.name}:{node.lineno}" for n in names if _in(n, "pytest_streamorder")]
    assert not ours, f"reference_impl imports pytest_streamorder at {ours}"


TORCH_FREE = ("pytest_streamorder", "pytest_streamorder.plugin", "pytest_streamorder.errors",
              "pytest_streamorder.backend", "pytest_streamorder.model")


def test_loading_the_plugin_imports_no_torch():
    """What pytest loads without --streamorder, and what user code names (errors, the
    Backend interface, the model), must not pay for torch. Imported one by one in a
    fresh interpreter, so the first that pulls torch in is named."""
    code = textwrap.dedent(f"""
        import importlib, sys
        for name in {TORCH_FREE!r}:
            importlib.import_module(name)
            if "torch" in sys.modules:
                sys.exit("importing " + name + " imported torch")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr.strip()[-2000:]
    assert result.stdout.strip() == "ok"


# ------------------------------------------------------------------------ the checker


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_checker_finds_a_cycle_through_a_lazy_and_a_type_checking_import(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from .b import B
        """,
        "b.py": """
            def f():
                from . import c
        """,
        "c.py": "import pkg.a\n",
    })
    modules, edges = build_graph(root)
    ((group, cycle),) = find_cycles(modules, edges)
    assert group == ["pkg.a", "pkg.b", "pkg.c"]
    assert [e.source for e in cycle] == ["pkg.a", "pkg.b", "pkg.c"]
    assert [e.target for e in cycle] == ["pkg.b", "pkg.c", "pkg.a"]
    assert str(cycle[1]) == "pkg.b -> pkg.c  (pkg/b.py:3: from . import c)"


def test_checker_resolves_relative_levels_and_package_attributes(tmp_path):
    """`from .. import x` from a subpackage, `from .sub import name` into a package's
    __init__, and a package __init__ importing its own submodules (no cycle)."""
    root = _package(tmp_path, {
        "__init__.py": "from .sub import thing\n",
        "sub/__init__.py": "from .leaf import thing\n",
        "sub/leaf.py": "from .. import other\nthing = 1\n",
        "other.py": "",
    })
    modules, edges = build_graph(root)
    pairs = {(e.source, e.target) for e in edges}
    assert pairs == {("pkg", "pkg.sub"), ("pkg.sub", "pkg.sub.leaf"),
                     ("pkg.sub.leaf", "pkg.other")}
    assert find_cycles(modules, edges) == []


def test_checker_names_a_chain_between_two_folders(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "sim/__init__.py": "",
        "sim/device.py": "from ..shared import x\n",
        "shared.py": "def x():\n    import pkg.gpu.backend\n",
        "gpu/__init__.py": "",
        "gpu/backend.py": "",
    })
    modules, edges = build_graph(root)
    chain = path_between(edges, {"pkg.sim.device"}, {"pkg.gpu.backend"})
    assert [(e.source, e.target) for e in chain] == [
        ("pkg.sim.device", "pkg.shared"), ("pkg.shared", "pkg.gpu.backend")]
