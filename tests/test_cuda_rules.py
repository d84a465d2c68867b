"""qlearn's "bnb_cuda" rules against what bitsandbytes 0.50.2 computed on an NVIDIA H200, without a GPU.

tests/data/bnb-0.50.2-cuda-h200.npz was recorded on that GPU (torch 2.11.0+cu130): F.quantize_4bit of a
(64, 1000) input with an outlier, zeros and a zero run, in three dtypes x nf4/fp4 x blocksizes 64/128/4096
x double quant off/on (36 cases); F.int8_vectorwise_quant of a float16 (512, 768) input at thresholds 0
and 6; and the embedded model's model.layers.0.mlp.down_proj as loaded in nf4+dq on the GPU. Codes are
stored packed (high nibble first, as bitsandbytes stores them), float16 / bfloat16 dequantized values as
their int16 bit patterns. tests/data/cuda-rcp-fp16-h200.npz holds ``__fdividef(1.0f, h)`` and
``__fdividef(127.0f, h)`` for every positive finite float16 h, read back from the same GPU.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

import qlearn as ql
from qlearn import cuda_rules

DATA = Path(__file__).parent / "data"
GOLD = np.load(DATA / "bnb-0.50.2-cuda-h200.npz")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CASES = [(qt, bs, dn, dq) for dn in DTYPES for qt in ("nf4", "fp4") for bs in (64, 128, 4096) for dq in (False, True)]


def _input(dn):
    return torch.from_numpy(GOLD["input_float32"]).to(DTYPES[dn])


def _recorded_dequant(key, dn):
    if dn == "float32":
        return torch.from_numpy(GOLD[key + "_dequant"])
    return torch.from_numpy(GOLD[key + "_dequant_as_int16"]).view(DTYPES[dn])


@pytest.mark.parametrize("quant_type,blocksize,dtype_name,double_quant", CASES)
def test_quantize_4bit_cuda_rule_reproduces_the_recording(quant_type, blocksize, dtype_name, double_quant):
    key = f"{quant_type}_{blocksize}_{dtype_name}_{'dq' if double_quant else 'plain'}"
    x = _input(dtype_name)
    q = ql.quantize_4bit(x, quant_type, blocksize, double_quant=double_quant, rule="bnb_cuda")
    assert np.array_equal(q.packed.numpy(), GOLD[key + "_codes_packed"])           # zero's sign included
    if double_quant:
        assert q.dq_rule == "bnb_cuda"
        assert np.array_equal(q.absmax.numpy(), GOLD[key + "_absmax_u8"])
        assert np.array_equal(q.offset.view(1).numpy(), GOLD[key + "_offset"])
        assert np.array_equal(q.nested_absmax.numpy(), GOLD[key + "_nested_absmax"])
    else:
        assert np.array_equal(q.absmax.numpy(), GOLD[key + "_absmax"])
    ours, theirs = q.dequantize(x.dtype).reshape(-1), _recorded_dequant(key, dtype_name).reshape(-1)
    assert torch.equal(ours, theirs)
    assert torch.equal(torch.signbit(ours), torch.signbit(theirs))                 # -0.0 where CUDA gives -0.0


def test_the_cpu_rule_differs_from_the_recording_where_the_kernels_differ():
    """The CPU rule is not the CUDA one: FP4 bytes differ (the zero's sign and the rounded thresholds),
    NF4 bytes agree, and the CPU offset (sum / n) differs from CUDA's (sum * (1/n)) on some cases."""
    x = _input("bfloat16")
    fp4_cpu = ql.quantize_4bit(x, "fp4", 64, rule="bnb_cpu")
    nf4_cpu = ql.quantize_4bit(x, "nf4", 64, rule="bnb_cpu")
    assert not np.array_equal(fp4_cpu.packed.numpy(), GOLD["fp4_64_bfloat16_plain_codes_packed"])
    assert np.array_equal(nf4_cpu.packed.numpy(), GOLD["nf4_64_bfloat16_plain_codes_packed"])
    off = [float(ql.quantize_4bit(_input(dn), "nf4", bs, double_quant=True, rule="bnb_cpu").offset)
           == float(GOLD[f"nf4_{bs}_{dn}_dq_offset"][0]) for dn in DTYPES for bs in (64, 128, 4096)]
    assert not all(off)


@pytest.mark.parametrize("threshold", [0, 6])
def test_int8_vectorwise_cuda_rule_reproduces_the_recording(threshold):
    x = torch.from_numpy(GOLD["int8_input_fp16"]).half()
    ours = ql.int8_vectorwise(x, threshold=float(threshold), rule="bnb_cuda")
    assert torch.equal(ours.codes, torch.from_numpy(GOLD[f"int8_t{threshold}_codes"]))
    assert torch.equal(ours.row_absmax, torch.from_numpy(GOLD[f"int8_t{threshold}_rowabsmax"]))
    assert torch.equal(ours.outlier_cols, torch.from_numpy(GOLD[f"int8_t{threshold}_cols"]).long())
    cpu = ql.int8_vectorwise(x, threshold=float(threshold), rule="bnb_cpu")
    differ = int((cpu.codes != ours.codes).sum())
    assert 0 < differ < 50    # 10 and 16 codes: within rounding of a .5 tie, scaled by the approximate 127/absmax


def test_the_real_layer_loaded_on_cuda():
    w = torch.from_numpy(GOLD["layer_weight_bf16_as_f32"]).bfloat16()
    q = ql.quantize_4bit(w, "nf4", 64, double_quant=True, rule="bnb_cuda")
    assert np.array_equal(q.packed.numpy(), GOLD["layer_codes_packed"])
    assert np.array_equal(q.absmax.numpy(), GOLD["layer_absmax_u8"])
    assert np.array_equal(q.offset.view(1).numpy(), GOLD["layer_offset"])
    assert np.array_equal(q.nested_absmax.numpy(), GOLD["layer_nested_absmax"])
    cpu_table = ql.quantize_4bit(w, "nf4", 64, double_quant=True, dq_rule="bnb_cpu", rule="bnb_cuda")
    assert int((cpu_table.absmax.numpy() != GOLD["layer_absmax_u8"]).sum()) > 0   # the CPU table is not CUDA's


def test_rcp_approx_equals_every_recorded_float16_reciprocal():
    rec = np.load(DATA / "cuda-rcp-fp16-h200.npz")
    h = torch.from_numpy(rec["h"])
    assert torch.equal(cuda_rules.rcp_approx(h), torch.from_numpy(rec["rcp"]))
    assert torch.equal(127.0 * cuda_rules.rcp_approx(h), torch.from_numpy(rec["fdividef_127"]))
    moved = int((cuda_rules.rcp_approx(h) != 1.0 / h).sum())
    assert 3000 < moved < 5000   # 4,026 of 31,743: not the correctly rounded reciprocal


def test_the_default_rule_follows_the_device(monkeypatch):
    x = torch.randn(4, 64)
    assert cuda_rules.default_rule(x) == "bnb_cpu"
    assert ql.quantize_4bit(x).rule == "bnb_cpu" and ql.quantize_4bit(x, double_quant=True).dq_rule == "nearest"
    assert ql.int8_vectorwise(x).rule == "bnb_cpu"
    assert cuda_rules.default_rule(torch.empty(2, device="meta")) == "bnb_cpu"

    class FakeCuda:
        device = torch.device("cuda", 0)
    assert cuda_rules.default_rule(FakeCuda()) == "bnb_cuda"


def test_fp4_thresholds_are_the_source_literals_rounded_as_a_compiler_does():
    assert cuda_rules.float32_literal("0.583333") < 7 / 12          # so 0.5833332 goes up on CUDA
    assert cuda_rules.codes_4bit(torch.tensor([0.5833332]), "fp4").tolist() == [0b010]
    assert ql.quantize_4bit(torch.tensor([0.5833332, 1.0]), "fp4", 64, rule="bnb_cpu").codes.tolist()[0] == 0b101
    # the compiler rounds the decimal text straight to float32; Python's float() first would differ
    assert cuda_rules.float32_literal("0.5016634166240692") != float(torch.tensor(0.5016634166240692))


def test_bad_rules_are_named():
    with pytest.raises(ValueError, match="rule must be one of 'bnb_cpu', 'bnb_cuda'; got 'gpu'"):
        ql.quantize_4bit(torch.ones(8), rule="gpu")
    with pytest.raises(ValueError, match="rule must be one of"):
        ql.int8_vectorwise(torch.ones(2, 2), rule="cuda")
    with pytest.raises(ValueError, match="finite values >= 0"):
        cuda_rules.rcp_approx(torch.tensor([-1.0]))
