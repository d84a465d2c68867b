"""Weight sources: the tensors the visualizers look at.

Three kinds: seeded synthetic samples shaped like LLM weights (`synthetic`), one named layer of a
loaded model (`layer_weight`), and every linear layer of a model (`linear_layers`). `layer_inputs`
captures what a layer receives on a prompt (`qlearn.capture.first_call`), for the outlier view.
Weights come back as float32 tensors on the model's device; a bitsandbytes layer (LLM.int8 or
4-bit) is dequantized first (4-bit: code * absmax in float32, before or after bitsandbytes' CPU
repack), so a quantized model can be looked at like any other.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from . import bnb_interop
from ._checks import check_int
from .capture import first_call, layer_input

__all__ = [
    "SYNTHETIC_KINDS", "synthetic", "linear_layer_names", "layer_weight", "linear_layers",
    "layer_inputs", "shifted",
]

SYNTHETIC_KINDS = ("normal", "laplace", "student_t", "outliers", "skewed")


def synthetic(kind: str = "normal", n: int = 65536, *, seed: int = 0, std: float = 0.02,
              shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A seeded float32 sample shaped like LLM weights, scaled so its standard deviation is ``std``.

    kind: "normal"; "laplace" (heavier tails); "student_t" (3 degrees of freedom, heavier still);
    "outliers" (normal plus n/2048 values, at least 4, at +-20 std of the rest, like the rare
    huge weights of big models); "skewed" (GELU of a normal, shifted and scaled: a post-activation-like tensor
    with a long positive tail and a short negative one, mean not 0).
    ``shape`` (optional) reshapes the n values, e.g. (576, 1536). Worked number: "outliers" with
    n=65536 puts 32 values at +-0.4 among weights of std 0.02.

    >>> x = synthetic("laplace", 4096, seed=1); (x.shape, x.dtype)
    (torch.Size([4096]), torch.float32)
    """
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"kind must be one of {SYNTHETIC_KINDS}, got {kind!r}")
    check_int(n, "n", minimum=1)
    if shape is not None and math.prod(shape) != n:
        raise ValueError(f"shape {tuple(shape)} holds {math.prod(shape)} values, not n={n}")
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "laplace":
        x = rng.laplace(0.0, 1 / math.sqrt(2), n)            # variance 2 b^2 = 1
    elif kind == "student_t":
        x = rng.standard_t(3, n) / math.sqrt(3.0)            # variance df / (df - 2) = 3
    elif kind == "outliers":
        x = rng.standard_normal(n)
        x = x / x.std() if n > 1 else x
        idx = rng.choice(n, size=min(n, max(4, n // 2048)), replace=False)
        x[idx] = 20.0 * rng.choice([-1.0, 1.0], size=idx.size)
    else:  # skewed: GELU(z), z ~ N(0.5, 1): min about -0.17, long right tail
        z = rng.standard_normal(n) + 0.5
        x = torch.nn.functional.gelu(torch.from_numpy(z)).numpy()
    sd = x.std()
    if kind != "outliers" and sd > 0:   # unit std; "skewed" keeps its mean (0.77 std): the lesson
        x = x / sd
    out = torch.from_numpy(np.asarray(x * std, dtype=np.float32))
    return out.reshape(shape) if shape is not None else out


def shifted(x: torch.Tensor, by_std: float) -> torch.Tensor:
    """`x` moved by `by_std` of its own standard deviations: x + by_std * std(x), same dtype.
    A shifted tensor is where zero-point beats absmax (absmax wastes the levels on the empty side).

    >>> shifted(torch.tensor([-1.0, 1.0]), 2.0).tolist()
    [1.8284270763397217, 3.8284270763397217]
    """
    if by_std == 0:
        return x
    return x + by_std * x.float().std().to(x.dtype)


def linear_layer_names(model: nn.Module) -> list[str]:
    """Names of every linear layer of `model` (nn.Linear and bitsandbytes' Linear4bit/Linear8bitLt,
    which subclass it), in module order; e.g. ``"model.layers.0.mlp.down_proj"``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight of the linear layer `name` of `model` as a float32 (out_features, in_features)
    tensor, dequantized if it is a bitsandbytes layer.

    A layer name that does not exist raises ValueError listing a few that do.
    Worked number: SmolLM2-135M's ``model.layers.0.mlp.down_proj`` is (576, 1536).

    >>> layer_weight(nn.Sequential(nn.Linear(4, 3)), "0").shape
    torch.Size([3, 4])
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    modules = dict(model.named_modules()) if isinstance(model, nn.Module) else None
    if modules is None:
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    module = modules.get(name)
    if not isinstance(module, nn.Linear):
        names = linear_layer_names(model)
        what = "is not a linear layer" if module is not None else "does not exist"
        hint = ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")
        raise ValueError(f"layer {name!r} {what} in this model; linear layers are: {hint or 'none'}")
    return _dequantized(module)


def linear_layers(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, weight)`` for every linear layer, weight float32 (dequantized when quantized).
    One layer's float32 copy exists at a time, so it walks a big model in little memory.

    >>> [n for n, _ in linear_layers(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)))]
    ['0', '2']
    """
    for name in linear_layer_names(model):
        yield name, layer_weight(model, name)


def _dequantized(module: nn.Linear) -> torch.Tensor:
    """float32 weight of a linear layer; a bitsandbytes layer's record decoded by qlearn (4-bit: code *
    absmax in float32 from either layout; int8: codes * row absmax / 127)."""
    record = bnb_interop.record_from_layer(module)
    return record.dequantize(torch.float32) if record is not None else module.weight.detach().float()


def layer_inputs(model: nn.Module, tokenizer, name: str, prompt: str,
                 max_tokens: int = 256) -> torch.Tensor:
    """What linear layer `name` receives when `model` reads `prompt`: a float32
    (tokens, in_features) tensor captured with a forward hook (no generation, one forward pass).

    The prompt is cut to `max_tokens` tokens. Worked number: for SmolLM2-135M,
    ``model.layers.0.mlp.down_proj`` on a 9-token prompt gives a (9, 1536) tensor.
    """
    layer_weight(model, name)   # validates the name with a clear message
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    module = dict(model.named_modules())[name]
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"][:, :max_tokens].to(device)
    with torch.no_grad():   # the forward stops at the layer: the layers after it are not needed
        args, kwargs = first_call(module, lambda: model(input_ids=ids))
    x = layer_input(args, kwargs, "input")
    return x.detach().float().reshape(-1, x.shape[-1])   # (tokens, in)
