"""Fake quantization of a model's linear layers: quantize -> dequantize each weight, in place.

A weight stays a tensor of the model's dtype (bf16 for the embedded model); only its values change
to what a format can represent, so the ordinary forward pass measures that format's error. Each
layer gets its own quantizer (a format name or any function tensor -> record with ``.dequantize()``),
and the original weights of the layers changed, and only those, are kept to put back:

    with fake_quantize(model, {"model.layers.0.mlp.down_proj": "nf4+dq"}) as fq:
        ...                      # the model runs with that one layer fake-quantized
    # here every weight is back, bit for bit (torch.equal)

Worked number: fake-quantizing all 210 linear layers of the embedded SmolLM2 (106.2 M weights, bf16)
keeps 212 MB of originals; one layer (``mlp.down_proj``, 576 x 1536) keeps 1.8 MB.
Format names (``FORMAT_KINDS``: the formats of ``qlearn.formats.FORMATS`` used for "fakequant"):
"bf16" (unchanged), "int8" (LLM.int8 row-wise weights, ``int8_vectorwise`` threshold 0),
"nf4" / "fp4" / "nf4+dq" / "fp4+dq" with an optional "/blocksize" ("nf4+dq/32"; default 64),
"int4/64" (absmax) and "int4-zp/32" (zero-point with a float minimum per block, x = q * scale + minimum:
the GGUF Q4_1 family).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from .formats import FORMATS, Unquantized, names

__all__ = ["Unquantized", "FORMAT_KINDS", "parse_format", "quantizer", "quantizable_layers", "fake_quantize",
           "FakeQuantized"]

FORMAT_KINDS = names("fakequant")


def parse_format(fmt: str) -> tuple[str, int | None]:
    """A format name -> (kind, blocksize): "nf4+dq/32" -> ("nf4+dq", 32), "nf4" -> ("nf4", 64).

    >>> parse_format("nf4+dq/32"), parse_format("int8")
    (('nf4+dq', 32), ('int8', None))
    """
    if not isinstance(fmt, str):
        raise TypeError(f"format must be a str such as 'nf4+dq/64'; got {type(fmt).__name__} {fmt!r}")
    kind, _, size = fmt.partition("/")
    if kind not in FORMAT_KINDS:
        raise ValueError(f"unknown format {fmt!r}; kinds: {', '.join(FORMAT_KINDS)} (4-bit ones take '/blocksize')")
    allowed = FORMATS[kind].blocksizes
    if not allowed:
        if size:
            raise ValueError(f"format {fmt!r}: {kind} takes no blocksize")
        return kind, None
    if not size:
        return kind, FORMATS[kind].blocksize
    if not size.isdigit() or int(size) not in allowed:
        raise ValueError(f"format {fmt!r}: blocksize must be one of {', '.join(map(str, allowed))}")
    return kind, int(size)


def quantizer(fmt: str) -> Callable[[torch.Tensor], object]:
    """The function weight -> record of a format name (see the module docstring): the registry's
    ``Format.quantize`` at the name's blocksize. "bf16" gives the weight's own values (`Unquantized`).

    >>> quantizer("nf4+dq/64")(torch.tensor([[0.5, -2.0, 1.0, 0.0]])).bits_per_param > 4
    True
    """
    kind, blocksize = parse_format(fmt)
    return lambda w: FORMATS[kind].quantize(w, blocksize)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the linear layers whose weight is their own: an lm_head tied to the input embeddings
    is left out (changing it would change the embeddings). Embedded SmolLM2: 210 = 30 blocks x 7."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = embed.weight if embed is not None else None
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and m.weight is not tied and m.weight.dtype.is_floating_point]


class FakeQuantized:
    """What ``fake_quantize`` changed: per layer its format, stored bytes (``nbytes``) and weights
    (``numel``), ``bits_per_param`` over all of them, and the original weights (the changed layers only)
    that ``restore()`` (or leaving a ``with``) puts back."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.originals: dict[str, torch.Tensor] = {}
        self.formats: dict[str, str] = {}
        self.nbytes: dict[str, int] = {}
        self.numel: dict[str, int] = {}

    @property
    def bits_per_param(self) -> float:
        """Stored bits per weight over every layer of the plan: 8 * sum(nbytes) / sum(numel) (0.0 if none)."""
        return 8 * sum(self.nbytes.values()) / max(sum(self.numel.values()), 1)

    def layer_bits(self) -> dict[str, float]:
        """{layer: stored bits per weight}, e.g. 4.5 for a layer in "nf4"."""
        return {name: 8 * self.nbytes[name] / self.numel[name] for name in self.nbytes}

    def merge(self, other: FakeQuantized) -> None:
        """Take over `other`'s layers (formats, bytes, weights, originals): one record of several passes."""
        for part in ("originals", "formats", "nbytes", "numel"):
            getattr(self, part).update(getattr(other, part))

    def restore(self) -> None:
        """Copy every kept original back into its weight (in place) and forget them."""
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for name, w in self.originals.items():
                modules[name].weight.copy_(w)
        self.originals.clear()

    def __enter__(self) -> FakeQuantized:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def fake_quantize(model: nn.Module, plan: Mapping[str, str | Callable], keep_originals: bool = True,
                  values_dtype: torch.dtype | None = None) -> FakeQuantized:
    """Replace each named layer's weight by ``quantize(weight).dequantize()`` in the weight's dtype, in place.

    plan: {layer name: format name or function weight -> record}; "bf16" layers are left untouched.
    The weight after is bit-exact ``record.dequantize()`` (the record was made from the weight as it
    was, e.g. bf16). keep_originals=False saves the copies when nothing needs restoring.
    values_dtype: dequantize to this dtype first, then store in the weight's dtype: an fp32 copy of a
    bf16 model with ``values_dtype=torch.bfloat16`` holds exactly the bf16 model's values (and runs
    about 2.5x faster on a CPU without bf16 matmul units).
    Worked number: the embedded model's ``model.layers.0.self_attn.q_proj`` (576 x 576) in "nf4+dq"
    stores 4.127 bits a weight (171,201 bytes).

    >>> net = nn.Sequential(nn.Linear(64, 2))
    >>> with fake_quantize(net, {"0": "nf4"}) as fq:
    ...     fq.bits_per_param
    4.5
    """
    if not isinstance(plan, Mapping):
        raise TypeError(f"plan must be a mapping {{layer name: format or function}}; got {type(plan).__name__}")
    modules = dict(model.named_modules())
    allowed = set(quantizable_layers(model))
    bad = [name for name in plan if name not in allowed]
    if bad:
        raise ValueError(f"plan names {bad[:3]} which are not quantizable linear layers of this model "
                         f"({len(allowed)} are, e.g. {sorted(allowed)[:2]})")
    fq = FakeQuantized(model)
    try:
        _apply(fq, modules, plan, keep_originals, values_dtype)
    except BaseException:
        fq.restore()   # a bad format half-way: put back what was already changed
        raise
    return fq


def _apply(fq: FakeQuantized, modules: dict, plan: Mapping, keep_originals: bool, values_dtype) -> None:
    with torch.no_grad():
        for name, how in plan.items():
            fn = quantizer(how) if isinstance(how, str) else how
            if not callable(fn):
                raise TypeError(f"plan[{name!r}] must be a format name or a callable; got {type(how).__name__}")
            weight = modules[name].weight
            record = fn(weight.detach())
            fq.formats[name] = how if isinstance(how, str) else getattr(how, "__name__", "custom")
            fq.nbytes[name], fq.numel[name] = record.nbytes, weight.numel()
            if isinstance(record, Unquantized):
                continue
            if keep_originals:
                fq.originals[name] = weight.detach().clone()
            weight.copy_(record.dequantize(values_dtype or weight.dtype))
            del record
