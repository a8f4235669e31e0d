"""The package layout is the data flow: imports run one way, with no cycles, and array code is torch-free.

Every import of every module under ``mpsearch/`` is read from its syntax tree, including imports
inside functions and under ``TYPE_CHECKING``, so a lazy import cannot hide a dependency that
runs against the flow. The torch-free packages are then exercised for real in a subprocess in
which importing torch fails.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mpsearch"

# Which stage may import which (the transitive closure is allowed too). The order follows the
# data flow in docs/architecture.md: types, then numerics and models, then the stages, then the
# orchestration and the command line on top.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "solvers": {"core"},
    "hardware_models": {"core"},
    "kernels": {"core"},
    "zoo": {"core"},
    "space": {"core", "kernels"},
    "sensitivity": {"core", "kernels", "space"},
    "pricing": {"core", "kernels", "space", "sensitivity", "hardware_models"},
    "deploy": {"core", "kernels", "space", "zoo"},
    "testing": {"core", "kernels", "space", "sensitivity", "pricing", "solvers"},
    "workflows": {"core", "kernels", "space", "sensitivity", "pricing", "solvers", "hardware_models",
                  "deploy", "zoo"},
    "cli": {"core", "kernels", "space", "sensitivity", "pricing", "solvers", "hardware_models",
            "deploy", "zoo", "workflows"},
}
TORCH_FREE = ("core", "solvers", "hardware_models")
# The package root holds the public API and nothing else.
ROOT_MODULES = {"__init__"}


def _closure(pkg: str) -> set[str]:
    seen: set[str] = set()
    todo = [pkg]
    while todo:
        for dep in ALLOWED[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _is_module(name: str) -> bool:
    where = ROOT.parent / name.replace(".", "/")
    return where.with_suffix(".py").exists() or where.is_dir()


def imports_of(path: Path, module: str | None = None) -> list[tuple[str, bool]]:
    """(imported mpsearch module, True when only under TYPE_CHECKING) for every import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = _type_checking_lines(tree)
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from mpsearch.kernels import packing` imports the module mpsearch.kernels.packing
            names = [f"{target}.{a.name}" if _is_module(f"{target}.{a.name}") else target for a in node.names]
        else:
            continue
        for name in names:
            if name == "mpsearch" or name.startswith("mpsearch."):
                found.append((name, node.lineno in typing_only))
    return found


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_root_holds_only_the_public_api():
    extra = sorted(p.stem for p in ROOT.glob("*.py") if p.stem not in ROOT_MODULES)
    assert not extra, f"modules at the package root: {extra}; put them in a stage package"
    stages = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert set(stages) == set(ALLOWED), f"stage packages {stages} differ from the layering table {sorted(ALLOWED)}"


def test_imports_follow_the_data_flow():
    bad = []
    for module, path in _all_modules().items():
        stage = _stage(module)
        if stage is None:  # the lazy public API may name anything
            continue
        allowed = _closure(stage) | {stage}
        for target, _ in imports_of(path):
            dep = _stage(target)
            if dep is None:
                bad.append(f"{module} imports the package root ({target}); import the stage module instead")
            elif dep not in allowed:
                bad.append(f"{module} -> {target} ({stage} may not import {dep})")
    assert not bad, "imports against the flow:\n" + "\n".join(sorted(set(bad)))


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_cycles_between_modules():
    """No two modules import each other, directly or around a loop (lazy imports count too).

    Package ``__init__`` files only re-export, so an edge into a package stands for an edge into
    the module that defines the names; they are left out of the module graph.
    """
    modules = _all_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        if path.name == "__init__.py":
            continue
        graph[module] = {t for t, typing_only in imports_of(path)
                         if not typing_only and t in modules and modules[t].name != "__init__.py" and t != module}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_an_import_against_the_flow_is_caught(tmp_path):
    """The reader sees lazy imports, relative imports and TYPE_CHECKING imports."""
    src = tmp_path / "mod.py"
    src.write_text(textwrap.dedent("""
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from mpsearch.space.discover import SearchSpace
        from ..kernels import packing
        def f():
            import mpsearch.deploy.apply
    """))
    found = dict(imports_of(src, module="mpsearch.core.mod"))
    assert found == {"mpsearch.space.discover": True, "mpsearch.deploy.apply": False, "mpsearch.kernels.packing": False}


TORCH_FREE_SCRIPT = """
import builtins, sys
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
        raise ImportError("torch is blocked in this check")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded

import numpy as np
import mpsearch as mp
from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.plan import BitPlan
from mpsearch.core.config import QuantizerConfig
from mpsearch.core.storage import overhead_bits
from mpsearch.solvers import solve
from mpsearch.solvers.pareto import pareto
from mpsearch.hardware_models import plan_bytes
import mpsearch.hardware_models

cost = np.array([[4.0, 1.0, 0.1], [9.0, 2.0, 0.3], [1.0, 0.5, 0.2]])
storage = np.array([[2.0, 4.0, 8.0]] * 3) * 100
table = CostTable(items=("a", "b", "c"), bits=(2, 4, 8), cost=cost, storage_bits=storage,
                  n_weights=np.array([100, 100, 100]), quantizer=QuantizerConfig().to_dict())
result = solve(table, Budget.avg_bits(4.0), solver="ilp")
plan = result.plan
assert isinstance(plan, BitPlan)
assert BitPlan.from_json(plan.to_json()).bits == plan.bits
front = pareto(table, [3.0, 4.0, 6.0])
assert len(front.results) == 3
assert overhead_bits(4, 256, 4, QuantizerConfig(group_size=128)) == 4 * 2 * 16
assert "torch" not in sys.modules
print("ok")
"""


def test_torch_free_stages_run_without_torch():
    """Solve, sweep a front and round-trip a plan in a process where importing torch fails."""
    run = subprocess.run([sys.executable, "-c", TORCH_FREE_SCRIPT], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


def test_torch_free_stages_never_import_torch():
    """Not even lazily inside a function: a torch-free stage must work where torch is absent."""
    bad = []
    for module, path in _all_modules().items():
        if _stage(module) not in TORCH_FREE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{module}:{node.lineno} imports {n}" for n in names if n == "torch" or n.startswith("torch.")]
    assert not bad, "torch imported in a torch-free stage:\n" + "\n".join(bad)


def test_torch_free_packages_are_listed_in_the_table():
    for pkg in TORCH_FREE:
        assert _closure(pkg) <= set(TORCH_FREE), f"{pkg} may import a package that uses torch"
