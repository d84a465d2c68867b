"""Rotate before quantizing: a randomized Hadamard transform spreads a row's outliers over its block.

For an orthogonal R, x W^T = (x R)(W R)^T: rotate the weight's input dimension, rotate the input the
same way at run time, and the layer computes the same thing. Quantizing W R instead of W helps when a
few large weights set a group's scale: after the rotation every entry is a +-1/sqrt(b) mix of b
entries, so the row's largest magnitude moves towards its mean (QuaRot, Ashkboos et al. 2024,
arXiv 2404.00456; SpinQuant, arXiv 2405.16406; block-wise rotations matched to the quantization
group in FP-Quant, Egiazarian et al. 2025, arXiv 2509.23202).

R here = diag(random signs) x blockdiag(H_b / sqrt(b)), H_b the Sylvester Hadamard matrix of size b (a
power of two dividing the input dimension: 64 for the embedded model's 576 and 1536). The signs come
from a seed. `rotated` wraps any quantizer: the record it returns dequantizes to Q(W R) R^T, the
weight the layer effectively multiplies by (the fake-quantized forward then equals a rotated one).
Worked number: H_2 / sqrt(2) maps the row (4, 0) to (2.83, 2.83): the largest magnitude over the mean
magnitude drops from 2 to 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._checks import check_int, check_tensor

__all__ = ["hadamard", "random_signs", "rotate", "unrotate", "peak_to_mean", "Rotated", "rotated"]


def hadamard(b: int) -> torch.Tensor:
    """The (b, b) Sylvester Hadamard matrix divided by sqrt(b): orthogonal, entries +-1/sqrt(b), b = 2^k.

    >>> torch.sign(hadamard(4)).tolist()[:2], float(hadamard(4)[0, 0])
    ([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0]], 0.5)
    """
    check_int(b, "b", minimum=1)
    if b & (b - 1):
        raise ValueError(f"b must be a power of two; got {b}")
    h = torch.ones(1, 1)
    while h.shape[0] < b:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)   # [[H, H], [H, -H]]
    return h / math.sqrt(b)


def random_signs(n: int, seed: int = 0) -> torch.Tensor:
    """n random +-1.0 (float32) from a seed: the diagonal that makes the Hadamard transform random."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=g).float() * 2 - 1


def _check(w: torch.Tensor, blocksize: int) -> None:
    check_int(blocksize, "blocksize", minimum=1)
    if blocksize & (blocksize - 1) or w.shape[-1] % blocksize:
        raise ValueError(f"blocksize must be a power of two dividing the last dimension {w.shape[-1]}; "
                         f"got {blocksize}")


def rotate(w: torch.Tensor, blocksize: int = 64, seed: int = 0) -> torch.Tensor:
    """x -> x R along the last dimension (a weight's input dimension, or an input): float32, same shape.

    >>> rotate(torch.tensor([[4.0, 0.0]]), blocksize=2, seed=1).abs()
    tensor([[2.8284, 2.8284]])
    """
    w = check_tensor(w, "w").float()
    _check(w, blocksize)
    signs = random_signs(w.shape[-1], seed).to(w.device)
    blocks = (w * signs).reshape(*w.shape[:-1], -1, blocksize)              # (..., n/b, b)
    return (blocks @ hadamard(blocksize).to(w.device)).reshape(w.shape)


def unrotate(w: torch.Tensor, blocksize: int = 64, seed: int = 0) -> torch.Tensor:
    """The inverse: x R -> x (R^T = blockdiag(H_b)^T diag(signs); H_b is symmetric)."""
    w = check_tensor(w, "w").float()
    _check(w, blocksize)
    blocks = w.reshape(*w.shape[:-1], -1, blocksize) @ hadamard(blocksize).to(w.device)
    return blocks.reshape(w.shape) * random_signs(w.shape[-1], seed).to(w.device)


def peak_to_mean(w: torch.Tensor) -> torch.Tensor:
    """Each row's largest magnitude over its mean magnitude (float32, (rows,)): what a rotation lowers.

    >>> peak_to_mean(torch.tensor([[4.0, 0.0], [1.0, 1.0]])).tolist()
    [2.0, 1.0]
    """
    a = check_tensor(w, "w").float().abs()
    return a.amax(dim=-1) / a.mean(dim=-1)


@dataclass(frozen=True)
class Rotated:
    """A quantized W R: the inner record (any format) and how to undo the rotation."""

    inner: object
    blocksize: int
    seed: int
    dtype: torch.dtype

    @property
    def codes(self) -> torch.Tensor:
        return self.inner.codes

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Q(W R) R^T: the weight the rotated layer effectively multiplies by, in the original basis."""
        wr = self.inner.dequantize(torch.float32)
        return unrotate(wr, self.blocksize, self.seed).to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes + self.codes.shape[-1] // 8        # + the signs, one bit per input channel

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.codes.numel()


def rotated(quantize: Callable[[torch.Tensor], object], blocksize: int = 64, seed: int = 0):
    """A quantizer of W -> the same quantizer applied to W R, its record dequantizing to Q(W R) R^T.

    >>> from qlearn import absmax_quantize
    >>> w = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    >>> q = rotated(lambda m: absmax_quantize(m, bits=4, blocksize=64))(w)
    >>> q.dequantize().shape, q.bits_per_param > 4
    (torch.Size([4, 64]), True)
    """
    def quantize_rotated(w: torch.Tensor) -> Rotated:
        w = check_tensor(w, "w")
        return Rotated(quantize(rotate(w, blocksize, seed)), blocksize, seed, w.dtype)
    return quantize_rotated
