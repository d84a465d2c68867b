"""Input checks with messages that name the argument, the value and what is allowed.

Only checks live here; the grouping that gives absmax / zero-point their per-tensor, per-axis and
blockwise scales is `qlearn.granularity`."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(x, name: str = "x") -> torch.Tensor:
    """A non-empty float tensor (numpy arrays are converted); TypeError/ValueError otherwise."""
    if not isinstance(x, torch.Tensor):
        if hasattr(x, "__array__"):
            x = torch.as_tensor(x)
        else:
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        allowed = ", ".join(str(d).replace("torch.", "") for d in FLOAT_DTYPES)
        raise TypeError(f"{name} has dtype {x.dtype}; allowed: {allowed} (convert with {name}.float())")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); quantization needs at least one element")
    return x


def check_finite(stat: torch.Tensor, name: str = "x") -> None:
    """NaN and Inf propagate into per-group max/min, so checking those catches them cheaply."""
    if not bool(torch.isfinite(stat).all()):
        raise ValueError(f"{name} contains NaN or Inf values; quantization needs finite weights")


def check_choice(value, name: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def check_blocksize(blocksize, name: str, allowed: tuple[int, ...]) -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {blocksize!r}")


def check_bits(bits) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 2..8; got {bits!r}")


def _check_axis(axis, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(f"axis must be an integer in {-ndim}..{ndim - 1} for a {ndim}-d tensor; got {axis!r}")
    return axis % ndim



def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (not a bool) in ``minimum..maximum`` (either end open when None); ValueError naming it otherwise.

    >>> check_int(4, "rank", minimum=1)
    4
    >>> check_int(True, "rank", minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: rank must be an int >= 1; got True
    """
    ok = not isinstance(value, bool) and isinstance(value, int)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        bounds = (f"in {minimum}..{maximum}" if minimum is not None and maximum is not None
                  else f">= {minimum}" if minimum is not None else f"<= {maximum}" if maximum is not None else "")
        raise ValueError(f"{name} must be an int {bounds}".rstrip() + f"; got {value!r}")
    return value


def check_threshold(threshold) -> float:
    """LLM.int8's outlier threshold: a number >= 0 (not a bool); 0 means no outlier columns.

    >>> check_threshold(6.0)
    6.0
    >>> check_threshold(-1)
    Traceback (most recent call last):
    ...
    ValueError: threshold must be a number >= 0 (0: no outlier columns); got -1
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0 (0: no outlier columns); got {threshold!r}")
    return threshold
