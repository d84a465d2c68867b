"""Outlier columns: the input features LLM.int8 keeps in 16-bit.

`intquant.int8_vectorwise(x, threshold)` marks a column an outlier when any |x| in it reaches the
threshold, i.e. when its max |x| over the rows does. `column_absmax` gives that max per column,
`share_above` the fraction of columns at or above each threshold (what stays 16-bit).
`inputs_of` captures what several linear layers receive in ONE forward pass (`sources.layer_inputs`
takes one layer per pass).
"""

from __future__ import annotations

import torch

from .capture import input_hooks, layer_input

__all__ = ["column_absmax", "share_above", "inputs_of"]


def column_absmax(x: torch.Tensor) -> torch.Tensor:
    """max |x| per column over all rows, float32 (cols,) on x's device; x is (rows, cols), more
    leading dims are flattened into rows as in `int8_vectorwise`.
    Worked number: [[0.5, 8.0, -1.0], [-2.0, 1.0, 0.0]] -> [2.0, 8.0, 1.0].

    >>> column_absmax(torch.tensor([[0.5, 8.0, -1.0], [-2.0, 1.0, 0.0]])).tolist()
    [2.0, 8.0, 1.0]
    """
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dimensions (rows, cols), got shape {tuple(x.shape)}")
    return x.detach().reshape(-1, x.shape[-1]).abs().amax(dim=0).float()


def share_above(col_absmax: torch.Tensor, thresholds) -> torch.Tensor:
    """For each threshold t, the fraction of columns with col_absmax >= t, float64 (len(thresholds),)
    on the CPU: the share of input columns LLM.int8 keeps in 16-bit at that threshold.
    Worked number: columns [2, 8, 1] at thresholds [1, 6, 10] -> [1.0, 0.333, 0.0].

    >>> [round(v, 3) for v in share_above(torch.tensor([2., 8., 1.]), [1.0, 6.0, 10.0]).tolist()]
    [1.0, 0.333, 0.0]
    """
    cols = col_absmax.detach().reshape(-1).double().cpu()                  # (cols,)
    t = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1, 1)    # (thresholds, 1)
    return (cols >= t).double().mean(dim=1)


def inputs_of(model: torch.nn.Module, tokenizer, names, prompt: str, max_tokens: int = 256) -> dict:
    """What each linear layer in `names` receives when `model` reads `prompt`, from one forward pass:
    {name: float32 (tokens, in_features)}. The prompt is cut to `max_tokens` tokens.
    Worked number: SmolLM2-135M, ["model.layers.0.mlp.down_proj"], a 9-token prompt -> one (9, 1536) tensor.

    >>> inputs_of(model, tok, ["model.layers.0.mlp.down_proj"], "Hi")  # doctest: +SKIP
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if not isinstance(modules.get(n), torch.nn.Linear)]
    if missing:
        raise ValueError(f"not linear layers of this model: {missing[:3]}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    captured: dict = {}

    def keep(name, args, kwargs):
        x = layer_input(args, kwargs).detach()
        captured[name] = x.float().reshape(-1, x.shape[-1])                        # (tokens, in)

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"][:, :max_tokens].to(device)
    with input_hooks({n: modules[n] for n in names}, keep), torch.no_grad():
        model(input_ids=ids)
    return {n: captured[n] for n in names}
