"""Every format qlearn implements, once: what it stores, what it is for, and its quantize function.

`FORMATS` maps a name to a `Format`; every list of names in the package is a filter of it (`names`):
the model modes (`qlearn.MODES`), the fake-quantization kinds (`qlearn.fakequant`), the mixed-precision
menu (`qlearn.mixed`), the methods (`qlearn.methods`), the fused kernels' kinds (`qlearn.kernels`) and the
explorers' choices. A format's `uses` say where it is offered:

    "mode"       ql.load / ql.memory / ql.compare take it         "fakequant"  fake_quantize's format kinds
    "plan"       the mixed-precision menu (with "/blocksize")      "method"     methods.apply_method
    "layer"      methods.quantize_layer and the methods explorer   "scheme"     the histogram explorer
    "generate"   the generation explorer's modes                   "tour"       `qlearn tour`'s modes

Every quantize function returns a record that follows `Record`: ``.codes`` (integer codes in the
input's shape), ``.dequantize(dtype=None)`` (the input's shape, and dtype by default), ``.nbytes`` (the
bytes the record stores) and ``.bits_per_param`` (8 * nbytes / elements). docs/glossary.md names every
field. Worked number: ``FORMATS["nf4"].quantize(w)`` of a (576, 576) bf16 weight stores 165,888 bytes of
codes and 20,736 of float32 absmax: 4.5 bits a weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .intquant import absmax_quantize, int8_vectorwise, zeropoint_quantize
from .quantize import BLOCKSIZES_4BIT, BLOCKSIZES_8BIT, quantize_4bit, quantize_blockwise_8bit

__all__ = ["Record", "Unquantized", "Format", "FORMATS", "USES", "names", "MODES"]

USES = ("mode", "fakequant", "plan", "method", "layer", "scheme", "generate", "tour")


@runtime_checkable
class Record(Protocol):
    """What every quantize function returns (tests/test_records.py checks each one on a real weight)."""

    @property
    def codes(self) -> torch.Tensor:
        """Integer codes in the input's shape."""

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The values the codes stand for, in the input's shape, cast to `dtype` (default: the input's)."""

    @property
    def nbytes(self) -> int:
        """Bytes the record stores: codes packed at their bit width plus scales, zero points, tables' state."""

    @property
    def bits_per_param(self) -> float:
        """8 * nbytes / elements of the input."""


@dataclass(frozen=True)
class Unquantized:
    """The record of a float format (fp32 / bf16 / fp16): the weight's values in that dtype.

    values: the weight cast to the format's dtype (a bf16 weight in "bf16" is not copied); dtype: the
    input's. ``codes`` are the values' bit patterns as integers of the same width (int16 for bf16 /
    fp16, int32 for fp32), so a 16-bit weight is its own code, 16 bits a weight.

    >>> Unquantized(torch.tensor([1.0], dtype=torch.bfloat16), torch.float32).codes.tolist()
    [16256]
    """

    values: torch.Tensor
    dtype: torch.dtype

    @classmethod
    def of(cls, w: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> Unquantized:
        """The record of `w` stored as `dtype`."""
        return cls(w.detach().to(dtype), w.dtype)

    @property
    def codes(self) -> torch.Tensor:
        return self.values.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[self.values.element_size()])

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.values.to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.values.numel()


@dataclass(frozen=True)
class Format:
    """One format: name; bits a code; default blocksize (None: one scale per row or per tensor) and the
    blocksizes allowed (empty: any positive int when there is a blocksize, none otherwise); scale_dtype
    (what one stored scale is; None: no scale); symmetric; zero_point_domain ("none" / "int" / "float",
    `qlearn.affine`; code-book formats are "none": their table is symmetric); levels ("float": the values
    themselves, "int": uniform integers, "nf4" / "fp4" / "dynamic" / "e2m1": a code book); uses (see the module
    docstring); calibrated (needs a layer's inputs); kernels (the `qlearn.kernels.swap_linears` kinds that
    run it); block_bytes (bytes of one fixed-size block, GGUF); label (the explorers' name for it);
    fn(w, blocksize, x) -> record, called through `quantize`."""

    name: str
    bits: int
    blocksize: int | None
    blocksizes: tuple[int, ...]
    scale_dtype: torch.dtype | None
    symmetric: bool
    zero_point_domain: str
    levels: str
    uses: tuple[str, ...]
    fn: Callable
    calibrated: bool = False
    kernels: tuple[str, ...] = ()
    block_bytes: int | None = None
    label: str = ""

    def quantize(self, w: torch.Tensor, blocksize: int | None = None, x: torch.Tensor | None = None):
        """The record of weight `w` in this format, in blocks of `blocksize` (default: the format's) where it
        has blocks; `x` (tokens, in): the layer's calibration inputs, which calibrated formats need."""
        if self.calibrated and x is None:
            raise ValueError(f"format {self.name!r} needs calibration inputs x (tokens, in)")
        return self.fn(w, blocksize or self.blocksize, x)


# The methods' and kernels' quantizers are imported when called: those packages read this registry.
def _float(dtype):
    return lambda w, _b, _x: Unquantized.of(w, dtype)


def _four_bit(quant_type: str, double_quant: bool):
    return lambda w, b, _x: quantize_4bit(w, quant_type, b, double_quant=double_quant)


def _rtn(symmetric: bool):
    def fn(w, b, _x):
        from .methods.rtn import rtn
        return rtn(w, blocksize=b, symmetric=symmetric)
    return fn


def _gptq(symmetric: bool):
    def fn(w, b, x):
        from .methods.gptq import gptq, hessian
        return gptq(w, hessian(x), blocksize=b, symmetric=symmetric)
    return fn


def _awq(w, b, x):
    from .methods.awq import awq
    return awq(w, x, blocksize=b)


def _hqq(w, b, _x):
    from .methods.hqq import hqq
    return hqq(w, blocksize=b)


def _gguf(qtype: str):
    def fn(w, _b, _x):
        from .methods.gguf import quantize_gguf_weight
        return quantize_gguf_weight(w, qtype)
    return fn


def _mxfp4(w, b, _x):
    from .microscaling import quantize_mxfp4
    return quantize_mxfp4(w, b)


def _nvfp4(w, b, _x):
    from .microscaling import quantize_nvfp4
    return quantize_nvfp4(w, b)


def _fp8(fmt: str):
    def fn(w, b, _x):
        from .fp8 import quantize_fp8
        return quantize_fp8(w, fmt, tile=b)
    return fn


def _rtn_hadamard(w, b, _x):
    from .methods.rtn import rtn
    from .rotation import rotated
    return rotated(lambda m: rtn(m, blocksize=b), blocksize=64, seed=0)(w)


def _tinygemm(w, b, _x):
    from .kernels.fused import quantize_int4
    return quantize_int4(w, blocksize=b)


_F32, _F16, _BF16, _U8 = torch.float32, torch.float16, torch.bfloat16, torch.uint8
_B4, _MODE = BLOCKSIZES_4BIT, ("mode", "fakequant", "plan", "method", "generate", "tour")   # bitsandbytes' modes
FORMATS: dict[str, Format] = {f.name: f for f in [
    # name, bits, blocksize, blocksizes, scale dtype, symmetric, zero_point_domain, levels, uses, fn
    Format("absmax", 8, None, _B4, _F32, True, "none", "int", ("scheme",),
           lambda w, b, _x: absmax_quantize(w, 8, blocksize=b), label="absmax"),
    Format("zeropoint", 8, None, _B4, _F32, False, "int", "int", ("scheme",),
           lambda w, b, _x: zeropoint_quantize(w, 8, blocksize=b), label="zero-point"),
    Format("fp32", 32, None, (), None, True, "none", "float", ("mode", "generate"), _float(_F32)),
    Format("bf16", 16, None, (), None, True, "none", "float", _MODE, _float(_BF16)),
    Format("fp16", 16, None, (), None, True, "none", "float", ("mode",), _float(_F16)),
    Format("int8", 8, None, (), _F32, True, "none", "int", _MODE,
           lambda w, _b, _x: int8_vectorwise(w, threshold=0.0), kernels=("int8",), label="LLM.int8"),
    Format("nf4", 4, 64, _B4, _F32, True, "none", "nf4", _MODE + ("scheme",), _four_bit("nf4", False),
           label="NF4"),
    Format("nf4+dq", 4, 64, _B4, _U8, True, "none", "nf4", _MODE, _four_bit("nf4", True)),
    Format("fp4", 4, 64, _B4, _F32, True, "none", "fp4", _MODE + ("scheme",), _four_bit("fp4", False),
           label="FP4"),
    Format("fp4+dq", 4, 64, _B4, _U8, True, "none", "fp4", ("mode", "fakequant", "plan"), _four_bit("fp4", True)),
    Format("int4", 4, 64, _B4, _F32, True, "none", "int", ("fakequant",),
           lambda w, b, _x: absmax_quantize(w, 4, blocksize=b)),
    Format("int4-zp", 4, 64, _B4, _F32, False, "float", "int", ("fakequant",),
           lambda w, b, _x: zeropoint_quantize(w, 4, blocksize=b, zero_point_domain="float")),
    Format("blockwise8", 8, 4096, BLOCKSIZES_8BIT, _F32, True, "none", "dynamic", (),
           lambda w, b, _x: quantize_blockwise_8bit(w, b)),
    Format("rtn", 4, 128, (), _F32, True, "none", "int", ("method", "layer"), _rtn(True)),
    Format("rtn-asym", 4, 128, (), _F32, False, "int", "int", ("method", "layer"), _rtn(False)),
    Format("gptq", 4, 128, (), _F32, True, "none", "int", ("method", "layer"), _gptq(True), calibrated=True),
    Format("gptq-asym", 4, 128, (), _F32, False, "int", "int", ("method",), _gptq(False), calibrated=True),
    Format("awq", 4, 128, (), _F32, True, "none", "int", ("method", "layer"), _awq, calibrated=True),
    Format("hqq", 4, 128, (), _F16, False, "int", "int", ("method", "layer"), _hqq),
    Format("Q8_0", 8, 32, (32,), _F16, True, "none", "int", ("method",), _gguf("Q8_0"), block_bytes=34),
    Format("Q4_0", 4, 32, (32,), _F16, True, "int", "int", ("method", "layer"), _gguf("Q4_0"), block_bytes=18),
    Format("Q4_1", 4, 32, (32,), _F16, False, "float", "int", ("method", "layer"), _gguf("Q4_1"), block_bytes=20),
    Format("Q4_K", 4, 256, (256,), _F16, False, "float", "int", ("method", "layer"), _gguf("Q4_K"),
           block_bytes=144),
    # 2025-2026 formats (lesson 14): E2M1 elements under a power-of-two (E8M0) or E4M3 block scale; FP8 per tile
    Format("mxfp4", 4, 32, (32,), torch.float8_e8m0fnu, True, "none", "e2m1", ("fakequant", "method"), _mxfp4,
           label="MXFP4"),
    Format("nvfp4", 4, 16, (16,), torch.float8_e4m3fn, True, "none", "e2m1", ("fakequant", "method"), _nvfp4,
           label="NVFP4"),
    Format("fp8-e4m3", 8, 128, (32, 64, 128, 256), _F32, True, "none", "float", ("fakequant", "method"),
           _fp8("e4m3")),
    Format("fp8-e5m2", 8, 128, (32, 64, 128, 256), _F32, True, "none", "float", ("fakequant", "method"),
           _fp8("e5m2")),
    Format("rtn-hadamard", 4, 128, (), _F32, True, "none", "int", ("method",), _rtn_hadamard),
    Format("int4-tinygemm", 4, 64, (32, 64, 128, 256), _BF16, False, "float", "int", (), _tinygemm,
           kernels=("int4", "int4-dequant")),
]}


def names(use: str) -> tuple[str, ...]:
    """The names of the formats offered for `use` (one of `USES`), in registry order.

    >>> names("tour")
    ('bf16', 'int8', 'nf4', 'nf4+dq', 'fp4')
    """
    if use not in USES:
        raise ValueError(f"use must be one of {', '.join(USES)}; got {use!r}")
    return tuple(f.name for f in FORMATS.values() if use in f.uses)


MODES = names("mode")   # ("fp32", "bf16", "fp16", "int8", "nf4", "nf4+dq", "fp4", "fp4+dq"): the only mode names
