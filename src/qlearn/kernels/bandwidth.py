"""Memory bandwidth, measured: how fast this machine moves bytes and multiplies, and the floor that puts
under the time of one generated token.

Generating one token at batch 1 reads every weight once (and the quantization state with it) and does
only 2 flops per weight, so on most machines the time per token cannot be shorter than
bytes read / bytes per second: the bandwidth floor. Dequantize-then-matmul adds its own traffic: the
16-bit copy it writes and then reads back. At larger batches the same bytes serve more tokens and the
compute floor (2 * weights * batch / flop/s) takes over.

Worked number: 100 MB of weights on a machine that copies 10 GB/s cannot generate faster than
10 ms per token (100 tokens/s). Measure on the device the model runs on (``device=``): a GPU has memory
of its own, far faster than the CPU's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_int
from .device import elapsed

__all__ = ["copy_bandwidth", "matmul_flops", "Floors", "floors"]


def copy_bandwidth(nbytes: int = 64 << 20, repeats: int = 5, device=None) -> float:
    """Bytes per second of ``dst.copy_(src)`` on two float32 tensors of ``nbytes`` each on ``device``, best of
    ``repeats``.

    Counts read + write (2 * nbytes per copy), the traffic a kernel that reads weights and writes a copy
    would make. 64 MiB each is larger than most CPUs' last-level cache (3D V-Cache parts have 96 MB of
    L3: use a larger `nbytes` there), so this is main-memory bandwidth. device:
    where the model runs (default CPU). On a CUDA device the copy is device to device (the GPU's own
    memory), 20 copies a timing, the clock read after ``torch.cuda.synchronize`` (an H200 copied ~4 TB/s).

    >>> copy_bandwidth(1 << 20, repeats=5) > 1e7    # loose: a shared machine may deschedule a copy
    True
    """
    check_int(nbytes, "nbytes", minimum=4096)
    check_int(repeats, "repeats", minimum=1)
    device = torch.device(device or "cpu")
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)                     # touch the pages first
    copies = 1 if device.type == "cpu" else 20

    def run():
        for _ in range(copies):
            dst.copy_(src)

    best = min(elapsed(run, device) for _ in range(repeats))
    return 2 * src.numel() * 4 * copies / best


def matmul_flops(n: int | None = None, dtype: torch.dtype = torch.float32, repeats: int = 3, device=None) -> float:
    """Floating-point operations per second of an (n x n) @ (n x n) matmul in ``dtype`` (2 n^3 flops) on
    ``device`` (default CPU), best of ``repeats`` after one warm-up: the compute ceiling of the roofline.
    n: default 768 on a CPU (0.906 GFLOP per matmul), 4096 on a GPU (137 GFLOP: a smaller one is over
    before the GPU is busy).

    >>> matmul_flops(64, repeats=1) > 1e6
    True
    """
    device = torch.device(device or "cpu")
    n = n or (768 if device.type == "cpu" else 4096)
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    times = [elapsed(lambda: a @ a, device) for _ in range(repeats + 1)]
    return 2 * n**3 / min(times[1:] or times)


@dataclass(frozen=True)
class Floors:
    """What one forward step must at least cost on this machine (seconds) and the bytes behind it.

    weight_bytes: parameters + buffers + quantization state, each read once per step (the tied
    embedding counts once: its full table is read by the output layer). decoded_bytes: the 16-bit
    (or float32) copies dequantize-then-matmul writes and reads back, per step. linear_params: weights
    of the layers that multiply (2 flops each per token).
    """

    weight_bytes: int
    decoded_bytes: int
    linear_params: int
    bytes_per_s: float
    flops_per_s: float

    def memory_s(self, with_decoded: bool = True) -> float:
        """Bandwidth floor of one step (seconds): bytes moved / bytes per second."""
        return (self.weight_bytes + (self.decoded_bytes if with_decoded else 0)) / self.bytes_per_s

    def compute_s(self, tokens: int) -> float:
        """Compute floor of one step over ``tokens`` tokens: 2 * linear_params * tokens / flop/s."""
        return 2 * self.linear_params * tokens / self.flops_per_s

    def floor_s(self, tokens: int) -> float:
        """The roofline: the larger of the two floors."""
        return max(self.memory_s(), self.compute_s(tokens))


def floors(weight_bytes: int, decoded_bytes: int, linear_params: int, bytes_per_s: float,
           flops_per_s: float) -> Floors:
    """Bundle measured bytes and speeds into ``Floors`` (checks they are positive).

    >>> f = floors(100_000_000, 0, 50_000_000, 10e9, 100e9)
    >>> round(f.memory_s() * 1e3, 1), round(f.compute_s(1) * 1e3, 1), round(f.floor_s(64) * 1e3, 1)
    (10.0, 1.0, 64.0)
    """
    for name, value in (("weight_bytes", weight_bytes), ("bytes_per_s", bytes_per_s), ("flops_per_s", flops_per_s)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0; got {value!r}")
    if decoded_bytes < 0 or linear_params < 0:
        raise ValueError(f"decoded_bytes and linear_params must be >= 0; got {decoded_bytes!r}, {linear_params!r}")
    return Floors(int(weight_bytes), int(decoded_bytes), int(linear_params), float(bytes_per_s), float(flops_per_s))


