"""The layering of DESIGN.md, checked on the source with `ast`: math imports torch only, plots draw
what they are handed (no torch math), widgets import no model libraries at module level.

The AST cannot tell a tensor from a numpy array, so the "no math in plots" check is a list: calls
of `torch.*` (only `torch.as_tensor` is allowed), tensor-only methods (`.amax`, `.bincount`,
`.histc`, ...; `.float()` only inside `to_numpy`, the one conversion for drawing) and numpy's math
functions (`np.log2`, `np.histogram`, ...). Arithmetic operators and methods numpy arrays share
with tensors (`.max()`, `.sum()`) are not caught: plots use those on numpy arrays for axis limits
and titles. A reviewer still reads the diff.
"""

import ast
import doctest
import importlib
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "qlearn"

MATH = {"codebooks", "quantize", "intquant", "memory", "metrics", "granularity", "levels", "codeusage",
        "distribution", "outliers", "reference", "_checks", "floats", "fakequant", "int8matmul", "mixed", "cuda_rules",
        "texts", "capture", "_threads", "microscaling", "fp8", "rotation", "matched4bit"}
# not math: numpy, models, the CLI; claims and quiz check a learner's answers (stdlib only); sensitivity runs a model
OTHER = {"__init__", "backend", "cli", "evaluate", "models", "sources", "claims", "quiz", "sensitivity", "finetune"}
MATH_PACKAGES = ("kernels", "methods")   # sub-packages of the math layer: torch, the stdlib and math modules
# ... except their modules that time or apply to a real model: those import model libraries inside functions only
PACKAGE_MODEL_MODULES = {"kernels/timesplit", "kernels/layerbench", "kernels/bnb4bit", "methods/apply"}
MODEL_LIBS = {"transformers", "bitsandbytes", "accelerate"}

TORCH_ALLOWED = {"torch.as_tensor"}
TENSOR_METHODS = {"abs", "amax", "amin", "aminmax", "argsort", "bincount", "clamp", "double", "erf", "expand",
                  "half", "histc", "index_add_", "isin", "log2", "long", "masked_fill", "matmul", "movedim",
                  "nan_to_num", "ndtri", "norm", "randperm", "repeat_interleave", "sqrt", "unique", "float"}
NUMPY_MATH = {"log", "log2", "log10", "exp", "sqrt", "histogram", "bincount", "unique", "quantile",
              "percentile", "cumsum", "searchsorted", "digitize"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Dotted names of what `path` imports (relative imports resolved inside qlearn)."""
    package = ["qlearn"] + list(path.relative_to(SRC).parent.parts)
    tree = _tree(path)
    nodes = _walk_outside_functions(tree) if module_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add(node.module)
                continue
            base = ".".join(package[: len(package) - node.level + 1])
            if node.module:
                names.add(f"{base}.{node.module}")
            else:
                names |= {f"{base}.{a.name}" for a in node.names}
    return names


def _walk_outside_functions(node):
    """The nodes that run on import: everything but the bodies of functions."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk_outside_functions(child)


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.py"))


def test_every_module_has_a_layer():
    top = {p.stem for p in _modules(SRC)}
    assert top == MATH | OTHER, f"classify new modules in tests/test_layers.py: {top ^ (MATH | OTHER)}"


@pytest.mark.parametrize("name", sorted(MATH))
def test_math_imports_torch_stdlib_and_math_only(name):
    allowed_qlearn = {f"qlearn.{m}" for m in MATH}
    for imported in _imports(SRC / f"{name}.py"):
        root = imported.split(".")[0]
        ok = (root in sys.stdlib_module_names or root in ("torch", "__future__")
              or imported in allowed_qlearn)
        assert ok, f"qlearn.{name} imports {imported}: the math layer imports torch, the stdlib and math modules"


@pytest.mark.parametrize("path", [p for pkg in MATH_PACKAGES for p in _modules(SRC / pkg)],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_math_packages_import_torch_stdlib_and_math_only(path):
    allowed_qlearn = {f"qlearn.{m}" for m in MATH} | {f"qlearn.{path.parent.name}"}
    model_module = f"{path.parent.name}/{path.stem}" in PACKAGE_MODEL_MODULES
    for imported in _imports(path, module_level_only=model_module):
        root = imported.split(".")[0]
        ok = (root in sys.stdlib_module_names or root in ("torch", "__future__") or imported in allowed_qlearn
              or imported.startswith(f"qlearn.{path.parent.name}."))
        assert ok, f"qlearn.{path.parent.name}.{path.stem} imports {imported}: the math layer imports torch, " \
                   "the stdlib and math modules"


@pytest.mark.parametrize("path", _modules(SRC / "plots"), ids=lambda p: p.name)
def test_plots_import_no_widgets_and_no_model_libraries(path):
    forbidden = {"ipywidgets", "IPython", "ipympl", "qlearn.widgets", "qlearn.models", "qlearn.evaluate",
                 "qlearn.cli", "matplotlib.pyplot", *MODEL_LIBS}
    for imported in _imports(path):
        assert not any(imported == f or imported.startswith(f + ".") for f in forbidden), (path.name, imported)


@pytest.mark.parametrize("path", _modules(SRC / "widgets"), ids=lambda p: p.name)
def test_widgets_import_no_model_libraries_at_module_level(path):
    for imported in _imports(path, module_level_only=True):
        assert imported.split(".")[0] not in MODEL_LIBS, (path.name, imported)
        assert imported not in ("qlearn.models", "qlearn.evaluate"), (path.name, imported)


class _Calls(ast.NodeVisitor):
    """Every call as (enclosing function, dotted callee or '.method', line)."""

    def __init__(self):
        self.stack, self.calls = ["<module>"], []

    def visit_FunctionDef(self, node):
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node):
        func, parts = node.func, []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if parts:
            root = func.id if isinstance(func, ast.Name) else None
            name = ".".join([root, *reversed(parts)]) if root else "." + parts[0]
            self.calls.append((self.stack[-1], root, name, parts[0], node.lineno))
        self.generic_visit(node)


@pytest.mark.parametrize("path", _modules(SRC / "plots"), ids=lambda p: p.name)
def test_plots_do_no_torch_math(path):
    visitor = _Calls()
    visitor.visit(_tree(path))
    bad = []
    for function, root, name, method, line in visitor.calls:
        if root == "torch":
            if name not in TORCH_ALLOWED:
                bad.append((line, name))
        elif root in ("np", "numpy"):
            if method in NUMPY_MATH:
                bad.append((line, name))
        elif method in TENSOR_METHODS and not (method == "float" and function == "to_numpy"):
            bad.append((line, name))
    assert not bad, f"{path.name} computes (line, call): {bad}; move it into a math module"
    tree = _tree(path)
    from_torch = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                  and n.module.split(".")[0] == "torch"]
    assert not from_torch, f"{path.name} imports from torch: {from_torch}"


def test_nothing_math_is_left_in_plots_public_names():
    import qlearn.plots as plots

    moved = {"levels_of", "group_values", "n_groups", "occupancy", "entropy_bits", "nf4_construction",
             "distinct_per_block", "histogram", "value_range"}
    assert not moved & set(plots.__all__)


@pytest.mark.parametrize("name", ["granularity", "levels", "codeusage", "distribution", "outliers", "plots._base",
                                  "plots.histograms", "plots.models", "plots.memory"])
def test_docstring_examples(name):
    module = importlib.import_module(f"qlearn.{name}")
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0, name
