"""qlearn against bitsandbytes' CPU backend, bit for bit (FACTS.md is the oracle)."""

import bitsandbytes.functional as bnbf
import pytest
import torch

import qlearn as ql

torch._dynamo.config.disable = True   # bitsandbytes wraps its CPU dequantize in torch.compile: skip the recompiles

SHAPES = [(1,), (7,), (65,), (127, 33), (64, 64), (4097,), (1000, 1001)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]


def _randn(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def assert_fp4_bytes(ours: torch.Tensor, theirs: torch.Tensor):
    """FP4 bytes must match except where one side wrote +0 (0b0000) and the other -0 (0b1000)."""
    if torch.equal(ours, theirs):
        return
    a = torch.stack([ours >> 4, ours & 15], 1).view(-1)
    b = torch.stack([theirs >> 4, theirs & 15], 1).view(-1)
    diff = a != b
    assert bool(((a[diff] & 7) == 0).all() and ((b[diff] & 7) == 0).all()), "FP4 codes differ beyond the sign of 0"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_quantize_4bit_matches_bitsandbytes(shape, dtype, quant_type):
    x = _randn(shape, dtype, seed=hash((shape, str(dtype))) % 1000)
    for blocksize in BLOCKSIZES:
        theirs, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type)
        ours = ql.quantize_4bit(x, quant_type, blocksize)
        if quant_type == "nf4":
            assert torch.equal(ours.packed, theirs.view(-1)), f"packed bytes differ at blocksize {blocksize}"
        else:
            assert_fp4_bytes(ours.packed, theirs.view(-1))
        assert torch.equal(ours.absmax, state.absmax)
        dq = ours.dequantize()
        assert dq.dtype == dtype and dq.shape == x.shape
        assert torch.equal(dq, bnbf.dequantize_4bit(theirs, state))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quant_matches_bitsandbytes(shape, dtype, quant_type):
    x = _randn(shape, dtype, seed=7)
    for blocksize in BLOCKSIZES:
        theirs, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, compress_statistics=True)
        ours = ql.quantize_4bit(x, quant_type, blocksize, double_quant=True, dq_rule="bnb_cpu")
        assert ours.absmax.dtype == torch.uint8
        assert torch.equal(ours.absmax, state.absmax), f"uint8 absmax codes differ at blocksize {blocksize}"
        assert torch.equal(ours.offset, state.offset)
        assert torch.equal(ours.nested_absmax, state.state2.absmax)
        assert torch.equal(ours.dequantize(), bnbf.dequantize_4bit(theirs, state))


def test_double_quant_nearest_rule_differs_only_where_the_table_does():
    """The default nested rounding is the exact nearest code; bitsandbytes' CPU table disagrees on a few blocks."""
    x = _randn((1024, 1024), torch.float32, seed=3)
    nearest = ql.quantize_4bit(x, double_quant=True)
    table = ql.quantize_4bit(x, double_quant=True, dq_rule="bnb_cpu")
    assert torch.equal(nearest.packed, table.packed) and torch.equal(nearest.offset, table.offset)
    differ = int((nearest.absmax != table.absmax).sum())
    print(f"nested absmax codes: nearest vs bitsandbytes CPU table differ on {differ} of {nearest.absmax.numel()}")
    assert differ <= 0.01 * nearest.absmax.numel()
    exact = ql.quantize_4bit(x).absmax
    err_near = (nearest.block_absmax() - exact).abs().sum()
    err_table = (table.block_absmax() - exact).abs().sum()
    assert err_near <= err_table


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("scale", [1.0, 2.0, 0.5])
def test_values_exactly_on_midpoints_take_the_lower_code(quant_type, scale):
    code = ql.codebooks.get_codebook(quant_type)
    order = torch.argsort(code)
    mids = ql.codebooks.midpoints(code[order])                         # (15,) float32
    block = torch.cat([mids, torch.tensor([1.0]), -mids.flip(0), torch.zeros(33)])[:64] * scale
    ours = ql.quantize_4bit(block, quant_type, blocksize=64)
    theirs, state = bnbf.quantize_4bit(block, blocksize=64, quant_type=quant_type)
    assert torch.equal(ours.packed, theirs.view(-1))
    assert torch.equal(ours.codes[:15], order[:15].to(torch.uint8))   # midpoint k -> the lower code, rank k


@pytest.mark.parametrize("threshold", [0.0, 6.0, 2.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 9), (5, 3), (64, 513), (300, 1024)], ids=str)
def test_int8_vectorwise_matches_bitsandbytes(shape, dtype, threshold):
    x = (_randn(shape, dtype, seed=11) * 3).to(dtype)
    x[0, 0] = 0
    if shape[0] > 2:
        x[2] = 0                                                        # an all-zero row
    codes, row_absmax, cols = torch.ops.bitsandbytes.int8_vectorwise_quant.default(x.clone(), threshold)
    ours = ql.int8_vectorwise(x, threshold)
    assert torch.equal(ours.codes, codes)
    assert torch.equal(ours.row_absmax, row_absmax)
    if cols is None:
        assert ours.outlier_cols.numel() == 0
    else:
        assert torch.equal(ours.outlier_cols, cols)
    if threshold == 6.0 and shape == (300, 1024):
        assert ours.outlier_cols.numel() > 0                           # randn * 3 has values beyond 6


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("blocksize", [64, 256, 4096])
def test_blockwise_8bit_nearest_vs_bitsandbytes_table(dtype, blocksize):
    x = _randn((1_000_003,), dtype, seed=5)
    theirs, state = bnbf.quantize_blockwise(x, blocksize=blocksize)
    ours = ql.quantize_blockwise_8bit(x, blocksize)
    assert torch.equal(ours.absmax, state.absmax)
    agree = float((ours.codes == theirs).float().mean())
    print(f"8-bit blockwise {dtype} blocks of {blocksize}: exact nearest agrees with bitsandbytes CPU on "
          f"{agree:.4%} of elements ({1 - agree:.4%} differ)")
    assert agree >= 0.995
    code = ql.codebooks.dynamic_map()
    blocks = torch.arange(x.numel()) // blocksize
    deq_theirs = code[theirs.long()] * state.absmax[blocks]               # float32, no final cast
    deq_ours = ours.dequantize(torch.float32)
    mse_ours = float(((deq_ours - x.float()) ** 2).mean())
    mse_theirs = float(((deq_theirs - x.float()) ** 2).mean())
    assert mse_ours <= mse_theirs
    table = ql.quantize_blockwise_8bit(x, blocksize, rule="bnb_cpu")
    assert torch.equal(table.codes, theirs)                               # the look-up table rule is bit-exact


def test_codebooks_match_bitsandbytes():
    assert torch.equal(ql.codebooks.NF4, bnbf.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(ql.codebooks.FP4, bnbf.get_4bit_type("fp4", device="cpu"))
    assert torch.equal(ql.codebooks.dynamic_map(True), bnbf.create_dynamic_map(signed=True))
    assert torch.equal(ql.codebooks.dynamic_map(False), bnbf.create_dynamic_map(signed=False))


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_a_bitsandbytes_linear4bit_is_decoded_by_qlearn(quant_type, double_quant):
    import bitsandbytes as bnb
    layer = bnb.nn.Linear4bit(96, 40, bias=False, compute_dtype=torch.bfloat16, quant_type=quant_type,
                              compress_statistics=double_quant)
    layer.weight = bnb.nn.Params4bit(_randn((40, 96), torch.bfloat16, seed=2), requires_grad=False,
                                     quant_type=quant_type, compress_statistics=double_quant)
    layer = layer.to("cpu")                                              # quantizes on the move to a device
    w = layer.weight
    ours = ql.Quantized4bit.from_bitsandbytes(w.data, w.quant_state)
    assert ours.double_quant == double_quant and ours.shape == (40, 96)
    assert torch.equal(ours.dequantize(), bnbf.dequantize_4bit(w.data, w.quant_state))
