"""Int8 matrix products as LLM.int8 and plain int8 compute them, simulated step by step in torch.

``y = x @ w.T`` with x (tokens, in) the layer's input and w (out, in) its weight:

1. the weight is quantized once, row by row (one absmax per output feature), threshold 0;
2. each input row (token) is quantized the same way; with ``threshold > 0`` every input column
   holding a value with |x| >= threshold is an *outlier column*: zeroed in the int8 codes;
3. the int8 codes are multiplied (an int32 sum, exact) and rescaled: ``C * row_x * row_w / 127**2``;
4. the outlier columns are multiplied separately in 16-bit and added. Which 16-bit *weights* they
   meet is where implementations differ: bitsandbytes 0.50 (``int8_mixed_scaled_mm``) dequantizes
   those weight columns from the int8 codes (``outlier_weights="int8"``); the LLM.int8() paper
   keeps them in fp16 (``outlier_weights="fp16"``).

``granularity="tensor"`` uses one absmax for all of x and one for all of w instead (the paper's
"absmax" baseline is tensor-wise). ``simulate_int8`` swaps every ``nn.Linear`` of a model for this
product while a ``with`` block runs, so a whole model can be scored. Torch only.

>>> x = torch.tensor([[0.5, -1.27, 0.1, 7.5]]); w = torch.eye(4)
>>> int8_matmul(x, w, threshold=6.0).outputs.tolist()[0][3]      # the 7.5 went through 16-bit
7.5
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from . import bnb_interop
from ._checks import check_threshold

__all__ = ["INT8_GRANULARITIES", "OUTLIER_WEIGHTS", "BNB_RESCALE", "Int8Product", "int8_matmul", "simulate_int8",
           "int8_layers", "set_int8_threshold"]

INT8_GRANULARITIES = ("vector", "tensor")   # LLM.int8's scales: one per row of x and of w, or one per matrix
BNB_RESCALE = 6.200124e-05   # bitsandbytes 0.50's int8_mm_dequant factor; 1/127**2 = 6.2000124e-05
_INV127 = torch.tensor(1 / 127, dtype=torch.float32).item()   # float32(1/127), bitsandbytes' dequant factor
OUTLIER_WEIGHTS = ("int8", "fp16")


@dataclass(frozen=True)
class Int8Product:
    """The steps of one int8 product (float32 unless said): x codes (tokens, in) int8 with outlier
    columns zeroed, x scales (tokens, 1), w codes (out, in) int8, w scales (out, 1), outlier column
    indices (k,) int64, the int8 part (tokens, out), the 16-bit part (tokens, out) and their sum."""

    x_codes: torch.Tensor
    x_scale: torch.Tensor
    w_codes: torch.Tensor
    w_scale: torch.Tensor
    outlier_cols: torch.Tensor
    int8_part: torch.Tensor
    outlier_part: torch.Tensor
    x_outliers: torch.Tensor | None = None     # (tokens, k) x's own values in its dtype
    w_outliers: torch.Tensor | None = None     # (out, k) the weight columns they meet, float32

    @property
    def outputs(self) -> torch.Tensor:
        """int8 part + 16-bit part, float32 (tokens, out)."""
        return self.int8_part + self.outlier_part

    def output_in(self, dtype: torch.dtype) -> torch.Tensor:
        """The output as bitsandbytes forms it in a 16-bit model: the int8 part rounded to `dtype`, then
        ``addmm`` of the outlier columns in `dtype` (two roundings; `outputs` rounds once)."""
        out = self.int8_part.to(dtype)
        if self.x_outliers is None or self.x_outliers.numel() == 0:
            return out
        return out.addmm(self.x_outliers.to(dtype), self.w_outliers.to(dtype).T)

    def rms_error_per_token(self, reference: torch.Tensor) -> torch.Tensor:
        """Root-mean-square error of `outputs` against `reference` (tokens, out), one value per token (tokens,)."""
        return (self.outputs - reference.float()).pow(2).mean(dim=-1).sqrt()

    @property
    def outlier_share(self) -> float:
        """Fraction of input columns multiplied in 16-bit."""
        return self.outlier_cols.numel() / self.x_codes.shape[-1]


def _absmax_codes(a: torch.Tensor, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes round(a * 127 / absmax) (half to even) and the float32 absmax, per row or per tensor."""
    amax = a.abs().amax(dim=1, keepdim=True) if granularity == "vector" else a.abs().amax().reshape(1, 1)
    codes = torch.round(a * (127.0 / amax)).nan_to_num(0.0).to(torch.int8)    # an all-zero row gives 0
    return codes, amax.float()


def _check(x, w, threshold, granularity, outlier_weights):
    for name, t in (("x", x), ("w", w)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise ValueError(f"{name} must be a 2-D float tensor, got {getattr(t, 'shape', type(t).__name__)}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x is (tokens, {x.shape[1]}) but w is (out, {w.shape[1]}): in_features must match")
    check_threshold(threshold)
    if granularity not in INT8_GRANULARITIES:
        raise ValueError(f"granularity must be one of {INT8_GRANULARITIES}, got {granularity!r}")
    if outlier_weights not in OUTLIER_WEIGHTS:
        raise ValueError(f"outlier_weights must be one of {OUTLIER_WEIGHTS}, got {outlier_weights!r}")


def int8_matmul(x: torch.Tensor, w: torch.Tensor, threshold: float = 0.0, granularity: str = "vector",
                outlier_weights: str = "int8", rescale: float = 1 / 127**2) -> Int8Product:
    """Simulate ``x @ w.T`` in int8, with LLM.int8's outlier columns when ``threshold > 0``.

    x: float (tokens, in); w: float (out, in). Both are cast to float16 before quantizing, as
    bitsandbytes does; the 16-bit part multiplies x's own values (its dtype) with weight columns in
    x's dtype, summed in float32. Returns float32 parts. rescale: the factor after the int32 sum,
    1/127**2 = 6.2000124e-05; bitsandbytes 0.50's default/CPU kernel multiplies by 6.200124e-05
    (`BNB_RESCALE`, 1.8e-5 larger), pass it to reproduce its float32 outputs. threshold 0 (or inf):
    plain int8. Worked number: x = [[1, 10]], w = [[1, 1]], threshold 6: column 1 is an outlier;
    int8 part 1.0 (x row absmax 1), 16-bit part 10 * (127 * 1/127) = 10.0, output 11.0.

    >>> int8_matmul(torch.tensor([[1., 10.]]), torch.tensor([[1., 1.]]), threshold=6.0).outputs.item()
    11.0
    """
    _check(x, w, threshold, granularity, outlier_weights)
    a, b = x.detach().to(torch.float16).float(), w.detach().to(torch.float16).float()   # (tokens, in), (out, in)
    outliers = (a.abs() >= threshold) if 0 < threshold < float("inf") else torch.zeros_like(a, dtype=torch.bool)
    cols = torch.argwhere(outliers.any(dim=0)).view(-1)                                # (k,)
    x_codes, x_scale = _absmax_codes(a.masked_fill(outliers, 0.0), granularity)        # outliers leave the absmax
    x_codes[:, cols] = 0
    w_codes, w_scale = _absmax_codes(b, granularity)
    acc = x_codes.float() @ w_codes.float().T   # int32 sums, exact below 2**24 = 127**2 * 1040 (bitsandbytes' CPU
    #                                             path without AVX-512 sums in float32 too); (tokens, out)
    int8_part = acc * (x_scale * w_scale.T) * rescale                  # float32, as bitsandbytes orders it
    if cols.numel() == 0:
        return Int8Product(x_codes, x_scale, w_codes, w_scale, cols, int8_part, torch.zeros_like(int8_part))
    if outlier_weights == "fp16":
        w_cols = b[:, cols]                                             # the paper: fp16 weights
    else:
        w_cols = w_codes[:, cols].float() * w_scale * _INV127           # bitsandbytes 0.50: from the int8 codes
    w_cols = w_cols.to(x.dtype).float()                                 # x's 16-bit (or 32-bit) dtype
    sub = x.detach()[:, cols].float() @ w_cols.T                        # x's own values, summed in float32
    return Int8Product(x_codes, x_scale, w_codes, w_scale, cols, int8_part, sub, x.detach()[:, cols], w_cols)


def _simulated_forward(module: nn.Linear, threshold, granularity, outlier_weights, rescale, stats):
    def forward(x):
        flat = x.reshape(-1, x.shape[-1])                                 # (tokens, in)
        product = int8_matmul(flat, module.weight, threshold, granularity, outlier_weights, rescale)
        stats.append(product.outlier_share)
        y = product.output_in(x.dtype)                                   # bitsandbytes' roundings
        y = y if module.bias is None else y + module.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], -1)
    return forward


@contextlib.contextmanager
def simulate_int8(model: nn.Module, threshold: float = 0.0, granularity: str = "vector",
                  outlier_weights: str = "int8", rescale: float = 1 / 127**2, skip=("lm_head",)):
    """While the block runs, every ``nn.Linear`` of `model` (except names containing one of `skip`)
    computes `int8_matmul` instead of its float product. Yields a list that collects, per call,
    the share of input columns kept in 16-bit. The model's weights are not changed.

    >>> with simulate_int8(nn.Sequential(nn.Linear(4, 2)), threshold=6.0) as shares:  # doctest: +SKIP
    ...     model(x)
    """
    _check(torch.zeros(1, 1), torch.zeros(1, 1), threshold, granularity, outlier_weights)
    shares: list[float] = []
    patched = [m for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and not any(s in n for s in skip)]
    for m in patched:
        m.forward = _simulated_forward(m, threshold, granularity, outlier_weights, rescale, shares)
    try:
        yield shares
    finally:
        for m in patched:
            del m.forward                                                  # back to the class's forward


def int8_layers(model: nn.Module) -> list:
    """The LLM.int8 layers of a model loaded in int8 (bitsandbytes ``Linear8bitLt``; found by
    `qlearn.bnb_interop.int8_layers`, without importing bitsandbytes)."""
    return bnb_interop.int8_layers(model)


def set_int8_threshold(model: nn.Module, threshold: float) -> int:
    """Set the outlier threshold of every LLM.int8 layer, the value transformers'
    ``BitsAndBytesConfig(llm_int8_threshold=...)`` gives each ``Linear8bitLt`` when it loads.
    Returns how many layers changed. 0 turns the decomposition off (plain vector-wise int8).
    (bitsandbytes 0.50 reads ``state.threshold`` on every forward; the ``use_pool`` flag its constructor
    also sets from the threshold is read nowhere.)
    """
    check_threshold(threshold)
    layers = int8_layers(model)
    if not layers:
        raise ValueError("model has no LLM.int8 layers (load it with mode='int8')")
    for m in layers:
        bnb_interop.set_threshold(m, threshold)
    return len(layers)
