"""Where the time of one forward goes: dequantize, matmul and everything else, per layer type.

Measured, not modelled: every linear layer (``nn.Linear``, bitsandbytes' ``Linear4bit`` / ``Linear8bitLt``,
the fused and reference layers of ``qlearn.kernels.fused``) is timed by a clock read before and after its
``forward`` (a wrapper put on the instance for one forward, then removed; not module hooks, which cost
more: ``hook_overhead``). Its "dequantize" part is measured by REPLAYING the decode that layer runs on every forward,
on the layer's own stored state, right after the forward:

- bitsandbytes 4-bit, flat layout: ``bitsandbytes.functional.dequantize_4bit(weight, quant_state)`` cast
  to the input's dtype (what ``matmul_4bit`` runs before ``F.linear``);
- bitsandbytes int8 where torch's CPU capability is not AVX-512: ``weight.float()`` (the default backend's
  int8 matmul multiplies float32 copies of the int8 values);
- ``DequantInt4Linear``: its ``Int4Weights.dequantize``; ``Bnb4bitLinear``: its ``dequantize_4bit``.

On a CUDA device a layer's decode is replayed only if that layer's forward DID decode, as measured: one
extra forward (after the timed ones) reads the allocator's running count of bytes allocated
(``torch.cuda.memory_stats``, "allocated_bytes.all.allocated") before and after each layer, and a layer that
allocated at least its weight's size in the compute dtype beyond its output wrote a decoded copy
(``device.wrote_weight``). bitsandbytes' CUDA 4-bit forward is one op, ``bitsandbytes::gemm_4bit``: its fused kernel
(always at up to 4 input rows) allocates only the output, its dequantize + ``F.linear`` fallback (larger
batches, per GPU) the whole 16-bit weight. torch's CUDA int4 kernel and bitsandbytes' CUDA int8 matmul
write no 16-bit weight. ``TimeSplit.decoded_layers`` names the layers whose decode was replayed.

"matmul" = the layer's clocked time minus that replay (the replay is a second run of the same code on
the same data, so this is an estimate, and says so). Fused layers (``FusedInt4Linear``, bitsandbytes'
AVX512-BF16 repacked layout, int8 via ``torch._int_mm``) have no separate decode: all of it is matmul.
"other" = the clocked forward minus all linear layers (attention scores, norms, embedding, rotary,
activations, Python). The parts add up to the clocked forward exactly; ``gap`` compares that with a
forward WITHOUT clocks, timed separately: that difference is what the measuring itself costs (plus
the machine's noise between the two).
What a bitsandbytes layer decodes is asked of `qlearn.bnb_interop.dequantizer` (bitsandbytes is imported only
when a 4-bit layer is found). Timed on one torch thread by default (`qlearn._threads.threads`): on a shared
machine a second intra-op thread waits on the first whenever either is descheduled, and the timings scatter.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .. import bnb_interop
from .._checks import check_int
from .._threads import threads
from .bnb4bit import Bnb4bitLinear
from .device import elapsed, module_device, synchronize, wrote_weight
from .fused import DequantInt4Linear, FusedInt4Linear, FusedInt8Linear

__all__ = ["LAYER_TYPES", "PARTS", "TimeSplit", "layer_type", "dequantize_replay", "time_forward", "time_split",
           "hook_overhead", "decode_probe"]

LAYER_TYPES = ("attention", "mlp", "lm_head")
PARTS = ("dequantize", "matmul")


def layer_type(name: str) -> str | None:
    """'attention' (q/k/v/o projections), 'mlp' (gate/up/down), 'lm_head', or None for other modules.

    >>> layer_type("model.layers.3.self_attn.k_proj"), layer_type("model.layers.3.mlp.down_proj"), layer_type("lm_head")
    ('attention', 'mlp', 'lm_head')
    """
    if name == "lm_head" or name.endswith(".lm_head"):
        return "lm_head"
    if ".self_attn." in f".{name}." or ".attention." in f".{name}.":
        return "attention"
    if ".mlp." in f".{name}.":
        return "mlp"
    return None


def _is_linear(module) -> bool:
    return isinstance(module, (torch.nn.Linear, FusedInt4Linear, DequantInt4Linear, FusedInt8Linear, Bnb4bitLinear))


def dequantize_replay(module, dtype: torch.dtype):
    """A zero-argument callable that re-runs the decode ``module`` does on each forward, or None if it has none.

    >>> from qlearn.kernels.fused import quantize_int4
    >>> dequantize_replay(DequantInt4Linear(quantize_int4(torch.randn(32, 64), 32)), torch.float32)().shape
    torch.Size([32, 64])
    >>> dequantize_replay(torch.nn.Linear(4, 4), torch.float32) is None
    True
    """
    if isinstance(module, DequantInt4Linear):
        return lambda: module.weights().dequantize(dtype)
    if isinstance(module, Bnb4bitLinear):
        return lambda: module.dequantize(dtype)
    return bnb_interop.dequantizer(getattr(module, "weight", None), dtype)   # bitsandbytes layers, else None


@dataclass(frozen=True)
class TimeSplit:
    """One forward of ``batch`` x ``seq`` tokens, split into parts (seconds).

    parts: (layer type, part) -> seconds for part in PARTS, plus ("other", "other").
    forward_s: fastest forward WITHOUT clocks; hooked_s: the fastest forward with every linear layer clocked,
    the parts come from it (fastest of ``repeats``, alternating plain and clocked: on a shared machine the
    least disturbed run).
    decoded_bytes: bytes the replayed decodes write (each read back by the matmul). decoded_layers: the
    names of the layers whose decode was replayed; device: where the model ran ("cpu", "cuda:0").
    """

    label: str
    batch: int
    seq: int
    forward_s: float
    hooked_s: float
    parts: dict = field(default_factory=dict)
    decoded_bytes: int = 0
    threads: int = 1
    decoded_layers: tuple = ()
    device: str = "cpu"

    @property
    def parts_s(self) -> float:
        return sum(self.parts.values())

    @property
    def gap(self) -> float:
        """|sum of parts - forward without clocks| / forward without clocks."""
        return abs(self.parts_s - self.forward_s) / self.forward_s

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def totals(self) -> dict:
        """part -> seconds summed over layer types: {'dequantize': .., 'matmul': .., 'other': ..}."""
        out = {p: 0.0 for p in (*PARTS, "other")}
        for (_, part), s in self.parts.items():
            out[part] += s
        return out

    def rows(self) -> list[dict]:
        """One dict per (layer type, part) with seconds, ms per token and share of the forward."""
        return [{"label": self.label, "batch": self.batch, "seq": self.seq, "layers": lt, "part": p, "s": s,
                 "ms_per_token": 1e3 * s / self.tokens, "share": s / self.parts_s}
                for (lt, p), s in self.parts.items()]


def _device(model) -> torch.device:
    """Where the model runs: transformers' ``model.device``, else its first parameter's device."""
    return torch.device(getattr(model, "device", None) or module_device(model))


def _inputs(model, batch: int, seq: int) -> torch.Tensor:
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (batch, seq), generator=g).to(_device(model))


def time_forward(model, batch: int = 1, seq: int = 1, repeats: int = 5, n_threads: int | None = 1) -> float:
    """Fastest of ``repeats`` timings of ``model(ids, use_cache=False)`` on ``batch`` x ``seq`` random token ids
    (fixed seed), after one warm-up; the decode step of generation at ``seq=1`` (without the KV cache's reads)."""
    for name, value in (("batch", batch), ("seq", seq), ("repeats", repeats)):
        check_int(value, name, minimum=1)
    ids, device = _inputs(model, batch, seq), _device(model)
    with torch.inference_mode(), threads(n_threads):
        times = [elapsed(lambda: model(ids, use_cache=False), device) for _ in range(repeats + 1)]
    return min(times[1:])


@contextmanager
def _wrapped(layers, wrap):
    """Within the block each layer's ``forward`` is ``wrap(name, module, inner_forward)``; restored after.

    A wrapper on the instance's ``forward`` (put before ``Module.__call__`` finds it, removed after), not
    module hooks: a pre + post hook pair sends every call down ``Module.__call__``'s slow path, which
    costs more than the two clock reads (``hook_overhead`` measures both)."""
    saved = []
    try:
        for name, module in layers:
            inner, own = module.forward, "forward" in module.__dict__
            saved.append((module, inner, own))
            module.forward = wrap(name, module, inner)
        yield
    finally:
        for module, inner, own in saved:
            if own:
                module.forward = inner
            else:
                del module.forward


@contextmanager
def _clocked(layers, spent: dict, device):
    """Within the block, each layer's ``forward`` adds its seconds to ``spent[name]`` (on a CUDA device the
    clock is read after ``synchronize``: the layer's kernels have finished)."""
    clock = time.perf_counter
    sync = (lambda: synchronize(device)) if device.type == "cuda" else None

    def wrap(name, _module, inner):
        def timed(*args, **kwargs):
            if sync:
                sync()
            start = clock()
            out = inner(*args, **kwargs)
            if sync:
                sync()
            spent[name] = spent.get(name, 0.0) + clock() - start
            return out
        return timed

    with _wrapped(layers, wrap):
        yield spent


def _forwards(model, ids, layers, repeats, device):
    """Alternate plain and clocked forwards (after one warm-up of each), so a change in the machine's
    load hits both alike. Returns ([plain s], [(clocked s, {layer name: s})])."""
    def timed():
        return elapsed(lambda: model(ids, use_cache=False), device)

    plain, hooked = [], []
    with torch.inference_mode():
        for i in range(repeats + 1):
            t = timed()
            with _clocked(layers, {}, device) as spent:
                th = timed()
            if i:
                plain.append(t)
                hooked.append((th, dict(spent)))
    return plain, hooked


def hook_overhead(n_calls: int = 2000, repeats: int = 5) -> dict:
    """Seconds one call of a tiny ``nn.Linear(8, 8)`` (batch 1) gains from being timed, per method, fastest of
    ``repeats`` rounds of ``n_calls`` calls each: {"hooks": pre + post forward hooks, "wrapper": ``_clocked``}.
    Times the number of layers, it is what the measuring adds to one forward (the split's ``gap``).

    >>> sorted(hook_overhead(200, 1))
    ['hooks', 'wrapper']
    """
    lin, x = torch.nn.Linear(8, 8), torch.zeros(1, 8)

    def per_call():
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(n_calls):
                lin(x)
            best = min(best, (time.perf_counter() - start) / n_calls)
        return best

    clock, spent = {}, {}
    with torch.inference_mode(), threads(1):
        plain = per_call()
        handles = (lin.register_forward_pre_hook(lambda m, a: clock.__setitem__("x", time.perf_counter())),
                   lin.register_forward_hook(lambda m, a, o: spent.__setitem__(
                       "x", spent.get("x", 0.0) + time.perf_counter() - clock["x"])))
        hooked = per_call()
        for h in handles:
            h.remove()
        with _clocked([("x", lin)], {}, x.device):
            wrapped = per_call()
        plain = min(plain, per_call())
    return {"hooks": max(0.0, hooked - plain), "wrapper": max(0.0, wrapped - plain)}


def _replay_s(fn, repeats, device) -> tuple[float, int]:
    """Fastest seconds of ``fn()`` (synchronized on ``device``) and the bytes it writes."""
    with torch.inference_mode():
        out = fn()
        times = [elapsed(fn, device) for _ in range(repeats)]
    return min(times), out.numel() * out.element_size()


def decode_probe(model, ids: torch.Tensor, layers, dtype: torch.dtype, device=None) -> dict:
    """{layer name: True if its forward wrote a decoded weight} from one forward of ``ids`` on a CUDA device,
    reading the allocator's count of bytes allocated around each layer (``device.wrote_weight``). Run it
    after a warm-up forward: the first matmul on a stream may allocate cuBLAS' workspace."""
    seen = {}

    def allocated() -> int:
        return torch.cuda.memory_stats(device or ids.device).get("allocated_bytes.all.allocated", 0)

    def wrap(name, module, inner):
        def probed(*args, **kwargs):
            before = allocated()
            out = inner(*args, **kwargs)
            seen[name] = wrote_weight(allocated() - before, out.numel() * out.element_size(),
                                      module.in_features * module.out_features, dtype.itemsize)
            return out
        return probed

    with _wrapped(layers, wrap), torch.inference_mode():
        model(ids, use_cache=False)
    return seen


def time_split(model, batch: int = 1, seq: int = 1, repeats: int = 5, label: str = "",
               dtype: torch.dtype | None = None, n_threads: int | None = 1) -> TimeSplit:
    """Split one forward of ``batch`` x ``seq`` tokens into dequantize / matmul per layer type, and other.

    ``dtype``: the compute dtype the decodes are cast to (default: the embedding's dtype, bf16 for every
    qlearn mode but fp32). Batch 1, seq 1 is one generated token; seq 64 a 64-token prompt. Timed on
    ``n_threads`` torch threads (default 1, see `qlearn._threads.threads`; None: as set). On a CUDA device every clock
    read waits for the GPU (``synchronize``) and only the layers that decoded in a probe forward get a
    replayed dequantize (``decode_probe``; module docstring).

    >>> split = time_split(model, batch=1, seq=64, label="nf4")  # doctest: +SKIP
    >>> split.gap < 0.15  # doctest: +SKIP
    True
    """
    for name, value in (("batch", batch), ("seq", seq), ("repeats", repeats)):
        check_int(value, name, minimum=1)
    dtype = dtype or model.get_input_embeddings().weight.dtype
    layers = [(n, m) for n, m in model.named_modules() if _is_linear(m) and layer_type(n)]
    if not layers:
        raise ValueError("model has no linear layers named like attention / mlp / lm_head projections")
    ids, device = _inputs(model, batch, seq), _device(model)
    with threads(n_threads):
        plain, runs = _forwards(model, ids, layers, repeats, device)
        ran = decode_probe(model, ids, layers, dtype, device) if device.type == "cuda" else None   # what ran
        replays = [(name, m, dequantize_replay(m, dtype) if ran is None or ran.get(name) else None)
                   for name, m in layers]
        measured = {name: _replay_s(fn, max(1, repeats // 2), device) for name, _, fn in replays if fn is not None}
    forward_s = min(plain)
    hooked_s, spent = min(runs, key=lambda r: r[0])   # the fastest hooked run, whole (least disturbed)
    parts = {(lt, p): 0.0 for lt in LAYER_TYPES for p in PARTS}
    decoded = 0
    for name, _, _ in replays:
        dq, nbytes = measured.get(name, (0.0, 0))
        dq = min(dq, spent.get(name, 0.0))
        decoded += 2 * nbytes                      # written once, read back once by the matmul
        parts[(layer_type(name), "dequantize")] += dq
        parts[(layer_type(name), "matmul")] += spent.get(name, 0.0) - dq
    parts = {k: v for k, v in parts.items() if v > 0 or k[0] != "lm_head"}
    parts[("other", "other")] = max(0.0, hooked_s - sum(spent.values()))
    return TimeSplit(label, batch, seq, forward_s, hooked_s, parts, decoded, n_threads or torch.get_num_threads(),
                     tuple(measured), str(device))
