"""GPTQ (Frantar et al. 2022, arXiv 2210.17323): round one input column at a time and push each
column's rounding error onto the columns not yet rounded, weighted by the inverse Hessian.

For a linear layer y = x W^T with calibration inputs X (n, in), the layer's output error after
changing W by dW is ||X dW^T||^2, a quadratic form with Hessian H = 2 X^T X / n (in, in). Rounding
column j by e_j is then best compensated by moving the later columns by -e_j * Hinv[j, j:] / Hinv[j, j]
(the Optimal Brain Surgeon update). GPTQ does this in a fixed column order, reads the needed rows of
Hinv from the upper Cholesky factor of H^-1 (numerically stable), and applies the updates to the
columns beyond the current batch of 128 lazily, once a batch (one matrix product instead of 128; the
paper's "lazy batch-updates", `lazy_batch`).

With blocksize g (the paper's group size: g input columns share a scale), a block's scales are computed
from its columns as they are when the block is reached (already moved by the earlier columns' errors),
then fixed. The result is stored exactly as
round-to-nearest stores it (same codes dtype, same scales), so bits per weight are equal.
"""

from __future__ import annotations

import torch

from .._checks import check_int
from .._threads import threads
from .rtn import GroupQuantized, check_weight, group_params

__all__ = ["hessian", "gptq"]


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n for inputs x (..., in) flattened to (n, in): float32 (in, in).

    Worked number: x = [[1, 2]] gives [[2, 4], [4, 8]].

    >>> hessian(torch.tensor([[1.0, 2.0]])).tolist()
    [[2.0, 4.0], [4.0, 8.0]]
    """
    x = x.reshape(-1, x.shape[-1]).float()
    return 2 * x.T @ x / x.shape[0]


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, float32 (in, in)."""
    h = h + damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inv, upper=True)


def gptq(w: torch.Tensor, h: torch.Tensor, bits: int = 4, blocksize: int | None = 128, symmetric: bool = True,
         lazy_batch: int = 128, damp: float = 0.01, act_order: bool = False, return_moved: bool = False):
    """GPTQ-quantize weight w (out, in) with layer-input Hessian h (in, in) (see `hessian`).

    blocksize: input columns that share a scale (None: one block a row); lazy_batch: columns rounded
    before the rest of the weight is updated (speed only: any value gives the same result up to float
    rounding). Columns whose Hessian diagonal is 0 (inputs never seen) are set to 0. damp: fraction of the mean
    diagonal added to it (the paper's 1%). act_order: round columns in order of decreasing H[j, j]
    (group scales are then computed up front from the unmoved weight, "static groups", so storage
    stays in plain column order). Returns the same record as `rtn` (GroupQuantized, codes (out, in));
    with return_moved=True also a float32 (out, in) tensor: each weight as it was when rounded, after
    the compensation from earlier columns (minus w = the shift). Every tensor is made on w's device
    (h is moved there), so a CUDA weight is quantized on the GPU.
    Worked number: with H = identity nothing is compensated and the codes equal `rtn`'s.

    >>> w = torch.tensor([[0.07, 0.034, -0.02, 0.0]])
    >>> gptq(w, torch.eye(4), blocksize=4).codes.tolist()
    [[7, 3, -2, 0]]
    """
    w = check_weight(w, blocksize)
    check_int(lazy_batch, "lazy_batch", minimum=1)
    if h.shape != (w.shape[1], w.shape[1]):
        n = w.shape[1]
        raise ValueError(f"h must be ({n}, {n}) for a weight with {n} input columns; got {tuple(h.shape)}")
    with threads(1):   # many small ops: a second thread only waits on a loaded 2-core machine (CPU)
        rec, moved = _gptq(w, h, bits, blocksize, symmetric, lazy_batch, damp, act_order)
    return (rec, moved) if return_moved else rec


def _gptq(w, h, bits, blocksize, symmetric, lazy_batch, damp, act_order):
    rows, cols = w.shape
    g = blocksize or cols
    W, H = w.detach().float().clone(), h.detach().float().to(w.device, copy=True)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols, device=W.device)
    order = perm.tolist()                                   # column indices as Python ints: no sync per column
    groups = -(-cols // g)                                                  # the last may be shorter
    scales, zeros = W.new_zeros(rows, groups), W.new_zeros(rows, groups)    # on the weight's device
    if act_order:   # static groups: every group's scale from the weight before any update
        for k in range(groups):
            scales[:, k], zeros[:, k] = group_params(W[:, k * g:(k + 1) * g], bits, symmetric)
    Hinv = _inverse_cholesky(H[perm][:, perm], damp)
    Wt = W[:, perm].T.contiguous()                   # (cols, rows): one column a contiguous row, for speed
    codes, moved = torch.zeros_like(Wt), torch.zeros_like(Wt)
    qmin, qmax = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    for i1 in range(0, cols, lazy_batch):
        i2 = min(i1 + lazy_batch, cols)
        W1, Err1 = Wt[i1:i2].clone(), Wt.new_zeros(i2 - i1, rows)             # (batch, rows)
        for i in range(i2 - i1):
            j = order[i1 + i]                                                 # original column index
            if not act_order and j % g == 0:                                  # a new group: its scales now
                cur = torch.cat([W1[i:], Wt[i2:]])[:g].T                      # (rows, <= g)
                scales[:, j // g], zeros[:, j // g] = group_params(cur, bits, symmetric)
            if i == 0 or j % g == 0 or act_order:
                s, z = scales[:, j // g], zeros[:, j // g]
                safe = torch.where(s > 0, s, torch.ones_like(s))
            w_j = W1[i]
            q = torch.round(w_j / safe + z).clamp_(qmin, qmax)                 # = rtn.quantize_column
            codes[i1 + i], moved[i1 + i] = q, w_j
            err = (w_j - (q - z) * s) / Hinv[i1 + i, i1 + i]
            W1[i:].addr_(Hinv[i1 + i, i1 + i:i2], err, alpha=-1)              # compensate within the batch
            Err1[i] = err
        Wt[i2:] -= Hinv[i1:i2, i2:].T @ Err1                                  # lazy update of the rest
    codes, moved = codes.T, moved.T
    inv = torch.argsort(perm)
    codes, moved = codes[:, inv], moved[:, inv]
    codes = codes.to(torch.int8 if symmetric else torch.uint8)
    return GroupQuantized(codes, scales, None if symmetric else zeros, g, bits, w.dtype), moved
