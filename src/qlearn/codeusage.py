"""Code usage: how often each code (level) is used, how much information that carries, and how
many distinct values each block holds.

A b-bit code carries at most b bits per weight, and only when every level is used equally often:
`occupancy` gives the share of weights on each level and `entropy_bits` the bits actually carried
(NF4 on normal weights: ~3.9 of 4; uniform INT4: less, its outer levels are nearly empty).
`distinct_per_block` tells a tensor that was already quantized: 4-bit blocks hold <= 16 values.
"""

from __future__ import annotations

import torch

from ._checks import check_int
from .levels import codes_of, unit_levels

__all__ = ["code_counts", "occupancy", "entropy_bits", "distinct_per_block"]


def code_counts(result) -> torch.Tensor:
    """How many elements of `result` hold each code of `levels.codes_of(result)`, int64 (n_codes,)
    on the CPU, over all groups. Worked number: absmax 2-bit of [1, 0, -1, 1] has codes -1, 0, 1
    held by 1, 1 and 2 elements.

    >>> import qlearn as ql
    >>> code_counts(ql.absmax_quantize(torch.tensor([1., 0., -1., 1.]), bits=2)).tolist()
    [1, 1, 2]
    """
    codes = codes_of(result)                                            # (n_codes,) ascending
    q = result.codes.reshape(-1).long().cpu() - codes[0]                # 0 .. n_codes - 1
    return torch.bincount(q, minlength=codes.numel())


def occupancy(result) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels on the [-1, 1] scale, float32 (k,); share of elements on each, float64 (k,)),
    sorted by level, shares summing to 1; codes with the same value count as one level.

    Works for a `Quantized4bit` (NF4 / FP4: FP4's +0 and -0 codes are merged, k = 15) and an
    `AbsmaxQuantized` (levels q / qmax, k = 2**bits - 1); the levels are `levels.unit_levels`.
    Worked number: NF4 on normal weights in blocks of 64 puts 3.5-9.5% on each inner level, near
    1/16 = 6.25%, and ~1/64 on -1 and +1 (about one value a block is its own absmax).

    >>> import qlearn as ql
    >>> levels, share = occupancy(ql.quantize_4bit(torch.randn(4096)))
    >>> (len(levels), round(float(share.sum()), 6))
    (16, 1.0)
    """
    values, inverse = torch.unique(unit_levels(result), return_inverse=True)   # merges FP4's +-0
    counts = code_counts(result).double()                                     # (n_codes,)
    merged = torch.zeros(values.numel(), dtype=torch.float64).index_add_(0, inverse, counts)
    return values, merged / merged.sum()


def entropy_bits(share) -> float:
    """Shannon entropy -sum(p * log2 p) of a level distribution in bits (share: a tensor or array
    of shares summing to 1; zeros are skipped): 4.0 for 16 equally used levels, 0 for one level.
    Worked number: shares [0.5, 0.25, 0.25] carry 0.5 * 1 + 2 * 0.25 * 2 = 1.5 bits.

    >>> entropy_bits(torch.full((16,), 1 / 16)), entropy_bits([0.5, 0.25, 0.25])
    (4.0, 1.5)
    """
    p = torch.as_tensor(share, dtype=torch.float64)
    p = p[p > 0]
    return float(-(p * torch.log2(p)).sum())


def distinct_per_block(w: torch.Tensor, blocksize: int = 32) -> torch.Tensor:
    """How many distinct values each block of `blocksize` consecutive (flattened) elements holds,
    int64 (blocks,), on w's device; a partial last block is left out.

    A tensor stored as 4-bit in blocks of 32 (GGUF Q4_1) has at most 16 in every block; ordinary
    float weights have `blocksize`. Worked number: [1, 1, 2, 3] in blocks of 2 -> [1, 2].

    >>> distinct_per_block(torch.tensor([1., 1., 2., 3.]), 2).tolist()
    [1, 2]
    """
    check_int(blocksize, "blocksize", minimum=1)
    flat = w.detach().reshape(-1)
    blocks = flat[: flat.numel() - flat.numel() % blocksize].view(-1, blocksize)   # (blocks, blocksize)
    ordered = blocks.sort(dim=1).values
    return 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(dim=1)
