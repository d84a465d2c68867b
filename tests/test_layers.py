"""The layering of README.md ("Layers"), checked on the source with `ast`: math imports torch only, plots draw
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
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "qlearn"

MATH = {"codebooks", "quantize", "intquant", "memory", "metrics", "granularity", "levels", "codeusage",
        "distribution", "outliers", "reference", "_checks", "floats", "fakequant", "int8matmul", "mixed", "cuda_rules",
        "texts", "capture", "_threads", "microscaling", "fp8", "rotation", "matched4bit", "formats", "affine",
        "calibration"}
# not math: numpy, models, the CLI; claims and quiz check a learner's answers (stdlib only); sensitivity runs a model
OTHER = {"__init__", "backend", "cli", "evaluate", "models", "sources", "claims", "quiz", "sensitivity",
         "kvcache", "roundtrip",   # lesson 13: a model's KV cache and its save / reload (transformers inside functions)
         "_memrelease",   # _memrelease: glibc / madvise calls (ctypes), a platform trick, not math
         "exercises", "assessment", "answers",   # exercises: a learner's function checked; assessment: lesson 08's run
         "questions"}   # lesson 08's question bank
# the one module that knows bitsandbytes' classes, private fields and layouts; torch and math modules at import,
# bitsandbytes inside its functions only (test_interop_imports_bitsandbytes_inside_functions_only)
INTEROP = {"bnb_interop"}
# the math modules that ask it about a bitsandbytes object, each for one job:
INTEROP_USERS = {"memory",              # footprint: state bytes and layouts of a loaded model's layers
                 "quantize",            # Quantized4bit.from_bitsandbytes: a Linear4bit's state as a record
                 "int8matmul",          # int8_layers / set_int8_threshold: LLM.int8 layers of a loaded model
                 "kernels/timesplit",   # dequantize_replay: the decode a bitsandbytes layer runs each forward
                 "kernels/bnb4bit",     # Bnb4bitLinear: bitsandbytes' own quantize / dequantize / matmul_4bit
                 "kernels/layerbench"}  # the "bnb-" paths: bitsandbytes' nf4 functions, timed
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
    layered = MATH | OTHER | INTEROP
    assert top == layered, f"classify new modules in tests/test_layers.py: {top ^ layered}"


@pytest.mark.parametrize("name", sorted(MATH))
def test_math_imports_torch_stdlib_and_math_only(name):
    allowed_qlearn = {f"qlearn.{m}" for m in MATH} | ({"qlearn.bnb_interop"} if name in INTEROP_USERS else set())
    # the math packages' own math modules too (formats.py registers the methods' and kernels' quantizers)
    allowed_qlearn |= {f"qlearn.{pkg}" for pkg in MATH_PACKAGES}
    allowed_qlearn |= {f"qlearn.{p.parent.name}.{p.stem}" for pkg in MATH_PACKAGES for p in _modules(SRC / pkg)
                       if f"{p.parent.name}/{p.stem}" not in PACKAGE_MODEL_MODULES}
    for imported in _imports(SRC / f"{name}.py"):
        root = imported.split(".")[0]
        ok = (root in sys.stdlib_module_names or root in ("torch", "__future__")
              or imported in allowed_qlearn)
        assert ok, f"qlearn.{name} imports {imported}: the math layer imports torch, the stdlib and math modules"


@pytest.mark.parametrize("path", [p for pkg in MATH_PACKAGES for p in _modules(SRC / pkg)],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_math_packages_import_torch_stdlib_and_math_only(path):
    allowed_qlearn = {f"qlearn.{m}" for m in MATH} | {f"qlearn.{path.parent.name}"}
    if f"{path.parent.name}/{path.stem}" in INTEROP_USERS:
        allowed_qlearn.add("qlearn.bnb_interop")
    model_module = f"{path.parent.name}/{path.stem}" in PACKAGE_MODEL_MODULES
    for imported in _imports(path, module_level_only=model_module):
        root = imported.split(".")[0]
        ok = (root in sys.stdlib_module_names or root in ("torch", "__future__") or imported in allowed_qlearn
              or imported.startswith(f"qlearn.{path.parent.name}."))
        assert ok, f"qlearn.{path.parent.name}.{path.stem} imports {imported}: the math layer imports torch, " \
                   "the stdlib and math modules"


def test_interop_imports_bitsandbytes_inside_functions_only():
    """``import qlearn.bnb_interop`` (which quantize and memory import) costs torch only."""
    path = SRC / "bnb_interop.py"
    for imported in _imports(path, module_level_only=True):
        ok = (imported.split(".")[0] in sys.stdlib_module_names or imported.split(".")[0] in ("torch", "__future__")
              or imported in {f"qlearn.{m}" for m in MATH})
        assert ok, f"qlearn.bnb_interop imports {imported} at module level"
    assert any(i.split(".")[0] == "bitsandbytes" for i in _imports(path))   # it does call it, inside functions


# ---- bitsandbytes is named in one module only: qlearn.bnb_interop ----

# its classes and the private fields of its objects (QuantState, Int8Params, the layer's state, its CPU ops module)
BNB_NAMES = {"Params4bit", "Int8Params", "Linear4bit", "Linear8bitLt", "QuantState", "quant_state", "state2", "SCB",
             "CB", "packing_format_for_cpu", "original_dtype", "support_avx512bf16_for_cpu", "gemm_4bit_forward_kernel"}
# explicit exceptions, "package/module" -> {name: why}. None today: kernels/bnb4bit.py calls bitsandbytes'
# quantize / dequantize / matmul_4bit through qlearn.bnb_interop and keeps the state it gets back as an opaque object.
BNB_EXCEPTIONS: dict[str, dict[str, str]] = {}


def bnb_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) for each place `tree` names bitsandbytes: ``import bitsandbytes...`` / ``from bitsandbytes...``
    anywhere (inside functions too), an attribute or imported name in BNB_NAMES (``w.quant_state``), or a string
    constant equal to one (``getattr(qs, "packing_format_for_cpu")``, ``type(p).__name__ == "Params4bit"``).
    Prose in docstrings and comments may name them; qlearn's own words (``quant_state_bytes``) are not them."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "bitsandbytes"]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] == "bitsandbytes":
                found.append((node.lineno, node.module))
            found += [(node.lineno, a.name) for a in node.names if a.name in BNB_NAMES]
        elif isinstance(node, ast.Attribute) and node.attr in BNB_NAMES:
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in BNB_NAMES:
            found.append((node.lineno, node.value))
    return found


LAYERED = [p for p in [SRC / f"{m}.py" for m in sorted(MATH)] if p.exists()] + [
    p for pkg in (*MATH_PACKAGES, "plots") for p in _modules(SRC / pkg)]


@pytest.mark.parametrize("path", LAYERED, ids=lambda p: str(p.relative_to(SRC)))
def test_math_and_plots_never_name_bitsandbytes(path):
    key = str(path.relative_to(SRC).with_suffix(""))
    found = [(line, name) for line, name in bnb_names(_tree(path)) if name not in BNB_EXCEPTIONS.get(key, {})]
    assert not found, (f"qlearn/{key}.py names bitsandbytes' types or private fields (line, name): {found}; "
                       "ask qlearn.bnb_interop instead")


@pytest.mark.parametrize("snippet", [
    "import bitsandbytes.functional as bnbf", "from bitsandbytes.nn import Linear4bit",
    "def f():\n    import bitsandbytes",
    "qs = p.quant_state", "scb = module.state.SCB", "getattr(qs, 'packing_format_for_cpu', False)",
    "type(p).__name__ == 'Params4bit'", "kind == 'Int8Params' and p.dtype == torch.int8",
])
def test_the_check_catches_each_way_of_naming_bitsandbytes(snippet):
    assert bnb_names(ast.parse(snippet)), snippet


def test_the_check_catches_what_memory_read_before_issue_20():
    """memory.footprint's own reading of bitsandbytes' state, as it was (now bnb_interop.quant_state_bytes)."""
    old = (
        "def _quant_state(p, module=None):\n"
        "    kind = type(p).__name__\n"
        "    if kind == 'Params4bit' and getattr(p, 'quant_state', None) is not None:\n"
        "        qs = p.quant_state\n"
        "        state = _nbytes(qs.absmax) + _nbytes(qs.offset) + _nbytes(qs.state2.absmax)\n"
        "    scb = getattr(p, 'SCB', None)\n")
    assert {name for _, name in bnb_names(ast.parse(old))} == {"Params4bit", "quant_state", "state2", "SCB"}
    ours = 'fp.quant_state_bytes, q.absmax, q.offset, s["layout"] == "cpu-blocked"\n"a docstring: Params4bit, SCB"'
    assert not bnb_names(ast.parse(ours))


def test_import_qlearn_changes_nothing_process_wide():
    """A fresh interpreter: ``import qlearn`` imports neither qlearn.backend nor bitsandbytes, and leaves
    bitsandbytes' loggers and torch's thread count as it found them."""
    code = (
        "import json, logging, sys, torch\n"
        "before = torch.get_num_threads()\n"
        "import qlearn\n"
        "names = ('bitsandbytes', 'bitsandbytes.autograd._functions', 'bitsandbytes.backends.cpu.ops')\n"
        "print(json.dumps({'modules': [m for m in ('qlearn.backend', 'qlearn.models', 'bitsandbytes', 'transformers')\n"
        "                              if m in sys.modules],\n"
        "                  'levels': [logging.getLogger(n).level for n in names],\n"
        "                  'filters': [len(logging.getLogger(n).filters) for n in names],\n"
        "                  'threads_kept': torch.get_num_threads() == before}))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen == {"modules": [], "levels": [logging.NOTSET] * 3, "filters": [0, 0, 0], "threads_kept": True}


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
                                  "plots.histograms", "plots.models", "plots.memory", "bnb_interop",
                                  "plots._fastrender"])
def test_docstring_examples(name):
    module = importlib.import_module(f"qlearn.{name}")
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0, name
