"""Input checks with messages that name the argument, the value and what is allowed, and the
grouping helpers that give absmax / zero-point their per-tensor, per-axis and blockwise scales."""

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


def group(x: torch.Tensor, axis: int | None, blocksize: int | None) -> torch.Tensor:
    """View `x` as (groups, group_size): one group per tensor, per index of `axis`, or per block of
    `blocksize` flattened elements (a partial last block is padded by repeating its last value,
    which changes neither its min, max nor absmax)."""
    if axis is not None and blocksize is not None:
        raise ValueError(f"give axis or blocksize, not both; got axis={axis!r}, blocksize={blocksize!r}")
    if axis is not None:
        return x.movedim(_check_axis(axis, x.dim()), 0).reshape(x.shape[axis], -1)
    if blocksize is None:
        return x.reshape(1, -1)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive integer or None; got {blocksize!r}")
    flat = x.reshape(-1)
    pad = -flat.numel() % blocksize
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(-1, blocksize)


def ungroup(g: torch.Tensor, shape: torch.Size, axis: int | None) -> torch.Tensor:
    """Inverse of `group`: back to `shape` (dropping block padding)."""
    if axis is None:
        n = shape.numel()
        return g.reshape(-1)[:n].view(shape)
    axis = axis % len(shape)
    moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
    return g.reshape(moved).movedim(0, axis)
