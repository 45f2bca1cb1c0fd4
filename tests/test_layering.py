"""The package's import structure: one-way layers, no cycles, no private names across modules.

The flow of docs/design.md, lowest layer first: the algorithm (numpy), the torch side (plans
and quality recovery), the compute definitions, the Relax passes, the schedules, the compiler,
then tuning and the command line. A module may import only from its own layer or lower ones,
function-local imports included (they must not hide a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tetris_tvm"

# (layer, module prefixes), lowest first; the longest matching prefix decides
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("version workarounds and IR keys", ("_compat", "attr_keys")),
    ("algorithm", ("reorder", "assignment", "_auction")),
    ("torch side", ("plan", "calibration", "holdout", "importance", "reconstruct", "allocation",
                    "latency", "oneshot", "quantization", "spec", "gradual",
                    "finetuning", "zoo", "quality", "profiling")),
    ("compute definitions", ("kernels",)),
    ("frontend and passes", ("frontend", "passes")),
    ("schedules", ("schedules",)),
    ("compiler", ("libfile", "runtime", "compiler", "bench", "peers", "deploy")),
    ("tuning and cli", ("tuning", "cli", "__main__")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
PACKAGES = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}


def _imports(name: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every tetris_tvm import."""
    path = MODULES[name]
    package = name if name in PACKAGES else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names
                    if a.name.split(".")[0] == "tetris_tvm"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tetris_tvm":
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in MODULES or alias.name == "_auction":  # a submodule
                    out.append((full, None, node.lineno))
                else:
                    out.append((target, alias.name, node.lineno))
    return out


def _layer(module: str) -> int:
    rel = module.split(".", 1)[1] if "." in module else ""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (rel == p or rel.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return rank


def test_every_module_has_a_layer():
    for name in MODULES:
        if name != "tetris_tvm":
            _layer(name)


def test_imports_only_go_down_the_layers():
    wrong = []
    for name in MODULES:
        if name == "tetris_tvm":
            continue  # the lazy public API names every layer
        for target, _, line in _imports(name):
            if target == "tetris_tvm":
                continue
            if _layer(target) > _layer(name):
                wrong.append(f"{name}:{line} imports {target} "
                             f"({LAYERS[_layer(target)][0]} above {LAYERS[_layer(name)][0]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {n: {t for t, _, _ in _imports(n) if t in MODULES and t != n} for n in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_no_private_names_across_modules():
    wrong = []
    for name in MODULES:
        for target, imported, line in _imports(name):
            if imported is not None and imported.startswith("_") and not imported.startswith("__"):
                wrong.append(f"{name}:{line} imports private {target}.{imported}")
            leaf = target.rsplit(".", 1)[-1]
            if imported is None and leaf.startswith("_") and not leaf.startswith("__"):
                owner = target.rsplit(".", 1)[0]  # a private module: its own package only
                if not (name == owner or name.startswith(owner + ".")):
                    wrong.append(f"{name}:{line} imports private module {target}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """The checks above can fail: a module importing upward is reported."""
    fake = {**MODULES, "tetris_tvm.reorder": tmp_path / "reorder.py"}
    (tmp_path / "reorder.py").write_text("from .compiler import compile\nfrom .plan import _x\n")
    monkeypatch.setitem(globals(), "MODULES", fake)
    with pytest.raises(AssertionError, match="reorder:1 imports tetris_tvm.compiler"):
        test_imports_only_go_down_the_layers()
    with pytest.raises(AssertionError, match="private tetris_tvm.plan._x"):
        test_no_private_names_across_modules()
