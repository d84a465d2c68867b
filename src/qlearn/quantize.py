"""Code-book quantizers in bitsandbytes' formats: 4-bit blockwise (NF4/FP4, double quant) and 8-bit blockwise.

Every function takes a float tensor (float32 / float16 / bfloat16 / float64) on any device, keeps
that device, and returns a frozen dataclass holding the integer codes plus the small metadata needed
to dequantize. `quantize_4bit` and `int8_vectorwise` are bit-exact with bitsandbytes 0.50.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from . import bnb_interop, codebooks, cuda_rules
from ._checks import check_blocksize, check_choice, check_finite, check_tensor
from ._threads import threads
from .intquant import (
    AbsmaxQuantized,
    Int8Vectorwise,
    ZeroPointQuantized,
    absmax_quantize,
    int8_vectorwise,
    zeropoint_quantize,
)

__all__ = [
    "Quantized4bit", "Blockwise8bit", "quantize_4bit", "cpu_blocked_codes", "quantize_blockwise_8bit",
    "BLOCKSIZES_4BIT", "BLOCKSIZES_8BIT",
    # re-exported from qlearn.intquant so that every quantizer is reachable as qlearn.quantize.<name>
    "AbsmaxQuantized", "ZeroPointQuantized", "Int8Vectorwise", "absmax_quantize", "zeropoint_quantize",
    "int8_vectorwise",
]

BLOCKSIZES_4BIT = (32, 64, 128, 256, 512, 1024, 2048, 4096)
BLOCKSIZES_8BIT = (64, 128, 256, 512, 1024, 2048, 4096)
DQ_BLOCKSIZE = 256   # double quantization: 8-bit blocks of 256 absmax values
DQ_RULES = ("nearest", "bnb_cpu", "bnb_cuda")
RULES = cuda_rules.RULES   # ("bnb_cpu", "bnb_cuda"): whose kernel's rounding the 4-bit codes follow


def _block_absmax(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each block of a flat float32 tensor to [-1, 1]: returns (scaled (n,), absmax (blocks,)).

    Full blocks multiply by the float32 reciprocal 1/absmax; a partial last block divides by its
    absmax (both as bitsandbytes does, so the results agree to the last bit). A zero block keeps
    absmax 0 (its values scale to 0); a zero partial block stores 1e-38, again as bitsandbytes.
    """
    n = flat.numel()
    full = n - n % blocksize
    blocks = flat[:full].view(-1, blocksize)                  # (blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)                         # (blocks,)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).view(-1)
    if full < n:
        am = flat[full:].abs().amax().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.view(1)])
        scaled = torch.cat([scaled, flat[full:] / am])
    check_finite(absmax)
    return scaled.clamp_(-1, 1), absmax


def cpu_blocked_codes(data: torch.Tensor, rows: int, cols: int, block_rows: int = 32) -> torch.Tensor:
    """uint8 (rows, cols) 4-bit codes of a weight in bitsandbytes' CPU blocked layout.

    data: uint8 (rows, cols / 2). Layout: the rows go in groups of `block_rows` (32); for each group
    and each pair of columns (2j, 2j + 1), 32 bytes hold its 64 codes in the order
    (row 0 col 2j, row 0 col 2j+1, row 1 col 2j, ...): the LOW nibbles of the 32 bytes carry codes
    0..31 and the HIGH nibbles codes 32..63. Worked: a group's first byte 0x5A holds code 10 (row 0,
    column 2j) and code 5 (row 16, column 2j).

    >>> cpu_blocked_codes(torch.full((32, 1), 0x5A, dtype=torch.uint8), 32, 2)[[0, 16], 0].tolist()
    [10, 5]
    """
    groups = data.reshape(-1, 32)                                   # (rows/32 * cols/2, 32)
    tile = torch.cat([groups & 0xF, groups >> 4], dim=1)            # (rows/32 * cols/2, 64) codes in order
    tile = tile.view(rows // block_rows, cols // 2, block_rows, 2)  # (row group, column pair, row, 2)
    return tile.transpose(1, 2).reshape(rows, cols)


@dataclass(frozen=True)
class Quantized4bit:
    """A 4-bit blockwise quantized tensor, stored as bitsandbytes stores it.

    packed: uint8 (ceil(n / 2),), two codes a byte, the FIRST element in the HIGH nibble
    (byte i = code[2i] << 4 | code[2i+1]); an odd count is padded with the code of 0.0.
    absmax: float32 (blocks,); with double quant uint8 (blocks,) codes of ``absmax - offset``.
    offset: float32 scalar, the mean absmax (double quant only); nested_absmax: float32
    (ceil(blocks / 256),), the absmax of each group of 256 absmax values (double quant only).
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    quant_type: str
    blocksize: int
    offset: torch.Tensor | None = None
    nested_absmax: torch.Tensor | None = None
    dq_rule: str | None = None
    rule: str = "bnb_cpu"

    @property
    def double_quant(self) -> bool:
        return self.offset is not None

    @classmethod
    def from_bitsandbytes(cls, packed: torch.Tensor, quant_state) -> Quantized4bit:
        """Read a bitsandbytes 4-bit weight (``Linear4bit.weight.data`` and its ``quant_state``)
        into this form, so qlearn's own decoder can dequantize a loaded model's real bytes.

        Both layouts are read exactly: the flat one bitsandbytes quantizes into, and the CPU blocked
        one a ``Linear4bit`` switches to on its first forward on an AVX512-BF16 CPU (see
        `cpu_blocked_codes`). The latter keeps a bfloat16 absmax (double quant undone), which this
        record then holds as it is. The fields are read by `qlearn.bnb_interop.state_4bit` (no
        bitsandbytes import).
        """
        s = bnb_interop.state_4bit(packed, quant_state)
        if s["layout"] == "cpu-blocked":
            rows, cols = s["shape"]
            codes = cpu_blocked_codes(s["packed"].view(torch.uint8), rows, cols)     # (rows, cols)
            return cls(_pack(codes.reshape(-1)), s["absmax"], s["shape"], s["dtype"], s["quant_type"],
                       s["blocksize"])
        nested = s["offset"] is not None
        return cls(s["packed"].reshape(-1).view(torch.uint8), s["absmax"], s["shape"], s["dtype"],
                   s["quant_type"], s["blocksize"], offset=s["offset"], nested_absmax=s["nested_absmax"],
                   dq_rule=s["rule"] if nested else None, rule=s["rule"])

    @property
    def codes(self) -> torch.Tensor:
        """uint8 codes 0..15 in the input's shape: the packed bytes unpacked (high nibble first)."""
        codes = torch.stack([self.packed >> 4, self.packed & 0xF], dim=1).view(-1)[: self.shape.numel()]
        return codes.view(self.shape)

    def block_absmax(self) -> torch.Tensor:
        """float32 (blocks,) absmax per block; with double quant the reconstructed one
        ``dynamic[q] * nested_absmax + offset``."""
        if not self.double_quant:
            return self.absmax.float()   # float32 already, or the bfloat16 absmax of the CPU blocked layout
        nested = Blockwise8bit(self.absmax, self.nested_absmax, torch.Size([self.absmax.numel()]),
                               torch.float32, DQ_BLOCKSIZE, self.dq_rule)
        return nested.dequantize() + self.offset

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """code[q] * absmax in float32, cast to `dtype` (default: the input's), in the input's shape.

        Under rule "bnb_cuda" an FP4 code is decoded as the CUDA kernel does, magnitude times the sign
        bit's +-1, so code 8 gives -0.0 (the CPU backend's table gives +0.0; equal as numbers)."""
        code = _table(self.quant_type, str(self.packed.device))[0]
        q = self.codes.reshape(-1).long()
        if self.rule == "bnb_cuda" and self.quant_type == "fp4":
            values = code[q & 7] * (1 - 2 * (q >> 3))          # (n,) float32, -0.0 for code 8
        else:
            values = code[q]                                   # (n,) float32
        absmax = self.block_absmax()
        full = values.numel() - values.numel() % self.blocksize
        out = torch.empty_like(values)
        out[:full] = (values[:full].view(-1, self.blocksize) * absmax[: full // self.blocksize, None]).view(-1)
        out[full:] = values[full:] * absmax[-1]
        return out.view(self.shape).to(dtype or self.dtype)

    @property
    def nbytes_by_part(self) -> dict[str, int]:
        """Storage in bytes by part: packed codes, absmax (float32, bfloat16 or uint8 codes), nested state
        (offset + nested absmax). Code books are shared constants and not counted."""
        nested = 0
        if self.double_quant:
            nested = self.offset.numel() * 4 + self.nested_absmax.numel() * 4
        return {"codes": self.packed.numel(), "absmax": self.absmax.numel() * self.absmax.element_size(),
                "nested": nested}

    @property
    def nbytes(self) -> int:
        """Bytes stored, everything included (the sum of `nbytes_by_part`)."""
        return sum(self.nbytes_by_part.values())

    @property
    def bits_per_param(self) -> float:
        """Measured bits per element, everything included: 4.5 for NF4 with blocks of 64,
        ~4.127 with double quant (plus a hair for a partial block and the offset)."""
        return 8 * self.nbytes / self.shape.numel()


@cache
def _table(name: str, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(code book, sorted midpoints, sort order) for "nf4" / "fp4" / "dynamic" on `device`."""
    code = codebooks.dynamic_map() if name == "dynamic" else codebooks.get_codebook(name)
    order = torch.argsort(code)   # NF4 and the dynamic map are sorted already; FP4 is in bit order
    bounds = codebooks.midpoints(code[order])
    return code.to(device), bounds.to(device), order.to(device)


# The nearest 4-bit code by table look-up. torch.bucketize(v, midpoints) is the plain rule (a value on a
# midpoint takes the lower code); it is a binary search per element. The fast path cuts [-1, 1] into
# CELLS equal cells, each holding at most one midpoint: the code of v is (midpoints in the cells
# before v's cell) + (1 if v is above the midpoint in its own cell). Both are tables of CELLS entries.
CELLS = 1 << 13


def _cell(v: torch.Tensor) -> torch.Tensor:
    """int32 cell index 0..CELLS-1 of values in [-1, 1]; monotone, so a cell's order is the values' order."""
    return torch.mul(v, CELLS / 2).add_(CELLS / 2).to(torch.int32).clamp_(0, CELLS - 1)


@cache
def _cell_tables(quant_type: str, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(below, midpoint, order): uint8 (CELLS,) midpoints in earlier cells; float32 (CELLS,) the midpoint
    inside each cell (+inf where none); uint8 (16,) code of each rank for FP4 (None for sorted NF4)."""
    _, bounds, order = _table(quant_type, "cpu")
    cells = _cell(bounds)                                              # (15,) the cell of each midpoint
    if cells.unique().numel() != cells.numel():
        raise RuntimeError(f"two {quant_type} midpoints share a cell; raise CELLS")   # never for NF4/FP4
    below = torch.searchsorted(cells, torch.arange(CELLS, dtype=torch.int32)).to(torch.uint8)
    midpoint = torch.full((CELLS,), float("inf")).index_put_((cells.long(),), bounds)
    sorted_already = torch.equal(order, torch.arange(16))
    return below.to(device), midpoint.to(device), None if sorted_already else order.to(torch.uint8).to(device)


def _nearest_codes(v: torch.Tensor, quant_type: str) -> torch.Tensor:
    """uint8 codes (v's shape) of float32 values already scaled to [-1, 1]; equal to the rank
    ``torch.bucketize(v, midpoints)`` (mapped to FP4's bit pattern for "fp4")."""
    below, midpoint, order = _cell_tables(quant_type, str(v.device))
    cell = _cell(v).view(-1)
    rank = below.index_select(0, cell).add_(v.reshape(-1) > midpoint.index_select(0, cell))
    codes = rank if order is None else order.index_select(0, rank.int())
    return codes.view(v.shape)


def _pack(codes: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Two 4-bit codes a byte, first element in the high nibble: (c[0::2] << 4) | c[1::2]."""
    pairs = codes.view(-1, 2)   # (n / 2, 2)
    return torch.bitwise_or(pairs[:, 0] << 4, pairs[:, 1], out=out)


def _one_thread(device: torch.device):
    """`qlearn._threads.threads` (1) for CPU work: the caller's thread count is given back after.

    The quantizer is many short element-wise ops; with 2 threads on a 2-core machine where another
    process holds a core, each op waits for the descheduled thread (measured in
    benchmarks/bench_quantize.py: seconds instead of milliseconds). One thread keeps its speed.
    """
    return threads(1 if device.type == "cpu" else None)


CHUNK = 1 << 18   # elements scaled and coded at a time (1 MB of float32: stays in cache)


def _quantize_4bit_packed(flat: torch.Tensor, quant_type: str, blocksize: int):
    """Packed codes (ceil(n / 2),) and float32 absmax (blocks,) of a flat float tensor."""
    n = flat.numel()
    full = n - n % blocksize
    blocks = flat[:full].view(-1, blocksize)                     # (blocks, blocksize), input dtype
    absmax = blocks.abs().amax(dim=1).float()                    # (blocks,) exact in any float dtype
    check_finite(absmax)
    recip = 1.0 / absmax.clamp(min=1e-38)                        # float32 reciprocal, as bitsandbytes
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=flat.device)
    rows = max(1, CHUNK // blocksize)
    for i in range(0, blocks.shape[0], rows):                    # a chunk of `rows` blocks at a time
        j = min(i + rows, blocks.shape[0])
        scaled = (blocks[i:j] * recip[i:j, None]).clamp_(-1, 1)  # (j - i, blocksize) float32
        _pack(_nearest_codes(scaled, quant_type), out=packed[i * blocksize // 2:j * blocksize // 2])
    if full < n:   # a partial last block: its own absmax and a true division, as in _block_absmax
        tail, am = _block_absmax(flat[full:].float(), blocksize)
        absmax = torch.cat([absmax, am])
        v = torch.cat([tail, torch.zeros((n - full) % 2, device=flat.device)])   # odd count: pad with 0.0
        packed[full // 2:] = _pack(_nearest_codes(v, quant_type))
    return packed, absmax


def quantize_4bit(x: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64,
                  double_quant: bool = False, dq_rule: str | None = None, rule: str | None = None) -> Quantized4bit:
    """Quantize `x` to 4 bits in blocks of `blocksize` consecutive elements (bitsandbytes layout).

    x: float tensor of any shape (flattened; a partial last block gets its own absmax).
    quant_type: "nf4" (normal-quantile code book) or "fp4" (bitsandbytes' 4-bit float).
    Each value is scaled by its block's 1/absmax into [-1, 1] and takes the nearest code.
    rule: whose rounding to reproduce, "bnb_cpu" (bitsandbytes' CPU backend: the exact nearest code,
    ties to the lower one) or "bnb_cuda" (its CUDA kernel's decision tree: FP4's -0 for tiny negatives and
    three rounded thresholds; see `qlearn.cuda_rules`); None follows x's device.
    double_quant: quantize the float32 absmax again (8-bit dynamic map, blocks of 256, after
    subtracting their mean `offset`); `dq_rule` picks the nested rounding: "nearest" (the exact
    nearest code), "bnb_cpu" (bitsandbytes' CPU look-up table, to get its bytes exactly) or "bnb_cuda"
    (the CUDA kernel's binary search); None: "nearest" under rule "bnb_cpu", "bnb_cuda" under "bnb_cuda".
    Worked number: block [0.5, -2.0, 1.0] has absmax 2.0, scaled [0.25, -1, 0.5], NF4 codes
    [10, 0, 12] (0.25 is nearest 0.2461, 0.5 is below the 0.4407|0.5626 midpoint 0.5017),
    dequantized [0.4922, -2.0, 0.8814].

    >>> quantize_4bit(torch.tensor([0.5, -2.0, 1.0])).codes.tolist()
    [10, 0, 12]
    """
    x = check_tensor(x, "x")
    check_choice(quant_type, "quant_type", ("nf4", "fp4"))
    check_blocksize(blocksize, "blocksize", BLOCKSIZES_4BIT)
    rule = cuda_rules.default_rule(x) if rule is None else rule
    check_choice(rule, "rule", RULES)
    dq_rule = ("bnb_cuda" if rule == "bnb_cuda" else "nearest") if dq_rule is None else dq_rule
    check_choice(dq_rule, "dq_rule", DQ_RULES)
    flat = x.reshape(-1) if x.dtype != torch.float64 else x.reshape(-1).float()   # float64: coded in float32
    with _one_thread(flat.device):
        coder = _quantize_4bit_packed if rule == "bnb_cpu" else _quantize_4bit_packed_cuda
        packed, absmax = coder(flat, quant_type, blocksize)
        if not double_quant:
            return Quantized4bit(packed, absmax, x.shape, x.dtype, quant_type, blocksize, rule=rule)
        offset = absmax.mean() if rule == "bnb_cpu" else cuda_rules.mean(absmax)
        nested = quantize_blockwise_8bit(absmax - offset, blocksize=DQ_BLOCKSIZE, rule=dq_rule)
    return Quantized4bit(packed, nested.codes, x.shape, x.dtype, quant_type, blocksize,
                         offset=offset, nested_absmax=nested.absmax, dq_rule=dq_rule, rule=rule)


def _quantize_4bit_packed_cuda(flat: torch.Tensor, quant_type: str, blocksize: int):
    """As `_quantize_4bit_packed`, by bitsandbytes' CUDA kernel: every block, the partial one too, times the
    GPU's approximate 1/absmax (`cuda_rules.rcp_approx`; inf for an all-zero block, whose values become
    NaN and take code 0), then the kernel's decision tree (`cuda_rules.codes_4bit`)."""
    n = flat.numel()
    pad = torch.nn.functional.pad(flat, (0, -n % blocksize)).view(-1, blocksize)   # (blocks, blocksize)
    absmax = pad.abs().amax(dim=1).float()                                          # (blocks,)
    check_finite(absmax)
    recip = cuda_rules.rcp_approx(absmax).to(flat.device)
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=flat.device)
    rows = max(1, CHUNK // blocksize // 16)          # codes_4bit compares each value with 15 thresholds
    for i in range(0, pad.shape[0], rows):
        j = min(i + rows, pad.shape[0])
        codes = cuda_rules.codes_4bit(pad[i:j] * recip[i:j, None], quant_type).view(-1)
        end = min(j * blocksize, n + n % 2)          # an odd count keeps one padded 0.0 for its last byte
        _pack(codes[: end - i * blocksize], out=packed[i * blocksize // 2:end // 2])
    return packed, absmax


@dataclass(frozen=True)
class Blockwise8bit:
    """8-bit blockwise quantization with the dynamic map: codes uint8 (x's shape), absmax float32 (blocks,)."""

    codes: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    rule: str = "nearest"

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """dynamic[q] * absmax (float32), cast to `dtype` (default: the input's)."""
        code = _table("dynamic", str(self.codes.device))[0]
        values = code[self.codes.reshape(-1).long()]
        absmax = self.absmax.repeat_interleave(self.blocksize)[: values.numel()]
        return (values * absmax).view(self.shape).to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes stored: one uint8 code an element plus one float32 absmax a block."""
        return self.codes.numel() + 4 * self.absmax.numel()

    @property
    def bits_per_param(self) -> float:
        """8 + 32 / blocksize (8.0078 for blocks of 4096), plus a hair for a partial block."""
        return 8 * self.nbytes / self.shape.numel()


@cache
def _bnb_cpu_lut(device: str) -> torch.Tensor:
    """bitsandbytes' CPU look-up table for the dynamic map, int64 (65536,): entry i is the first
    code k whose midpoint to the next code is >= -1 + 2i/65535 (so code 255 when none is)."""
    _, bounds, _ = _table("dynamic", "cpu")
    grid = -1 + 2 * torch.arange(65536, dtype=torch.float64) / 65535
    return torch.searchsorted(bounds.double(), grid).to(device)   # first bound >= grid value


def _codes_8bit(scaled: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == "bnb_cuda":
        return cuda_rules.codes_dynamic(scaled, _table("dynamic", str(scaled.device))[0])
    if rule == "nearest":
        return torch.bucketize(scaled, _table("dynamic", str(scaled.device))[1], out_int32=True).to(torch.uint8)
    index = ((scaled + 1) * 0.5 * 65535 + 0.5).to(torch.int64)    # uint16 cell of [-1, 1]
    return _bnb_cpu_lut(str(scaled.device))[index].to(torch.uint8)


def quantize_blockwise_8bit(x: torch.Tensor, blocksize: int = 4096, rule: str = "nearest") -> Blockwise8bit:
    """8-bit blockwise quantization with bitsandbytes' dynamic map (256 values, dense near 0).

    x: float tensor, flattened into blocks of `blocksize`; each block scaled by its absmax.
    rule: "nearest" picks the exact nearest code (ties to the lower one); "bnb_cpu" reproduces
    bitsandbytes' CPU kernel, a 65536-cell look-up table that differs on ~0.2% of values; "bnb_cuda"
    its CUDA kernel (a binary search, then a midpoint test; every block times the float32 1/absmax).
    Worked number: x = [1.0, -2.0] has absmax 2.0 and scales to [0.5, -1.0]; the nearest codes are
    0.50078125 and -0.99296875 (the map has no -1), so it comes back as [1.0015625, -1.9859375].

    >>> [round(v, 7) for v in quantize_blockwise_8bit(torch.tensor([1.0, -2.0])).dequantize().tolist()]
    [1.0015625, -1.9859375]
    """
    x = check_tensor(x, "x")
    if blocksize != DQ_BLOCKSIZE:
        check_blocksize(blocksize, "blocksize", BLOCKSIZES_8BIT)
    check_choice(rule, "rule", DQ_RULES)
    with _one_thread(x.device):
        flat = x.reshape(-1).float()
        if rule == "nearest":
            scaled, absmax = _block_absmax(flat, blocksize)
        else:   # the kernels: every block, the partial one too, times an unclamped float32 1/absmax
            absmax = torch.nn.functional.pad(flat.abs(), (0, -flat.numel() % blocksize)).view(-1, blocksize).amax(1)
            check_finite(absmax)
            recip = 1.0 / absmax if rule == "bnb_cpu" else cuda_rules.rcp_approx(absmax).to(flat.device)
            scaled = flat * recip.repeat_interleave(blocksize)[: flat.numel()]
            if rule == "bnb_cpu":   # C++: all-zero block, 0 * inf = NaN -> code 0 (CUDA's search gives 0 too)
                scaled = scaled.nan_to_num_(nan=-1.0).clamp_(-1, 1)
        codes = _codes_8bit(scaled, rule)
    return Blockwise8bit(codes.view(x.shape), absmax, x.shape, x.dtype, blocksize, rule)
