"""backend_info: which bitsandbytes paths this machine takes, checked against what bitsandbytes does here (the layout a
real Linear4bit gets after a forward, the ops a profiler sees, what its dequantize_4bit returns) and against the
installed bitsandbytes' own source for the CUDA branch, which runs through the pure function bnb_paths and a faked
CUDA device (the GPU's answers monkeypatched), so it runs without a GPU."""

import doctest
import logging
import re
from pathlib import Path

import bitsandbytes
import bitsandbytes.functional as bnbf
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import qlearn as ql
from qlearn import backend, bnb_interop
from qlearn.backend import avx512_dequantize_misreads

torch._dynamo.config.disable = True   # bitsandbytes wraps its portable decoder in torch.compile: run it eagerly


def test_backend_info_reports_this_machine():
    info = ql.backend_info()
    assert info.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert info.avx512bf16 == bool(bnbf.has_avx512bf16()) == info.linear4bit_repacks
    assert info.bitsandbytes_version == bitsandbytes.__version__ and info.torch_version == torch.__version__
    assert info.cuda == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
    text = str(info)
    assert f"CPU capability (torch)     {info.cpu_capability}" in text and len(text.splitlines()) == 8
    assert info.as_dict()["linear4bit_repacks"] == info.avx512bf16


def _ops(fn) -> list[str]:
    """Names of the operators a CPU profiler saw while ``fn()`` ran (inference mode)."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


def test_what_backend_info_says_a_linear4bit_does_is_what_it_does_here():
    """A real Linear4bit, two eval forwards in bf16: the layout its weight has after the first (repacked on an
    AVX512-BF16 CPU, flat elsewhere) and the path the profiler sees on the second are what the report says."""
    info = ql.backend_info("cpu")
    layer = bitsandbytes.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bitsandbytes.nn.Params4bit(torch.randn(64, 128) * 0.05, requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu").eval()
    x = torch.randn(1, 128).to(torch.bfloat16)
    with torch.inference_mode():
        layer(x)
    repacked = bnb_interop.layout(layer.weight) == "cpu-blocked"
    path = backend.measured_4bit_path(_ops(lambda: layer(x)))
    assert repacked == info.linear4bit_repacks == info.linear4bit.startswith("repacks the weight")
    assert path == ("fused (CPU repack)" if repacked else "dequantize + matmul")
    assert ("dequantizes the whole weight" in info.linear4bit) == (path == "dequantize + matmul")


def test_what_backend_info_says_the_int8_matmul_runs_is_what_runs_here():
    """LLM.int8's integer product: torch._int_mm where the report says so, a float32 matmul elsewhere."""
    info = ql.backend_info("cpu")
    layer = bitsandbytes.nn.Linear8bitLt(128, 64, bias=False, has_fp16_weights=False, threshold=0.0)
    layer.weight = bitsandbytes.nn.Int8Params(torch.randn(64, 128), requires_grad=False, has_fp16_weights=False)
    layer = layer.to("cpu").eval()
    with bnb_interop.quiet_logs():
        ops = _ops(lambda: layer(torch.randn(3, 128).to(torch.float16)))
    assert "bitsandbytes::int8_linear_matmul" in ops
    assert ("aten::_int_mm" in ops) == ("torch._int_mm" in info.int8_matmul)
    if "aten::_int_mm" not in ops:   # the default backend multiplies float32 copies of the codes
        assert "aten::mm" in ops and "float32 matmul" in info.int8_matmul


def test_what_backend_info_says_of_dequantize_4bit_is_what_it_returns_here():
    """On a (64, 64) tensor in blocks of 128 (rows shorter than a block) bitsandbytes' dequantize_4bit decodes with
    the wrong absmax exactly where the report says so; qlearn's decode of the same bytes is the reference."""
    info = ql.backend_info("cpu")
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    packed, state = bnbf.quantize_4bit(x, blocksize=128, quant_type="nf4")
    theirs = bnbf.dequantize_4bit(packed, state).reshape(64, 64)
    ours = ql.Quantized4bit.from_bitsandbytes(packed, state).dequantize(torch.float32)
    wrong = not torch.equal(theirs, ours)
    assert wrong == ("wrong" in info.dequantize_4bit) == avx512_dequantize_misreads((64, 64), 128)
    if wrong:
        assert float(((theirs - x) ** 2).mean()) > 2 * float(((ours - x) ** 2).mean())


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
    assert "own C++ kernel" in bnb_interop.fused_cpu_kernel()
    monkeypatch.setattr(ops, "gemm_4bit_forward_kernel", lambda *a: None)
    assert "kernels-community" in bnb_interop.fused_cpu_kernel() and "own" not in bnb_interop.fused_cpu_kernel()
    monkeypatch.delattr(ops, "gemm_4bit_forward_kernel")
    assert bnb_interop.fused_cpu_kernel() == ""


def test_hub_kernel_warning_is_explained_inside_qlearns_calls_only(caplog):
    """The warning bitsandbytes 0.50 logs on AVX512-BF16 CPUs when the Hub kernel does not load: rewritten while
    qlearn's own calls run (``quiet_logs``: the reason kept, the fallback named, other records untouched), and
    passed on as bitsandbytes wrote it outside them. The logger's level and filters are the same after."""
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    before = (log.level, list(log.filters))
    message = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
               "`pip install kernels` and the kernels >= 0.11.1")
    with caplog.at_level(logging.WARNING, logger=log.name):
        with bnb_interop.quiet_logs():
            log.warning(message, RuntimeError("offline. retry later"))
            log.warning("something else: %s", 42)
        log.warning(message, RuntimeError("offline. retry later"))
    first, second, outside = (r.getMessage() for r in caplog.records)
    assert "(offline)" in first and "its own fused 4-bit CPU kernel" in first and "pip install" not in first
    assert second == "something else: 42"
    assert outside.startswith("Failed to load CPU gemm_4bit_forward") and "pip install kernels" in outside
    assert (log.level, list(log.filters)) == before


def test_int8_cast_warning_is_dropped_inside_qlearns_calls_only(caplog):
    """LLM.int8 logs "inputs will be cast ... to float16" on every matmul of a bf16 model: dropped inside
    ``quiet_logs`` (qlearn's generate / perplexity / load), logged as usual outside it."""
    layer = bitsandbytes.nn.Linear8bitLt(64, 32, bias=False, has_fp16_weights=False)
    layer.weight = bitsandbytes.nn.Int8Params(torch.randn(32, 64), requires_grad=False, has_fp16_weights=False)
    layer = layer.to("cpu").eval()
    x = torch.randn(2, 64).to(torch.bfloat16)
    name = "bitsandbytes.autograd._functions"
    with caplog.at_level(logging.WARNING, logger=name), torch.inference_mode():
        with bnb_interop.quiet_logs():
            layer(x)
        quiet = len(caplog.records)
        layer(x)
    assert quiet == 0 and "inputs will be cast" in caplog.records[-1].getMessage()
    assert not logging.getLogger(name).filters


# (shape, blocksize) -> misread on an AVX-512 CPU? The 16 wrong decodes once seen there were exactly the True rows.
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


def _installed_source(*parts) -> str:
    """Text of a module of the installed bitsandbytes (read, not imported: the CUDA ops need a GPU to import)."""
    return Path(bitsandbytes.__file__).parent.joinpath(*parts).read_text()


def test_cuda_row_limits_are_the_installed_bitsandbytes():
    """The row counts backend_info gives for a CUDA gemm_4bit (the fused kernel up to 4 rows, dequantize + F.linear
    always above 1536) are the constants the installed bitsandbytes' backends/cuda/ops.py dispatches on: a release
    that moves them fails here."""
    source = _installed_source("backends", "cuda", "ops.py")
    floor = re.search(r"^_GEMM_4BIT_CUSTOM_FLOOR_M = (\d+)$", source, re.M)
    top = re.search(r"^\s+_gemm_4bit_custom_max_m = (\d+)$", source, re.M)       # the first: CUDA's (then ROCm's)
    assert floor and top and 'register_kernel("bitsandbytes::gemm_4bit", "cuda")' in source
    assert "if M <= _GEMM_4BIT_CUSTOM_FLOOR_M:\n        return True" in source   # up to the floor: always fused
    text = backend.bnb_paths("cuda", (9, 0), bitsandbytes.__version__)["linear4bit"]
    assert text.startswith("bitsandbytes::gemm_4bit")
    assert f"up to {floor.group(1)} input rows" in text and f"above {top.group(1)} rows" in text


def test_cpu_int8_kernel_choice_is_the_installed_bitsandbytes():
    """backend_info's CPU int8 sentence follows the condition under which the installed bitsandbytes registers
    torch._int_mm for its CPU int8 matmul (backends/cpu/ops.py): an AVX-512 capability reported by torch."""
    source = _installed_source("backends", "cpu", "ops.py")
    assert '_has_avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"' in source
    assert "and _has_avx512:" in source and "torch._int_mm(" in source
    for capability in ("AVX512", "AVX2", "DEFAULT"):
        int8 = backend.bnb_paths("cpu", cpu_capability=capability)["int8_matmul"]
        assert ("torch._int_mm" in int8) == (capability == "AVX512")


def test_version_strings_are_read_as_numbers():
    """"0.50.0.dev0" is a 0.50 (gemm_4bit); "0.49.1" runs gemv_4bit at one row; no bitsandbytes says so."""
    assert backend.bnb_paths("cuda", (9, 0), "0.50.0.dev0")["linear4bit"].startswith("bitsandbytes::gemm_4bit")
    assert backend.bnb_paths("cuda", (7, 5), "0.49.1")["linear4bit"].startswith("bitsandbytes::gemv_4bit")
    assert set(backend.bnb_paths("cuda", (9, 0), "not installed").values()) == {"bitsandbytes not installed"}


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
