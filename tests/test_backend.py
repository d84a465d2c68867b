"""backend_info: which bitsandbytes paths this machine takes, read from this machine."""

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


def test_docstring_examples():
    assert doctest.testmod(backend).failed == 0
