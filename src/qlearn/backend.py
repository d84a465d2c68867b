"""Which bitsandbytes code paths this machine takes: the same call runs different kernels on different CPUs.

bitsandbytes 0.50 picks its CPU kernels by what the processor offers (see docs/formats.md in this
repository, "CPU paths"):

- ``dequantize_4bit`` on a CPU where torch reports AVX-512 runs an AVX-512 C++ kernel that looks up
  each block's absmax per ROW of the 2-D shape, so a tensor whose rows do not line up with blocks
  decodes with the wrong scales; blocksize >= 2048 and an odd last dimension take the portable
  pure-torch path instead. Elsewhere the C++ kernel agrees with the format.
- ``Linear4bit`` on a CPU with AVX512-BF16, in eval mode without gradients, REPACKS its weight on the
  first forward (a blocked layout, double quantization undone, bfloat16 absmax) and from then on runs
  a fused 4-bit matmul. Elsewhere each forward dequantizes the whole weight, then runs a float matmul.
- LLM.int8's integer matmul uses ``torch._int_mm`` where torch reports AVX-512, else a float32 matmul.

``backend_info()`` reports these for the machine it runs on, so a lesson that states a speed or a
byte count can say which path produced it. bitsandbytes is imported only when it is called.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

__all__ = ["BackendInfo", "backend_info", "avx512_dequantize_misreads"]


@dataclass(frozen=True)
class BackendInfo:
    """The code paths of this machine (strings and bools; ``str()`` gives a short report)."""

    torch_version: str
    bitsandbytes_version: str       # "not installed" when missing
    cpu_capability: str             # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...
    avx512bf16: bool                # bitsandbytes.functional.has_avx512bf16()
    dequantize_4bit: str            # which CPU kernel decodes 4-bit weights
    linear4bit: str                 # what a 4-bit layer does on a CPU forward
    int8_matmul: str                # what LLM.int8's integer matmul runs on a CPU
    cuda: str                       # the GPU name, or "none"

    @property
    def linear4bit_repacks(self) -> bool:
        """True when a CPU forward repacks Linear4bit weights (and their quant state grows)."""
        return self.avx512bf16

    def as_dict(self) -> dict:
        return asdict(self) | {"linear4bit_repacks": self.linear4bit_repacks}

    def __str__(self) -> str:
        rows = [("torch", self.torch_version), ("bitsandbytes", self.bitsandbytes_version),
                ("CPU capability (torch)", self.cpu_capability), ("AVX512-BF16", "yes" if self.avx512bf16 else "no"),
                ("dequantize_4bit on CPU", self.dequantize_4bit), ("Linear4bit forward on CPU", self.linear4bit),
                ("LLM.int8 matmul on CPU", self.int8_matmul), ("CUDA", self.cuda)]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def avx512_dequantize_misreads(shape, blocksize: int, cpu_capability: str | None = None) -> bool:
    """Whether bitsandbytes' AVX-512 ``dequantize_4bit`` decodes a tensor of `shape` with wrong scales.

    True when the CPU reports AVX-512, blocksize < 2048 (larger ones take the portable path), the last
    dimension is even (odd ones too) and there is more than one row whose length is not a multiple of
    the blocksize: the kernel then reads absmax per row while the blocks run across rows.
    Worked: (64, 64) at blocksize 128 misreads on an AVX-512 CPU; (576, 1536) at 64 does not.

    >>> avx512_dequantize_misreads((64, 64), 128, "AVX512"), avx512_dequantize_misreads((576, 1536), 64, "AVX512")
    (True, False)
    >>> avx512_dequantize_misreads((64, 64), 128, "AVX2")
    False
    """
    capability = torch.backends.cpu.get_cpu_capability() if cpu_capability is None else cpu_capability
    shape = tuple(shape)
    rows = 1
    for s in shape[:-1]:
        rows *= s
    return (capability == "AVX512" and blocksize < 2048 and len(shape) >= 2 and shape[-1] % 2 == 0
            and rows > 1 and shape[-1] % blocksize != 0)


def backend_info() -> BackendInfo:
    """Report the bitsandbytes paths this machine takes (CPU capability, 4-bit decode, 4-bit forward, int8).

    >>> info = backend_info(); info.cpu_capability == torch.backends.cpu.get_cpu_capability()
    True
    """
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnbf
        version, bf16 = bitsandbytes.__version__, bool(bnbf.has_avx512bf16())
    except ImportError:
        version, bf16 = "not installed", False
    if capability == "AVX512":
        dequantize = ("AVX-512 C++ kernel: absmax looked up per row, wrong where rows do not line up with blocks "
                      "(blocksize >= 2048 or an odd last dimension: portable torch path)")
        int8 = "torch._int_mm (int8 x int8 -> int32)"
    else:
        dequantize = "C++ kernel without AVX-512: agrees with the format"
        int8 = "float32 matmul of the int8 values"
    if bf16:
        linear4bit = ("repacks the weight on the first eval forward (blocked layout, double quant undone, "
                      "bf16 absmax), then a fused 4-bit matmul" + _fused_cpu_kernel())
    else:
        linear4bit = "dequantizes the whole weight every forward, then a float matmul"
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return BackendInfo(torch.__version__, version, capability, bf16, dequantize, linear4bit, int8, cuda)


def _fused_cpu_kernel() -> str:
    """Which fused 4-bit CPU kernel bitsandbytes (0.50) picked at import: on AVX512-BF16 CPUs it first tries
    ``kernels-community/quantization-bitsandbytes`` from the Hugging Face Hub (the "Failed to load CPU
    gemm_4bit_forward" warning when that fails, e.g. offline) and otherwise uses its own C++ kernel."""
    try:
        from bitsandbytes.backends.cpu import ops
    except ImportError:
        return ""
    if not hasattr(ops, "gemm_4bit_forward_kernel"):
        return ""
    if ops.gemm_4bit_forward_kernel is None:
        return " (bitsandbytes' own C++ kernel: the Hub's kernels-community one did not load)"
    return " (the kernels-community gemm_4bit_forward, loaded from the Hub)"


class HubKernelNote(logging.Filter):
    """Rewrites one bitsandbytes 0.50 warning into what it means for a learner.

    On an AVX512-BF16 CPU, ``import bitsandbytes`` first tries to fetch the fused 4-bit CPU kernel
    ``kernels-community/quantization-bitsandbytes`` from the Hugging Face Hub. When that fails (offline, or
    the Hub's publisher-trust check) it logs "Failed to load CPU gemm_4bit_forward from kernels-community:
    <reason>. Please make sure you already `pip install kernels` ...", and then uses its own C++ kernel:
    4-bit layers still run fused. The note keeps the reason and says what happens instead.
    """

    PREFIX = "Failed to load CPU gemm_4bit_forward"

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(self.PREFIX):
            reason = str(record.args[0]) if record.args else ""
            record.msg = ("bitsandbytes could not load the Hub's kernels-community 4-bit CPU kernel (%s); it uses "
                          "its own fused 4-bit CPU kernel instead (qlearn.backend_info() shows the path)")
            record.args = (reason.split(". ")[0][:160],)
        return True


def explain_hub_kernel_warning() -> None:
    """Attach ``HubKernelNote`` to bitsandbytes' CPU-ops logger (once; harmless before bitsandbytes is imported)."""
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, HubKernelNote) for f in log.filters):
        log.addFilter(HubKernelNote())
