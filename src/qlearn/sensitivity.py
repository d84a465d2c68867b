"""Per-layer sensitivity: how far the model's next-token distribution moves when one layer is quantized.

Measured on CALIBRATION text, never on the evaluation text of ``qlearn.evaluate``: the module
docstrings of a fixed list of standard-library modules (Python's own prose, like the evaluation text,
but not in the help topics; ``tests/test_calibration.py`` checks they share no run of 8 words), frozen in
the package: ``qlearn.calibration.calibration_ids(tok, "sensitivity", ...)``.

One reference run of the unquantized model keeps (a) each decoder block's input, (b) each linear
layer's input energy per channel (mean x^2 over the calibration tokens) and (c) the reference
log-probabilities at every ``every``-th position. Then:

- ``layer_kl``: quantize ONE layer, rerun only the blocks from its own onwards (the ones before it are
  unchanged: their output is cached), and measure KL(reference || quantized), nats per position.
  This is the measured sensitivity, in one format (the "anchor", NF4 + double quant by default).
- ``block_kl``: the same with all 7 layers of one block quantized (the cheaper per-block view).
- ``weighted_error``: sum over weights of energy(in channel) x (w - w_hat)^2, the layer's output error
  on the calibration inputs (diagonal approximation): cheap, so computed for every format. (Not
  ``qlearn.methods.output_error``, the plain mean squared error of a layer's output on given inputs.)
- ``sensitivities``: predicted KL of layer l in format f = KL_anchor(l) x error_f(l) / error_anchor(l)
  (KL grows with the square of a small perturbation, i.e. linearly with its energy), cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .calibration import Calibration
from .capture import input_hooks, layer_input
from .fakequant import fake_quantize, quantizable_layers, quantizer

__all__ = ["Calibration", "Reference", "reference", "layer_kl", "block_kl", "weighted_error", "Sensitivity",
           "sensitivities", "block_of"]

_VERSION = 2   # bump when what a format name means or how KL is measured changes: old cache files go unused


DEFAULT_CALIBRATION = Calibration()   # 2 x 128 tokens, KL at every 2nd position (a frozen dataclass)


def block_of(name: str) -> int:
    """The decoder block index in a layer name: "model.layers.12.mlp.up_proj" -> 12."""
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1])


class Reference:
    """The unquantized model's run on the calibration ids: block inputs, channel energies, log-probs.
    Memory for the embedded model at 2 x 128 tokens: 30 x 256 x 576 block inputs (17.7 MB in fp32)
    + 128 x 49,152 float32 log-probs (25 MB)."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, every: int):
        self.model, self.ids, self.every = model, ids, every
        self.positions = torch.arange(every - 1, ids.shape[1], every)          # (positions,)
        self.block_inputs: list[torch.Tensor] = []
        self.energy: dict[str, torch.Tensor] = {}                               # name -> (in_features,) f32
        names = set(quantizable_layers(model))
        blocks = {str(i): blk for i, blk in enumerate(self.blocks)}
        linears = {n: m for n, m in model.named_modules() if n in names}
        with input_hooks(blocks, self._keep_block_input), input_hooks(linears, self._keep_energy), \
                torch.inference_mode():
            hidden = self.decoder(input_ids=ids, use_cache=False).last_hidden_state
            self.logp = self._log_probs(hidden)                                 # (n_seqs, positions, vocab)

    @property
    def decoder(self):
        return self.model.model

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.model.layers

    def _keep_block_input(self, _name, args, kwargs):
        self.block_inputs.append(layer_input(args, kwargs).detach().clone())

    def _keep_energy(self, name, args, kwargs):
        x = layer_input(args, kwargs).detach()
        x = x.float().reshape(-1, x.shape[-1])                                  # (tokens, in_features)
        self.energy[name] = (x * x).mean(dim=0)

    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.lm_head(hidden[:, self.positions])                  # (n_seqs, positions, vocab)
        return torch.log_softmax(logits.float(), dim=-1)

    def kl_from(self, block: int) -> float:
        """KL(reference || model now), nats per scored position, rerunning blocks ``block``.. only."""
        full = self.decoder.layers
        self.decoder.layers = nn.ModuleList(list(full)[block:])
        try:
            with torch.inference_mode():
                hidden = self.decoder(inputs_embeds=self.block_inputs[block], use_cache=False).last_hidden_state
                logq = self._log_probs(hidden)
        finally:
            self.decoder.layers = full
        return float((self.logp.exp() * (self.logp - logq)).sum(dim=-1).mean())


def reference(model: nn.Module, tok, calibration: Calibration = DEFAULT_CALIBRATION, ids=None) -> Reference:
    """Run the (unquantized) model once on the calibration ids and keep what the sensitivities need."""
    ids = calibration.ids(tok) if ids is None else ids
    return Reference(model, ids.to(model.device), calibration.every)


def layer_kl(ref: Reference, fmt: str, layers=None, progress: bool = False) -> dict[str, float]:
    """{layer: KL to the reference when only that layer is fake-quantized in ``fmt``} (nats/position)."""
    from tqdm.auto import tqdm

    layers = quantizable_layers(ref.model) if layers is None else list(layers)
    out = {}
    for name in tqdm(layers, desc=f"sensitivity {fmt}", disable=not progress, leave=False):
        with fake_quantize(ref.model, {name: fmt}):
            out[name] = ref.kl_from(block_of(name))
    return out


def block_kl(ref: Reference, fmt: str, layers=None) -> dict[int, float]:
    """{block: KL when all linear layers of that block are fake-quantized in ``fmt``} (the blocks of
    ``layers``, default all)."""
    by_block: dict[int, list[str]] = {}
    blocks = None if layers is None else {block_of(n) for n in layers}
    for name in quantizable_layers(ref.model):
        if blocks is not None and block_of(name) not in blocks:
            continue
        by_block.setdefault(block_of(name), []).append(name)
    out = {}
    for block, names in by_block.items():
        with fake_quantize(ref.model, dict.fromkeys(names, fmt)):
            out[block] = ref.kl_from(block)
    return out


def weighted_error(ref: Reference, formats, layers=None) -> dict[str, dict[str, float]]:
    """{format: {layer: sum_ij energy_j (w_ij - w_hat_ij)^2}}: each layer's output error energy per
    calibration token, diagonal approximation (float). bf16 gives 0. Worked number: one weight off by
    0.1 on a channel of energy 4 gives 4 x 0.01 = 0.04."""
    modules = dict(ref.model.named_modules())
    layers = quantizable_layers(ref.model) if layers is None else list(layers)
    out = {fmt: {} for fmt in formats}
    with torch.no_grad():
        for name in layers:
            w = modules[name].weight.detach()
            for fmt in formats:
                err = (quantizer(fmt)(w).dequantize(torch.float32) - w.float()).pow_(2)   # (out, in)
                out[fmt][name] = float(err.sum(dim=0) @ ref.energy[name])
    return out


@dataclass(frozen=True)
class Sensitivity:
    """Predicted KL (nats/position) of every layer in every format, and what it was measured from.
    kl[layer][fmt]; measured: the anchor format's measured layer KL; blocks: per-block KL (anchor);
    error[layer][fmt]: `weighted_error`; numel / in_features per layer; seconds of the anchor run."""

    model_key: str
    anchor: str
    formats: tuple
    layers: tuple
    kl: dict
    measured: dict
    blocks: dict
    error: dict
    numel: dict
    in_features: dict
    calibration: dict
    seconds: dict


def _model_key(model: nn.Module) -> str:
    """Name + a hash of the first and last linear weights' bytes: a different checkpoint, another key."""
    names = quantizable_layers(model)
    modules = dict(model.named_modules())
    digest = hashlib.sha256()
    for name in (names[0], names[-1]):
        digest.update(modules[name].weight.detach().to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    base = str(getattr(model.config, "name_or_path", "")).rstrip("/").split("/")[-1] or "model"
    return f"{base}-{digest.hexdigest()[:12]}"


def _cache_path(cache, key: str):
    from pathlib import Path

    from .models import cache_dir
    return Path(cache_dir() / "sensitivity" if cache is True else cache) / f"{key}.json"


def sensitivities(model: nn.Module, tok, formats, anchor: str = "nf4+dq/64",
                  calibration: Calibration = DEFAULT_CALIBRATION, cache=True, progress: bool = True,
                  measure=(), layers=None) -> Sensitivity:
    """Measured anchor KL per layer and per block, and predicted KL of every layer in every format.

    measure: more formats whose KL is measured like the anchor's instead of predicted.
    layers: only these layer names (default: every quantizable layer); a quicker, partial answer.
    cache: True (``qlearn.models.cache_dir()/sensitivity``), a folder, or False; the file is keyed by
    the model's weights, the anchor, the formats, the calibration settings and token ids, so a cached result is
    only reused for the same question. Embedded SmolLM2, defaults, 2 CPU cores: see the lesson.
    """
    formats = tuple(dict.fromkeys([anchor, *formats]))
    ids = calibration.ids(tok)
    measure = tuple(f for f in measure if f != anchor)
    settings = dict(asdict(calibration), anchor=anchor, formats=formats, ids=ids.view(-1).tolist(), version=_VERSION,
                    dtype=str(model.dtype), device=model.device.type)   # bf16 compute adds a KL noise floor
    if measure:
        settings["measure"] = measure
    if layers is not None:
        layers = list(layers)
        settings["layers"] = layers
    key = _model_key(model) + "-" + hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]
    path = _cache_path(cache, key) if cache else None
    if path is not None and path.exists():
        return _load(path)
    seconds, t0 = {}, time.perf_counter()
    ref = reference(model, tok, calibration, ids)
    seconds["reference"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    measured = layer_kl(ref, anchor, layers, progress=progress)
    seconds["layer_kl"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    blocks = block_kl(ref, anchor, layers)
    seconds["block_kl"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    error = weighted_error(ref, formats, layers)
    seconds["weighted_error"] = time.perf_counter() - t0
    layers = tuple(measured)
    kl = {n: {f: measured[n] * error[f][n] / error[anchor][n] if error[anchor][n] > 0 else 0.0
              for f in formats} for n in layers}
    t0 = time.perf_counter()
    for fmt in measure:                      # measured instead of predicted (costs one anchor run each)
        for n, v in layer_kl(ref, fmt, layers, progress=progress).items():
            kl[n][fmt] = v
    seconds["measure"] = time.perf_counter() - t0
    modules = dict(model.named_modules())
    result = Sensitivity(
        model_key=key, anchor=anchor, formats=formats, layers=layers, kl=kl, measured=measured, blocks=blocks,
        error={n: {f: error[f][n] for f in formats} for n in layers},
        numel={n: modules[n].weight.numel() for n in layers},
        in_features={n: modules[n].weight.shape[1] for n in layers}, calibration=asdict(calibration),
        seconds=seconds)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(result)))
        tmp.replace(path)
    return result


def _load(path) -> Sensitivity:
    data = json.loads(path.read_text())
    data["blocks"] = {int(k): v for k, v in data["blocks"].items()}
    data["formats"], data["layers"] = tuple(data["formats"]), tuple(data["layers"])
    return Sensitivity(**data)
