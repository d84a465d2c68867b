"""The format registry: its facts (bits, blocksize, scale dtype, block bytes) predict what the records store,
and every list of format names in the package is one of its filters."""

import pytest
import torch

import qlearn as ql
from qlearn import formats
from qlearn.formats import FORMATS, MODES, names

W = (torch.randn(256, 1024, generator=torch.Generator().manual_seed(3)) * 0.02).to(torch.bfloat16)


def test_modes_are_the_only_mode_names():
    assert MODES == ("fp32", "bf16", "fp16", "int8", "nf4", "nf4+dq", "fp4", "fp4+dq")
    assert ql.MODES is MODES and ql.memory.MODES is MODES


@pytest.mark.parametrize("mode", MODES)
def test_memory_bits_per_param_is_what_the_mode_stores(mode):
    """ql.memory.bits_per_param reads the registry (bits, scale dtype); the record of a whole weight
    stores the same bits, plus double quant's one float32 offset per tensor, which the estimate leaves out."""
    rec = FORMATS[mode].quantize(W)
    offset = 32 / W.numel() if mode.endswith("+dq") else 0.0
    assert rec.bits_per_param == pytest.approx(ql.memory.bits_per_param(mode, in_features=1024) + offset, rel=1e-12)


@pytest.mark.parametrize("blocksize", [32, 128, 1024])
def test_mode_bits_at_other_blocksizes(blocksize):
    for mode in ("nf4", "fp4+dq"):
        rec = FORMATS[mode].quantize(W, blocksize)
        offset = 32 / W.numel() if mode.endswith("+dq") else 0.0
        assert rec.bits_per_param == pytest.approx(ql.memory.bits_per_param(mode, blocksize) + offset, rel=1e-12)


@pytest.mark.parametrize("name", [n for n, f in FORMATS.items() if f.block_bytes])
def test_gguf_block_bytes_are_what_a_block_stores(name):
    f = FORMATS[name]
    rec = f.quantize(W)
    assert rec.nbytes == W.numel() // f.blocksize * f.block_bytes
    assert ql.methods.GGUF_TYPES[name] == (f.blocksize, f.block_bytes)


def test_each_list_of_names_is_a_filter_of_the_registry():
    from qlearn import fakequant, mixed
    from qlearn.kernels import BLOCKSIZES_INT4, KERNEL_KINDS
    from qlearn.methods import LAYER_METHODS, apply
    from qlearn.widgets.explorers import SCHEMES
    from qlearn.widgets.models import GenerationExplorer

    assert fakequant.FORMAT_KINDS == ("bf16", "int8", "nf4", "nf4+dq", "fp4", "fp4+dq", "int4", "int4-zp", "mxfp4",
                                      "nvfp4", "fp8-e4m3", "fp8-e5m2")
    assert {f.partition("/")[0] for f in mixed.PLAN_FORMATS} == set(names("plan"))
    assert apply.DATA_FREE + apply.CALIBRATED == tuple(sorted(names("method"), key=lambda n: FORMATS[n].calibrated))
    assert set(apply.GROUPED) == {"rtn", "rtn-asym", "hqq", "gptq", "gptq-asym", "awq", "rtn-hadamard"}
    assert LAYER_METHODS == names("layer") and set(LAYER_METHODS) <= set(apply.METHODS)
    assert [n for _, n in SCHEMES] == list(names("scheme"))
    assert GenerationExplorer.OFFERED_MODES == names("generate") and set(names("generate")) <= set(MODES)
    assert set(names("tour")) <= set(names("generate"))
    assert set(KERNEL_KINDS) == {"int4", "int8", "int4-dequant"} and BLOCKSIZES_INT4 == (32, 64, 128, 256)


def test_the_kernels_int4_is_asymmetric_and_fakequants_is_symmetric():
    """"int4" names one format (symmetric absmax); swap_linears' kind "int4" runs "int4-tinygemm"."""
    assert FORMATS["int4"].symmetric and FORMATS["int4"].zero_point_domain == "none"
    tiny = next(f for f in FORMATS.values() if "int4" in f.kernels)
    assert tiny.name == "int4-tinygemm" and not tiny.symmetric and tiny.zero_point_domain == "float"


def test_names_and_quantize_check_their_input():
    with pytest.raises(ValueError, match="use must be one of .*'kernel'"):
        names("kernel")
    with pytest.raises(ValueError, match="'gptq' needs calibration inputs"):
        FORMATS["gptq"].quantize(W)


def test_docstring_examples():
    import doctest

    result = doctest.testmod(formats)
    assert result.failed == 0 and result.attempted >= 2
