"""Quantization methods beyond bitsandbytes' round-to-nearest, in plain torch (lesson 11).

rtn (baseline), gptq (Hessian-weighted error compensation), awq (activation-aware scales), hqq
(data-free zero-point optimisation), gguf (llama.cpp's Q8_0 / Q4_0 / Q4_1 / Q4_K blocks, as bytes);
apply: calibration text, one layer at a time through a model, fake quantization of its weights.
Every method is a format of `qlearn.formats.FORMATS` and returns a record that follows
`qlearn.formats.Record` (.codes, .dequantize(dtype=None), .nbytes, .bits_per_param); block sizes are
spelled `blocksize` (the papers' "group size").
"""

from .awq import AWQQuantized, awq, awq_scales
from .gguf import GGUF_TYPES, GGUFQuantized, decode_blocks, quantize_gguf, quantize_gguf_weight
from .gptq import gptq, hessian
from .hqq import HQQQuantized, hqq
from .layer import LAYER_METHODS, quantize_layer
from .rtn import GroupQuantized, column_error, output_error, rtn

__all__ = ["rtn", "GroupQuantized", "column_error", "output_error", "gptq", "hessian", "awq", "awq_scales",
           "AWQQuantized", "hqq", "HQQQuantized", "GGUF_TYPES", "GGUFQuantized", "quantize_gguf",
           "quantize_gguf_weight", "decode_blocks", "LAYER_METHODS", "quantize_layer"]
