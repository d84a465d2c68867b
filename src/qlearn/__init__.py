"""qlearn: learn LLM weight quantization on real weights, checked bit-for-bit against bitsandbytes.

The math layer imports torch only: codebooks, quantize (the fast paths), reference (the textbook
version of every format, tested byte-equal to them), intquant, granularity, levels, codeusage,
distribution, outliers, floats (bit fields of float formats), int8matmul (LLM.int8 step by step),
memory, metrics, fakequant (quantize->dequantize a model's layers in place), mixed (a format per
layer under a byte budget), kernels (fused int4/int8 linears, bandwidth, where the time goes) and
methods (RTN, GPTQ, AWQ, HQQ, GGUF blocks). sensitivity measures each layer's cost on a model;
claims and quiz check a learner's predictions and answers. bnb_interop is the one module that reads
bitsandbytes' objects (for memory, quantize, int8matmul and kernels). Model helpers (load, generate,
perplexity, compare, backend_info) and the picture/interaction layers (plots, widgets) are imported
lazily on first use, so ``import qlearn`` stays fast. ``MODES`` names every mode the model functions take.
"""

import importlib

from . import codebooks, metrics, quantize
from .metrics import error_stats
from .quantize import (
    AbsmaxQuantized,
    Blockwise8bit,
    Quantized4bit,
    ZeroPointQuantized,
    absmax_quantize,
    cpu_blocked_codes,
    int8_vectorwise,
    quantize_4bit,
    quantize_blockwise_8bit,
    zeropoint_quantize,
)

__version__ = "0.1.0"

# Nothing process-wide happens here: no logger is filtered or silenced. bitsandbytes' log messages are
# explained or dropped only around qlearn's own calls into it (`qlearn.bnb_interop.quiet_logs`).

# name -> module that defines it; imported on first attribute access.
_LAZY = {
    "load": "qlearn.models",
    "generate": "qlearn.models",
    "embedded_model_path": "qlearn.models",
    "perplexity": "qlearn.evaluate",
    "compare": "qlearn.evaluate",
    "backend_info": "qlearn.backend",
    "MODES": "qlearn.memory",
}
_LAZY_MODULES = ("memory", "models", "evaluate", "plots", "widgets", "sources", "cli", "backend", "reference",
                 "granularity", "levels", "codeusage", "distribution", "outliers", "floats", "int8matmul",
                 "fakequant", "mixed", "sensitivity", "kernels", "methods", "claims", "quiz", "kvcache", "roundtrip",
                 "exercises", "assessment", "formats", "affine", "calibration", "answers", "questions", "microscaling",
                 "fp8", "rotation", "matched4bit", "finetune")

__all__ = [
    "codebooks", "metrics", "quantize", "error_stats",
    "quantize_4bit", "quantize_blockwise_8bit", "absmax_quantize", "zeropoint_quantize",
    "int8_vectorwise", "cpu_blocked_codes", "Quantized4bit", "Blockwise8bit", "AbsmaxQuantized", "ZeroPointQuantized",
    *_LAZY, *_LAZY_MODULES,
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"qlearn.{name}")
    raise AttributeError(f"module 'qlearn' has no attribute {name!r}")
