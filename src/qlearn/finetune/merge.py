"""Three ways to ship a QLoRA result, and why merging into 4 bits loses most of the update.

(a) the 4-bit base plus the adapter, kept apart: the forward adds ``x @ (B @ A)^T * alpha / r`` to the 4-bit
layer's output, so the update is applied exactly; (b) merge into a dequantized 16-bit copy: each weight becomes
``dequantize(W) + B @ A * alpha / r`` rounded to bf16, a model four times the bytes; (c) merge, then quantize
again to the base's format (what peft's ``merge_and_unload`` does to a 4-bit model: "may get different
generations due to rounding errors"). (c) differs from (a) because most of an update is smaller than half the
gap between two NF4 levels at its weight, so re-quantizing rounds most weights back to the code they had:
`rounding` measures that on one layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .lora import answers, heldout_loss

__all__ = ["ROUTES", "Shipped", "Rounding", "merged_weight", "ship", "rounding"]

ROUTES = ("4-bit base + adapter", "merged into bf16", "merged, then nf4+dq again")
HALF_BYTES = 2   # a 16-bit parameter as shipped (the checkpoint's bf16), whatever dtype training upcast it to


@dataclass(frozen=True)
class Shipped:
    """One way to ship: bytes of its weights as shipped, held-out loss (NLL per answer token), greedy answers."""

    route: str
    stored_bytes: int
    loss: float
    answers: tuple

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def _lora_4bit_layers(model) -> list:
    """[(name without peft's prefix, LoRA layer)] for LoRA layers whose base weight is a bitsandbytes 4-bit weight."""
    from .. import bnb_interop

    return [(name.removeprefix("base_model.model."), m) for name, m in model.named_modules()
            if hasattr(m, "lora_A") and hasattr(m, "get_base_layer")
            and bnb_interop.is_4bit_weight(getattr(m.get_base_layer(), "weight", None))]


def merged_weight(layer, adapter: str = "default") -> torch.Tensor:
    """float32 (out, in): the 4-bit base weight dequantized by bitsandbytes plus ``B @ A * alpha / r``: the sum
    peft's 4-bit merge quantizes again (its bf16 dequantized weight plus the float32 delta is this float32 sum)."""
    from .. import bnb_interop

    decode = bnb_interop.dequantizer(layer.get_base_layer().weight, torch.float32)
    if decode is None:
        raise ValueError("the base weight is not a 4-bit weight in bitsandbytes' flat layout (was it repacked by "
                         "an eval-mode forward on an AVX512-BF16 CPU? keep the model in training mode)")
    return decode() + layer.get_delta_weight(adapter).float()


def _stored_bytes(model, adapter_params: int = 0) -> int:
    """4-bit codes + quantization state + every other parameter at 16 bits (adapter parameters left out)."""
    from ..memory import footprint

    fp = footprint(model)
    return fp.quantized_weight_bytes + fp.quant_state_bytes + HALF_BYTES * (fp.unquantized_params - adapter_params)


class Linear16(torch.nn.Module):
    """A bias-free linear layer stored in 16 bits that computes in its input's dtype (weight upcast per call)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype))


def ship(model, tok, heldout, prompts=(), max_new_tokens: int = 24, half=torch.bfloat16):
    """Measure the three routes (`ROUTES`) on a peft model with a 4-bit base: ``([Shipped] * 3, merged 16-bit
    model)``. The model is consumed: peft's ``merge_and_unload`` re-quantizes it (route c), then its 4-bit layers
    are swapped for the 16-bit merged weights (route b), which is the model returned.
    Bytes: the adapter at its training dtype (float32); 16-bit parameters at 2 bytes as the checkpoint stores them.
    """
    layers = _lora_4bit_layers(model)
    if not layers:
        raise ValueError("ship needs a peft model whose LoRA layers wrap 4-bit weights (attach_lora on nf4 / fp4)")
    adapter = [p for p in model.parameters() if p.requires_grad]
    n_adapter, adapter_bytes = sum(p.numel() for p in adapter), sum(p.nbytes for p in adapter)
    routes = {ROUTES[0]: (_stored_bytes(model, n_adapter) + adapter_bytes, heldout_loss(model, tok, heldout),
                          answers(model, tok, prompts, max_new_tokens))}
    with torch.no_grad():
        sixteen = {name: merged_weight(layer).to(half) for name, layer in layers}   # (b)'s weights, kept aside
    model = model.merge_and_unload()                                                # (c): peft's 4-bit merge
    routes[ROUTES[2]] = (_stored_bytes(model), heldout_loss(model, tok, heldout),
                         answers(model, tok, prompts, max_new_tokens))
    for name, weight in sixteen.items():
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, Linear16(weight))
    del sixteen
    routes[ROUTES[1]] = (_stored_bytes(model), heldout_loss(model, tok, heldout),
                         answers(model, tok, prompts, max_new_tokens))
    return [Shipped(route, *routes[route]) for route in ROUTES], model


@dataclass(frozen=True)
class Rounding:
    """One layer's update as the adapter applies it (``delta``) and as re-quantizing the merged weight leaves it
    (``applied = Q(W + delta) - W``), with ``half_step``: how far each weight must move, in the update's
    direction, to cross to the next code (half the gap between its level and that neighbour, times its block's
    absmax). Tensors (out, in) float32."""

    layer: str
    delta: torch.Tensor
    applied: torch.Tensor
    half_step: torch.Tensor
    codes_changed: float      # share of the weights whose 4-bit code changed

    @property
    def step_ratio(self) -> torch.Tensor:
        """(out, in) |delta| / half_step: below 1 a weight keeps its code (while its block's absmax holds)."""
        return self.delta.abs() / self.half_step

    @property
    def below_half_step(self) -> float:
        """Share of the weights whose update is smaller than its half step (their code cannot move)."""
        return float((self.delta.abs() < self.half_step).float().mean())

    @property
    def kept(self) -> float:
        """How much of the update survives along its own direction: <applied, delta> / <delta, delta>."""
        return float((self.applied * self.delta).sum() / (self.delta * self.delta).sum())

    @property
    def error(self) -> float:
        """||applied - delta|| / ||delta||: 0 when route (c) applies the update exactly, 1 when it drops all of it."""
        return float((self.applied - self.delta).norm() / self.delta.norm())


def rounding(layer, name: str = "", adapter: str = "default") -> Rounding:
    """Re-quantize one LoRA layer's merged weight with qlearn's `quantize_4bit` (the base's format: quant type,
    blocksize, double quantization) and compare what it applies with the update (`Rounding`)."""
    from .. import bnb_interop, codebooks
    from ..quantize import quantize_4bit

    rec = bnb_interop.record_from_layer(layer.get_base_layer())             # its format, read from its state
    with torch.no_grad():
        delta = layer.get_delta_weight(adapter).float()                     # (out, in)
        w = merged_weight(layer, adapter) - delta                           # (out, in), on the 4-bit grid
    fmt = dict(quant_type=rec.quant_type, blocksize=rec.blocksize, double_quant=rec.double_quant,
               dq_rule="bnb_cpu" if w.device.type == "cpu" else None)
    before, after = quantize_4bit(w, **fmt), quantize_4bit(w + delta, **fmt)
    levels = (codebooks.NF4 if rec.quant_type == "nf4" else codebooks.FP4).to(w.device)
    ordered, order = levels.sort()                                        # FP4's table is not in value order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=w.device)
    pos = rank[before.codes.long()]                                       # (out, in) place of each code in value order
    top = len(levels) - 1
    up = torch.where(pos < top, ordered[(pos + 1).clamp(max=top)] - ordered[pos], torch.inf)
    down = torch.where(pos > 0, ordered[pos] - ordered[(pos - 1).clamp(min=0)], torch.inf)
    flat, bs = w.reshape(-1).abs(), rec.blocksize
    blocks = F.pad(flat, (0, -flat.numel() % bs)).reshape(-1, bs).amax(1)          # each block's absmax
    absmax = blocks.repeat_interleave(bs)[:flat.numel()].reshape(w.shape)
    half = torch.where(delta >= 0, up, down) * absmax / 2
    changed = float((after.codes != before.codes).float().mean())
    return Rounding(name, delta, after.dequantize().float() - w, half, changed)
