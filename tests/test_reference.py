"""The fast paths against `qlearn.reference`, byte for byte, and the reference against bitsandbytes.

Property tests (hypothesis, derandomized: the same examples every run) draw shapes (1-D and 2-D, 1..5000
elements, odd sizes, partial blocks), dtypes, every allowed blocksize and option, and values: normal
noise, values exactly on the code book's midpoints times a power-of-two block absmax, all-zero,
constant and sparse blocks. Every stored tensor must be `torch.equal`. The tensor comes from a drawn
integer seed through a torch.Generator, so a failure replays. QLEARN_REFERENCE_EXAMPLES=2000 explores more.
"""

import os

import bitsandbytes.functional as bnbf
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qlearn as ql
from qlearn import reference as ref
from qlearn.quantize import BLOCKSIZES_4BIT, BLOCKSIZES_8BIT

EXAMPLES = int(os.environ.get("QLEARN_REFERENCE_EXAMPLES", "60"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
KINDS = ["randn", "ties", "zero blocks", "constant blocks", "sparse"]


def make_tensor(seed, shape, dtype, kind, block, ties, exponent):
    """A float32 tensor built from `seed`, cast to `dtype`. Blocks of `block` flattened elements:
    "ties": values on `ties` (decision boundaries in [-1, 1]) times 2**exponent, each block's first element
    2**exponent (so its absmax, and the scaled values exact midpoints in float32 and float64);
    "zero blocks" / "constant blocks": random blocks all 0 / one value; "sparse": 95% zeros."""
    g = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel()
    scale = 2.0 ** exponent
    blocks = -(-n // block)
    if kind == "ties":
        pool = torch.cat([ties, torch.tensor([0.0, 1.0, -1.0])])
        flat = pool[torch.randint(0, pool.numel(), (n,), generator=g)] * scale
        flat[::block] = scale * torch.where(torch.rand(blocks, generator=g) < 0.5, 1.0, -1.0)
    else:
        flat = torch.randn(n, generator=g) * scale * (0.3 + 3 * torch.rand(1, generator=g))
    per_block = torch.rand(blocks, generator=g).repeat_interleave(block)[:n]
    if kind == "zero blocks":
        flat = torch.where(per_block < 0.4, 0.0, flat)
    elif kind == "constant blocks":
        level = (torch.randn(blocks, generator=g) * scale).repeat_interleave(block)[:n]
        flat = torch.where(per_block < 0.5, level, flat)
    elif kind == "sparse":
        flat = torch.where(torch.rand(n, generator=g) < 0.95, 0.0, flat)
    return flat.view(shape).to(dtype)


@st.composite
def shapes(draw, max_numel=5000, min_dims=1):
    if min_dims == 1 and draw(st.booleans()):
        return (draw(st.integers(1, max_numel)),)
    rows = draw(st.integers(1, 80))
    return (rows, draw(st.integers(1, max_numel // rows)))


def tensor_args(max_numel=5000, min_dims=1):
    return dict(seed=st.integers(0, 2**31 - 1), shape=shapes(max_numel, min_dims), dtype=st.sampled_from(DTYPES),
                kind=st.sampled_from(KINDS), exponent=st.integers(-12, 12))


def assert_same(a, b, fields):
    for name in fields:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), name
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name
        else:
            assert x == y, name


FIELDS_4BIT = ["packed", "absmax", "offset", "nested_absmax", "shape", "dtype", "quant_type", "blocksize", "dq_rule"]
FIELDS_8BIT = ["codes", "absmax", "shape", "dtype", "blocksize", "rule"]
FIELDS_INT = ["codes", "scale", "shape", "dtype", "bits", "axis", "blocksize"]


def midpoints(code):
    return ql.codebooks.midpoints(code.sort().values)


@PROPERTY
@given(**tensor_args(), quant_type=st.sampled_from(["nf4", "fp4"]), blocksize=st.sampled_from(BLOCKSIZES_4BIT),
       double_quant=st.booleans(), dq_rule=st.sampled_from(["nearest", "bnb_cpu"]))
def test_quantize_4bit_equals_reference(seed, shape, dtype, kind, exponent, quant_type, blocksize, double_quant,
                                        dq_rule):
    ties = midpoints(ql.codebooks.get_codebook(quant_type))
    x = make_tensor(seed, shape, dtype, kind, blocksize, ties, exponent)
    fast = ql.quantize_4bit(x, quant_type, blocksize, double_quant=double_quant, dq_rule=dq_rule)
    slow = ref.quantize_4bit(x, quant_type, blocksize, double_quant=double_quant, dq_rule=dq_rule)
    assert_same(fast, slow, FIELDS_4BIT)
    back = ref.dequantize_4bit(slow)
    assert back.shape == x.shape and back.dtype == x.dtype
    assert torch.equal(back, fast.dequantize())
    assert torch.equal(ref.dequantize_4bit(fast, torch.float32), slow.dequantize(torch.float32))


@PROPERTY
@given(**tensor_args(), blocksize=st.sampled_from(BLOCKSIZES_8BIT), rule=st.sampled_from(["nearest", "bnb_cpu"]))
def test_blockwise_8bit_equals_reference(seed, shape, dtype, kind, exponent, blocksize, rule):
    x = make_tensor(seed, shape, dtype, kind, blocksize, midpoints(ql.codebooks.dynamic_map()), exponent)
    fast = ql.quantize_blockwise_8bit(x, blocksize, rule=rule)
    slow = ref.quantize_blockwise_8bit(x, blocksize, rule=rule)
    assert_same(fast, slow, FIELDS_8BIT)
    assert torch.equal(fast.dequantize(), slow.dequantize())


@PROPERTY
@given(**tensor_args(), bits=st.integers(2, 8), grouping=st.sampled_from(["tensor", "axis", "block"]),
       axis_choice=st.sampled_from([0, 1, -1]), blocksize=st.one_of(st.sampled_from(BLOCKSIZES_4BIT),
                                                                   st.integers(1, 300)),
       zero_point_domain=st.sampled_from(["int", "float"]))
def test_absmax_and_zeropoint_equal_reference(seed, shape, dtype, kind, exponent, bits, grouping, axis_choice,
                                              blocksize, zero_point_domain):
    axis = (axis_choice if axis_choice < len(shape) else 0) if grouping == "axis" else None
    block = blocksize if grouping == "block" else None
    qmax = 2 ** (bits - 1) - 1
    ties = (torch.arange(-qmax, qmax) + 0.5) / qmax                  # half steps of the signed grid
    x = make_tensor(seed, shape, dtype, kind, block or torch.Size(shape).numel(), ties, exponent)
    assert_same(ql.absmax_quantize(x, bits, axis, block), ref.absmax_quantize(x, bits, axis, block), FIELDS_INT)
    fast = ql.zeropoint_quantize(x, bits, axis, block, zero_point_domain=zero_point_domain)
    slow = ref.zeropoint_quantize(x, bits, axis, block, zero_point_domain=zero_point_domain)
    assert_same(fast, slow, FIELDS_INT + ["zero_point", "minimum", "zero_point_domain"])
    assert torch.equal(fast.dequantize(), slow.dequantize())


@PROPERTY
@given(**tensor_args(min_dims=2), threshold=st.sampled_from([0.0, 0.5, 2.5, 6.0]))
def test_int8_vectorwise_equals_reference(seed, shape, dtype, kind, exponent, threshold):
    ties = (torch.arange(-127, 127) + 0.5) / 127
    x = make_tensor(seed, shape, dtype, kind, shape[-1], ties, min(exponent, 2))   # rows are the blocks
    assert_same(ql.int8_vectorwise(x, threshold), ref.int8_vectorwise(x, threshold),
                ["codes", "row_absmax", "outlier_cols", "shape", "dtype"])


X = torch.randn(4, 64, generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("name, args, kwargs", [
    ("quantize_4bit", (X, "int4"), {}), ("quantize_4bit", (X,), {"blocksize": 48}),
    ("quantize_4bit", (X,), {"dq_rule": "table"}), ("quantize_4bit", (X.int(),), {}),
    ("quantize_4bit", (torch.zeros(0),), {}), ("quantize_4bit", ([1.0, 2.0],), {}),
    ("quantize_4bit", (torch.tensor([1.0, float("nan")] * 40),), {}),
    ("quantize_4bit", (torch.tensor([1.0, float("inf")]),), {"blocksize": 32}),
    ("quantize_blockwise_8bit", (X, 32), {}), ("quantize_blockwise_8bit", (X,), {"rule": "exact"}),
    ("quantize_blockwise_8bit", (torch.tensor([float("nan")] * 70),), {"blocksize": 64, "rule": "bnb_cpu"}),
    ("absmax_quantize", (X,), {"bits": 9}), ("absmax_quantize", (X,), {"axis": 2}),
    ("absmax_quantize", (X,), {"axis": 0, "blocksize": 8}), ("absmax_quantize", (X,), {"blocksize": 0}),
    ("absmax_quantize", (torch.tensor([1.0, float("inf")]),), {}),
    ("zeropoint_quantize", (X,), {"zero_point_domain": "half"}), ("zeropoint_quantize", (X,), {"bits": True}),
    ("zeropoint_quantize", (X,), {"axis": 1.0}), ("zeropoint_quantize", (torch.tensor([float("nan")]),), {}),
    ("int8_vectorwise", (X[0],), {}), ("int8_vectorwise", (X,), {"threshold": -1.0}),
    ("int8_vectorwise", (X,), {"threshold": True}), ("int8_vectorwise", (X * float("inf"),), {}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_gives_the_same_error(name, args, kwargs):
    with pytest.raises((TypeError, ValueError)) as fast:
        getattr(ql, name)(*args, **kwargs)
    with pytest.raises(fast.type) as slow:
        getattr(ref, name)(*args, **kwargs)
    assert str(slow.value) == str(fast.value)


def test_the_reference_is_plain():
    """Math layer: torch, the code books and the checks; the records come from the fast path's modules."""
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(ref))
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert modules == {"__future__", "torch", None, "_checks", "intquant", "quantize"}
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module in ("intquant", "quantize") for a in node.names}
    assert all(name.isupper() or name[0].isupper() for name in imported), imported   # records and constants only


# --- the reference against bitsandbytes 0.50 (CPU), on fixed shapes -------------------------------------

def _randn(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def assert_fp4_bytes(ours, theirs):
    """FP4 bytes must match except where one side wrote +0 (0b0000) and the other -0 (0b1000)."""
    a = torch.stack([ours >> 4, ours & 15], 1).view(-1)
    b = torch.stack([theirs >> 4, theirs & 15], 1).view(-1)
    diff = a != b
    assert bool(((a[diff] & 7) == 0).all() and ((b[diff] & 7) == 0).all()), "FP4 codes differ beyond the sign of 0"


BNB_SHAPES = [(7,), (65,), (127, 33), (300 * 64 + 5,)]
BNB_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("shape", BNB_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", BNB_DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_reference_4bit_and_double_quant_match_bitsandbytes(shape, dtype, quant_type):
    x = _randn(shape, dtype, seed=31 + len(shape))
    x.view(-1)[:64] = 0                                                    # an all-zero block
    for blocksize in (32, 64, 4096):
        theirs, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type)
        ours = ref.quantize_4bit(x, quant_type, blocksize)
        if quant_type == "nf4":
            assert torch.equal(ours.packed, theirs.view(-1)), blocksize
        else:
            assert_fp4_bytes(ours.packed, theirs.view(-1))
        assert torch.equal(ours.absmax, state.absmax), blocksize
        theirs, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, compress_statistics=True)
        ours = ref.quantize_4bit(x, quant_type, blocksize, double_quant=True, dq_rule="bnb_cpu")
        assert torch.equal(ours.absmax, state.absmax) and torch.equal(ours.offset, state.offset), blocksize
        assert torch.equal(ours.nested_absmax, state.state2.absmax), blocksize


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_reference_midpoints_take_the_lower_code_as_bitsandbytes(quant_type):
    code = ql.codebooks.get_codebook(quant_type)
    mids = midpoints(code)
    block = torch.cat([mids, torch.tensor([1.0]), -mids.flip(0), torch.zeros(33)])[:64] * 0.5
    ours = ref.quantize_4bit(block, quant_type, blocksize=64)
    theirs, _ = bnbf.quantize_4bit(block, blocksize=64, quant_type=quant_type)
    assert torch.equal(ours.packed, theirs.view(-1))


# A partial last block where x * (1/absmax) and x / absmax land in different cells of bitsandbytes' CPU
# table: the kernel multiplies (the reference too). Float32 bit patterns: absmax 1.7280833, then three values.
PARTIAL_BLOCK = torch.tensor([1071460821, -1078876945, 1068606703, -1076838384], dtype=torch.int32).view(torch.float32)
# Blocks whose absmax is 0 or subnormal: the kernel stores it as it is and scales by 1/absmax (inf below ~3e-39).
TINY_BLOCKS = torch.tensor([1e-39, -1e-39, 5e-40, 0.0, -3e-40, 1e-45] + [0.0] * 58 + [6e-39, -6e-39, 3e-39, 0.0]
                           + [0.0] * 60 + [0.0] * 64 + [1e-39, -1e-39, 0.0])


def _dq_partial_case():
    """4-bit blocks of 64 whose 300 absmax values put a table-sensitive value into the partial last
    group of 256 in double quantization (found by search: seed 1469)."""
    a = torch.rand(300, generator=torch.Generator().manual_seed(1469)) + 0.5
    x = torch.zeros(300, 64)
    x[:, 0] = a
    return x.view(-1)


# An all-zero tensor with a partial block (a zero-initialised bias, say): 4-bit absmax [0, 1e-38], so
# double quantization sees [-5e-39, 5e-39], a subnormal nested absmax that the kernel keeps.
ZEROS_207 = torch.zeros(207)


@pytest.mark.parametrize("dtype", BNB_DTYPES, ids=str)
@pytest.mark.parametrize("blocksize", [64, 256, 4096])
def test_reference_blockwise_8bit_table_rule_matches_bitsandbytes(dtype, blocksize):
    x = _randn((3 * blocksize + 77,), dtype, seed=5)
    x[blocksize:2 * blocksize] = 0                                         # an all-zero full block
    for y in [x, torch.zeros(77, dtype=dtype)] + [PARTIAL_BLOCK] * (dtype == torch.float32):
        theirs, state = bnbf.quantize_blockwise(y, blocksize=blocksize)
        ours = ref.quantize_blockwise_8bit(y, blocksize, rule="bnb_cpu")
        assert torch.equal(ours.codes, theirs) and torch.equal(ours.absmax, state.absmax)


def test_reference_table_rule_on_the_kernels_edge_cases():
    for y, blocksize in ((torch.cat([_randn((64,), torch.float32, seed=16), PARTIAL_BLOCK]), 64), (TINY_BLOCKS, 64)):
        theirs, state = bnbf.quantize_blockwise(y, blocksize=blocksize)
        ours = ref.quantize_blockwise_8bit(y, blocksize, rule="bnb_cpu")
        assert torch.equal(ours.codes, theirs) and torch.equal(ours.absmax, state.absmax)
    for x, blocksize in ((_dq_partial_case(), 64), (ZEROS_207, 128)):
        _, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type="nf4", compress_statistics=True)
        ours = ref.quantize_4bit(x, "nf4", blocksize, double_quant=True, dq_rule="bnb_cpu")
        assert torch.equal(ours.absmax, state.absmax) and torch.equal(ours.nested_absmax, state.state2.absmax)
        assert torch.equal(ours.offset, state.offset)


@pytest.mark.parametrize("case", ["8-bit partial block", "8-bit subnormal blocks", "double quant partial group",
                                  "double quant of zeros"])
def test_fast_path_table_rule_edge_cases_equal_reference(case):
    if case.startswith("double quant"):
        x, blocksize = (_dq_partial_case(), 64) if case == "double quant partial group" else (ZEROS_207, 128)
        assert_same(ql.quantize_4bit(x, "nf4", blocksize, double_quant=True, dq_rule="bnb_cpu"),
                    ref.quantize_4bit(x, "nf4", blocksize, double_quant=True, dq_rule="bnb_cpu"), FIELDS_4BIT)
        return
    partial = torch.cat([_randn((64,), torch.float32, seed=15), PARTIAL_BLOCK])
    y = partial if case == "8-bit partial block" else TINY_BLOCKS
    assert_same(ql.quantize_blockwise_8bit(y, 64, rule="bnb_cpu"), ref.quantize_blockwise_8bit(y, 64, rule="bnb_cpu"),
                FIELDS_8BIT)


@pytest.mark.parametrize("threshold", [0.0, 2.5, 6.0])
@pytest.mark.parametrize("dtype", BNB_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 9), (5, 3), (64, 513), (2, 3, 40)], ids=str)
def test_reference_int8_vectorwise_matches_bitsandbytes(shape, dtype, threshold):
    x = (_randn(shape, dtype, seed=11) * 3).to(dtype)
    x.view(-1, shape[-1])[0, 0] = 0
    if x.numel() // shape[-1] > 2:
        x.view(-1, shape[-1])[2] = 0                                       # an all-zero row
    codes, row_absmax, cols = torch.ops.bitsandbytes.int8_vectorwise_quant.default(
        x.reshape(-1, shape[-1]).clone(), threshold)
    ours = ref.int8_vectorwise(x, threshold)
    assert torch.equal(ours.codes.reshape(codes.shape), codes) and torch.equal(ours.row_absmax, row_absmax)
    assert torch.equal(ours.outlier_cols, cols) if cols is not None else ours.outlier_cols.numel() == 0
