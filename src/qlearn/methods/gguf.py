"""GGUF (llama.cpp) block formats in plain torch: Q8_0, Q4_0, Q4_1 and Q4_K, as bytes.

Every format cuts each row of a weight into blocks along its last dimension and stores a block as
a few float16 numbers followed by packed codes (layouts from llama.cpp's ``ggml-common.h``):

    Q8_0  (32 values, 34 bytes = 8.5 bits/weight):   d fp16 | 32 x int8 q        x = d * q
    Q4_0  (32 values, 18 bytes = 4.5 bits/weight):   d fp16 | 16 bytes           x = d * (q - 8)
    Q4_1  (32 values, 20 bytes = 5.0 bits/weight):   d fp16 | m fp16 | 16 bytes  x = d * q + m
    Q4_K  (256 values, 144 bytes = 4.5 bits/weight): d fp16 | dmin fp16 | 12 bytes of eight 6-bit
          scales and eight 6-bit mins | 128 bytes;  sub-block j of 32: x = d*sc[j] * q - dmin*mn[j]

4-bit packing in Q4_0/Q4_1: byte i of a block holds value i in its LOW nibble and value i + 16 in
its HIGH nibble (not bitsandbytes' "first value high"). Q4_K does the same per 64 values: byte i of
each 32-byte run holds value i of sub-block 2p (low) and of sub-block 2p + 1 (high).

Q8_0, Q4_0 and Q4_1 here give the same bytes as ``gguf.quants.quantize`` (tested); Q4_K's
quantizer is a plain min/max one (llama.cpp searches scales iteratively, so its bytes differ),
and its decoder is tested equal to ``gguf.quants.dequantize`` on the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_choice, check_finite, check_tensor
from ..affine import choose_qparams_affine, dequantize_affine, quantize_affine
from ..formats import FORMATS

__all__ = ["GGUF_TYPES", "GGUFQuantized", "quantize_gguf", "quantize_gguf_weight", "decode_blocks"]

# name -> (values a block, bytes a block), from the registry's GGUF formats (Q8_0, Q4_0, Q4_1, Q4_K)
GGUF_TYPES = {f.name: (f.blocksize, f.block_bytes) for f in FORMATS.values() if f.block_bytes}


def _f16_bytes(v: torch.Tensor) -> torch.Tensor:
    """float32 (n,) -> uint8 (n, 2): the little-endian float16 bytes (round to nearest even)."""
    return v.to(torch.float16).view(torch.uint8).view(-1, 2)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 2) -> float32 (n, 1): read back two bytes a block as float16."""
    return b.contiguous().view(torch.float16).float().view(-1, 1)


def _pack_halves(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes (n, 32) -> (n, 16): value i in the low nibble, value i + 16 in the high nibble."""
    return q[:, :16] | (q[:, 16:] << 4)


def _unpack_halves(b: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 16) -> codes (n, 32), inverse of `_pack_halves`."""
    return torch.cat([b & 0xF, b >> 4], dim=1)


def _recip(d: torch.Tensor) -> torch.Tensor:
    """1/d in float32, 0 where d == 0 (gguf's ``np.where(d == 0, 0, 1 / d)``)."""
    return torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    """(n, 32) float32 -> (n, 34) bytes. d = absmax / 127; q = round(x / d), halves away from zero."""
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    v = blocks * _recip(d)
    a = v.abs()
    q = torch.sign(v) * (a.floor() + torch.floor(2 * (a - a.floor())))   # gguf's np_roundf, op for op
    return torch.cat([_f16_bytes(d.view(-1)), q.to(torch.int8).view(torch.uint8)], dim=1)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """(n, 32) -> (n, 18). d = (the value of largest |x|, with its sign) / -8, zero point 8 ("int" domain of
    `qlearn.affine`, ggml rounding): q = trunc(x / d + 8.5), x ~= d * (q - 8)."""
    imax = blocks.abs().argmax(dim=1, keepdim=True)                  # first index of the largest |x|
    d = blocks.gather(1, imax).view(-1) / -8                          # (n,)
    q = quantize_affine(blocks, d, torch.full_like(d, 8), 4, "int", rounding="ggml").to(torch.uint8)
    return torch.cat([_f16_bytes(d), _pack_halves(q)], dim=1)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    """(n, 32) -> (n, 20). d = (max - min) / 15, m = min ("float" domain of `qlearn.affine`, ggml rounding):
    q = trunc((x - min) / d + 0.5), x ~= d * q + m."""
    d, lo = choose_qparams_affine(blocks, 4, "float")                # (n,) each
    q = quantize_affine(blocks, d, lo, 4, "float", rounding="ggml").to(torch.uint8)
    return torch.cat([_f16_bytes(d), _f16_bytes(lo), _pack_halves(q)], dim=1)


def _pack_k_scales(sc: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and eight 6-bit mins (n, 8) uint8 -> the 12 bytes of Q4_K (n, 12).

    bytes 0-3: sc[0..3] | (sc[4..7] >> 4) << 6;  bytes 4-7: mn[0..3] | (mn[4..7] >> 4) << 6;
    bytes 8-11: (sc[4..7] & 15) | (mn[4..7] & 15) << 4.
    """
    lo = torch.cat([sc[:, :4] | ((sc[:, 4:] >> 4) << 6), mn[:, :4] | ((mn[:, 4:] >> 4) << 6)], dim=1)
    return torch.cat([lo, (sc[:, 4:] & 0xF) | ((mn[:, 4:] & 0xF) << 4)], dim=1)


def _unpack_k_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 12) uint8 -> (sc, mn), each (n, 8) uint8 in 0..63; inverse of `_pack_k_scales`."""
    d, m, md = b[:, 0:4], b[:, 4:8], b[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0xF) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mn


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """(n, 256) -> (n, 144). Per sub-block of 32: scale = (max - min) / 15 and min = -min(x, 0);
    the 8 scales (mins) are stored as 6-bit multiples of d = max scale / 63 (dmin = max min / 63),
    then the codes are recomputed with the scales as stored: q = round((x + dmin*mn) / (d*sc))."""
    sub = blocks.view(-1, 8, 32)                                         # (n, 8 sub-blocks, 32)
    lo = sub.amin(dim=2).clamp(max=0)
    scale, mins = (sub.amax(dim=2) - lo) / 15, -lo                       # (n, 8) each
    d = scale.amax(dim=1, keepdim=True) / 63
    dmin = mins.amax(dim=1, keepdim=True) / 63
    sc = torch.round(scale * _recip(d)).clamp(0, 63).to(torch.uint8)
    mn = torch.round(mins * _recip(dmin)).clamp(0, 63).to(torch.uint8)
    d16, dmin16 = _f16(_f16_bytes(d.view(-1))), _f16(_f16_bytes(dmin.view(-1)))   # as stored
    step = (d16 * sc.float()).unsqueeze(2)                               # (n, 8, 1)
    offset = (dmin16 * mn.float()).unsqueeze(2)
    q = torch.round((sub + offset) * _recip(step)).clamp(0, 15).to(torch.uint8).view(-1, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).view(-1, 128)                  # 4 runs of 32 bytes
    return torch.cat([_f16_bytes(d.view(-1)), _f16_bytes(dmin.view(-1)), _pack_k_scales(sc, mn), qs], dim=1)


_QUANTIZERS = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q4_K": _q4_k}


def decode_blocks(data: torch.Tensor, qtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode GGUF blocks: uint8 (n, bytes a block) -> (codes (n, block values) uint8/int8,
    values (n, block values) float32), with the same float32 operations as gguf-py.
    Worked: a block of 32 ones in Q8_0 stores code 127 and the scale 1/127 as float16 (0.007873535...),
    so it decodes to 127 * 0.007873535 = 0.99993896484375, not 1.

    >>> decode_blocks(quantize_gguf(torch.ones(32), "Q8_0").data, "Q8_0")[1][0, :2].tolist()
    [0.99993896484375, 0.99993896484375]
    """
    check_choice(qtype, "qtype", tuple(GGUF_TYPES))
    b = data.reshape(-1, GGUF_TYPES[qtype][1])
    if qtype == "Q8_0":
        q = b[:, 2:].contiguous().view(torch.int8)
        return q, q.float() * _f16(b[:, :2])
    if qtype == "Q4_0":
        q = _unpack_halves(b[:, 2:])
        d = _f16(b[:, :2]).view(-1)
        return q, dequantize_affine(q, d, torch.full_like(d, 8), "int")
    if qtype == "Q4_1":
        q = _unpack_halves(b[:, 4:])
        return q, dequantize_affine(q, _f16(b[:, :2]).view(-1), _f16(b[:, 2:4]).view(-1), "float")
    sc, mn = _unpack_k_scales(b[:, 4:16])
    qs = b[:, 16:].reshape(-1, 4, 1, 32)
    q = torch.cat([qs & 0xF, qs >> 4], dim=2).reshape(-1, 8, 32)         # (n, 8 sub-blocks, 32)
    step = (_f16(b[:, :2]) * sc.float()).unsqueeze(2)
    offset = (_f16(b[:, 2:4]) * mn.float()).unsqueeze(2)
    return q.reshape(-1, 256), (step * q.float() - offset).reshape(-1, 256)


@dataclass(frozen=True)
class GGUFQuantized:
    """A tensor in one GGUF block format: data uint8 (rows, bytes a row) exactly as a .gguf file
    stores it, the format name, and the input's shape and dtype."""

    data: torch.Tensor
    qtype: str
    shape: torch.Size
    dtype: torch.dtype

    @property
    def codes(self) -> torch.Tensor:
        """The integer codes in the input's shape (int8 for Q8_0, uint8 0..15 for the 4-bit types)."""
        return decode_blocks(self.data, self.qtype)[0].reshape(self.shape)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The decoded values (float32 arithmetic as gguf-py), cast to `dtype` (default: the input's)."""
        return decode_blocks(self.data, self.qtype)[1].reshape(self.shape).to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        """The bytes of the blocks: 18 a block of 32 for Q4_0."""
        return int(self.data.numel())

    @property
    def bits_per_param(self) -> float:
        """8 * block bytes / block values: Q8_0 8.5, Q4_0 4.5, Q4_1 5.0, Q4_K 4.5."""
        return 8 * self.nbytes / self.shape.numel()


def quantize_gguf(x: torch.Tensor, qtype: str = "Q4_0") -> GGUFQuantized:
    """Quantize a float tensor whose last dimension is a multiple of the block size into GGUF blocks.

    x: float (..., cols) with cols % 32 == 0 (256 for Q4_K). Computes in float32 (the input is cast
    first, as gguf-py does). Worked number: Q4_0 on a block whose largest |x| is -2.0 stores
    d = -2.0 / -8 = 0.25, and x = 1.0 gets q = trunc(1.0 / 0.25 + 8.5) = 12.

    >>> quantize_gguf(torch.linspace(-2, 1, 32), "Q4_0").codes[-1].item()
    12
    """
    x = check_tensor(x, "x")
    check_choice(qtype, "qtype", tuple(GGUF_TYPES))
    size, type_size = GGUF_TYPES[qtype]
    if x.shape[-1] % size:
        raise ValueError(f"x's last dimension ({x.shape[-1]}) must be a multiple of {qtype}'s block size {size}")
    flat = x.detach().float().reshape(-1, size)                          # (blocks, size)
    check_finite(flat.abs().amax())
    data = _QUANTIZERS[qtype](flat)                                      # (blocks, type_size)
    rows = math.prod(x.shape[:-1])
    return GGUFQuantized(data.reshape(rows, -1), qtype, x.shape, x.dtype)


def quantize_gguf_weight(w: torch.Tensor, qtype: str = "Q4_0") -> GGUFQuantized:
    """`quantize_gguf` of a weight whose rows need not hold whole blocks, the record in w's shape.

    Rows whose length is a multiple of the block size are quantized as rows. Otherwise (the embedded
    model's rows of 576 hold no whole super-block of 256: llama.cpp falls back to another type there)
    the flattened weight is cut into blocks, which keeps the format's arithmetic; w.numel() must then be
    a multiple of the block size, and `data` is (blocks, bytes a block). Either way `.codes` and
    `.dequantize()` come back in w's shape. Worked number: a (576, 576) weight in Q4_K is 1296
    super-blocks of 256: 186,624 bytes, 4.5 bits a weight.

    >>> q = quantize_gguf_weight(torch.randn(576, 576), "Q4_K")
    >>> q.codes.shape, q.nbytes, q.bits_per_param
    (torch.Size([576, 576]), 186624, 4.5)
    """
    x = check_tensor(w, "w")
    check_choice(qtype, "qtype", tuple(GGUF_TYPES))
    size, type_size = GGUF_TYPES[qtype]
    if x.shape[-1] % size == 0:
        return quantize_gguf(x, qtype)
    if x.numel() % size:
        raise ValueError(f"w has {x.numel()} elements, not a multiple of {qtype}'s block size {size}")
    flat = quantize_gguf(x.reshape(-1, size), qtype)
    return GGUFQuantized(flat.data.reshape(-1, type_size), qtype, x.shape, x.dtype)
