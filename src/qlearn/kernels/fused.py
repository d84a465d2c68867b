"""A fused int4 / int8 ``Linear`` on a CPU or a CUDA GPU, built on torch's own weight-only kernels, and its
plain reference.

Dequantize-then-matmul (what bitsandbytes' ``Linear4bit`` does on a CPU without AVX512-BF16) reads the
4-bit weight, WRITES a 16-bit copy of it, then reads that copy again in the matmul. A fused kernel reads
the 4-bit codes and their block scales and multiplies straight away: no 16-bit weight is ever written.

Format ("int4-tinygemm" in ``qlearn.formats``: asymmetric int4 in blocks of ``blocksize`` along the input
dimension, as GGUF's Q4_1 / torchao's "tinygemm" layout):  w = (q - 8) * scale + zero,  q in 0..15,
scale = (max - min) / 15, zero = min + 8 * scale (the value of the middle code 8), one (scale, zero) pair
per block of each row. It is ``qlearn.affine``'s "float" domain, w = q * scale + minimum, with the kernel's
zero = minimum + 8 * scale. Worked number: a block spanning [-0.3, 0.45] has scale 0.05, zero 0.1; code 0
decodes to -0.3, code 15 to 0.45.

torch's CPU kernels (verified by experiment on torch 2.13, see tests/test_kernels.py):
``aten._convert_weight_to_int4pack_for_cpu(q, 1)`` takes int32 codes (N, K) with values 0..15 (N a
multiple of 16) and returns (N, K/2) uint8 in its own blocked layout (we never read it);
``aten._weight_int4pack_mm_for_cpu(x, packed, groupsize, scales_and_zeros)`` takes x (M, K) in bf16,
fp16 or fp32, scales_and_zeros (K/blocksize, N, 2) in x's dtype, its "groupsize" (our blocksize)
32/64/128/256 dividing K;
``aten._weight_int8pack_mm(x, w_int8 (N, K), scales (N,))`` computes x @ w.T * scales.
torch's CUDA kernel (compute capability >= 8.0; ``qlearn.kernels.device.int4_path`` chooses):
``aten._convert_weight_to_int4pack(u8, inner_k_tiles)`` takes the codes two a byte, (N, K/2) uint8, even
column in the high nibble, N a multiple of 8 and K of 16 * inner_k_tiles (2, 4 or 8), and returns int32
tiles; ``aten._weight_int4pack_mm(x, packed, groupsize, scales_and_zeros)`` the same product, bf16 only.
K = 576 is not a multiple of 128: the weight is padded with codes that meet zeros in the padded input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..affine import choose_qparams_affine, dequantize_affine, quantize_affine
from ..formats import FORMATS
from .device import int4_path

__all__ = ["BLOCKSIZES_INT4", "KERNEL_KINDS", "Int4Weights", "quantize_int4", "FusedInt4Linear", "DequantInt4Linear",
           "FusedInt8Linear", "swap_linears", "release_checkpoint"]

BLOCKSIZES_INT4 = FORMATS["int4-tinygemm"].blocksizes   # (32, 64, 128, 256): torch's int4 kernels take these


@dataclass(frozen=True)
class Int4Weights:
    """Asymmetric int4 codes of a (N, K) weight and their block scales, in the kernel's convention.

    stored: (N, Kp) uint8 codes in 0..15 (Kp = K rounded up to the blocksize: the last block padded), scale
    and zero (N, Kp/blocksize) in ``dtype`` (the compute dtype: the kernel reads them in x's dtype, so they
    are rounded to it here once and the reference decodes the very same numbers); zero is the value of
    code 8. ``codes`` is the stored codes without the padding, (N, K).
    """

    padded_codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    blocksize: int
    in_features: int

    @property
    def codes(self) -> torch.Tensor:
        """uint8 (N, K): the codes of the weight's own columns (the padding left out)."""
        return self.padded_codes[:, : self.in_features]

    @property
    def minimum(self) -> torch.Tensor:
        """float32 (N, Kp/blocksize): the value of code 0, zero - 8 * scale (`qlearn.affine`'s "float" domain)."""
        return self.zero.float() - 8 * self.scale.float()

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(N, K) weights ``(q - 8) * scale + zero``, computed in float32 as ``q * scale + minimum``
        (`qlearn.affine.dequantize_affine`), then cast to ``dtype`` (default: the scales' dtype)."""
        n, kp = self.padded_codes.shape
        q = self.padded_codes.view(n, kp // self.blocksize, self.blocksize)    # (N, blocks, blocksize)
        w = dequantize_affine(q, self.scale, self.minimum, "float").view(n, kp)
        return (w[:, : self.in_features] if kp != self.in_features else w).to(dtype or self.scale.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes as stored by the fused layer: half a byte per (padded) code plus the scale/zero pairs."""
        return self.padded_codes.numel() // 2 + 2 * self.scale.numel() * self.scale.element_size()

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / (self.padded_codes.shape[0] * self.in_features)


def quantize_int4(w: torch.Tensor, blocksize: int = 64, dtype: torch.dtype | None = None) -> Int4Weights:
    """Asymmetric min/max int4 of a 2-D weight (N, K) in blocks of ``blocksize`` along K.

    q = round((w - min) / scale) clamped to 0..15 with scale = (max - min) / 15 (at least 1e-12: a flat
    block), ``qlearn.affine``'s "float" domain; scale and zero = min + 8 * scale are then rounded to
    ``dtype`` (default w's dtype). A last partial block (K not a multiple of blocksize) is padded with its
    own last value.

    >>> q = quantize_int4(torch.tensor([[-0.3, 0.45] * 16] * 16), blocksize=32, dtype=torch.float32)
    >>> round(float(q.scale[0, 0]), 6), round(float(q.zero[0, 0]), 6), q.codes[0, :2].tolist()
    (0.05, 0.1, [0, 15])
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise TypeError(f"w must be a 2-D floating tensor (out_features, in_features); got "
                        f"{getattr(w, 'shape', type(w).__name__)} {getattr(w, 'dtype', '')}")
    if blocksize not in BLOCKSIZES_INT4:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES_INT4} (torch's int4 kernels); got {blocksize!r}")
    dtype = dtype or w.dtype
    parts = [_quantize_rows(w[i:i + _ROWS], blocksize, dtype) for i in range(0, w.shape[0], _ROWS)]
    codes, scale, zero = (torch.cat(p) if len(parts) > 1 else p[0] for p in zip(*parts, strict=True))
    return Int4Weights(codes, scale, zero, blocksize, w.shape[1])


_ROWS = 4096   # rows quantized / packed at a time: the float32 temporaries of a 49152 x 576 lm_head stay ~10 MB


def _quantize_rows(w: torch.Tensor, blocksize: int, dtype: torch.dtype):
    """quantize_int4 of some rows: (codes (n, Kp) uint8, scale, zero (n, Kp/blocksize) in dtype)."""
    n, k = w.shape
    pad = -k % blocksize
    wf = w.detach().float()
    if pad:
        wf = F.pad(wf[None], (0, pad), mode="replicate")[0]
    g = wf.view(n, -1, blocksize)                                   # (n, blocks, blocksize)
    scale, lo = choose_qparams_affine(g, 4, "float")                # (n, blocks): (max - min) / 15, min
    scale = scale.clamp_min(1e-12)
    codes = quantize_affine(g, scale, lo, 4, "float").to(torch.uint8).view(n, -1)
    return codes, scale.to(dtype), (lo + 8 * scale).to(dtype)


def _pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """torch's CPU int4 packing of (N, Kp) codes, ``_ROWS`` rows at a time (its int32 input is 4 bytes a code:
    113 MB for the whole lm_head at once). The kernel's layout is blocked by rows, so packing row slices that
    start at multiples of 64 and concatenating them gives the same bytes (tests/test_kernels.py)."""
    return torch.cat([torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes[i:i + _ROWS].int(), 1)
                      for i in range(0, codes.shape[0], _ROWS)])


def _inner_k_tiles(kp: int) -> int:
    """The largest of 8, 4, 2 with Kp a multiple of 16 * it (torch's CUDA int4 tiles); 576 -> 4, 640 -> 8."""
    return next(t for t in (8, 4, 2) if kp % (16 * t) == 0)


def _pack_int4_cuda(codes: torch.Tensor) -> torch.Tensor:
    """torch's CUDA (tinygemm) int4 packing of (N, Kp) codes: two codes a byte, even column high, then
    ``aten._convert_weight_to_int4pack`` into its int32 tiles (N/8, Kp/(16 t), 32, t/2)."""
    u8 = ((codes[:, 0::2] << 4) | codes[:, 1::2]).contiguous()              # (N, Kp/2) uint8
    return torch.ops.aten._convert_weight_to_int4pack(u8, _inner_k_tiles(codes.shape[1]))


class FusedInt4Linear(torch.nn.Module):
    """``nn.Linear`` replacement: torch's fused int4 matmul on packed codes, never a 16-bit weight.

    ``path`` (default: ``int4_path`` of the codes' device) picks torch's kernel: "torch-cpu"
    (``_weight_int4pack_mm_for_cpu``) or "torch-cuda" (``_weight_int4pack_mm``, compute capability >= 8.0;
    its scales are bf16, so they are rounded to bf16 there). A GPU without it takes ``Bnb4bitLinear``
    (``swap_linears`` chooses). The packed layout belongs to the device it was made on: build the layer there.
    Buffers: ``packed`` (the kernel's layout), ``scales_and_zeros`` (Kp/blocksize, N, 2), optional ``bias``.
    A 1536 x 576 layer at blocksize 64: 442,368 + 55,296 bytes (bf16 pairs), 4.5 bits per weight.
    Inputs are cast to the scales' dtype and the output cast back.

    >>> layer = FusedInt4Linear.from_linear(torch.nn.Linear(64, 32), blocksize=32)
    >>> layer(torch.randn(2, 64)).shape, layer.path
    (torch.Size([2, 32]), 'torch-cpu')
    """

    def __init__(self, weights: Int4Weights, bias: torch.Tensor | None = None, path: str | None = None):
        super().__init__()
        path = path or int4_path(weights.padded_codes.device)
        if path not in ("torch-cpu", "torch-cuda"):
            raise ValueError(f"path must be 'torch-cpu' or 'torch-cuda' (bitsandbytes' path is Bnb4bitLinear); "
                             f"got {path!r}")
        n, kp = weights.padded_codes.shape
        rows = 16 if path == "torch-cpu" else 8
        if n % rows:
            raise ValueError(f"out_features must be a multiple of {rows} for torch's int4 kernel ({path}); got {n}")
        self.path, self.in_features, self.out_features, self.blocksize = path, weights.in_features, n, weights.blocksize
        dtype = torch.bfloat16 if path == "torch-cuda" else weights.scale.dtype      # tinygemm reads bf16 only
        pack = _pack_int4 if path == "torch-cpu" else _pack_int4_cuda
        self.register_buffer("packed", pack(weights.padded_codes))
        pairs = torch.stack([weights.scale, weights.zero], -1).to(dtype)      # (N, blocks, 2)
        self.register_buffer("scales_and_zeros", pairs.transpose(0, 1).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        self._pad = kp - weights.in_features

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, blocksize: int = 64, dtype: torch.dtype | None = None):
        return cls(quantize_int4(linear.weight, blocksize, dtype), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.path == "torch-cpu") != (x.device.type == "cpu"):           # moved with .to() after packing
            raise ValueError(f"this layer was packed for {self.path} on {self.packed.device}; got an input on "
                             f"{x.device}: build the layer on the device it runs on (the layouts differ)")
        dtype, lead = x.dtype, x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).to(self.scales_and_zeros.dtype)
        if self._pad:
            x2 = F.pad(x2, (0, self._pad))
        mm = (torch.ops.aten._weight_int4pack_mm_for_cpu if self.path == "torch-cpu"
              else torch.ops.aten._weight_int4pack_mm)
        y = mm(x2.contiguous(), self.packed, self.blocksize, self.scales_and_zeros)   # torch's "groupsize"
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, blocksize={self.blocksize}, "
                f"path={self.path}")


class DequantInt4Linear(torch.nn.Module):
    """The plain-torch reference of ``FusedInt4Linear``: decode the SAME int4 weights to x's dtype on every
    forward (``Int4Weights.dequantize``), then ``F.linear``. Codes stored two per byte, first in the high
    nibble (bitsandbytes' order), so the weight bytes equal the fused layer's.

    >>> q = quantize_int4(torch.randn(32, 64), blocksize=32)
    >>> DequantInt4Linear(q)(torch.randn(1, 64)).shape
    torch.Size([1, 32])
    """

    def __init__(self, weights: Int4Weights, bias: torch.Tensor | None = None):
        super().__init__()
        c = weights.padded_codes
        self.register_buffer("packed", (c[:, 0::2] << 4) | c[:, 1::2])   # (N, Kp/2) uint8
        self.register_buffer("scale", weights.scale)
        self.register_buffer("zero", weights.zero)
        self.register_buffer("bias", None if bias is None else bias.detach().to(weights.scale.dtype))
        self.blocksize, self.in_features, self.out_features = weights.blocksize, weights.in_features, c.shape[0]

    def weights(self) -> Int4Weights:
        """The stored codes unpacked: (N, Kp) uint8, high nibble first."""
        codes = torch.stack([self.packed >> 4, self.packed & 15], -1).view(self.out_features, -1)
        return Int4Weights(codes, self.scale, self.zero, self.blocksize, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights().dequantize(x.dtype)                       # (N, K): the 16-bit copy, every call
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


class FusedInt8Linear(torch.nn.Module):
    """``nn.Linear`` replacement on ``aten._weight_int8pack_mm``: int8 row-wise absmax weights (scale =
    absmax / 127, per output row, in x's dtype), multiplied without a 16-bit copy. 8.0 bits per weight
    plus one scale per row (576 x 1536: 884,736 + 1,152 bytes in bf16).

    >>> FusedInt8Linear.from_linear(torch.nn.Linear(64, 32))(torch.randn(3, 64)).shape
    torch.Size([3, 32])
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        w = weight.detach().float()
        absmax = w.abs().amax(1).clamp_min(1e-12)                    # (N,)
        scale = absmax / 127
        self.register_buffer("weight_int8", (w / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(dtype or weight.dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype or weight.dtype))
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, dtype: torch.dtype | None = None):
        return cls(linear.weight, linear.bias, dtype)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return (self.weight_int8.float() * self.scales.float()[:, None]).to(dtype or self.scales.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, lead = x.dtype, x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).to(self.scales.dtype)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(dtype)


KERNEL_KINDS = tuple(k for f in FORMATS.values() for k in f.kernels)   # ("int8", "int4", "int4-dequant")


def swap_linears(model: torch.nn.Module, kind: str = "int4", blocksize: int = 64, lm_head: bool = False,
                 dtype: torch.dtype | None = None, path: str | None = None) -> int:
    """Replace the ``nn.Linear`` layers of ``model`` in place; returns how many were swapped.

    kind (``KERNEL_KINDS``, the registry's ``Format.kernels``): "int4" (the fused int4 layer of ``path``, format
    "int4-tinygemm": asymmetric, not the symmetric "int4" of ``qlearn.fakequant``), "int8" (FusedInt8Linear,
    row-wise int8 as LLM.int8) or "int4-dequant" (DequantInt4Linear, the dequantize-then-matmul reference on
    the same codes). path (kind "int4"):
    ``int4_path`` of the layer's device by default; "torch-cpu" / "torch-cuda" give ``FusedInt4Linear``,
    "bitsandbytes" (a CUDA GPU below compute capability 8.0) gives ``Bnb4bitLinear``: NF4 blocks of
    ``blocksize``, not asymmetric int4. A ``DequantInt4Linear`` already in the model becomes a
    ``FusedInt4Linear`` on its very codes with kind "int4" (no second quantization, so the two paths
    can be timed on the same weights one after the other; on the bitsandbytes path its decoded weights
    are quantized to NF4). ``lm_head=False`` (default) keeps the output layer in 16-bit: in the embedded
    model it is tied to the token embedding, so quantizing it would ADD a 4-bit copy (49152 x 576)
    beside the 16-bit table the embedding still needs.
    Embedded SmolLM2: 210 layers swapped (30 blocks x 7), 211 with lm_head.

    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    >>> swap_linears(net, "int4", blocksize=32), net[0].path
    (2, 'torch-cpu')
    """
    if kind not in KERNEL_KINDS:
        raise ValueError(f"kind must be one of {KERNEL_KINDS}; got {kind!r}")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [(name, m) for name, m in model.named_modules()
               if (type(m) is torch.nn.Linear or (kind == "int4" and isinstance(m, DequantInt4Linear)))
               and (lm_head or m is not head)]
    for name, linear in targets:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                _swapped(linear, kind, blocksize, dtype, path))
    return len(targets)


def _swapped(linear, kind: str, blocksize: int, dtype, path: str | None) -> torch.nn.Module:
    """The replacement of one layer (see ``swap_linears``)."""
    if kind == "int8":
        return FusedInt8Linear.from_linear(linear, dtype)
    w = linear.packed if isinstance(linear, DequantInt4Linear) else linear.weight
    path = (path or int4_path(w.device)) if kind == "int4" else None
    if path == "bitsandbytes":
        from .bnb4bit import Bnb4bitLinear

        weight = linear.weights().dequantize() if isinstance(linear, DequantInt4Linear) else linear.weight
        return Bnb4bitLinear(weight, linear.bias, blocksize=blocksize, dtype=dtype)
    if isinstance(linear, DequantInt4Linear):
        return FusedInt4Linear(linear.weights(), linear.bias, path)
    q = quantize_int4(linear.weight, blocksize, dtype)
    return FusedInt4Linear(q, linear.bias, path) if kind == "int4" else DequantInt4Linear(q, linear.bias)


def release_checkpoint(model: torch.nn.Module) -> int:
    """Give every parameter of ``model`` memory of its own (a copy); returns the bytes copied.

    transformers loads a safetensors checkpoint as a memory map: the parameters point into the file's
    pages, and every page read counts in the process's RSS for as long as ANY tensor points into the
    map. After ``swap_linears`` replaced the linear layers, the embedded model's tied embedding alone
    (49152 x 576 bf16, 56.6 MB) keeps the whole 263 MB mapping alive; copying what is left releases it.
    Tied parameters stay tied (one Parameter object, copied once).

    >>> net = torch.nn.Linear(4, 2)
    >>> release_checkpoint(net)    # 8 + 2 float32 values
    40
    """
    copied = 0
    with torch.no_grad():
        for param in model.parameters():           # each shared Parameter once
            param.data = param.data.clone()
            copied += param.numel() * param.element_size()
    return copied
