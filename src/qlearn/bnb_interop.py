"""bitsandbytes interop: the one qlearn module that knows bitsandbytes' classes, private fields and layouts.

Everything else in qlearn (the math layer, the kernels, the plots) asks this module about a bitsandbytes
object and gets plain tensors, ints and strings back. What it knows (bitsandbytes 0.50):

- a 4-bit weight is a ``Params4bit`` (a ``Linear4bit``'s ``weight``): ``.data`` holds the packed codes, and
  ``.quant_state`` (a ``QuantState``) its ``absmax``, ``shape``, ``dtype``, ``blocksize``, ``quant_type``,
  ``code`` and, with double quantization, ``offset`` and ``state2.absmax`` (the nested float32 scales);
- its layout: "flat" as quantized, or "cpu-blocked" once a forward on an AVX512-BF16 CPU has repacked it
  (``quant_state.packing_format_for_cpu``; absmax then bfloat16, shaped (cols / blocksize, rows), nesting
  undone, the original dtype kept in ``original_dtype``);
- an LLM.int8 weight is an ``Int8Params`` of dtype int8 (a ``Linear8bitLt``'s ``weight``); its float32 row
  absmax ``SCB`` sits on the weight until the first forward moves it to the layer's ``state``, which also
  holds the outlier ``threshold``;
- which kernels' rounding a weight follows: its device's (`qlearn.cuda_rules`: "bnb_cuda" / "bnb_cpu").

bitsandbytes is imported inside functions only, so importing this module costs nothing beyond torch; the
type checks compare class names and never import it. Worked number: a 576 x 1536 nf4 layer at blocksize
64 has 13,824 blocks, so `quant_state_bytes` is 55,296 (float32 absmax) or 13,824 + 4 + 54 * 4 = 14,044
with double quantization (uint8 absmax, one float32 offset, 54 nested float32 scales).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from contextlib import contextmanager

import torch

from . import cuda_rules

__all__ = ["LAYOUTS", "available", "version", "has_avx512bf16", "fused_cpu_kernel", "is_4bit_weight",
           "is_int8_weight", "layout", "state_4bit", "logical_numel", "quant_state_bytes", "four_bit_layouts",
           "record_from_layer", "dequantizer", "int8_layers", "set_threshold", "quantize_nf4", "dequantize_4bit",
           "matmul_4bit", "quiet_logs", "HubKernelNote"]

LAYOUTS = ("flat", "cpu-blocked")


# ---- the library itself -------------------------------------------------------------------------------

def available() -> bool:
    """Whether bitsandbytes is installed (found without importing it)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def _functional():
    """``bitsandbytes.functional``, imported with `quiet_logs` on (its import may log the Hub-kernel note)."""
    with quiet_logs():
        import bitsandbytes.functional as bnbf
    return bnbf


def version() -> str:
    """bitsandbytes' version, e.g. "0.50.2", or "not installed"."""
    try:
        with quiet_logs():
            import bitsandbytes
    except ImportError:
        return "not installed"
    return bitsandbytes.__version__


def has_avx512bf16() -> bool:
    """bitsandbytes' own test for AVX512-BF16 (the CPU repack of 4-bit layers); False without bitsandbytes."""
    try:
        return bool(_functional().has_avx512bf16())
    except ImportError:
        return False


def fused_cpu_kernel() -> str:
    """Which fused 4-bit CPU kernel bitsandbytes (0.50) picked at import: on AVX512-BF16 CPUs it first tries
    ``kernels-community/quantization-bitsandbytes`` from the Hugging Face Hub (the "Failed to load CPU
    gemm_4bit_forward" warning when that fails, e.g. offline) and otherwise uses its own C++ kernel.
    "" where bitsandbytes has no such kernel (other CPUs, or not installed)."""
    try:
        with quiet_logs():
            from bitsandbytes.backends.cpu import ops
    except ImportError:
        return ""
    if not hasattr(ops, "gemm_4bit_forward_kernel"):
        return ""
    if ops.gemm_4bit_forward_kernel is None:
        return " (bitsandbytes' own C++ kernel: the Hub's kernels-community one did not load)"
    return " (the kernels-community gemm_4bit_forward, loaded from the Hub)"


# ---- reading weights ------------------------------------------------------------------------------------

def is_4bit_weight(p) -> bool:
    """A bitsandbytes 4-bit weight (``Params4bit``) that has been quantized (it has a quant state).

    >>> is_4bit_weight(torch.zeros(2))
    False
    """
    return type(p).__name__ == "Params4bit" and getattr(p, "quant_state", None) is not None


def is_int8_weight(p) -> bool:
    """A bitsandbytes LLM.int8 weight (``Int8Params``) holding int8 codes.

    >>> is_int8_weight(torch.zeros(2, dtype=torch.int8))
    False
    """
    return type(p).__name__ == "Int8Params" and p.dtype == torch.int8


def layout(p) -> str:
    """"cpu-blocked" for a 4-bit weight repacked by a CPU forward (AVX512-BF16), else "flat"."""
    return "cpu-blocked" if getattr(_quant_state(p), "packing_format_for_cpu", False) else "flat"


def _quant_state(p):
    if not is_4bit_weight(p):
        raise TypeError(f"expected a bitsandbytes 4-bit weight (Linear4bit.weight after quantization); "
                        f"got {type(p).__name__}")
    return p.quant_state


def state_4bit(weight, quant_state=None) -> dict:
    """The stored state of a 4-bit weight as plain values: what `qlearn.Quantized4bit` is built from.

    weight: a ``Params4bit``, or its packed ``.data`` with ``quant_state`` given (e.g. a clone of it).
    Returns {"packed": uint8 codes as stored, "absmax": (blocks,) in block order (float32; uint8 codes with
    double quant; bfloat16 in the CPU blocked layout), "offset": float32 scalar or None, "nested_absmax":
    float32 (ceil(blocks / 256),) or None, "code": the 16-value code book, "blocksize", "quant_type",
    "dtype" (the input's), "shape" (torch.Size), "layout" (one of ``LAYOUTS``), "rule" (``cuda_rules``)}.
    In the blocked layout the absmax (cols / blocksize, rows) is transposed back to block order.
    """
    qs = _quant_state(weight) if quant_state is None else quant_state
    packed = weight.data if quant_state is None else weight
    blocked = bool(getattr(qs, "packing_format_for_cpu", False))
    nested = not blocked and (getattr(qs, "nested", False) or getattr(qs, "state2", None) is not None)
    return {"packed": packed, "absmax": qs.absmax.T.reshape(-1) if blocked else qs.absmax,
            "offset": qs.offset if nested else None, "nested_absmax": qs.state2.absmax if nested else None,
            "code": qs.code, "blocksize": qs.blocksize, "quant_type": qs.quant_type,
            "dtype": getattr(qs, "original_dtype", qs.dtype) if blocked else qs.dtype,
            "shape": torch.Size(qs.shape), "layout": LAYOUTS[blocked], "rule": cuda_rules.default_rule(packed)}


def _nbytes(t) -> int:
    return t.nelement() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _int8_scale(p, module=None):
    """LLM.int8's float32 row absmax: on the weight until the first forward, then on ``module.state``."""
    scb = getattr(p, "SCB", None)
    return getattr(getattr(module, "state", None), "SCB", None) if scb is None else scb


def logical_numel(p) -> int:
    """Weights a parameter stands for: a 4-bit weight's logical shape (not its packed bytes), else numel."""
    return math.prod(p.quant_state.shape) if is_4bit_weight(p) else p.nelement()


def quant_state_bytes(p, module=None) -> int | None:
    """Bytes of the scales a bitsandbytes weight keeps beside its codes, as the layer holds them NOW; None for
    any other tensor. 4-bit: absmax (+ offset + nested absmax with double quant); int8: ``SCB`` (found on
    ``module.state`` after the first forward). After a CPU repack the absmax is bfloat16 and not nested."""
    if is_4bit_weight(p):
        qs = p.quant_state
        state = _nbytes(qs.absmax)
        if getattr(qs, "nested", False):
            state += _nbytes(qs.offset) + _nbytes(qs.state2.absmax)
        return state
    if is_int8_weight(p):
        return _nbytes(_int8_scale(p, module))
    return None


def four_bit_layouts(model: torch.nn.Module) -> dict:
    """{module name: "flat" / "cpu-blocked"} for every module whose weight is a quantized 4-bit weight."""
    return {name: layout(m.weight) for name, m in model.named_modules() if is_4bit_weight(getattr(m, "weight", None))}


def record_from_layer(module: torch.nn.Module):
    """A bitsandbytes layer's weight as a qlearn record, or None for any other layer.

    ``Linear4bit``: `qlearn.Quantized4bit` (either layout, read exactly). ``Linear8bitLt``:
    `qlearn.Int8Vectorwise` (int8 codes, ``SCB`` as the float32 row absmax, no outlier columns: weights
    are quantized with threshold 0), dtype float16 (bitsandbytes casts the weight to it before quantizing).
    """
    from .intquant import Int8Vectorwise
    from .quantize import Quantized4bit

    w = getattr(module, "weight", None)
    if is_4bit_weight(w):
        return Quantized4bit.from_bitsandbytes(w.data, w.quant_state)
    scb = _int8_scale(w, module) if is_int8_weight(w) else None
    if scb is None:
        return None
    return Int8Vectorwise(w.data, scb.float(), torch.empty(0, dtype=torch.int64, device=w.device), w.shape,
                          torch.float16, cuda_rules.default_rule(w))


def dequantizer(weight, dtype: torch.dtype):
    """A zero-argument callable that redoes the decode a bitsandbytes layer runs on each forward, or None.

    4-bit, flat layout: ``bitsandbytes.functional.dequantize_4bit`` cast to `dtype` (what ``matmul_4bit``
    runs before ``F.linear``); the CPU blocked layout decodes inside a fused kernel (None). int8 on a CPU
    whose torch capability is not AVX-512: ``weight.float()`` (the default backend multiplies float32
    copies of the int8 values; with AVX-512 it runs ``torch._int_mm``, None).
    """
    if is_4bit_weight(weight) and layout(weight) == "flat":
        bnbf = _functional()
        return lambda: bnbf.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
    if (is_int8_weight(weight) and weight.device.type == "cpu"
            and torch.backends.cpu.get_cpu_capability() != "AVX512"):
        return lambda: weight.data.float()
    return None


def int8_layers(model: torch.nn.Module) -> list:
    """The LLM.int8 layers (``Linear8bitLt``) of a model loaded in int8: linear layers with an int8 weight and
    an outlier ``state.threshold``."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)
            and hasattr(getattr(m, "state", None), "threshold") and getattr(m.weight, "dtype", None) == torch.int8]


def set_threshold(layer: torch.nn.Module, threshold: float) -> None:
    """Set one LLM.int8 layer's outlier threshold (bitsandbytes 0.50 reads ``state.threshold`` every forward)."""
    layer.state.threshold = float(threshold)


# ---- bitsandbytes' own 4-bit functions (for the layers that time them) ------------------------------------

def quantize_nf4(weight: torch.Tensor, blocksize: int = 64):
    """(packed codes, opaque state) of ``bitsandbytes.functional.quantize_4bit(weight, nf4, blocksize)``."""
    return _functional().quantize_4bit(weight, blocksize=blocksize, quant_type="nf4")


def quantize_4bit_record(x: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False):
    """bitsandbytes' ``quantize_4bit(x, blocksize, quant_type, compress_statistics=double_quant)`` as a
    qlearn `Quantized4bit` record (its bytes, read from the state by `state_4bit`)."""
    from .quantize import Quantized4bit

    packed, state = _functional().quantize_4bit(x, blocksize=blocksize, quant_type=quant_type,
                                                compress_statistics=double_quant)
    return Quantized4bit.from_bitsandbytes(packed, state)


def int8_vectorwise_quant(x: torch.Tensor, threshold: float = 0.0) -> tuple:
    """The op ``bitsandbytes::int8_vectorwise_quant(x, threshold)``: (codes int8, row absmax float32, outlier
    columns int64; empty when there are none). x is cloned: the op zeroes the outliers of its input in place."""
    _functional()   # importing bitsandbytes registers torch.ops.bitsandbytes
    codes, absmax, cols = torch.ops.bitsandbytes.int8_vectorwise_quant.default(x.clone(), threshold)
    return codes, absmax, torch.empty(0, dtype=torch.int64) if cols is None else cols.long()


def dequantize_4bit(packed: torch.Tensor, state) -> torch.Tensor:
    """``bitsandbytes.functional.dequantize_4bit``: the weight in the state's dtype and shape."""
    return _functional().dequantize_4bit(packed, state)


def matmul_4bit(x: torch.Tensor, packed: torch.Tensor, state, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``bitsandbytes.matmul_4bit(x, packed, state, bias)``: with no gradient the op ``bitsandbytes::gemm_4bit``."""
    _functional()
    import bitsandbytes

    return bitsandbytes.matmul_4bit(x, packed, state, bias=bias)


# ---- its log messages, for one block at a time -------------------------------------------------------------

class HubKernelNote(logging.Filter):
    """Rewrites one bitsandbytes 0.50 warning into what it means for a learner.

    On an AVX512-BF16 CPU, ``import bitsandbytes`` first tries to fetch the fused 4-bit CPU kernel
    ``kernels-community/quantization-bitsandbytes`` from the Hugging Face Hub. When that fails (offline, or
    the Hub's publisher-trust check) it logs "Failed to load CPU gemm_4bit_forward from kernels-community:
    <reason>. Please make sure you already `pip install kernels` ...", and then uses its own C++ kernel:
    4-bit layers still run fused. The note keeps the reason and says what happens instead.
    """

    PREFIX = "Failed to load CPU gemm_4bit_forward"

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(self.PREFIX):
            reason = str(record.args[0]) if record.args else ""
            record.msg = ("bitsandbytes could not load the Hub's kernels-community 4-bit CPU kernel (%s); it uses "
                          "its own fused 4-bit CPU kernel instead (qlearn.backend_info() shows the path)")
            record.args = (reason.split(". ")[0][:160],)
        return True


class _Int8CastNote(logging.Filter):
    """Drops LLM.int8's "inputs will be cast ... to float16" warning, logged on every single int8 matmul."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


@contextmanager
def quiet_logs():
    """While the block runs: LLM.int8's per-matmul cast warning is dropped and the Hub-kernel warning is
    explained (`HubKernelNote`); both filters are removed after, and no logger's level is touched.

    >>> log = logging.getLogger("bitsandbytes.autograd._functions")
    >>> with quiet_logs():
    ...     len(log.filters)
    1
    >>> len(log.filters)
    0
    """
    pairs = [(logging.getLogger("bitsandbytes.autograd._functions"), _Int8CastNote()),
             (logging.getLogger("bitsandbytes.backends.cpu.ops"), HubKernelNote())]
    for log, note in pairs:
        log.addFilter(note)
    try:
        yield
    finally:
        for log, note in pairs:
            log.removeFilter(note)
