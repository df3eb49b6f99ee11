"""The import graph of ppolab/ has no cycle, and the layers import only what docs/architecture.md allows.

The graph is read from the source (ast), so it sees function-level imports too: a cycle hidden in
a function is still a cycle, only deferred to run time. An edge `a -> b` means module `a` imports
module `b` (`from pkg import name` counts as importing `pkg.name` when that is a module, else `pkg`).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ppolab"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """`{module: modules of ppolab it imports}` over every .py file under ppolab/."""
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in files else stem for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:  # `import ppolab.a.b.C`-style names: the module part
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    # A test that cannot fail is a defect: the finder must see a cycle, through a third module too.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "ppolab.errors" in graph["ppolab.io"]  # module level, relative
    assert "ppolab.pretrained" not in graph  # names are modules, not guesses
    # models.checkpoint imports pretrained inside load_model_checkpoint
    assert "ppolab.models.pretrained" in graph["ppolab.models.checkpoint"]


# The pipeline branch removes this one (issue 21, pipeline/validate.py goes): delete the entry then.
PENDING: list[list[str]] = []


def test_no_import_cycle():
    found = [c for c in cycles(import_graph()) if c not in PENDING]
    assert not found, "import cycles (each list is one cycle's modules):\n" + "\n".join(map(str, found))


def reachable_ppolab(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


MATH = ("ppolab.advantage", "ppolab.reward_kl", "ppolab.ppo.losses", "ppolab._checks")


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the non-stdlib, non-ppolab modules a file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"ppolab", "__future__"}


def test_layering():
    """config/ imports only the leaves io and errors (which import nothing else of ours); the math
    (advantage/, reward_kl/, ppo/losses.py) reaches only math and the validators, and torch."""
    graph = import_graph()
    for mod in [m for m in graph if m == "ppolab.config" or m.startswith("ppolab.config.")]:
        outside = {t for t in graph[mod] if not t.startswith("ppolab.config")} - {"ppolab.io", "ppolab.errors"}
        assert not outside, f"{mod} imports {sorted(outside)}"
    assert graph["ppolab.errors"] == set() and graph["ppolab.io"] <= {"ppolab.errors"}
    math_modules = [m for m in graph if m.startswith(MATH)]
    assert len(math_modules) >= 8  # the prefixes still name real modules
    for mod in math_modules:
        outside = {t for t in reachable_ppolab(graph, mod) if not t.startswith(MATH)}
        assert not outside, f"{mod} (math) reaches {sorted(outside)}"
    for path in PACKAGE.rglob("*.py"):
        if module_name(path).startswith(MATH):
            assert third_party_imports(path) <= {"torch"}, f"{path}: {sorted(third_party_imports(path))}"
