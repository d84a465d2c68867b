"""MXFP4, NVFP4, FP8 and the Hadamard rotation: byte for byte against torchao's reference (MX, NVFP4),
against a brute-force nearest-value search (E2M1, FP8), and the rotation's algebra (orthogonal, undone
exactly, the rotated layer computes the same product).

torchao 0.18.0 lives in its own folder, ``<venv>/torchao-ref`` (`make test` installs it there with
``pip --target --no-deps``), never on the test process's path: transformers imports torchao whenever it
can find it. Its reference runs once per session in a subprocess on inputs saved here; the outputs come
back in a file.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from qlearn.fp8 import FP8_DTYPES, quantize_fp8
from qlearn.intquant import absmax_quantize
from qlearn.microscaling import E2M1_VALUES, e2m1_codes, e2m1_values, quantize_mxfp4, quantize_nvfp4
from qlearn.rotation import hadamard, peak_to_mean, rotate, rotated, unrotate

TORCHAO = Path(sys.prefix) / "torchao-ref"
REFERENCE = """
import sys, warnings
import torch
warnings.simplefilter("ignore")
from torchao.prototype.mx_formats.kernels import f32_to_f4_unpacked
from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale
inputs, out = torch.load(sys.argv[1]), {}
for key, w in inputs.items():
    if key == "sweep":
        out[key] = f32_to_f4_unpacked(w)
        continue
    scale, packed = to_mx(w, torch.float4_e2m1fn_x2, 32)
    out[key + "/mx"] = (scale.view(torch.uint8), packed.view(torch.uint8),
                        to_dtype(packed, scale, torch.float4_e2m1fn_x2, 32, torch.float32))
    ts = per_tensor_amax_to_scale(w.float().abs().amax())
    bs, data = nvfp4_quantize(w, 16, ts)
    out[key + "/nv"] = (ts, bs.view(torch.uint8), data.view(torch.uint8))
torch.save(out, sys.argv[2])
"""


@pytest.fixture(scope="module")
def torchao_ref(tmp_path_factory):
    """{input name: torchao's outputs} for the inputs of `_reference_inputs`, computed in a subprocess."""
    if not (TORCHAO / "torchao").is_dir():
        pytest.skip(f"torchao's reference is not installed in {TORCHAO} (make test installs it)")
    folder = tmp_path_factory.mktemp("torchao")
    inputs = _reference_inputs()
    torch.save(inputs, folder / "in.pt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TORCHAO), *sys.path]))
    done = subprocess.run([sys.executable, "-c", REFERENCE, str(folder / "in.pt"), str(folder / "out.pt")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return inputs, torch.load(folder / "out.pt")


def _reference_inputs() -> dict:
    mids = (E2M1_VALUES[1:] + E2M1_VALUES[:-1]) / 2
    return {"float32": _weights(dtype=torch.float32), "bfloat16": _weights(dtype=torch.bfloat16, seed=1),
            "sweep": torch.cat([torch.linspace(-7, 7, 20001), mids, -mids])}


def _weights(rows=64, cols=256, dtype=torch.float32, seed=0):
    """Heavy-tailed rows of different sizes, with the corner cases MX must handle: an all-zero block, a
    tiny negative (rounds to -0), a block of values near float32's smallest normals."""
    g = torch.Generator().manual_seed(seed)
    z, chi2 = torch.randn(rows, cols, generator=g), (torch.randn(3, rows, cols, generator=g) ** 2).sum(0)
    w = z / (chi2 / 3).sqrt() * torch.rand(rows, 1, generator=g) * 0.05       # Student's t, 3 degrees of freedom
    w[0, :32] = 0.0
    w[1, 3] = -1e-9
    w[2, :32] *= 1e-33
    return w.to(dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mxfp4_equals_torchao_to_mx(torchao_ref, dtype):
    inputs, ref = torchao_ref
    scale, packed, deq = ref[dtype + "/mx"]
    q = quantize_mxfp4(inputs[dtype])
    assert torch.equal(q.scale_e8m0, scale)
    assert torch.equal(q.packed, packed)
    assert torch.equal(q.dequantize(torch.float32), deq)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nvfp4_equals_torchao_two_level(torchao_ref, dtype):
    inputs, ref = torchao_ref
    tensor_scale, block_scale, packed = ref[dtype + "/nv"]
    q = quantize_nvfp4(inputs[dtype])
    assert torch.equal(q.tensor_scale, tensor_scale)
    assert torch.equal(q.block_scale.view(torch.uint8), block_scale)
    assert torch.equal(q.packed, packed)


def test_e2m1_rounding_is_nearest_ties_to_even_by_brute_force_and_torchao(torchao_ref):
    inputs, ref = torchao_ref
    x = inputs["sweep"]
    codes = e2m1_codes(x)
    assert torch.equal(codes, ref["sweep"])
    # brute force: distance to all 8 magnitudes, ties to the even code, saturating at 6
    dist = (x.abs().clamp(max=6)[:, None] - E2M1_VALUES[None]).abs()
    best = dist.min(dim=1, keepdim=True).values
    candidates = (dist == best)
    even = candidates & (torch.arange(8) % 2 == 0)
    expect = torch.where(even.any(1), even.float().argmax(1), candidates.float().argmax(1))
    assert torch.equal((codes & 7).long(), expect)
    assert torch.equal(codes >= 8, x < 0)
    assert torch.equal(e2m1_values(codes).abs(), E2M1_VALUES[expect])


def test_mx_and_nvfp4_bits_and_the_finer_scale_wins():
    w = _weights(rows=128, cols=512, seed=2)
    m, n = quantize_mxfp4(w), quantize_nvfp4(w)
    assert m.bits_per_param == 4.25
    assert n.bits_per_param == pytest.approx(4.5 + 32 / w.numel())
    assert m.codes.shape == n.codes.shape == w.shape
    err = {k: float(((q.dequantize() - w) ** 2).sum()) for k, q in (("mx", m), ("nv", n))}
    assert err["nv"] < err["mx"], err             # E4M3 scales per 16 fit each block better than 2^k per 32


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("tile", [128, None])
def test_fp8_is_the_nearest_value_after_scaling_each_tile(fmt, tile):
    w = _weights(rows=200, cols=576, seed=3)                       # partial tiles at both edges
    q = quantize_fp8(w, fmt, tile)
    dt = FP8_DTYPES[fmt]
    finite = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dt).float()
    finite = finite[finite.isfinite()].unique()                    # every finite value of the format
    t = tile or max(w.shape)
    s = 1.0 / q.scale                                              # (tiles_r, tiles_c)
    for i in range(q.scale.shape[0]):
        for j in range(q.scale.shape[1]):
            block = w[i * t:(i + 1) * t, j * t:(j + 1) * t]
            scaled = (block * s[i, j]).flatten()
            got = q.values[i * t:(i + 1) * t, j * t:(j + 1) * t].float().flatten()
            assert got.abs().max() == torch.finfo(dt).max or block.abs().max() == 0
            nearest = (scaled[:, None] - finite[None]).abs().min(dim=1).values
            assert torch.equal((scaled - got).abs(), nearest)      # nothing closer exists
    assert q.codes.shape == w.shape and q.codes.dtype == torch.uint8
    assert q.nbytes == w.numel() + 4 * q.scale.numel()


def test_fp8_errors_name_the_argument():
    with pytest.raises(ValueError, match="fmt must be one of"):
        quantize_fp8(torch.ones(4, 4), "e3m4")
    with pytest.raises(ValueError, match="tile must be one of"):
        quantize_fp8(torch.ones(4, 4), tile=100)
    with pytest.raises(ValueError, match="2-D"):
        quantize_fp8(torch.ones(4))
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_mxfp4(torch.ones(4, 48))


def test_hadamard_is_orthogonal_and_rotation_is_undone():
    for b in (1, 2, 16, 64):
        h = hadamard(b)
        assert torch.allclose(h @ h.T, torch.eye(b), atol=1e-6)
    w = _weights(rows=32, cols=576, seed=4)
    assert torch.allclose(unrotate(rotate(w, 64, seed=7), 64, seed=7), w, atol=1e-6)
    with pytest.raises(ValueError, match="power of two"):
        hadamard(12)
    with pytest.raises(ValueError, match="dividing the last dimension 576"):
        rotate(w, 128)


def test_rotated_layer_computes_the_same_product_and_lowers_the_peak():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(48, 256, generator=g) * 0.02
    w[:, 7] *= 40                                                   # an outlier input channel
    x = torch.randn(10, 256, generator=g)
    rec = rotated(lambda m: absmax_quantize(m, bits=4, blocksize=64), blocksize=64, seed=3)(w)
    online = F.linear(rotate(x, 64, seed=3), rec.inner.dequantize(torch.float32))   # x R times Q(W R)^T
    assert torch.allclose(online, F.linear(x, rec.dequantize(torch.float32)), atol=1e-4)
    assert float(peak_to_mean(rotate(w, 64, 3)).mean()) < 0.5 * float(peak_to_mean(w).mean())
    plain = absmax_quantize(w, bits=4, blocksize=64)
    err = {k: float(((x @ (r.dequantize(torch.float32) - w).T) ** 2).mean()) for k, r in (("plain", plain),
                                                                                          ("rotated", rec))}
    assert err["rotated"] < err["plain"], err
    assert rec.nbytes == plain.nbytes + 256 // 8


def test_matched_grids_reproduce_each_formats_own_dequantize():
    from qlearn import quantize_4bit
    from qlearn.matched4bit import FORMATS, grids

    w = _weights(rows=16, cols=576, seed=6)
    g = grids(w)
    own = {"MXFP4": quantize_mxfp4(w).dequantize(torch.float32), "NVFP4": quantize_nvfp4(w).dequantize(torch.float32),
           "NF4": quantize_4bit(w, "nf4", 64, rule="bnb_cpu").dequantize(torch.float32).reshape(w.shape),
           "int4": absmax_quantize(w, bits=4, blocksize=64).dequantize(torch.float32)}
    for f in FORMATS:
        assert torch.equal(g[f].dequantize(), own[f]), f
        deq = g[f].dequantize()
        for idx in ((3, 5), (9, 100), (15, 575)):     # each weight's value is one of the levels its block allows
            assert bool((g[f].levels(idx) == deq[idx]).any()), (f, idx)
    assert [round(g[f].bits_per_param, 3) for f in FORMATS] == [4.25, round(4.5 + 32 / w.numel(), 3), 4.5, 4.5]


def test_block_format_explorer_follows_its_controls():
    from qlearn.matched4bit import grids
    from qlearn.widgets.microscaling import block_format_explorer

    e = block_format_explorer()
    assert e.error is None
    w = next(iter(e.weights.values()))
    e.controls["row"].value = 7
    e.controls["window"].value = 4
    assert e.error is None
    g = grids(w)
    x = w[7, 128:160]
    for f, err in e.window_error.items():
        assert err == pytest.approx(float(((g[f].dequantize()[7, 128:160] - x) ** 2).sum()), rel=1e-6)
    assert len(e.largest["NVFP4"]) <= 2 and len(e.largest["MXFP4"]) == 1   # 32 weights: one MX block, two NV
    assert e.largest["MXFP4"][0] == 6 * float(quantize_mxfp4(w).scale[7, 4])
    title = e.figure.axes[0].get_title(loc="left")
    assert "row 7, weights 128..159" in title
    e.update(grid="NF4")
    assert len(e.view.ticks.get_segments()) == 32 * 16      # NF4: 16 levels for every weight of the window
    e.update(grid="int4")
    assert len(e.view.ticks.get_segments()) == 32 * 15
