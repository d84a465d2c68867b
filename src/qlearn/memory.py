"""Memory arithmetic: bits per weight, whole-model estimates at any size, and a model's true footprint.

Imports torch only. What ``model.get_memory_footprint()`` reports is the sum of
``nelement * element_size`` over parameters and buffers: a 4-bit weight counts as packed uint8
(half a byte a weight) and an int8 weight as one byte, but the scales bitsandbytes keeps beside them
(4-bit absmax and its nested double-quant state, LLM.int8's per-row ``SCB``) are attributes, not
parameters, so that figure leaves them out. ``footprint`` measures both; ``estimate`` predicts both.

A typical tutorial's claims, checked with ``estimate("llama-2-7b", ...)`` (6.74 B parameters):
fp16 13.48 GB; int8 7.00 GB reported + 0.005 GB SCB = 0.52 of fp16, not "roughly 1/4" (that is int8
vs fp32, and only for the linear weights); nf4 3.76 GB reported + 0.10 GB absmax with double quant
(0.40 GB without) = 0.55 of int8, so "halves again" holds for the linear weights (4 vs 8 bits) but
not for the whole model: the embeddings and lm_head (0.26 B parameters, 0.52 GB) stay 16-bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from . import bnb_interop
from ._checks import check_blocksize, check_choice, check_int
from .formats import FORMATS, MODES  # the registry's "mode" formats: the only mode names
from .quantize import BLOCKSIZES_4BIT

__all__ = ["MODES", "PRESETS", "ModelShape", "Estimate", "Footprint", "split_mode", "bits_per_param", "model_shape",
           "estimate", "footprint"]

_FLOAT_BITS = {"fp32": 32, "bf16": 16, "fp16": 16}

# Llama-2 shapes from their published configs (hidden, intermediate, layers, vocab, heads, kv heads).
PRESETS = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, vocab_size=32000,
                       num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, vocab_size=32000,
                        num_attention_heads=40, num_key_value_heads=40, tie_word_embeddings=False),
    "llama-2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, vocab_size=32000,
                        num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False),
}


def split_mode(mode):
    """A mode name -> (format, double_quant): "nf4+dq" -> ("nf4", True), "nf4" -> ("nf4", False).

    ``MODES`` lists the names; "+dq" adds double quantization to a 4-bit format. Anything else is a
    ValueError that lists them.

    >>> split_mode("nf4+dq"), split_mode("int8")
    (('nf4', True), ('int8', False))
    """
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, one of {', '.join(MODES)}; got {type(mode).__name__} {mode!r}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
    fmt, _, extra = mode.partition("+")
    return fmt, extra == "dq"


def bits_per_param(mode="nf4", blocksize=64, in_features=None, dq_blocksize=256):
    """Stored bits per quantized weight in ``mode`` (one of ``MODES``), scales included (float), from the
    format's entry in ``qlearn.formats.FORMATS`` (its bits a code and its scale dtype).

    nf4 / fp4: 4 + 32/blocksize (one float32 absmax a block). nf4+dq / fp4+dq (double quant): the
    absmax is 8-bit (uint8) with one float32 scale per ``dq_blocksize`` blocks: 4 + 8/blocksize +
    32/(blocksize*dq_blocksize) (the one float32 offset per tensor is left out). int8 (LLM.int8,
    row-wise): 8 + 32/in_features, one float32 absmax (``SCB``) per output row, so ``in_features`` is
    required. fp32/bf16/fp16: 32/16/16.
    Worked: nf4/64 = 4 + 0.5 = 4.5; nf4+dq/64 = 4 + 0.125 + 0.001953125 = 4.126953125.

    >>> bits_per_param("nf4", 64), bits_per_param("nf4+dq", 64)
    (4.5, 4.126953125)
    >>> bits_per_param("int8", in_features=4096)
    8.0078125
    """
    _, double_quant = split_mode(mode)
    f = FORMATS[mode]
    if f.scale_dtype is None:
        return float(f.bits)
    scale_bits = 8 * f.scale_dtype.itemsize
    if f.blocksize is None:                      # int8: one scale per output row, so in_features is needed
        return f.bits + scale_bits / check_int(in_features, "in_features", minimum=1)
    check_blocksize(blocksize, "blocksize", f.blocksizes)
    if not double_quant:
        return f.bits + scale_bits / blocksize
    check_blocksize(dq_blocksize, "dq_blocksize", f.blocksizes)
    return f.bits + scale_bits / blocksize + 32 / (blocksize * dq_blocksize)


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder (gated MLP) that decide its memory; ints."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool

    def linear_shapes(self):
        """(out_features, in_features) of the 7 linear layers of one block: q, k, v, o, gate, up, down."""
        h, i, q, kv = self.hidden_size, self.intermediate_size, self.num_attention_heads, self.num_key_value_heads
        d = self.head_dim
        return [(q * d, h), (kv * d, h), (kv * d, h), (h, q * d), (i, h), (i, h), (h, i)]

    @property
    def linear_params(self):
        return self.num_hidden_layers * sum(o * i for o, i in self.linear_shapes())

    @property
    def unquantized_params(self):
        """Embeddings, the lm_head when untied, and the RMS norms (2 per layer + 1 final)."""
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return embed + (2 * self.num_hidden_layers + 1) * self.hidden_size


def model_shape(config):
    """A ``ModelShape`` from a transformers config, a dict, or a preset name such as ``"llama-2-7b"``.

    >>> model_shape("llama-2-7b").linear_params
    6476005376
    """
    if isinstance(config, str):
        check_choice(config, "preset", tuple(PRESETS))
        config = PRESETS[config]
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size",
                           "num_attention_heads") if get(k) is None]
    if missing:
        raise TypeError(f"config needs Llama-style fields {missing}; got {type(config).__name__}")
    heads = int(get("num_attention_heads"))
    return ModelShape(
        int(get("hidden_size")), int(get("intermediate_size")), int(get("num_hidden_layers")),
        int(get("vocab_size")), heads, int(get("num_key_value_heads") or heads),
        int(get("head_dim") or get("hidden_size") // heads), bool(get("tie_word_embeddings", False)))


@dataclass(frozen=True)
class Estimate:
    """Predicted bytes of a whole model in one mode (all ints, bytes). The KV cache is its own field,
    never folded into another."""

    mode: str
    quantized_params: int     # linear weights inside the blocks
    unquantized_params: int   # embeddings, lm_head, norms: 16-bit in int8/4-bit modes
    weight_bytes: int         # the quantized linear weights as stored (codes only)
    quant_state_bytes: int    # absmax / nested state / SCB: what get_memory_footprint leaves out
    unquantized_bytes: int
    kv_cache_bytes: int = 0

    @property
    def n_params(self):
        return self.quantized_params + self.unquantized_params

    @property
    def reported_bytes(self):
        """What ``model.get_memory_footprint()`` would say (buffers aside)."""
        return self.weight_bytes + self.unquantized_bytes

    @property
    def true_bytes(self):
        """The weights as they really sit in memory: reported + quantization state."""
        return self.reported_bytes + self.quant_state_bytes


def _state_bytes(mode, shape_list, blocksize, double_quant, dq_blocksize):
    """Bytes of scales for a list of (out, in) weight shapes."""
    if mode == "int8":
        return sum(4 * o for o, _ in shape_list)   # one float32 SCB per output row
    total = 0
    for o, i in shape_list:
        blocks = math.ceil(o * i / blocksize)
        total += blocks + 4 * math.ceil(blocks / dq_blocksize) + 4 if double_quant else 4 * blocks
    return total


def estimate(n_params_or_config, mode="nf4", blocksize=64, dq_blocksize=256, unquantized_bits=16,
             batch_size=1, context_length=0, kv_bits=16, in_features=4096):
    """Predict a model's memory in ``mode`` (one of ``MODES``), split into quantized weights, their
    scales and the rest.

    ``n_params_or_config``: a transformers config / dict / preset name (exact split), or a bare
    parameter count such as ``7e9`` (then everything is counted as quantized linear weights, with
    ``in_features`` rows for int8 scales). Layers left unquantized (embeddings, lm_head, norms) take
    ``unquantized_bits`` (16; the mode's own width for fp32/bf16/fp16). ``context_length`` > 0 fills
    ``kv_cache_bytes``: 2 * layers * kv_heads * head_dim * batch * context * kv_bits / 8.
    Worked: Llama-2-7B nf4+dq = 3.238 GB codes + 0.103 GB absmax + 0.525 GB 16-bit layers.

    >>> [round(estimate("llama-2-7b", mode).true_bytes / 1e9, 2) for mode in ("fp16", "int8", "nf4+dq")]
    [13.48, 7.01, 3.87]
    """
    fmt, dq = split_mode(mode)
    if fmt in ("nf4", "fp4"):
        check_blocksize(blocksize, "blocksize", BLOCKSIZES_4BIT)
        check_blocksize(dq_blocksize, "dq_blocksize", BLOCKSIZES_4BIT)
    if isinstance(n_params_or_config, (int, float)) and not isinstance(n_params_or_config, bool):
        if n_params_or_config <= 0:
            raise ValueError(f"n_params must be positive; got {n_params_or_config!r}")
        if context_length:
            raise ValueError("a KV cache estimate needs a config (layers, heads), not a bare parameter count")
        n = int(n_params_or_config)
        rows = n // in_features
        linears, layers, kv = [(rows, in_features)], 1, 0
        n_linear = rows * in_features
        unquantized = n - n_linear   # the remainder (< in_features)
    else:
        shape = model_shape(n_params_or_config)
        linears, layers = shape.linear_shapes(), shape.num_hidden_layers
        n_linear, unquantized = shape.linear_params, shape.unquantized_params
        kv = 2 * shape.num_hidden_layers * shape.num_key_value_heads * shape.head_dim
        kv = kv * batch_size * context_length * kv_bits // 8
    if fmt in _FLOAT_BITS:
        bits = _FLOAT_BITS[fmt]
        return Estimate(mode, n_linear, unquantized, n_linear * bits // 8, 0, unquantized * bits // 8, kv)
    weight_bytes = n_linear if fmt == "int8" else math.ceil(n_linear / 2)
    state = layers * _state_bytes(fmt, linears, blocksize, dq, dq_blocksize)
    return Estimate(mode, n_linear, unquantized, weight_bytes, state, unquantized * unquantized_bits // 8, kv)


@dataclass(frozen=True)
class Footprint:
    """Measured bytes of a loaded model (ints). ``reported_bytes == model.get_memory_footprint()``."""

    reported_bytes: int          # parameters + buffers, as get_memory_footprint counts them
    linear_weight_bytes: int     # weights of the linear layers in the blocks (lm_head excluded)
    quantized_weight_bytes: int  # of those, Params4bit (packed uint8) and Int8Params (int8) data
    unquantized_bytes: int       # every parameter not quantized: embeddings, lm_head, norms, biases
    buffer_bytes: int            # e.g. rotary inv_freq
    quant_state_bytes: int       # absmax, nested absmax + offset, SCB: NOT in reported_bytes
    quantized_params: int        # logical weights in quantized layers (not packed bytes)
    unquantized_params: int
    layouts: dict = field(default_factory=dict, compare=False)   # 4-bit layer name -> "flat" / "cpu-blocked"

    @property
    def true_bytes(self):
        """What the weights really occupy: the reported figure plus the quantization state."""
        return self.reported_bytes + self.quant_state_bytes

    @property
    def bits_per_quantized_weight(self):
        """(codes + scales) * 8 / weights, e.g. 4.5 for nf4/64, 4.127 with double quant; nan if none."""
        if not self.quantized_params:
            return float("nan")
        return 8 * (self.quantized_weight_bytes + self.quant_state_bytes) / self.quantized_params

    @property
    def cpu_blocked_layers(self):
        """How many 4-bit layers are in bitsandbytes' CPU blocked layout (repacked by a forward on an
        AVX512-BF16 CPU: bfloat16 absmax, double quant undone, so more state bytes)."""
        return sum(layout == "cpu-blocked" for layout in self.layouts.values())

    def as_dict(self):
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "layouts"}
        return out | {"true_bytes": self.true_bytes, "bits_per_quantized_weight": self.bits_per_quantized_weight,
                      "four_bit_layers": len(self.layouts), "cpu_blocked_layers": self.cpu_blocked_layers}


def _nbytes(t):
    return t.nelement() * t.element_size() if isinstance(t, torch.Tensor) else 0


def footprint(model):
    """Measure ``model``: reported bytes split by kind, plus the quantization state they leave out.

    Embedded SmolLM2 nf4: reported 109,777,792 bytes (as get_memory_footprint), quant state
    6,635,520 (float32 absmax, 106,168,320 weights / 64 * 4); with double quant 1,685,880. The state
    is read as the layers hold it now: on an AVX512-BF16 CPU the first forward repacks every 4-bit
    layer (``layouts`` says which) and nf4 + double quant then holds 3,317,760 (bfloat16 absmax).

    >>> fp = footprint(model)  # doctest: +SKIP
    >>> fp.reported_bytes == model.get_memory_footprint()  # doctest: +SKIP
    True
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear = {id(m.weight) for m in model.modules()
              if isinstance(m, torch.nn.Linear) and m is not out_emb}   # bnb layers subclass Linear
    owner = {id(m.weight): m for m in model.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)}
    qbytes = ubytes = lbytes = state = qparams = uparams = 0
    for p in model.parameters():   # parameters() skips tied duplicates, as get_memory_footprint does
        lbytes += _nbytes(p) if id(p) in linear else 0
        scales = bnb_interop.quant_state_bytes(p, owner.get(id(p)))   # None: not a bitsandbytes weight
        if scales is None:
            ubytes += _nbytes(p)
            uparams += p.nelement()
        else:
            qbytes += _nbytes(p)
            qparams += bnb_interop.logical_numel(p)
            state += scales
    bufs = sum(_nbytes(b) for b in model.buffers())
    layouts = bnb_interop.four_bit_layouts(model)
    return Footprint(qbytes + ubytes + bufs, lbytes, qbytes, ubytes, bufs, state, qparams, uparams, layouts)
