"""How bitsandbytes' CUDA kernels round, written in torch so that a machine without a GPU computes their bytes.

bitsandbytes 0.50's CUDA kernels (csrc/kernels.cu) decide codes differently from its CPU backend in
three places; each is reproduced here and checked bit for bit against what the kernels computed on an
NVIDIA H200 (tests/data/bnb-0.50.2-cuda-h200.npz, tests/test_cuda_rules.py):

- 4-bit codes (``dQuantizeNF4`` / ``dQuantizeFP4``): a decision tree of ``x > t`` tests against float
  literals written in the source, on ``x * (1 / absmax)``, where the reciprocal is the GPU's approximate
  one (bitsandbytes is built with fast math), for every block, the partial one too.
  For NF4 those literals are the float32 midpoints, so the codes equal the exact-nearest rule; for FP4
  three literals are rounded (0.583333f instead of 7/12), and the sign comes from ``x < 0``: a tiny
  negative value gets the -0 code (8), a tiny positive one +0 (0).
- 8-bit dynamic-map codes (``dQuantize``, the nested step of double quantization): a 7-step binary
  search over the 256 sorted values, then a comparison with the midpoint to the neighbour.
- LLM.int8's row scale (``kInt8VectorQuant``): ``__fdividef(127.0f, absmax)``, i.e. 127 times the
  GPU's approximate reciprocal.

The approximate reciprocal (PTX ``rcp.approx``) is not the correctly rounded 1 / y for about 13% of
float32 mantissas (one unit in the last place either way). What the GPU returns depends on y's mantissa
only: it was recorded on an H200 (compute capability 9.0) for all 2**23 mantissas and ships as a table of
ulp offsets (`rcp_approx`). Whether other GPU generations return the same is not checked here.
"""

from __future__ import annotations

import zlib
from fractions import Fraction
from functools import cache
from importlib import resources

import torch

__all__ = ["RULES", "NF4_TREE", "FP4_TREE", "default_rule", "float32_literal", "codes_4bit", "codes_dynamic",
           "rcp_approx", "mean"]

RULES = ("bnb_cpu", "bnb_cuda")

# dQuantizeNF4's 15 thresholds, as written in csrc/kernels.cu: code = number of thresholds strictly below x.
# Each is a float literal ("...f"), which the compiler rounds from the decimal text straight to float32:
# for four of them that differs from Python's float() then float32 (e.g. 0.5016634166240692 ->
# 0.50166338682 here, 0.50166344643 through a double), so they are kept as text.
NF4_TREE = ("-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544",
            "-0.23460740596055984", "-0.13791173323988914", "-0.045525018125772476", "0.03979014977812767",
            "0.1202552504837513", "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
            "0.5016634166240692", "0.6427869200706482", "0.8614784181118011")
# dQuantizeFP4's 7 thresholds on |x| and the bit pattern of each magnitude rank (0, 0.0625, 2, 3, 4, 6, 8, 12)/12.
FP4_TREE = ("0.00260417", "0.0859375", "0.20833333", "0.29166667", "0.4166667", "0.583333", "0.8333333")
FP4_RANK_TO_BITS = (0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011)


def default_rule(x: torch.Tensor) -> str:
    """The rule of the kernels that would quantize `x`: "bnb_cuda" for a CUDA tensor, else "bnb_cpu".

    >>> default_rule(torch.zeros(2))
    'bnb_cpu'
    """
    return "bnb_cuda" if x.device.type == "cuda" else "bnb_cpu"


def float32_literal(text: str) -> float:
    """The float32 nearest to a decimal literal, as a C compiler reads ``<text>f``.

    >>> float32_literal("0.5016634166240692"), float(torch.tensor(0.5016634166240692))
    (0.5016633868217468, 0.5016634464263916)
    """
    exact = Fraction(text)
    guess = torch.tensor(float(exact), dtype=torch.float32)
    near = [torch.nextafter(guess, torch.tensor(-torch.inf)), guess, torch.nextafter(guess, torch.tensor(torch.inf))]
    return float(min(near, key=lambda v: abs(Fraction(float(v)) - exact)))


@cache
def _tree(quant_type: str, device: str) -> torch.Tensor:
    literals = NF4_TREE if quant_type == "nf4" else FP4_TREE
    return torch.tensor([float32_literal(t) for t in literals], dtype=torch.float32, device=device)


def codes_4bit(scaled: torch.Tensor, quant_type: str) -> torch.Tensor:
    """uint8 4-bit codes (scaled's shape) of float32 values ``x * (1 / absmax)``, as the CUDA kernel picks them.

    NaN (an all-zero block: 0 * inf) fails every ``>`` test and takes code 0, as in the kernel.
    Worked: FP4 of 0.5833332 is code 0b0010 (8/12) on CUDA, 0b0101 (6/12) by the exact midpoint 7/12;
    -1e-4 is code 8 (-0).

    >>> codes_4bit(torch.tensor([0.5833332, -1e-4, 1e-4]), "fp4").tolist()
    [2, 8, 0]
    """
    tree = _tree(quant_type, str(scaled.device))
    if quant_type == "nf4":
        return (scaled.unsqueeze(-1) > tree).sum(-1, dtype=torch.uint8)
    rank = (scaled.abs().unsqueeze(-1) > tree).sum(-1)                      # 0..7, magnitude order
    bits = torch.tensor(FP4_RANK_TO_BITS, dtype=torch.uint8, device=scaled.device)[rank]
    return bits | ((scaled < 0).to(torch.uint8) << 3)


def codes_dynamic(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """uint8 codes of float32 values in [-1, 1] on the sorted 256-value map `code`, as CUDA's ``dQuantize``.

    Seven halving steps from index 127 find the neighbouring pair; the value then goes to whichever of
    the two (or the next one out) is nearer by a float32 midpoint test.

    >>> from qlearn import codebooks
    >>> codes_dynamic(torch.tensor([0.0, 1.0, -1.0]), codebooks.dynamic_map()).tolist()
    [127, 255, 0]
    """
    x = scaled.reshape(-1)
    pivot = torch.full_like(x, 127, dtype=torch.long)
    lower_pivot, upper_pivot = torch.zeros_like(pivot), torch.full_like(pivot, 255)
    lower, upper = torch.full_like(x, -1.0), torch.full_like(x, 1.0)
    val = code[pivot]
    for step in (64, 32, 16, 8, 4, 2, 1):
        above = x > val
        lower_pivot, lower = torch.where(above, pivot, lower_pivot), torch.where(above, val, lower)
        upper_pivot, upper = torch.where(above, upper_pivot, pivot), torch.where(above, upper, val)
        pivot = torch.where(above, pivot + step, pivot - step)
        val = code[pivot]
    upper = torch.where(upper_pivot == 255, code[255], upper)
    lower = torch.where(lower_pivot == 0, code[0], lower)
    above = x > val
    up = torch.where(x > (upper + val) * 0.5, upper_pivot, pivot)
    down = torch.where(x < (lower + val) * 0.5, lower_pivot, pivot)
    return torch.where(above, up, down).to(torch.uint8).view(scaled.shape)


@cache
def _rcp_ulps() -> torch.Tensor:
    """int32 (2**23,): the GPU's reciprocal minus the correctly rounded one, in ulps, by float32 mantissa.

    Recorded on an H200 with ``__fdividef(1.0f, y)`` for every mantissa at exponent 0; the same offsets
    held at exponents -120 .. 125 (the approximation reads the mantissa only). Stored as 2-bit codes
    (offset + 1), four to a byte, zlib-compressed (151 kB)."""
    data = zlib.decompress(resources.files("qlearn").joinpath("data/cuda_rcp_approx_ulps.bin.zlib").read_bytes())
    packed = torch.frombuffer(bytearray(data), dtype=torch.uint8)                   # (2**21,)
    codes = torch.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], dim=1)    # (2**21, 4)
    return codes.reshape(-1).to(torch.int32) - 1


def rcp_approx(y: torch.Tensor) -> torch.Tensor:
    """float32 ``1.0f / y`` as bitsandbytes' CUDA kernels get it (built with fast math: the GPU's
    approximate reciprocal, PTX ``rcp.approx``), for float32 values y >= 0; 0 gives inf.

    The correctly rounded 1 / y moved by -1, 0 or +1 ulp, read from a table by y's mantissa; about
    13% of mantissas move. Worked: 1 / 3 rounds to 0.3333333432674408, and the GPU returns the same.

    >>> rcp_approx(torch.tensor([2.0, 3.0, 0.0])).tolist()
    [0.5, 0.3333333432674408, inf]
    """
    if y.dtype != torch.float32:
        raise TypeError(f"y must be float32; got {y.dtype}")
    y = y.cpu()
    if not bool(((y >= 0) & torch.isfinite(y)).all()):
        raise ValueError("y must hold finite values >= 0 (block or row absmax values)")
    mantissa = y.view(torch.int32) & 0x7FFFFF
    out = ((1.0 / y).view(torch.int32) + _rcp_ulps()[mantissa.long()]).view(torch.float32)
    return torch.where(y == 0, torch.inf, out)


def mean(v: torch.Tensor) -> torch.Tensor:
    """float32 mean as torch computes it on a GPU: the sum, times the float32 1/n (CPU torch divides by n).

    The sum here is accumulated in float64 and rounded once; the GPU's tree of float32 partial sums
    gave the same float32 on every offset recorded (19 of 19), dividing instead of multiplying on 11.
    Worked: mean of [1, 2, 4] is 7 * float32(1/3) = 2.3333334922790527, one ulp above 7 / 3 = 2.3333332538604736.

    >>> float(mean(torch.tensor([1.0, 2.0, 4.0]))), float(torch.tensor([1.0, 2.0, 4.0]).mean())
    (2.3333334922790527, 2.3333332538604736)
    """
    total = v.double().sum().float()
    return total * (torch.tensor(1.0, dtype=torch.float32, device=v.device) / v.numel())
