"""Which kernel runs where, and clocks that wait for the device: the device-dependent choices of ``kernels``.

A fused int4 ``Linear`` needs a kernel that reads packed 4-bit codes, and which one exists depends on the device:

- CPU: torch's ``aten._weight_int4pack_mm_for_cpu`` ("torch-cpu");
- CUDA, compute capability 8.0 or newer (A100, H100/H200, RTX 30xx/40xx, L4): torch's
  ``aten._weight_int4pack_mm``, the "tinygemm" kernel, bf16 only ("torch-cuda"). torch builds it for sm80+
  only (``aten/src/ATen/native/cuda/int4mm.cu``; torchao's int4 weight-only path uses the same op);
- CUDA below 8.0 (T4, V100): bitsandbytes' own 4-bit matmul ``bitsandbytes.matmul_4bit`` on NF4 blocks
  ("bitsandbytes"): op ``bitsandbytes::gemm_4bit``, which on CUDA runs a fused kernel for up to 4 input rows
  and, above that, whichever of the fused kernel and dequantize + ``F.linear`` its per-GPU table picks
  (``bitsandbytes/backends/cuda/ops.py``, ``_gemm_4bit_use_custom_cuda``, bitsandbytes 0.50).

A CUDA kernel returns before the GPU has finished: a clock read after it measures the launch, not the work.
Every timing in ``kernels`` therefore calls ``synchronize(device)`` right before reading the clock, as the
torch docs advise (``torch.cuda.synchronize``, "Waits for all kernels in all streams on a CUDA device to complete").
"""

from __future__ import annotations

import time

import torch

__all__ = ["INT4_PATHS", "int4_path", "describe_int4_path", "module_device", "synchronize", "elapsed", "wrote_weight"]

INT4_PATHS = ("torch-cpu", "torch-cuda", "bitsandbytes")

_NOTES = {
    "torch-cpu": "torch's fused int4 CPU kernel aten._weight_int4pack_mm_for_cpu (asymmetric int4, groups along K)",
    "torch-cuda": "torch's fused int4 CUDA kernel aten._weight_int4pack_mm (tinygemm layout, bf16, compute "
                  "capability >= 8.0; asymmetric int4, groups along K)",
    "bitsandbytes": "bitsandbytes' own 4-bit matmul bitsandbytes.matmul_4bit on NF4 blocks (op "
                    "bitsandbytes::gemm_4bit: on CUDA a fused kernel at batch <= 4); torch's int4 CUDA kernel "
                    "needs compute capability >= 8.0",
}


def int4_path(device, capability: tuple[int, int] | None = None) -> str:
    """The fused 4-bit kernel a ``FusedInt4Linear`` on ``device`` uses: one of ``INT4_PATHS``.

    device: a torch.device or its name ("cpu", "cuda", "cuda:1"). capability: the CUDA device's
    (major, minor) compute capability; None reads it with ``torch.cuda.get_device_capability(device)``.
    Worked number: an H200 is (9, 0) -> "torch-cuda"; a T4 is (7, 5) -> "bitsandbytes".

    >>> int4_path("cpu"), int4_path("cuda", (9, 0)), int4_path("cuda:0", (7, 5))
    ('torch-cpu', 'torch-cuda', 'bitsandbytes')
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch.device or a name like 'cpu' or 'cuda'; got {device!r}") from err
    if device.type == "cpu":
        return "torch-cpu"
    if device.type != "cuda":
        raise ValueError(f"device must be a CPU or CUDA device (the fused int4 kernels exist there); got {device}")
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    if (not isinstance(capability, (tuple, list)) or len(capability) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in capability)):
        raise ValueError(f"capability must be a (major, minor) pair of ints like (8, 0); got {capability!r}")
    return "torch-cuda" if tuple(capability) >= (8, 0) else "bitsandbytes"


def describe_int4_path(path: str) -> str:
    """One sentence naming the kernel behind ``path`` (one of ``INT4_PATHS``), for a lesson or a report.

    >>> describe_int4_path("torch-cpu").split(" aten.")[0]
    "torch's fused int4 CPU kernel"
    """
    if path not in _NOTES:
        raise ValueError(f"path must be one of {INT4_PATHS}; got {path!r}")
    return _NOTES[path]


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (else first buffer; CPU if it has neither).

    >>> module_device(torch.nn.Linear(2, 2))
    device(type='cpu')
    """
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def synchronize(device) -> None:
    """Wait until ``device`` has finished the work queued on it (``torch.cuda.synchronize``); a CPU runs
    each op to the end before returning, so nothing to wait for there."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed(fn, device) -> float:
    """Seconds of one call ``fn()``, the device synchronized before the start and before the stop.

    >>> elapsed(lambda: None, "cpu") < 1.0
    True
    """
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def wrote_weight(allocated: int, out_bytes: int, weight_numel: int, itemsize: int) -> bool:
    """Whether a layer's forward wrote a decoded copy of its weight: it allocated at least the weight's size
    in the compute dtype beyond its output. Holds while the input has fewer rows than in * out / (in + out)
    (288 for 576 x 576): a fused kernel allocates little more than its output (and a padded input).

    Worked number: a 576 x 1536 bf16 weight is 1,769,472 bytes; a batch-1 output 1,152 (576 x 2).

    >>> wrote_weight(1_769_472 + 1_152, 1_152, 576 * 1536, 2), wrote_weight(2 * 1_152, 1_152, 576 * 1536, 2)
    (True, False)
    """
    return allocated - out_bytes >= weight_numel * itemsize
