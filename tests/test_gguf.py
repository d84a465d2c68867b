"""GGUF blocks in plain torch against the installed `gguf` package: the same BYTES for Q8_0, Q4_0 and
Q4_1 (its quantizers), the same decoded values for Q4_K (its dequantizer on our bytes), on edge-case
blocks and on the embedded model's own tensors; and the embedded .gguf file read as stored."""

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

from qlearn.methods import GGUF_TYPES, decode_blocks, quantize_gguf  # noqa: E402
from qlearn.methods.gguf import _pack_k_scales, _unpack_k_scales  # noqa: E402

EXACT = ("Q8_0", "Q4_0", "Q4_1")


def _edge_cases() -> torch.Tensor:
    """(8, 256) float32: an all-zero block, a constant block, ties at the half-way points, a block whose
    largest |x| is negative, one with +-max tied, tiny values, and two normal rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 256, generator=g) * 0.02
    x[0] = 0
    x[1] = 0.5
    x[2] = torch.arange(256) % 16 * 0.125 - 1.0          # exact multiples: codes land on .5 ties
    x[3, :32] = -x[3, :32].abs()
    x[3, 5] = -3.0
    x[4, 0], x[4, 1] = 1.0, -1.0                         # +-absmax tie: the first one sets Q4_0's sign
    x[5] *= 1e-6
    return x


@pytest.mark.parametrize("qtype", EXACT)
def test_bytes_equal_gguf_on_edge_cases(qtype):
    x = _edge_cases()
    ours = quantize_gguf(x, qtype).data.numpy()
    assert np.array_equal(ours, gguf.quants.quantize(x.numpy(), getattr(T, qtype)))


@pytest.mark.parametrize("qtype", tuple(GGUF_TYPES))
def test_decode_equals_gguf_dequantize(qtype):
    x = _edge_cases()
    q = quantize_gguf(x, qtype)
    theirs = torch.from_numpy(gguf.quants.dequantize(q.data.numpy(), getattr(T, qtype)))
    assert torch.equal(q.dequantize(torch.float32), theirs)
    assert q.codes.shape == x.shape and q.nbytes == x.numel() // GGUF_TYPES[qtype][0] * GGUF_TYPES[qtype][1]


def test_bits_per_param_of_each_format():
    x = torch.zeros(2, 512)
    assert {t: quantize_gguf(x, t).bits_per_param for t in GGUF_TYPES} == {
        "Q8_0": 8.5, "Q4_0": 4.5, "Q4_1": 5.0, "Q4_K": 4.5}


def test_q4k_scale_bytes_round_trip_and_layout():
    g = torch.Generator().manual_seed(1)
    sc = torch.randint(0, 64, (16, 8), generator=g, dtype=torch.uint8)
    mn = torch.randint(0, 64, (16, 8), generator=g, dtype=torch.uint8)
    packed = _pack_k_scales(sc, mn)
    a, b = _unpack_k_scales(packed)
    assert torch.equal(a, sc) and torch.equal(b, mn)
    theirs = gguf.quants.Q4_K.get_scale_min(packed.numpy())
    assert np.array_equal(theirs[0], sc.numpy()) and np.array_equal(theirs[1], mn.numpy())


def test_q4k_error_is_near_q4_1_with_fewer_bits():
    """Q4_K's 6-bit sub-block scales cost little accuracy: MSE within 10% of Q4_1's at 4.5 vs 5.0 bits."""
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(2)) * 0.02
    mse = {t: float(((quantize_gguf(x, t).dequantize() - x) ** 2).mean()) for t in ("Q4_1", "Q4_K", "Q4_0")}
    assert mse["Q4_K"] < 1.1 * mse["Q4_1"] and mse["Q4_K"] < mse["Q4_0"]


@pytest.mark.parametrize("bad, error", [
    (torch.zeros(3, 30), ValueError),                 # not a multiple of the block size
    (torch.zeros(4, 32, dtype=torch.int32), TypeError),
    (torch.full((1, 32), float("nan")), ValueError),
])
def test_bad_inputs(bad, error):
    with pytest.raises(error):
        quantize_gguf(bad, "Q4_0")


def test_bad_qtype_names_the_allowed():
    with pytest.raises(ValueError, match="Q4_K"):
        quantize_gguf(torch.zeros(32), "Q3_K")


@pytest.fixture(scope="module")
def layer0(embedded_path):
    """Two of the embedded model's layer-0 weights and 1024 embedding rows, float32 (bf16 values)."""
    from safetensors import safe_open

    with safe_open(str(embedded_path / "model.safetensors"), "pt") as f:
        names = [f"model.layers.0.{k}.weight" for k in ("self_attn.k_proj", "mlp.down_proj")]
        out = {k: f.get_tensor(k).float() for k in names}
        out["model.embed_tokens.weight[:1024]"] = f.get_slice("model.embed_tokens.weight")[:1024].float()
    return out


@pytest.mark.parametrize("qtype", EXACT)
def test_bytes_equal_gguf_on_the_embedded_tensors(layer0, qtype):
    assert len(layer0) == 3
    for name, w in layer0.items():
        ours = quantize_gguf(w, qtype).data.numpy()
        assert np.array_equal(ours, gguf.quants.quantize(w.numpy(), getattr(T, qtype))), name


def test_q4k_decodes_as_gguf_on_the_embedded_down_proj(layer0):
    w = layer0["model.layers.0.mlp.down_proj.weight"]                # (576, 1536): rows of 6 super-blocks
    q = quantize_gguf(w, "Q4_K")
    theirs = gguf.quants.dequantize(q.data.numpy(), T.Q4_K)
    assert torch.equal(q.dequantize(torch.float32), torch.from_numpy(theirs))


def test_the_embedded_file_blocks_decode_as_gguf():
    """The .gguf file's own Q4_1 and Q8_0 bytes, read as stored, decode as gguf-py decodes them; and
    the converted model's weight is exactly those values (in bf16), which re-quantize to the same codes."""
    from qlearn.methods.gguf_file import read_gguf_tensor
    from qlearn.models import embedded_gguf

    path = embedded_gguf()
    q41 = read_gguf_tensor(path, "blk.0.ffn_down.weight")
    assert q41.qtype == "Q4_1" and q41.data.shape == (576, 960) and q41.bits_per_param == 5.0
    theirs = gguf.quants.dequantize(q41.data.numpy(), T.Q4_1)
    assert torch.equal(q41.dequantize(), torch.from_numpy(theirs))
    emb = read_gguf_tensor(path, "token_embd.weight")
    assert emb.qtype == "Q8_0" and emb.shape == (49152, 576)
    rows = emb.data[:64]
    theirs = torch.from_numpy(gguf.quants.dequantize(rows.numpy(), T.Q8_0))
    assert torch.equal(decode_blocks(rows, "Q8_0")[1], theirs.view(-1, 32))
    again = quantize_gguf(q41.dequantize(), "Q4_1")
    assert float((again.codes == q41.codes).float().mean()) > 0.99
