"""Which bitsandbytes code paths a device takes: the same call runs different kernels on different CPUs and GPUs.

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

On a CUDA GPU (bitsandbytes 0.50, ``bitsandbytes/backends/cuda/ops.py`` and ``autograd/_functions.py``):

- a 4-bit layer without gradients calls the op ``bitsandbytes::gemm_4bit``. For up to 4 input rows (each
  generated token at batch 1) it runs a fused kernel that reads the packed codes and the (double-quantized)
  scales; from 5 to 1536 rows a per-GPU table (``_gemm_4bit_use_custom_cuda``) picks that kernel or
  ``dequantize_4bit`` + ``F.linear``; above 1536 rows always the latter. Its tensor-core version runs fp16
  only on compute capability 7.5 (T4), and fp32 compute is fused below 8 rows only. bitsandbytes 0.49 and
  older ran ``gemv_4bit`` (fused) for exactly one row and dequantize + matmul for more (release 0.50.0,
  PR #1949).
- LLM.int8 casts its input to fp16, quantizes it per row, multiplies int8 x int8 -> int32 in cuBLASLt
  (``int8_linear_matmul``) and rescales; outlier columns are multiplied in the activations' 16-bit dtype.

The compute dtype of a 4-bit layer follows the hardware (``default_compute_dtype``): bf16 on a CPU and on
GPUs of compute capability 8.0 or newer, fp16 below (a T4 has no native bf16; ``torch.cuda.is_bf16_supported()``
says True there because its ``including_emulation`` argument defaults to True).

``backend_info(device)`` reports these for a device of this machine (or a model's or tensor's), so a lesson
that states a speed or a byte count can say which path produced it; ``bnb_paths`` is the same decision as a
pure function of (device type, compute capability, versions). What bitsandbytes reports (its version, its
AVX512-BF16 test, the fused CPU kernel it loaded) is read through `qlearn.bnb_interop`, only when called.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from . import bnb_interop

__all__ = ["BackendInfo", "backend_info", "bnb_paths", "default_compute_dtype", "explain_compute_dtype",
           "measured_4bit_path", "avx512_dequantize_misreads"]


@dataclass(frozen=True)
class BackendInfo:
    """The code paths of one device of this machine (strings and bools; ``str()`` gives a short report).

    ``dequantize_4bit``, ``linear4bit`` and ``int8_matmul`` describe the reported ``device``: a CPU or a
    CUDA GPU. ``cpu_capability`` and ``avx512bf16`` are always this machine's CPU.
    """

    torch_version: str
    bitsandbytes_version: str       # "not installed" when missing
    cpu_capability: str             # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...
    avx512bf16: bool                # bitsandbytes.functional.has_avx512bf16()
    dequantize_4bit: str            # which kernel decodes 4-bit weights on `device`
    linear4bit: str                 # what a 4-bit layer does on a forward on `device`
    int8_matmul: str                # what LLM.int8's integer matmul runs on `device`
    cuda: str                       # the GPU's name (the reported one, else GPU 0), or "none"
    device: str = "cpu"             # the reported device: "cpu", "cuda:0", ...
    compute_capability: tuple[int, int] | None = None   # (major, minor) of a CUDA device, else None
    native_bf16: bool | None = None  # CUDA: capability >= 8.0 (bf16 in hardware); None on a CPU
    compute_dtype: str = "bfloat16"  # qlearn's default 4-bit compute dtype there (`default_compute_dtype`)

    @property
    def linear4bit_repacks(self) -> bool:
        """True when a CPU forward repacks Linear4bit weights (and their quant state grows): AVX512-BF16.
        A property of this machine's CPU, also when a GPU is reported (no repack happens on CUDA)."""
        return self.avx512bf16

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def as_dict(self) -> dict:
        return asdict(self) | {"linear4bit_repacks": self.linear4bit_repacks}

    def __str__(self) -> str:
        head = [("torch", self.torch_version), ("bitsandbytes", self.bitsandbytes_version)]
        if self.is_cuda:
            major, minor = self.compute_capability
            rows = head + [
                ("device", f"{self.device} ({self.cuda})"), ("compute capability", f"{major}.{minor}"),
                ("native bf16", "yes (capability >= 8.0)" if self.native_bf16 else
                 "no (capability < 8.0; torch.cuda.is_bf16_supported() counts emulation)"),
                ("4-bit compute dtype (qlearn)", self.compute_dtype),
                ("dequantize_4bit on CUDA", self.dequantize_4bit), ("Linear4bit forward on CUDA", self.linear4bit),
                ("LLM.int8 matmul on CUDA", self.int8_matmul), ("CPU capability (torch)", self.cpu_capability)]
        else:
            rows = head + [
                ("CPU capability (torch)", self.cpu_capability), ("AVX512-BF16", "yes" if self.avx512bf16 else "no"),
                ("dequantize_4bit on CPU", self.dequantize_4bit), ("Linear4bit forward on CPU", self.linear4bit),
                ("LLM.int8 matmul on CPU", self.int8_matmul), ("CUDA", self.cuda)]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _capability(capability) -> tuple[int, int]:
    """A (major, minor) pair of ints, or ValueError naming what came instead."""
    if (not isinstance(capability, (tuple, list)) or len(capability) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in capability)):
        raise ValueError(f"capability must be a (major, minor) pair of ints like (8, 0); got {capability!r}")
    return int(capability[0]), int(capability[1])


def _device(device) -> torch.device:
    """torch.device of a name, a device, a tensor or a module (its ``.device``, else its first parameter);
    None: CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.Tensor):
        return device.device
    if isinstance(device, torch.nn.Module):
        found = getattr(device, "device", None)
        if isinstance(found, torch.device):
            return found
        tensors = [*device.parameters(), *device.buffers()]
        return tensors[0].device if tensors else torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be None, a name like 'cpu' or 'cuda:0', a torch.device, a tensor or a "
                         f"model; got {device!r}") from err


def _device_capability(device: torch.device, capability):
    """The CUDA device's (major, minor): `capability` when given, else read with torch."""
    if capability is not None:
        return _capability(capability)
    if not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but no CUDA device is available to read its compute capability; "
                         "pass capability=(major, minor), e.g. (7, 5) for a T4")
    return _capability(tuple(torch.cuda.get_device_capability(device)))


def default_compute_dtype(device, capability=None) -> torch.dtype:
    """The 4-bit compute dtype qlearn picks for `device`: fp16 on a GPU without native bf16, else bf16.

    device: "cpu", "cuda", "cuda:1", a torch.device (anything but CUDA gets bf16). capability: the CUDA
    device's (major, minor); None reads it. bf16 runs in hardware from compute capability 8.0 (A100, H100/H200,
    RTX 30xx+); a T4 (7.5) emulates it, and bitsandbytes' tensor-core 4-bit kernel there is fp16 only.
    Worked: an H200 is (9, 0) -> bfloat16; a T4 is (7, 5) -> float16.

    >>> default_compute_dtype("cpu"), default_compute_dtype("cuda", (9, 0)), default_compute_dtype("cuda", (7, 5))
    (torch.bfloat16, torch.bfloat16, torch.float16)
    """
    device = _device(device)
    if device.type != "cuda":
        return torch.bfloat16
    return torch.bfloat16 if _device_capability(device, capability) >= (8, 0) else torch.float16


def explain_compute_dtype(device, capability=None) -> str:
    """One sentence: the default compute dtype on `device` and why (what ``load`` prints).

    >>> explain_compute_dtype("cuda", (7, 5)).split(":")[0]
    'float16'
    """
    device = _device(device)
    dtype = str(default_compute_dtype(device, capability)).removeprefix("torch.")
    if device.type != "cuda":
        return f"{dtype}: the CPU default, fp32's range in 16 bits"
    major, minor = _device_capability(device, capability)
    if dtype == "bfloat16":
        return f"{dtype}: compute capability {major}.{minor} >= 8.0 computes bf16 in hardware"
    return (f"{dtype}: compute capability {major}.{minor} < 8.0 has no native bf16, which "
            "torch.cuda.is_bf16_supported() hides by counting emulation; bitsandbytes' tensor-core 4-bit kernel "
            "there is fp16 only")


def _version(text: str) -> tuple[int, ...] | None:
    """(0, 50, 2) from "0.50.2" (or "0.50.0.dev0"); None from "not installed".

    >>> _version("0.50.0.dev0"), _version("not installed")
    ((0, 50, 0), None)
    """
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) if parts else None


_CUDA_DEQUANTIZE = "CUDA kernel: every block decoded with its own absmax (agrees with the format)"
_CUDA_INT8 = ("input cast to fp16 and quantized per row, int8 x int8 -> int32 matmul in cuBLASLt "
              "(bitsandbytes::int8_linear_matmul), rescaled; outlier columns multiplied in 16-bit")


def _cuda_linear4bit(capability: tuple[int, int], version: tuple[int, ...]) -> str:
    """What a no-grad ``Linear4bit`` forward runs on a CUDA GPU (see the module docstring)."""
    if version < (0, 50):
        return ("bitsandbytes::gemv_4bit for one input row (a fused kernel reading the packed 4-bit codes: each "
                "generated token at batch 1); more rows: dequantize_4bit, then a 16-bit matmul")
    text = ("bitsandbytes::gemm_4bit: a fused kernel reads the packed 4-bit codes for up to 4 input rows (each "
            "generated token at batch 1); 5-1536 rows: a per-GPU table picks it or dequantize_4bit + F.linear; "
            "above 1536 rows: dequantize_4bit + F.linear")
    if capability < (7, 5):
        return text + "; below compute capability 7.5: fused below 8 rows only"
    if capability == (7, 5):
        return text + "; compute capability 7.5: from 8 rows fused in fp16 only (bf16, fp32: dequantize + F.linear)"
    return text + " (fp32 compute: fused below 8 rows only)"


def bnb_paths(device_type: str, capability=None, bitsandbytes_version: str = "0.50.2",
              cpu_capability: str = "DEFAULT", avx512bf16: bool = False) -> dict[str, str]:
    """The paths bitsandbytes takes on a device: {"dequantize_4bit", "linear4bit", "int8_matmul"} -> sentence.

    A pure function of what decides it, so every branch is testable on any machine. device_type: "cpu" or
    "cuda"; capability: (major, minor), needed for "cuda"; bitsandbytes_version: "0.50.2" (before 0.50 CUDA
    ran gemv_4bit at one row); cpu_capability / avx512bf16: what torch and bitsandbytes report on a CPU.
    Worked: ("cuda", (7, 5), "0.50.2") -> gemm_4bit, fused at <= 4 rows, fp16 only from 8 rows on a T4.

    >>> bnb_paths("cuda", (9, 0))["linear4bit"].split(": ")[0]
    'bitsandbytes::gemm_4bit'
    >>> bnb_paths("cuda", (9, 0), "0.49.1")["linear4bit"].split(" ")[0]
    'bitsandbytes::gemv_4bit'
    """
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda'; got {device_type!r}")
    if device_type == "cuda":
        capability = _capability(capability)
        version = _version(bitsandbytes_version)
        if version is None:
            missing = f"bitsandbytes {bitsandbytes_version}"
            return {"dequantize_4bit": missing, "linear4bit": missing, "int8_matmul": missing}
        return {"dequantize_4bit": _CUDA_DEQUANTIZE, "linear4bit": _cuda_linear4bit(capability, version),
                "int8_matmul": _CUDA_INT8}
    if cpu_capability == "AVX512":
        dequantize = ("AVX-512 C++ kernel: absmax looked up per row, wrong where rows do not line up with blocks "
                      "(blocksize >= 2048 or an odd last dimension: portable torch path)")
        int8 = "torch._int_mm (int8 x int8 -> int32)"
    else:
        dequantize = "C++ kernel without AVX-512: agrees with the format"
        int8 = "float32 matmul of the int8 values"
    if avx512bf16:
        linear4bit = ("repacks the weight on the first eval forward (blocked layout, double quant undone, "
                      "bf16 absmax), then a fused 4-bit matmul")
    else:
        linear4bit = "dequantizes the whole weight every forward, then a float matmul"
    return {"dequantize_4bit": dequantize, "linear4bit": linear4bit, "int8_matmul": int8}


def measured_4bit_path(ops) -> str:
    """Name the path a 4-bit layer took from the operators a profiler saw in one forward (in any order).

    ops: operator names (a list, or one string that holds them, e.g. "bitsandbytes::gemm_4bit 0.02 ms -> ...").
    Returns "fused (CPU repack)" (``gemv_4bit``: bitsandbytes' CPU kernel after the repack), "fused"
    (``gemm_4bit`` with no decode and no matrix multiply beside it: the CUDA kernel reading 4-bit codes),
    "dequantize + matmul" (``dequantize_4bit``, or ``aten::mm``/``addmm``/``linear`` beside ``gemm_4bit``),
    or "no 4-bit op" (e.g. a bf16 layer).

    >>> measured_4bit_path(["bitsandbytes::gemm_4bit"]), measured_4bit_path("bitsandbytes::gemm_4bit -> aten::mm")
    ('fused', 'dequantize + matmul')
    """
    text = (" ".join(ops) if not isinstance(ops, str) else ops) + " "
    if "gemv_4bit" in text:
        return "fused (CPU repack)"
    if "gemm_4bit" not in text and "dequantize_4bit" not in text:
        return "no 4-bit op"
    if "dequantize_4bit" in text or any(f"aten::{op} " in text for op in ("mm", "addmm", "linear")):
        return "dequantize + matmul"
    return "fused"


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


def backend_info(device=None) -> BackendInfo:
    """Report the bitsandbytes paths `device` takes (4-bit decode, 4-bit forward, int8 matmul, compute dtype).

    device: None (CUDA when available, else the CPU), "cpu", "cuda:0", a torch.device, a tensor or a model
    (its device). A CUDA report names the GPU, its compute capability and whether it has native bf16.

    >>> info = backend_info("cpu"); info.cpu_capability == torch.backends.cpu.get_cpu_capability()
    True
    """
    device = _device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or a CUDA device (what bitsandbytes' paths are described for); "
                         f"got {device}")
    capability = torch.backends.cpu.get_cpu_capability()
    version, bf16 = bnb_interop.version(), bnb_interop.has_avx512bf16()
    if device.type == "cuda":
        gpu = _device_capability(device, None)
        paths = bnb_paths("cuda", gpu, version)
        name = torch.cuda.get_device_name(device)
        return BackendInfo(torch.__version__, version, capability, bf16, cuda=name, device=str(device),
                           compute_capability=gpu, native_bf16=gpu >= (8, 0),
                           compute_dtype=str(default_compute_dtype(device, gpu)).removeprefix("torch."), **paths)
    paths = bnb_paths("cpu", bitsandbytes_version=version, cpu_capability=capability, avx512bf16=bf16)
    if bf16:
        paths["linear4bit"] += bnb_interop.fused_cpu_kernel()
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return BackendInfo(torch.__version__, version, capability, bf16, cuda=cuda, device="cpu", **paths)
