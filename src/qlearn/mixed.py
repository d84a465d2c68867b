"""Mixed precision: one format per linear layer, chosen to minimise summed sensitivity under a byte budget.

The menu (``PLAN_FORMATS``): NF4 and FP4 in blocks of 32-256, with and without double quantization,
LLM.int8 row-wise weights, and bf16; each costs its exact bits per weight from
``qlearn.memory.bits_per_param`` (scales included; double quant leaves out the one float32 offset per
tensor, 32 bits in 110,592 or more weights here). A plan's bits per weight is over the linear layers:
sum(bits x weights) / sum(weights). Worked number: every layer of the embedded model in nf4+dq/64
is 4.126953125 bits a weight; nf4+dq/256 everywhere is 4.0317.

The solver (``solve``) minimises sum over layers of cost[layer, format] subject to the budget:
a Lagrange multiplier lambda prices a bit; for a given lambda every layer picks its own cheapest
cost + lambda x bits, and bisection finds the smallest lambda whose plan fits; the bytes left over
go greedily to the upgrade with the most cost saved per bit. Costs are anything additive, e.g. the
predicted KL of ``qlearn.sensitivity.sensitivities``. Baselines: ``uniform``, ``shuffled`` (the same
formats given to random layers of the same shape: same bytes exactly) and ``llama_rule``
(attention V and MLP down projections one step up a ladder, as llama.cpp's Q4_K_M).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from ._checks import check_int
from .calibration import Calibration, calibration_ids
from .fakequant import parse_format
from .formats import FORMATS, names
from .memory import bits_per_param

__all__ = ["PLAN_BLOCKSIZES", "PLAN_FORMATS", "LADDER", "format_bits", "CalibrationDraw", "Plan", "Tables", "tables",
           "make_plan", "solve", "uniform", "shuffled", "llama_rule"]

PLAN_BLOCKSIZES = (32, 64, 128, 256)
_BLOCKED = sorted((n for n in names("plan") if FORMATS[n].blocksize),   # each 4-bit type, its "+dq" variant first
                  key=lambda n: (list(FORMATS).index(n.partition("+")[0]), "+dq" not in n))
# nf4+dq/32 .. nf4/256, fp4+dq/32 .. fp4/256, then the unblocked ones by bits: int8, bf16
PLAN_FORMATS = tuple(f"{n}/{b}" for n in _BLOCKED for b in PLAN_BLOCKSIZES) \
    + tuple(sorted((n for n in names("plan") if not FORMATS[n].blocksize), key=lambda n: FORMATS[n].bits))
# one step = one place up: nf4+dq from coarse to fine blocks, then int8, bf16
LADDER = tuple(f"nf4+dq/{b}" for b in reversed(PLAN_BLOCKSIZES)) + PLAN_FORMATS[-2:]


def format_bits(fmt: str, in_features: int) -> float:
    """Bits per weight of a format name, from ``qlearn.memory.bits_per_param``.

    >>> format_bits("nf4+dq/64", 576), format_bits("int8", 576), format_bits("fp4/32", 576)
    (4.126953125, 8.055555555555555, 5.0)
    """
    kind, blocksize = parse_format(fmt)
    if "mode" not in FORMATS[kind].uses:
        raise ValueError(f"format {fmt!r} is not a bitsandbytes mode; bits come from its record's bits_per_param")
    return bits_per_param(kind, blocksize or 64, in_features=in_features)


@dataclass(frozen=True)
class CalibrationDraw(Calibration):
    """``Calibration`` settings on another stretch of the calibration text: draw ``draw`` takes the
    ``draw``-th run of n_seqs x seq_len tokens (draw 0 is ``Calibration``'s own ids; draws never overlap), so
    a plan can be re-solved on several draws and its result given with its spread. The "sensitivity" text
    has 5,485 SmolLM2 tokens: 21 draws of 2 x 128, 5 of 4 x 256. (A field of ``Calibration`` would be the
    natural home; `sensitivities` only calls ``.ids(tok)`` and keys its cache on the ids.)

    >>> def chars(text, add_special_tokens, return_tensors):   # a stand-in tokenizer: one id per character
    ...     return {"input_ids": torch.tensor([[ord(c) for c in text]])}
    >>> CalibrationDraw(1, 4, 1, draw=1).ids(chars).tolist()   # "Heap queues": characters 4-7
    [[32, 113, 117, 101]]
    >>> torch.equal(CalibrationDraw(2, 4, 1).ids(chars), Calibration(2, 4, 1).ids(chars))   # draw 0
    True
    >>> CalibrationDraw(draw=-1)
    Traceback (most recent call last):
    ValueError: CalibrationDraw.draw must be an int >= 0; got -1
    """

    draw: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_int(self.draw, "CalibrationDraw.draw", minimum=0)

    def ids(self, tok) -> torch.Tensor:
        """int64 (n_seqs, seq_len): tokens [draw * n, (draw + 1) * n) of the "sensitivity" text (n = n_seqs x
        seq_len)."""
        n = self.n_seqs * self.seq_len
        return calibration_ids(tok, "sensitivity", n_tokens=n * (self.draw + 1), window=self.seq_len)[
            self.draw * self.n_seqs:]


@dataclass(frozen=True)
class Tables:
    """cost (layers, formats) float64, bits (layers, formats) float64 (total bits of that layer in that
    format), numel (layers,) float64; with the layer and format names."""

    layers: tuple
    formats: tuple
    cost: torch.Tensor
    bits: torch.Tensor
    numel: torch.Tensor


def tables(sens, formats=PLAN_FORMATS) -> Tables:
    """Cost and bit tables from a sensitivity result (``.layers``, ``.kl[layer][fmt]``, ``.numel``,
    ``.in_features``): the formats that are in both ``formats`` and the result."""
    formats = tuple(f for f in formats if f in sens.formats)
    cost = torch.tensor([[sens.kl[n][f] for f in formats] for n in sens.layers], dtype=torch.float64)
    numel = torch.tensor([sens.numel[n] for n in sens.layers], dtype=torch.float64)
    per_weight = torch.tensor([[format_bits(f, sens.in_features[n]) for f in formats] for n in sens.layers],
                              dtype=torch.float64)
    return Tables(tuple(sens.layers), formats, cost, per_weight * numel[:, None], numel)


@dataclass(frozen=True)
class Plan:
    """One format per layer; bits_per_weight over the linear layers; cost = summed predicted cost."""

    name: str
    layers: tuple
    formats: tuple
    bits_per_weight: float
    cost: float

    def as_dict(self) -> dict[str, str]:
        """{layer: format}, what ``qlearn.fakequant.fake_quantize`` takes."""
        return dict(zip(self.layers, self.formats, strict=True))

    def counts(self) -> dict[str, int]:
        """How many layers take each format."""
        return dict(Counter(self.formats).most_common())


def make_plan(t: Tables, index: torch.Tensor, name: str) -> Plan:
    """The plan of a format index (layers,) int64 into ``t.formats``."""
    rows = torch.arange(len(t.layers))
    bits = float(t.bits[rows, index].sum() / t.numel.sum())
    return Plan(name, t.layers, tuple(t.formats[i] for i in index.tolist()), bits, float(t.cost[rows, index].sum()))


def _budget(t: Tables, budget: float) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise TypeError(f"budget must be a number of bits per weight; got {budget!r}")
    least = float(t.bits.amin(dim=1).sum() / t.numel.sum())
    if budget < least:
        raise ValueError(f"budget {budget} bits/weight is below the cheapest plan ({least:.4f}) of these formats")
    return budget * float(t.numel.sum())


def solve(t: Tables, budget: float, name: str = "plan") -> Plan:
    """The plan of least summed cost with at most ``budget`` bits per weight (Lagrangian + greedy fill).

    >>> t = Tables(("a", "b"), ("4bit", "8bit"), torch.tensor([[3., 1.], [2., 1.9]], dtype=torch.float64),
    ...            torch.tensor([[40., 80.], [40., 80.]], dtype=torch.float64), torch.tensor([10., 10.]))
    >>> solve(t, 6.0).formats        # 6 bits a weight on average: one layer gets 8 bits, the one it helps most
    ('8bit', '4bit')
    """
    total = _budget(t, budget)
    def fits(lam):
        return float(t.bits.gather(1, _pick(t, lam)[:, None]).sum()) <= total

    lo, hi = 0.0, 1e-12
    while not fits(hi):            # a price per bit high enough that the plan fits
        lo, hi = hi, hi * 4
    for _ in range(60):            # bisection: the lowest such price (relative precision 2^-60)
        lam = (lo + hi) / 2
        lo, hi = (lo, lam) if fits(lam) else (lam, hi)
    index = _pick(t, hi)
    rows = torch.arange(len(t.layers))
    while True:                                       # greedy fill: best cost saved per extra bit that fits
        left = total - float(t.bits[rows, index].sum())
        d_bits = t.bits - t.bits[rows, index][:, None]
        d_cost = t.cost - t.cost[rows, index][:, None]
        gain = torch.where((d_bits > 0) & (d_bits <= left) & (d_cost < 0), d_cost / d_bits, torch.inf)
        best = int(gain.argmin())
        if not math.isfinite(float(gain.view(-1)[best])):
            return make_plan(t, index, name)
        index[best // gain.shape[1]] = best % gain.shape[1]


def _pick(t: Tables, lam: float) -> torch.Tensor:
    """Every layer's format minimising cost + lam x bits; ties to fewer bits. (layers,) int64."""
    score = t.cost + lam * t.bits
    best = score.amin(dim=1, keepdim=True)   # (amin: .min(dim) took 28 ms here on 2 threads, amin 0.01 ms)
    return torch.where(score <= best, -t.bits, -torch.inf).argmax(dim=1)


def uniform(t: Tables, fmt: str) -> Plan:
    """Every layer in ``fmt``."""
    if fmt not in t.formats:
        raise ValueError(f"format {fmt!r} is not in the tables' formats: {', '.join(t.formats)}")
    return make_plan(t, torch.full((len(t.layers),), t.formats.index(fmt)), fmt)


def shuffled(t: Tables, plan: Plan, seed: int = 0) -> Plan:
    """``plan``'s formats handed to random layers of the same size (a permutation within each size):
    the same format counts and exactly the same bits, only the choice of layers is random."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.tensor([t.formats.index(f) for f in plan.formats])
    out = index.clone()
    for size in t.numel.unique():
        where = torch.nonzero(t.numel == size).view(-1)
        out[where] = index[where[torch.randperm(where.numel(), generator=gen)]]
    return make_plan(t, out, f"random (seed {seed})")


def _is_special(name: str) -> bool:
    return name.endswith(("v_proj", "down_proj"))


def llama_rule(t: Tables, budget: float, ladder=LADDER) -> Plan:
    """v_proj and down_proj one ``ladder`` step above the other layers, at the highest steps that fit
    the budget; the bits left over move v_proj/down_proj a second step up, last block first."""
    total = _budget(t, budget)
    steps = [t.formats.index(f) for f in ladder if f in t.formats]
    special = torch.tensor([_is_special(n) for n in t.layers])
    rows = torch.arange(len(t.layers))
    best = None
    for k in range(len(steps) - 1):
        index = torch.where(special, steps[k + 1], steps[k])
        if float(t.bits[rows, index].sum()) <= total:
            best = (k, index)
    if best is None:
        raise ValueError(f"budget {budget} is below the rule's cheapest plan ({ladder[1]} for v/down, {ladder[0]})")
    k, index = best
    for i in reversed(torch.nonzero(special).view(-1).tolist()):
        if k + 2 < len(steps):
            trial = index.clone()
            trial[i] = steps[k + 2]
            if float(t.bits[rows, trial].sum()) <= total:
                index = trial
    return make_plan(t, index, "llama.cpp-style rule")
