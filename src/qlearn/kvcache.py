"""The KV cache, quantized: its bytes, and what quantizing it does to the next tokens' perplexity.

A decoder keeps every past token's keys and values, per layer, shape (batch, kv_heads, tokens, head_dim),
and reads all of them at each new token. KIVI (Liu et al. 2024, arXiv 2402.02750) quantizes them
asymmetrically (a scale and a minimum per group): the keys **per channel** (a group is `group` consecutive
tokens of one channel, because a few key channels are large for every token) and the values **per token**
(a group is `group` consecutive channels of one token); the newest tokens (the residual, less than a group
or more) stay as they were. `fake_quantize_cache` does that to a filled ``DynamicCache`` in place with
qlearn's own zero-point quantizer (`qlearn.intquant.zeropoint_quantize`, "float" domain: x = q * scale +
minimum) and measures the bytes the codes, scales and minimums take; `quantized_cache` builds transformers'
own ``QuantizedCache`` (backends "hqq", "quanto", "fp8": `backends`) from the same keys and values, and
`cache_nbytes` measures what any cache object really holds.

Worked number: 4 bits in groups of 32 with a float32 scale and minimum per group store 4 + 64 / 32 = 6 bits
a value, so a 16-bit cache shrinks 16 / 6 = 2.67x; 2 bits: 16 / 4 = 4x.
transformers is imported inside functions only (``import qlearn`` stays fast).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import math
from dataclasses import dataclass

import torch

from ._checks import check_bits, check_int
from .intquant import ZeroPointQuantized, zeropoint_quantize

__all__ = ["QuantizedKV", "CacheQuantization", "quantize_keys", "quantize_values", "cache_layers",
           "fake_quantize_cache", "cache_nbytes", "backends", "quantized_cache", "prefill", "continuation_nll"]


@dataclass(frozen=True)
class QuantizedKV:
    """One layer's keys or values, quantized: `record` holds the groups as rows (groups, group).

    `kind` is "keys" (a group: `group` consecutive tokens of one channel) or "values" (`group` consecutive
    channels of one token); `shape` is the input's (batch, heads, tokens, head_dim)."""

    record: ZeroPointQuantized
    shape: torch.Size
    dtype: torch.dtype
    kind: str
    group: int

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The decoded keys or values in the input's shape (batch, heads, tokens, head_dim) and dtype."""
        b, h, t, d = self.shape
        rows = self.record.dequantize(torch.float32)                      # (groups, group)
        if self.kind == "keys":
            x = rows.reshape(b, h, t // self.group, d, self.group).transpose(-1, -2).reshape(b, h, t, d)
        else:
            x = rows.reshape(b, h, t, d)
        return x.to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        """Packed codes (`bits` bits each) + a float32 scale and a float32 minimum per group."""
        return self.record.nbytes

    @property
    def bits_per_value(self) -> float:
        """bits + 64 / group: 6.0 for 4 bits in groups of 32."""
        return 8 * self.nbytes / self.shape.numel()


def _check_kv(x: torch.Tensor, name: str, group: int, dim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor (batch, heads, tokens, head_dim); got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    check_int(group, "group", minimum=1)
    if x.shape[dim] % group:
        what = "tokens" if dim == 2 else "head_dim"
        raise ValueError(f"{name} has {x.shape[dim]} {what}, not a multiple of group={group}")
    return x


def quantize_keys(k: torch.Tensor, bits: int = 4, group: int = 32) -> QuantizedKV:
    """KIVI's keys: per channel, a scale and a minimum for each run of `group` tokens of one channel.

    k: float (batch, heads, tokens, head_dim), tokens a multiple of `group`. Worked number: keys
    (1, 3, 64, 64) in groups of 32 tokens have 1 * 3 * 2 * 64 = 384 groups.

    >>> quantize_keys(torch.randn(1, 3, 64, 64), bits=4, group=32).record.scale.numel()
    384
    """
    k = _check_kv(k, "k", group, 2)
    check_bits(bits)
    b, h, t, d = k.shape
    rows = k.float().reshape(b, h, t // group, group, d).transpose(-1, -2).reshape(-1, group)
    return QuantizedKV(zeropoint_quantize(rows, bits, axis=0, zero_point_domain="float"), k.shape, k.dtype,
                       "keys", group)


def quantize_values(v: torch.Tensor, bits: int = 4, group: int = 32) -> QuantizedKV:
    """KIVI's values: per token, a scale and a minimum for each run of `group` channels of one token.

    v: float (batch, heads, tokens, head_dim), head_dim a multiple of `group`. Worked number: values
    (1, 3, 64, 64) in groups of 32 channels have 1 * 3 * 64 * 2 = 384 groups, 6 bits a value at 4 bits.

    >>> quantize_values(torch.randn(1, 3, 64, 64), bits=4, group=32).bits_per_value
    6.0
    """
    v = _check_kv(v, "v", group, 3)
    check_bits(bits)
    rows = v.float().reshape(-1, group)
    return QuantizedKV(zeropoint_quantize(rows, bits, axis=0, zero_point_domain="float"), v.shape, v.dtype,
                       "values", group)


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(keys, values)] per layer of a transformers ``DynamicCache``, each (batch, kv_heads, tokens, head_dim)."""
    if hasattr(cache, "layers"):                                          # transformers >= 4.54
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))     # older releases


def _set_layer(cache, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
    if hasattr(cache, "layers"):
        cache.layers[i].keys, cache.layers[i].values = k, v
    else:
        cache.key_cache[i], cache.value_cache[i] = k, v


@dataclass(frozen=True)
class CacheQuantization:
    """What `fake_quantize_cache` did: bytes as held before, bytes stored after, and the error it made."""

    bits: int                 # 16: rounded to bfloat16 only (the 16-bit cache)
    group: int
    tokens: int               # tokens in the cache (per layer)
    quantized_tokens: int     # of those, quantized; the newest `tokens - quantized_tokens` kept as they were
    held_bytes: int           # keys + values as the cache held them (its own dtype)
    bytes_16bit: int          # the same keys + values in a 16-bit dtype: 2 bytes a value
    stored_bytes: int         # codes + scales + minimums of the quantized part + the kept part at 16 bits
    key_rel_error: float      # ||k_hat - k|| / ||k|| over every layer's quantized keys
    value_rel_error: float

    @property
    def ratio_vs_16bit(self) -> float:
        """How many times smaller than a 16-bit cache: 2.67 at 4 bits, groups of 32, no residual."""
        return self.bytes_16bit / self.stored_bytes


def fake_quantize_cache(cache, bits: int = 4, group: int = 32, residual: int = 0) -> CacheQuantization:
    """Quantize a filled ``DynamicCache`` in place the KIVI way and put the decoded values back (its dtype).

    bits: 2..8, or 16 to round to bfloat16 only (what a 16-bit cache holds). residual: the newest tokens kept
    as they are (at least; the quantized part is a whole number of groups of `group` tokens). The attention
    of the tokens that follow then reads the decoded keys and values. Worked number: 96 tokens, group 32,
    residual 40 -> the first 32 tokens quantized (6 bits a value), 64 kept (16): 16 / (6/3 + 16 * 2/3) = 1.263x.

    >>> layer = type("Layer", (), {})()
    >>> layer.keys, layer.values = torch.randn(1, 2, 96, 64), torch.randn(1, 2, 96, 64)
    >>> cache = type("Cache", (), {"layers": [layer]})()
    >>> r = fake_quantize_cache(cache, bits=4, group=32, residual=40)
    >>> r.quantized_tokens, r.tokens, round(r.ratio_vs_16bit, 3)
    (32, 96, 1.263)
    """
    check_int(residual, "residual", minimum=0)
    check_int(group, "group", minimum=1)
    if bits != 16:
        check_bits(bits)
    layers = cache_layers(cache)
    if not layers or layers[0][0].numel() == 0:
        raise ValueError("the cache is empty: run the model on a context with use_cache=True first (see prefill)")
    tokens = layers[0][0].shape[2]
    n_q = max(tokens - residual, 0) // group * group
    held = stored = 0
    err = {"keys": [0.0, 0.0], "values": [0.0, 0.0]}
    for i, (k, v) in enumerate(layers):
        held += k.numel() * k.element_size() + v.numel() * v.element_size()
        new = []
        for x, kind, fn in ((k, "keys", quantize_keys), (v, "values", quantize_values)):
            head = x[:, :, :n_q]
            if bits == 16:
                hat = head.to(torch.bfloat16).to(x.dtype)
                stored += 2 * head.numel()
            elif n_q:
                q = fn(head, bits, group)
                hat, stored = q.dequantize(x.dtype), stored + q.nbytes
            else:
                hat = head
            stored += 2 * (x.numel() - head.numel())
            err[kind][0] += float((hat.float() - head.float()).pow(2).sum())
            err[kind][1] += float(head.float().pow(2).sum())
            new.append(torch.cat([hat, x[:, :, n_q:]], dim=2))
        _set_layer(cache, i, *new)
    n = sum(k.numel() + v.numel() for k, v in layers)
    rel = {kind: math.sqrt(e / d) if d else 0.0 for kind, (e, d) in err.items()}
    return CacheQuantization(bits, group, tokens, n_q, held, 2 * n, stored, rel["keys"], rel["values"])


def cache_nbytes(cache) -> int:
    """Bytes of every tensor a cache object holds (its layers' attributes, tuples, lists, dicts), each storage
    once: a ``DynamicCache`` of 30 layers x (1, 3, 256, 64) float32 keys and values holds 11,796,480.

    >>> cache_nbytes(type("C", (), {"layers": [type("L", (), {})()]})())
    0
    """
    seen, total = set(), 0

    def walk(obj):
        nonlocal total
        if isinstance(obj, torch.Tensor):
            key = (obj.untyped_storage().data_ptr(), obj.device)
            if key not in seen and obj.numel():
                seen.add(key)
                total += obj.untyped_storage().nbytes()
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                walk(o)
        elif isinstance(obj, dict):
            for o in obj.values():
                walk(o)

    layers = getattr(cache, "layers", None)
    for layer in (layers if layers is not None else [cache]):
        walk(list(vars(layer).values()))
    return total


def backends() -> dict[str, bool]:
    """Which of transformers' ``QuantizedCache`` backends this Python can run: {"hqq", "quanto", "fp8"}.

    hqq needs the ``hqq`` package, quanto ``optimum-quanto``; fp8 needs only a transformers that has it.
    """
    def found(name):
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            return False

    try:
        from transformers import cache_utils
    except ImportError:
        return {"hqq": False, "quanto": False, "fp8": False}
    has_cache = hasattr(cache_utils, "QuantizedCache")
    return {"hqq": has_cache and found("hqq"), "quanto": has_cache and found("optimum.quanto"),
            "fp8": has_cache and hasattr(cache_utils, "Fp8QuantizedLayer")}


def quantized_cache(config, cache, backend: str = "hqq", **options):
    """transformers' ``QuantizedCache(backend, config, **options)`` given the keys and values of a filled
    ``DynamicCache`` (a copy: `cache` is unchanged), as if it had been passed to the model from the start.

    A prefill through a QuantizedCache attends with the unquantized keys and values and stores them
    quantized, so replaying each layer's ``update`` stores exactly what that prefill would. options: e.g.
    nbits=4, q_group_size=64, residual_length=0 (hqq / quanto; fp8 takes none). ImportError naming the
    package when the backend cannot run here (`backends`).
    """
    available = backends()
    if backend not in available:
        raise ValueError(f"backend must be one of {', '.join(map(repr, available))}; got {backend!r}")
    if not available[backend]:
        need = {"hqq": "pip install hqq", "quanto": "pip install optimum-quanto",
                "fp8": "a transformers with the fp8 cache backend"}[backend]
        raise ImportError(f"the {backend!r} KV-cache backend cannot run here: {need}")
    from transformers import QuantizedCache

    out = QuantizedCache(backend, config, **options)
    for i, (k, v) in enumerate(cache_layers(cache)):
        out.update(k.clone(), v.clone(), i)
    return out


def _cache_kwarg(model) -> str:
    """The forward's name for the cache: "cache" in recent transformers (5.25 has it), else "past_key_values"."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prefill(model, ids: torch.Tensor):
    """Run `model` on ids (1, tokens) with a fresh ``DynamicCache``; return (cache, last logits (1, vocab))."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:   # releases whose DynamicCache takes no config
        cache = DynamicCache()
    with torch.inference_mode():
        out = model(ids, use_cache=True, **{_cache_kwarg(model): cache})
    return cache, out.logits[:, -1]


def continuation_nll(model, cache, ids: torch.Tensor, copy_cache: bool = True) -> float:
    """Mean negative log-likelihood (nats) of ids[:, 1:] when `model` reads ids (1, n) after the tokens in
    `cache` (copied first unless copy_cache=False: the model appends to it). exp() of it is a perplexity."""
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise ValueError(f"ids must be (1, n) with n >= 2 tokens to score; got {tuple(ids.shape)}")
    cache = copy.deepcopy(cache) if copy_cache else cache
    with torch.inference_mode():
        logits = model(ids, use_cache=True, **{_cache_kwarg(model): cache}).logits[0, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:].to(logits.device)))
