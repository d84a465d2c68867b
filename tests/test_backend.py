"""backend_info: which bitsandbytes paths this machine takes, read from this machine; the CUDA branch through the
pure function bnb_paths and a faked CUDA device (the GPU's answers monkeypatched), so it runs without a GPU."""

import doctest

import bitsandbytes
import bitsandbytes.functional as bnbf
import pytest
import torch

import qlearn as ql
from qlearn import backend
from qlearn.backend import avx512_dequantize_misreads


def test_backend_info_reports_this_machine():
    info = ql.backend_info()
    assert info.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert info.avx512bf16 == bool(bnbf.has_avx512bf16()) == info.linear4bit_repacks
    assert info.bitsandbytes_version == bitsandbytes.__version__ and info.torch_version == torch.__version__
    assert ("AVX-512" in info.dequantize_4bit and "wrong" in info.dequantize_4bit) == (info.cpu_capability == "AVX512")
    assert ("repacks" in info.linear4bit) == info.avx512bf16
    assert info.cuda == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
    text = str(info)
    assert f"CPU capability (torch)     {info.cpu_capability}" in text and len(text.splitlines()) == 8
    assert info.as_dict()["linear4bit_repacks"] == info.avx512bf16


def test_backend_info_without_bitsandbytes(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name.startswith("bitsandbytes"):
            raise ImportError("no bitsandbytes here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    info = ql.backend_info()
    assert info.bitsandbytes_version == "not installed" and not info.avx512bf16


def test_which_fused_cpu_kernel_bitsandbytes_picked(monkeypatch):
    """On AVX512-BF16 CPUs bitsandbytes 0.50 tries the Hub's kernels-community kernel at import and keeps
    None when it fails; other CPUs never define the name. Each state is reported as it is."""
    from bitsandbytes.backends.cpu import ops

    monkeypatch.setattr(ops, "gemm_4bit_forward_kernel", None, raising=False)
    assert "own C++ kernel" in backend._fused_cpu_kernel()
    monkeypatch.setattr(ops, "gemm_4bit_forward_kernel", lambda *a: None)
    assert "kernels-community" in backend._fused_cpu_kernel() and "own" not in backend._fused_cpu_kernel()
    monkeypatch.delattr(ops, "gemm_4bit_forward_kernel")
    assert backend._fused_cpu_kernel() == ""


def test_hub_kernel_warning_says_what_bitsandbytes_does_instead(caplog):
    """The warning bitsandbytes 0.50 logs on AVX512-BF16 CPUs when the Hub kernel does not load, as a learner
    sees it after ``import qlearn``: the reason kept, the fallback named; other records untouched."""
    import logging

    backend.explain_hub_kernel_warning()          # idempotent: qlearn's import already attached it
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert sum(isinstance(f, backend.HubKernelNote) for f in log.filters) == 1
    with caplog.at_level(logging.WARNING, logger=log.name):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                    "`pip install kernels` and the kernels >= 0.11.1", RuntimeError("offline. retry later"))
        log.warning("something else: %s", 42)
    first, second = (r.getMessage() for r in caplog.records)
    assert "(offline)" in first and "its own fused 4-bit CPU kernel" in first and "pip install" not in first
    assert second == "something else: 42"


# (shape, blocksize) -> misread on an AVX-512 CPU? The 16 failures of issue 8 were exactly the True rows here.
CASES = [
    ((64, 64), 128, True), ((64, 64), 1024, True), ((64, 64), 2048, False), ((64, 64), 64, False),
    ((40, 96), 64, True), ((576, 1536), 64, False), ((127, 33), 64, False), ((4096,), 64, False),
    ((1, 96), 64, False), ((2, 3, 96), 64, True),
]


@pytest.mark.parametrize("shape, blocksize, misread", CASES, ids=str)
def test_avx512_misread_rule(shape, blocksize, misread):
    assert avx512_dequantize_misreads(shape, blocksize, "AVX512") == misread
    assert not avx512_dequantize_misreads(shape, blocksize, "AVX2")
    assert not avx512_dequantize_misreads(shape, blocksize, "DEFAULT")


# ---- the CUDA branch, without a GPU ----

def _fake_gpu(monkeypatch, capability, name):
    """torch reports one CUDA device of `capability` called `name` (nothing else of CUDA is touched)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


@pytest.mark.parametrize("capability, note", [
    ((9, 0), "(fp32 compute: fused below 8 rows only)"), ((8, 0), "(fp32 compute: fused below 8 rows only)"),
    ((7, 5), "compute capability 7.5: from 8 rows fused in fp16 only"), ((7, 0), "fused below 8 rows only"),
], ids=str)
def test_cuda_paths_follow_bitsandbytes_050(capability, note):
    """bitsandbytes 0.50's backends/cuda/ops.py: gemm_4bit, fused up to 4 rows, a per-GPU table to 1536, the
    tensor-core kernel fp16-only on 7.5; int8 in cuBLASLt. No word of the CPU's repack or per-row misread."""
    paths = backend.bnb_paths("cuda", capability, "0.50.2")
    assert paths["linear4bit"].startswith("bitsandbytes::gemm_4bit: a fused kernel") and note in paths["linear4bit"]
    assert "up to 4 input rows" in paths["linear4bit"] and "above 1536 rows" in paths["linear4bit"]
    assert "cuBLASLt" in paths["int8_matmul"] and "fp16" in paths["int8_matmul"]
    assert "agrees with the format" in paths["dequantize_4bit"]
    assert not any("repack" in v or "AVX" in v or "dequantizes the whole weight" in v for v in paths.values())


def test_cuda_paths_before_050_and_without_bitsandbytes():
    old = backend.bnb_paths("cuda", (7, 5), "0.49.1")["linear4bit"]
    assert old.startswith("bitsandbytes::gemv_4bit for one input row") and "gemm_4bit" not in old
    assert "dequantize_4bit, then a 16-bit matmul" in old
    assert backend.bnb_paths("cuda", (9, 0), "0.50.0.dev0")["linear4bit"].startswith("bitsandbytes::gemm_4bit")
    assert set(backend.bnb_paths("cuda", (9, 0), "not installed").values()) == {"bitsandbytes not installed"}


def test_cpu_paths_are_the_ones_backend_info_always_printed():
    fused = backend.bnb_paths("cpu", cpu_capability="AVX512", avx512bf16=True)
    plain = backend.bnb_paths("cpu", cpu_capability="AVX2", avx512bf16=False)
    assert fused["linear4bit"].startswith("repacks the weight on the first eval forward")
    assert "wrong" in fused["dequantize_4bit"]
    assert fused["int8_matmul"] == "torch._int_mm (int8 x int8 -> int32)"
    assert plain == {"dequantize_4bit": "C++ kernel without AVX-512: agrees with the format",
                     "linear4bit": "dequantizes the whole weight every forward, then a float matmul",
                     "int8_matmul": "float32 matmul of the int8 values"}


@pytest.mark.parametrize("args, match", [
    (("mps",), "device_type must be 'cpu' or 'cuda'; got 'mps'"),
    (("cuda",), "capability must be a \\(major, minor\\)"),
    (("cuda", "7.5"), "got '7.5'"), (("cuda", (7, 5, 0)), "got \\(7, 5, 0\\)"),
])
def test_bnb_paths_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        backend.bnb_paths(*args)


@pytest.mark.parametrize("capability, name, native, dtype", [((7, 5), "Tesla T4", False, "float16"),
                                                            ((9, 0), "NVIDIA H200", True, "bfloat16")], ids=str)
def test_backend_info_on_a_cuda_device(monkeypatch, capability, name, native, dtype):
    """A model or tensor on a GPU gets the GPU's report: name, capability, native bf16, compute dtype, CUDA paths.
    The default (no argument) is CUDA when torch sees one; "cpu" still gives the CPU report."""
    _fake_gpu(monkeypatch, capability, name)
    gpu_model = torch.nn.Linear(2, 2)
    gpu_model.device = torch.device("cuda:0")            # as a transformers model carries it
    for device in (None, "cuda", torch.device("cuda:0"), gpu_model):
        info = ql.backend_info(device)
        assert info.device.startswith("cuda") and info.cuda == name and info.compute_capability == capability
        assert info.native_bf16 is native and info.compute_dtype == dtype
        assert info.linear4bit == backend.bnb_paths("cuda", capability, bitsandbytes.__version__)["linear4bit"]
    lines = dict(line.split("  ", 1) for line in str(info).splitlines())
    lines = {k.strip(): v.strip() for k, v in lines.items()}
    assert lines["compute capability"] == f"{capability[0]}.{capability[1]}"
    assert lines["native bf16"].startswith("yes" if native else "no (capability < 8.0")
    assert lines["4-bit compute dtype (qlearn)"] == dtype and lines["device"] == f"cuda:0 ({name})"
    assert lines["Linear4bit forward on CUDA"].startswith("bitsandbytes::gemm_4bit")
    assert "Linear4bit forward on CPU" not in str(info)
    cpu = ql.backend_info("cpu")
    assert cpu.device == "cpu" and cpu.cuda == name and "Linear4bit forward on CPU" in str(cpu)
    assert len(str(cpu).splitlines()) == 8 and cpu.compute_capability is None and cpu.native_bf16 is None
    assert ql.backend_info(torch.nn.Linear(2, 2)).device == "cpu"     # a CPU model: its parameters' device


def test_backend_info_bad_device(monkeypatch):
    with pytest.raises(ValueError, match="device must be None, a name like 'cpu'"):
        ql.backend_info("not-a-device")
    with pytest.raises(ValueError, match="CPU or a CUDA device"):
        ql.backend_info("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device is available"):
        ql.backend_info("cuda")


# ---- which path a profiler saw ----

@pytest.mark.parametrize("ops, path", [
    ("bitsandbytes::gemv_4bit 0.10 ms", "fused (CPU repack)"),
    ("bitsandbytes::gemm_4bit 0.02 ms", "fused"),
    (["bitsandbytes::gemm_4bit", "aten::empty"], "fused"),
    ("bitsandbytes::gemm_4bit 0.05 ms → bitsandbytes::dequantize_4bit 0.3 ms → aten::mm 0.2 ms", "dequantize + matmul"),
    ("bitsandbytes::gemm_4bit 0.05 ms → aten::linear 0.3 ms", "dequantize + matmul"),
    ("aten::linear 0.1 ms → aten::mm 0.1 ms", "no 4-bit op"),
    ("bitsandbytes::gemm_4bit 0.05 ms → aten::mmx 0.1 ms", "fused"),
])
def test_measured_4bit_path(ops, path):
    assert backend.measured_4bit_path(ops) == path


def test_measured_4bit_path_on_this_cpu():
    """What the profiler really sees for bitsandbytes' 4-bit matmul on a CPU without the repack:
    gemm_4bit's portable implementation, which decodes the weight and then multiplies."""
    import bitsandbytes.functional as F
    from torch.profiler import ProfilerActivity, profile

    w = torch.randn(32, 64, dtype=torch.bfloat16)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        bitsandbytes.matmul_4bit(x, packed.t(), quant_state=state)
    names = [e.name for e in prof.events()]
    assert "bitsandbytes::gemm_4bit" in names
    assert backend.measured_4bit_path(names) == "dequantize + matmul"


# ---- the compute dtype ----

@pytest.mark.parametrize("device, capability, dtype", [
    ("cpu", None, torch.bfloat16), (torch.device("cpu"), (7, 5), torch.bfloat16),
    ("cuda", (9, 0), torch.bfloat16), ("cuda", (8, 0), torch.bfloat16), ("cuda:1", (8, 6), torch.bfloat16),
    ("cuda", (7, 5), torch.float16), (torch.device("cuda", 0), (7, 0), torch.float16), ("cuda", (6, 1), torch.float16),
], ids=str)
def test_default_compute_dtype(device, capability, dtype):
    assert backend.default_compute_dtype(device, capability) == dtype
    reason = backend.explain_compute_dtype(device, capability)
    assert reason.startswith(str(dtype).removeprefix("torch.") + ": ")
    if str(device).startswith("cuda"):
        assert f"{capability[0]}.{capability[1]}" in reason and ("no native bf16" in reason) == (dtype == torch.float16)


def test_default_compute_dtype_reads_the_gpu(monkeypatch):
    _fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    assert backend.default_compute_dtype("cuda") == torch.float16
    assert backend.default_compute_dtype(None) == torch.float16       # None: CUDA when available
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert backend.default_compute_dtype("cuda:0") == torch.bfloat16


def test_default_compute_dtype_bad_input(monkeypatch):
    with pytest.raises(ValueError, match="capability must be a \\(major, minor\\) pair of ints"):
        backend.default_compute_dtype("cuda", "7.5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="pass capability=\\(major, minor\\)"):
        backend.default_compute_dtype("cuda")


def test_docstring_examples():
    assert doctest.testmod(backend).failed == 0
