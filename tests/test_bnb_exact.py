"""qlearn against bitsandbytes' CPU backend, bit for bit, on any CPU.

The oracle is the format as docs/formats.md writes it down, and bitsandbytes' portable pure-torch
decoder (``backends/default``), which every CPU can run. bitsandbytes' dispatching ``dequantize_4bit``
is compared too wherever this CPU's kernel is correct: on a CPU where torch reports AVX-512 its C++
kernel reads absmax per row and misdecodes tensors whose rows do not line up with blocks
(`qlearn.backend.avx512_dequantize_misreads`); a test asserts that disagreement there, so it fails
the day bitsandbytes fixes it. Seeds are fixed numbers.
"""

import copy

import bitsandbytes.functional as bnbf
import pytest
import torch
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from bitsandbytes.backends.utils import _get_4bit_code

import qlearn as ql
from qlearn.backend import avx512_dequantize_misreads

torch._dynamo.config.disable = True   # bitsandbytes wraps its portable decoder in torch.compile: run it eagerly

SHAPES = [(1,), (7,), (65,), (256,), (127, 33), (64, 64), (4097,), (1000, 1001)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]
AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"


def _randn(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def _blocksizes(shape):
    """Every blocksize, except on the one big shape (1,001,000 values: past the fast path's 262,144-value
    chunks), where two suffice (a small and the largest) and the suite stays quick."""
    return (64, 4096) if shape == (1000, 1001) else BLOCKSIZES


def _seed(shape, dtype):
    """A fixed seed per (shape, dtype): replayable in any process."""
    return 100 * SHAPES.index(shape) + DTYPES.index(dtype)


def portable_dequantize(packed, state):
    """bitsandbytes' portable decode (pure torch, the same on every CPU), nested absmax resolved first."""
    absmax = state.absmax
    if state.nested:
        absmax = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
    code = _get_4bit_code(state.quant_type, "cpu")
    return _dequantize_4bit_compute(packed.reshape(-1).view(torch.uint8), absmax.float(), code, state.blocksize,
                                    state.shape, state.dtype)


def assert_dequantize_matches(ours, packed, state, shape):
    """Ours == the portable path always; == the dispatching op where this CPU's kernel is correct."""
    dq = ours.dequantize()
    assert dq.shape == torch.Size(shape) and dq.dtype == state.dtype
    assert torch.equal(dq, portable_dequantize(packed, state).reshape(shape))
    if not avx512_dequantize_misreads(shape, state.blocksize):
        assert torch.equal(dq, bnbf.dequantize_4bit(packed, state).reshape(shape))   # 1-d even: (1, n) upstream


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
    x = _randn(shape, dtype, seed=_seed(shape, dtype))
    for blocksize in _blocksizes(shape):
        theirs, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type)
        ours = ql.quantize_4bit(x, quant_type, blocksize)
        if quant_type == "nf4":
            assert torch.equal(ours.packed, theirs.view(-1)), f"packed bytes differ at blocksize {blocksize}"
        else:
            assert_fp4_bytes(ours.packed, theirs.view(-1))
        assert torch.equal(ours.absmax, state.absmax)
        assert_dequantize_matches(ours, theirs, state, x.shape)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quant_matches_bitsandbytes(shape, dtype, quant_type):
    x = _randn(shape, dtype, seed=7 + _seed(shape, dtype))
    for blocksize in _blocksizes(shape):
        theirs, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, compress_statistics=True)
        ours = ql.quantize_4bit(x, quant_type, blocksize, double_quant=True, dq_rule="bnb_cpu")
        assert ours.absmax.dtype == torch.uint8
        assert torch.equal(ours.absmax, state.absmax), f"uint8 absmax codes differ at blocksize {blocksize}"
        assert torch.equal(ours.offset, state.offset)
        assert torch.equal(ours.nested_absmax, state.state2.absmax)
        assert_dequantize_matches(ours, theirs, state, x.shape)


@pytest.mark.parametrize("shape, blocksize", [((64, 64), 128), ((40, 96), 64), ((576, 1536), 64), ((64, 64), 2048)],
                         ids=str)
def test_the_avx512_dequantize_kernel_on_rows_that_do_not_line_up_with_blocks(shape, blocksize):
    """On an AVX-512 CPU bitsandbytes' kernel decodes misaligned rows with the wrong absmax (several times
    the error of its own portable path); on other CPUs, and for aligned rows, it equals the portable path."""
    x = _randn(shape, torch.float32, seed=21)
    packed, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type="nf4")
    kernel = bnbf.dequantize_4bit(packed, state).reshape(shape)
    portable = portable_dequantize(packed, state).reshape(shape)
    assert torch.equal(ql.quantize_4bit(x, "nf4", blocksize).dequantize(), portable)
    mse_kernel, mse_portable = float(((kernel - x) ** 2).mean()), float(((portable - x) ** 2).mean())
    print(f"{shape} blocks of {blocksize} on {torch.backends.cpu.get_cpu_capability()}: "
          f"MSE kernel {mse_kernel:.4f}, portable {mse_portable:.4f}")
    if avx512_dequantize_misreads(shape, blocksize):
        assert AVX512
        assert mse_kernel > 2 * mse_portable, "bitsandbytes' AVX-512 kernel now decodes these rows right: news"
    else:
        assert torch.equal(kernel, portable)


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
    assert_dequantize_matches(ours, w.data, w.quant_state, (40, 96))


def _linear4bit(quant_type, double_quant, out_features=64, in_features=192, seed=4):
    import bitsandbytes as bnb
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.bfloat16,
                              quant_type=quant_type, compress_statistics=double_quant)
    weight = _randn((out_features, in_features), torch.bfloat16, seed=seed)
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=quant_type,
                                     compress_statistics=double_quant)
    return layer.to("cpu").eval()


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_the_cpu_blocked_layout_is_read_exactly(quant_type, double_quant):
    """bitsandbytes' own (pure torch) CPU repack, as an AVX512-BF16 forward runs it, on any CPU: qlearn reads
    the same codes, the bf16 absmax, and a weight equal to the flat decode within bf16 rounding of the absmax."""
    w = _linear4bit(quant_type, double_quant).weight
    flat = ql.Quantized4bit.from_bitsandbytes(w.data, w.quant_state)
    data, state = bnbf._convert_weight_packed_for_cpu(w.data.clone(), copy.deepcopy(w.quant_state))
    assert state.packing_format_for_cpu and data.shape == (64, 96)
    blocked = ql.Quantized4bit.from_bitsandbytes(data, state)
    assert torch.equal(blocked.codes, flat.codes)
    assert blocked.absmax.dtype == torch.bfloat16 and not blocked.double_quant
    assert torch.equal(blocked.absmax, flat.block_absmax().to(torch.bfloat16))
    before, after = flat.dequantize(torch.float32), blocked.dequantize(torch.float32)
    assert after.shape == before.shape == (64, 192) and blocked.dtype == flat.dtype
    assert bool(((after - before).abs() <= before.abs() * 2.0**-8 * 1.001).all())
    # a bf16 weight's absmax is a bf16 value already; the double-quant reconstruction is not, and gets rounded
    assert torch.equal(after, before) == (not double_quant)
    assert blocked.nbytes_by_part["absmax"] == 2 * 64 * 192 // 64     # one bfloat16 a block
    back, _ = bnbf._convert_weight_packed_for_cpu_inverse(data, state)
    assert torch.equal(blocked.packed, back.view(-1))         # bitsandbytes' own inverse gives the same flat bytes


def test_cpu_blocked_codes_by_hand():
    """Row r, column c of a 32-row group sits in byte (c // 2) * 32 + (2 * r + c % 2) % 32, low nibble for r < 16."""
    codes = torch.randint(0, 16, (64, 8), generator=torch.Generator().manual_seed(8), dtype=torch.uint8)
    data = torch.zeros(64 * 8 // 2, dtype=torch.uint8)
    for r in range(64):
        for c in range(8):
            group, row = divmod(r, 32)
            byte = group * 4 * 32 + (c // 2) * 32 + (2 * row + c % 2) % 32
            data[byte] |= int(codes[r, c]) << (4 if row >= 16 else 0)
    assert torch.equal(ql.cpu_blocked_codes(data.view(64, 4), 64, 8), codes)


@pytest.mark.parametrize("double_quant", [False, True])
def test_footprint_and_layer_weight_follow_the_repack(double_quant):
    """A repack changes the state bytes; footprint reads them as they are now, and which layout each layer is in."""
    from torch import nn
    model = nn.Sequential(_linear4bit("nf4", double_quant, seed=5), nn.ReLU(), _linear4bit("nf4", double_quant, seed=6))
    before = ql.memory.footprint(model)
    weight_before = ql.sources.layer_weight(model, "2")
    assert before.layouts == {"0": "flat", "2": "flat"} and before.cpu_blocked_layers == 0
    layer = model[2]
    layer.weight.data, layer.weight.quant_state = bnbf._convert_weight_packed_for_cpu(layer.weight.data,
                                                                                        layer.weight.quant_state)
    after = ql.memory.footprint(model)
    assert after.layouts == {"0": "flat", "2": "cpu-blocked"} and after.cpu_blocked_layers == 1
    states = [m.weight.quant_state for m in (model[0], model[2])]
    held = sum(qs.absmax.nbytes + (qs.state2.absmax.nbytes + qs.offset.nbytes if qs.nested else 0) for qs in states)
    assert after.quant_state_bytes == held
    assert after.quant_state_bytes - before.quant_state_bytes == (2 - (1 if double_quant else 4)) * 192 - (
        8 if double_quant else 0)
    assert after.reported_bytes == before.reported_bytes
    now = ql.sources.layer_weight(model, "2")
    assert bool(((now - weight_before).abs() <= weight_before.abs() * 2.0**-8 * 1.001).all())
