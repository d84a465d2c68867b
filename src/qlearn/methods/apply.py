"""Applying the methods to a model: one pass per decoder layer, and fake quantization (each linear
weight replaced by its quantized-then-dequantized values).

Calibration ids: ``qlearn.calibration.calibration_ids(tok, "methods")`` (docstrings of 21 stdlib modules,
a different source from the evaluation text). Layer inputs are captured with `qlearn.capture`.

`sequential` runs the model the GPTQ paper's way: the inputs of decoder layer 0 are captured once;
then for each layer in turn its linear layers' inputs are collected (Hessian, mean |x|, a sample of
rows), its linear weights are quantized, and the layer is run again with the quantized weights to
give the next layer its inputs (so later layers see the earlier layers' quantization error).
This module works on any torch model whose decoder layers sit in one ``nn.ModuleList`` (Llama-like).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._threads import threads
from ..capture import first_call, input_hooks, layer_input
from ..fakequant import FORMAT_KINDS, FakeQuantized, fake_quantize, quantizable_layers
from ..formats import FORMATS
from .awq import awq
from .gptq import gptq

__all__ = ["LinearStats", "decoder_layers",
           "sequential", "METHODS", "GROUPED", "apply_method", "keep_weights", "restore_weights",
           "restore_from_checkpoint"]

@dataclass
class LinearStats:
    """What one linear layer received on the calibration text: hessian = 2 X^T X / n float32 (in, in),
    mean_abs = mean |x| float32 (in,), sample = every k-th row of X float32 (<= max_rows, in), n rows."""

    hessian: torch.Tensor
    mean_abs: torch.Tensor
    sample: torch.Tensor
    n: int


class _Collector:
    """An `input_hooks` callback that accumulates X^T X, sum |x| and a row sample for each linear it sees."""

    def __init__(self, max_rows: int):
        self.sums, self.max_rows = {}, max_rows

    def __call__(self, name, args, kwargs):
        x = layer_input(args, kwargs).detach()
        x = x.reshape(-1, x.shape[-1]).float()                                  # (tokens, in)
        xtx, sab, rows, n = self.sums.get(name, (0.0, 0.0, [], 0))
        step = max(1, x.shape[0] // self.max_rows)
        self.sums[name] = (xtx + x.T @ x, sab + x.abs().sum(0), rows + [x[::step]], n + x.shape[0])

    def stats(self) -> dict[str, LinearStats]:
        out = {}
        for name, (xtx, sab, rows, n) in self.sums.items():
            sample = torch.cat(rows)
            sample = sample[:: max(1, sample.shape[0] // self.max_rows)][: self.max_rows]
            out[name] = LinearStats(2 * xtx / n, sab / n, sample, n)
        return out


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and the nn.ModuleList of a model's decoder layers (the longest ModuleList)."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError("model has no nn.ModuleList of decoder layers")
    return max(lists, key=lambda nm: len(nm[1]))


def sequential(model: nn.Module, ids: torch.Tensor,
               quantize: Callable[[str, torch.Tensor, LinearStats], object],
               max_rows: int = 512, propagate_quantized: bool = True, layers: int | None = None,
               keep_originals: bool = True) -> FakeQuantized:
    """Quantize every linear of every decoder layer in order, with its calibration statistics.

    quantize(name, weight float32 (out, in), stats) returns a record (`.dequantize`, `.nbytes`);
    each weight is replaced by it through `qlearn.fakequant.fake_quantize` (restore with the returned
    FakeQuantized's `.restore()` or a ``with``). ids: int64 (batch, tokens) calibration ids.
    layers: only the first `layers` decoder layers (None: all).
    """
    prefix, blocks = decoder_layers(model)
    device = next(model.parameters()).device
    with torch.no_grad():   # what decoder layer 0 gets for `ids` (the forward stops there)
        args, kwargs = first_call(blocks[0], lambda: model(input_ids=ids.to(device), use_cache=False))
    hidden, args = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
    total = FakeQuantized(model)
    try:
        for i, block in enumerate(blocks if layers is None else list(blocks)[:layers]):
            linears = {f"{prefix}.{i}.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
            collector = _Collector(max_rows)
            with input_hooks(linears, collector), torch.no_grad():
                out = block(hidden, *args, **kwargs)
            stats = collector.stats()
            plan = {name: (lambda w, name=name, st=stats: quantize(name, w.float(), st[name])) for name in linears}
            fq = fake_quantize(model, plan, keep_originals=keep_originals)
            total.merge(fq)
            if propagate_quantized:
                with torch.no_grad():
                    out = block(hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
    except BaseException:
        total.restore()
        raise
    return total


def keep_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the quantizable linear weights, to restore after ``fake_quantize(..., keep_originals=False)``:
    bfloat16 where that is exact (the embedded model's weights are bf16 values, so an fp32 model's copy
    costs half: 212 MB instead of 425 MB), else the weight's dtype."""
    modules = dict(model.named_modules())
    kept = {}
    for name in quantizable_layers(model):
        w = modules[name].weight.detach()
        b = w.to(torch.bfloat16)
        kept[name] = b if torch.equal(b.to(w.dtype), w) else w.clone()
    return kept


def restore_from_checkpoint(model: nn.Module, folder) -> None:
    """Put back every quantizable linear weight from the model's safetensors file in `folder`, one
    tensor at a time (no second copy of the weights in memory, unlike `keep_weights`)."""
    from pathlib import Path

    from safetensors import safe_open

    modules = dict(model.named_modules())
    with safe_open(str(Path(folder) / "model.safetensors"), "pt") as f, torch.no_grad():
        for name in quantizable_layers(model):
            modules[name].weight.copy_(f.get_tensor(f"{name}.weight"))


def restore_weights(model: nn.Module, kept: dict[str, torch.Tensor]) -> None:
    """Put back the weights `keep_weights` copied (exactly)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, w in kept.items():
            modules[name].weight.copy_(w.to(modules[name].weight.dtype))


DATA_FREE = tuple(f.name for f in FORMATS.values() if "method" in f.uses and not f.calibrated)   # the registry's
CALIBRATED = tuple(f.name for f in FORMATS.values() if "method" in f.uses and f.calibrated)     # gptq, -asym, awq
METHODS = DATA_FREE + CALIBRATED
GROUPED = tuple(n for n in METHODS if FORMATS[n].blocksize and not FORMATS[n].blocksizes)   # take any blocksize


def apply_method(model: nn.Module, method: str, blocksize: int = 128, calib_ids: torch.Tensor | None = None,
                 keep_originals: bool = True, layers: int | None = None) -> FakeQuantized:
    """Fake-quantize every quantizable linear layer of `model` with one method (4-bit unless the name says).

    method: one of `METHODS`. "bf16" leaves the weights; "int8" / "nf4" / "nf4+dq" / "fp4" are
    bitsandbytes' formats (blocks of 64) through `qlearn.fakequant`; "rtn" / "rtn-asym" / "hqq" /
    "gptq" / "gptq-asym" / "awq" use `blocksize`; "Q8_0" ... "Q4_K" are the GGUF blocks (a weight whose
    rows hold no whole block is cut into blocks flattened: `quantize_gguf_weight`). Every format is the
    registry's (`qlearn.formats.FORMATS`).
    GPTQ and AWQ need calib_ids (batch, tokens) and go through `sequential`.
    layers: only the linear layers of the first `layers` decoder layers (None: all; a quick lesson run).
    Returns the FakeQuantized (`.restore()`, `.nbytes`, `.bits_per_param` over the layers it changed).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    names = quantizable_layers(model)
    if layers is not None:
        prefix = decoder_layers(model)[0]
        names = [n for n in names if any(n.startswith(f"{prefix}.{i}.") for i in range(layers))]
    if method in CALIBRATED:
        if calib_ids is None:
            raise ValueError(f"method {method!r} needs calib_ids (see qlearn.calibration.calibration_ids)")
        sym = method != "gptq-asym"
        if method == "awq":
            def fn(_name, w, st):
                return awq(w, st.sample, blocksize=blocksize, x_mean_abs=st.mean_abs)
        else:
            def fn(_name, w, st):
                return gptq(w, st.hessian, blocksize=blocksize, symmetric=sym)
        return sequential(model, calib_ids, fn, keep_originals=keep_originals, layers=layers)
    if method in FORMAT_KINDS:                       # bitsandbytes' formats, blocks of 64
        how = method
    else:
        def how(w):
            return FORMATS[method].quantize(w, blocksize)
    with threads(1):   # thousands of small ops: on a busy 2-core machine a second thread only waits
        return fake_quantize(model, {name: how for name in names}, keep_originals=keep_originals)
