"""Applying the methods to a model: calibration text and inputs, one pass per decoder layer, and
fake quantization (each linear weight replaced by its quantized-then-dequantized values).

Calibration text: docstrings of a fixed list of standard-library modules (and their public classes and
functions) as CPython 3.11.7 has them, frozen in the package (`qlearn.texts`), a different source from
the evaluation text (`qlearn.evaluate.offline_text`, the help topics); a test checks that no 64-character
span of one is in the other.

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

from .. import texts
from ..fakequant import FakeQuantized, fake_quantize, quantizable_layers
from .awq import awq
from .gguf import GGUF_TYPES, quantize_gguf
from .gptq import gptq
from .hqq import hqq
from .rtn import rtn

__all__ = ["CALIBRATION_MODULES", "calibration_text", "calibration_ids", "LinearStats", "decoder_layers",
           "sequential", "bits_per_param", "METHODS", "GROUPED", "apply_method", "keep_weights", "restore_weights",
           "restore_from_checkpoint"]

CALIBRATION_MODULES = ("argparse", "collections", "json", "logging", "subprocess", "textwrap", "difflib",
                       "unittest.case", "http.client", "email.message", "pathlib", "csv", "shutil", "tarfile",
                       "zipfile", "heapq", "functools", "itertools", "statistics", "fractions", "decimal")


def calibration_text() -> str:
    """Docstrings of `CALIBRATION_MODULES` and their public classes / functions (each over 80 characters),
    joined by blank lines, as CPython 3.11.7 has them (107,262 characters; `qlearn.texts`).

    English prose about Python, like the evaluation text, but written for a different purpose
    (library reference, not the language reference).
    """
    return texts.calibration_text("methods")


def calibration_ids(tok, n_tokens: int = 2048, window: int = 512) -> torch.Tensor:
    """The first `n_tokens` token ids of `calibration_text`, int64 (n_tokens // window, window)."""
    if n_tokens < window or n_tokens % window:
        raise ValueError(f"n_tokens must be a positive multiple of window={window}; got {n_tokens!r}")
    text = calibration_text()
    ids = tok(text[: 8 * n_tokens + 4096], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if ids.numel() < n_tokens:
        raise ValueError(f"the calibration text gives {ids.numel()} tokens, fewer than n_tokens={n_tokens}")
    return ids[:n_tokens].view(-1, window)


@dataclass
class LinearStats:
    """What one linear layer received on the calibration text: hessian = 2 X^T X / n float32 (in, in),
    mean_abs = mean |x| float32 (in,), sample = every k-th row of X float32 (<= max_rows, in), n rows."""

    hessian: torch.Tensor
    mean_abs: torch.Tensor
    sample: torch.Tensor
    n: int


class _Collector:
    """Forward pre-hooks that accumulate X^T X, sum |x| and a row sample for each linear of one layer."""

    def __init__(self, modules: dict[str, nn.Linear], max_rows: int):
        self.sums, self.max_rows = {}, max_rows
        self.handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name):
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()       # (tokens, in)
            xtx, sab, rows, n = self.sums.get(name, (0.0, 0.0, [], 0))
            step = max(1, x.shape[0] // self.max_rows)
            self.sums[name] = (xtx + x.T @ x, sab + x.abs().sum(0), rows + [x[::step]], n + x.shape[0])
        return hook

    def stats(self) -> dict[str, LinearStats]:
        for h in self.handles:
            h.remove()
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


class _Stop(Exception):
    pass


def _layer_inputs(model: nn.Module, layers: nn.ModuleList, ids: torch.Tensor):
    """The positional and keyword arguments decoder layer 0 gets for `ids` (the forward stops there)."""
    seen = {}

    def hook(_mod, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        raise _Stop

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=ids.to(next(model.parameters()).device), use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    args, kwargs = seen["args"], dict(seen["kwargs"])
    hidden = args[0] if args else kwargs.pop("hidden_states")
    return hidden, args[1:], kwargs


def bits_per_param(fq: FakeQuantized, model: nn.Module) -> float:
    """Stored bits per weight over every layer `fq` changed (total bytes * 8 / total weights)."""
    modules = dict(model.named_modules())
    numel = sum(modules[n].weight.numel() for n in fq.nbytes)
    return 8 * sum(fq.nbytes.values()) / max(numel, 1)


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
    hidden, args, kwargs = _layer_inputs(model, blocks, ids)
    total = FakeQuantized(model)
    try:
        for i, block in enumerate(blocks if layers is None else list(blocks)[:layers]):
            linears = {f"{prefix}.{i}.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
            collector = _Collector(linears, max_rows)
            with torch.no_grad():
                out = block(hidden, *args, **kwargs)
            stats = collector.stats()
            plan = {name: (lambda w, name=name, st=stats: quantize(name, w.float(), st[name])) for name in linears}
            fq = fake_quantize(model, plan, keep_originals=keep_originals)
            for part in ("originals", "formats", "nbytes", "bits_per_param"):
                getattr(total, part).update(getattr(fq, part))
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


DATA_FREE = ("bf16", "int8", "nf4", "nf4+dq", "fp4", "rtn", "rtn-asym", "hqq", "Q8_0", "Q4_0", "Q4_1", "Q4_K")
CALIBRATED = ("gptq", "gptq-asym", "awq")
METHODS = DATA_FREE + CALIBRATED
GROUPED = ("rtn", "rtn-asym", "hqq", "gptq", "gptq-asym", "awq")   # the methods that take group_size


def _gguf_2d(qtype: str):
    def quantize(w: torch.Tensor):
        size = GGUF_TYPES[qtype][0]
        if w.shape[-1] % size == 0:
            return quantize_gguf(w, qtype)
        # rows of 576 cannot hold super-blocks of 256 (llama.cpp falls back to another type there);
        # here the flattened weight is cut into super-blocks instead, which keeps Q4_K's arithmetic
        return _Reshaped(quantize_gguf(w.reshape(-1, size), qtype), w.shape)
    return quantize


@dataclass(frozen=True)
class _Reshaped:
    """A record made from a reshaped weight, seen in the weight's own shape."""

    inner: object
    shape: torch.Size

    @property
    def codes(self) -> torch.Tensor:
        return self.inner.codes.reshape(self.shape)

    def dequantize(self, dtype=None) -> torch.Tensor:
        return self.inner.dequantize(dtype).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes

    @property
    def bits_per_param(self) -> float:
        return self.inner.bits_per_param


def apply_method(model: nn.Module, method: str, group_size: int = 128, calib_ids: torch.Tensor | None = None,
                 keep_originals: bool = True, layers: int | None = None) -> FakeQuantized:
    """Fake-quantize every quantizable linear layer of `model` with one method (4-bit unless the name says).

    method: one of `METHODS`. "bf16" leaves the weights; "int8" / "nf4" / "nf4+dq" / "fp4" are
    bitsandbytes' formats (blocks of 64) through `qlearn.fakequant`; "rtn" / "rtn-asym" / "hqq" /
    "gptq" / "gptq-asym" / "awq" use `group_size`; "Q8_0" ... "Q4_K" are the GGUF blocks.
    GPTQ and AWQ need calib_ids (batch, tokens) and go through `sequential`.
    layers: only the linear layers of the first `layers` decoder layers (None: all; a quick lesson run).
    Returns the FakeQuantized (`.restore()`, `.nbytes`); `bits_per_param(fq, model)` sums it up.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    names = quantizable_layers(model)
    if layers is not None:
        prefix = decoder_layers(model)[0]
        names = [n for n in names if any(n.startswith(f"{prefix}.{i}.") for i in range(layers))]
    if method in CALIBRATED:
        if calib_ids is None:
            raise ValueError(f"method {method!r} needs calib_ids (see calibration_ids)")
        sym = method != "gptq-asym"
        if method == "awq":
            def fn(_name, w, st):
                return awq(w, st.sample, group_size=group_size, x_mean_abs=st.mean_abs)
        else:
            def fn(_name, w, st):
                return gptq(w, st.hessian, group_size=group_size, symmetric=sym)
        return sequential(model, calib_ids, fn, keep_originals=keep_originals, layers=layers)
    if method in ("bf16", "int8", "nf4", "nf4+dq", "fp4"):
        how = method
    elif method in ("rtn", "rtn-asym"):
        def how(w):
            return rtn(w.float(), group_size=group_size, symmetric=method == "rtn")
    elif method == "hqq":
        def how(w):
            return hqq(w.float(), group_size=group_size)
    else:
        how = _gguf_2d(method)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # thousands of small ops: on a busy 2-core machine a second thread only waits
    try:
        return fake_quantize(model, {name: how for name in names}, keep_originals=keep_originals)
    finally:
        torch.set_num_threads(threads)
