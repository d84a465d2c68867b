"""Granularity: which elements share one scale.

Absmax and zero-point quantization take one scale per tensor, one per index of an axis (per row
of a (out, in) weight with axis=0), or one per block of `blocksize` consecutive (flattened)
elements (`GRANULARITIES`: "tensor", "row", "block"); NF4 / FP4 always use blocks. A group is the
set of elements that share one scale; a block is a group of `blocksize` consecutive elements (the
papers' "group size" is the blocksize). `group` views a tensor as (groups, n) so a scale per group
is one reduction over dim 1; `ungroup` puts the groups back into the input's shape.
`n_groups` and `group_values` read the same grouping back out of a quantization result.
"""

from __future__ import annotations

import torch

from ._checks import _check_axis, check_int

__all__ = ["GRANULARITIES", "group", "ungroup", "n_groups", "group_values"]

GRANULARITIES = ("tensor", "row", "block")   # which elements share one scale: all, one row, one block


def group(x: torch.Tensor, axis: int | None, blocksize: int | None) -> torch.Tensor:
    """View `x` as (groups, n): one group per tensor, per index of `axis`, or per block of
    `blocksize` flattened elements, in x's dtype and device.

    A partial last block is padded by repeating its last value, which changes neither its min,
    max nor absmax. Worked number: 10 elements in blocks of 4 give (3, 4), the last row
    [x8, x9, x9, x9]; a (64, 1024) weight with axis=0 gives (64, 1024), with axis=1 (1024, 64).

    >>> group(torch.arange(10.), None, 4)[-1].tolist()
    [8.0, 9.0, 9.0, 9.0]
    """
    if axis is not None and blocksize is not None:
        raise ValueError(f"give axis or blocksize, not both; got axis={axis!r}, blocksize={blocksize!r}")
    if axis is not None:
        return x.movedim(_check_axis(axis, x.dim()), 0).reshape(x.shape[axis], -1)
    if blocksize is None:
        return x.reshape(1, -1)
    check_int(blocksize, "blocksize", minimum=1)
    flat = x.reshape(-1)
    pad = -flat.numel() % blocksize
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(-1, blocksize)


def ungroup(g: torch.Tensor, shape: torch.Size, axis: int | None) -> torch.Tensor:
    """Inverse of `group`: (groups, n) back to `shape`, dropping block padding.

    Worked number: the (3, 4) blocks of 10 elements come back as the 10 elements.

    >>> x = torch.arange(10.)
    >>> torch.equal(ungroup(group(x, None, 4), x.shape, None), x)
    True
    """
    if axis is None:
        n = shape.numel()
        return g.reshape(-1)[:n].view(shape)
    axis = axis % len(shape)
    moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
    return g.reshape(moved).movedim(0, axis)


def _axis_and_blocksize(result) -> tuple[int | None, int | None]:
    """How `result` grouped its input: 4-bit results have blocks and no axis."""
    return getattr(result, "axis", None), result.blocksize


def n_groups(result) -> int:
    """How many groups (scales) a quantization result has: 1 per tensor, one a row, or one a block.

    Worked number: NF4 on 65536 values in blocks of 128 has 512 absmax values, so 512 groups.

    >>> import qlearn as ql
    >>> n_groups(ql.quantize_4bit(torch.randn(65536), "nf4", 128))
    512
    """
    scales = result.absmax if hasattr(result, "absmax") else result.scale
    return int(scales.numel())


def group_values(x: torch.Tensor, result, g: int = 0) -> torch.Tensor:
    """The values of `x` that share group `g`'s scale in `result` (a quantization of `x`),
    flattened, float32 (n,); a partial last block is returned without padding.

    Worked number: blocks of 128 over 65536 values: group 2 is x.reshape(-1)[256:384].

    >>> import qlearn as ql
    >>> x = torch.arange(10.)
    >>> group_values(x, ql.absmax_quantize(x, 4, blocksize=4), 2).tolist()
    [8.0, 9.0]
    """
    axis, blocksize = _axis_and_blocksize(result)
    if axis is None and blocksize is not None:
        return x.reshape(-1)[g * blocksize:(g + 1) * blocksize].float()
    return group(x, axis, None)[g].float()
