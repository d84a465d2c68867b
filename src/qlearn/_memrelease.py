"""Handing memory back to the operating system on Linux (glibc): what keeps one model at a time small.

Python and torch free a model's tensors, but glibc's allocator keeps freed blocks in its heap, and a
model read from a memory-mapped checkpoint keeps the file's pages in the process's resident set while
any view of them lives, so RSS stays high after ``del model`` and peaks high during a load. Four tricks,
each a no-op where the C library is not glibc (macOS, Windows, musl) or /proc is absent:

- `release_memory`: ``gc.collect()``, the CUDA cache, then glibc's ``malloc_trim(0)`` (free heap pages back);
- `return_big_blocks`: ``mallopt(M_MMAP_THRESHOLD, 1 MiB)``, so blocks of 1 MiB or more get their own map and
  go back to the system the moment they are freed (a lower peak while a 4-bit load frees float32 copies);
- `upcast_unmapped` and `copy_out_of_checkpoint`: ``madvise(MADV_DONTNEED)`` over the checkpoint's file maps
  listed in /proc/self/maps (file pages only: a page touched again is re-read from the file).

Measured on this project's 2-core Linux machine (embedded SmolLM2-135M on the CPU, ``qlearn.load`` then
``del``, RSS from /proc/self/status): after ``del`` and ``gc.collect()`` the process held 532 MB (nf4) and
504 MB (bf16); `release_memory` then gave back 61.6 MB and 31.6 MB (down to 470 and 472 MB): the freed
blocks glibc would otherwise have kept for the next model.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
from pathlib import Path

import torch

__all__ = ["release_memory", "return_big_blocks", "upcast_unmapped", "copy_out_of_checkpoint"]


def _glibc():
    """The C library when it is glibc (Linux), else None (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def release_memory():
    """Give freed model memory back: gc, the CUDA cache, and glibc's heap (so RSS drops between modes)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


_M_MMAP_THRESHOLD = -3   # mallopt's parameter number for the mmap threshold (glibc's malloc.h)


def return_big_blocks(threshold: int = 1 << 20) -> bool:
    """Have glibc serve every block of ``threshold`` bytes (default 1 MiB) or more from its own
    mapping, so that freeing it hands the memory back to the system at once. True where it applied.

    glibc's default threshold starts at 128 KiB but rises each time such a block is freed, up to
    32 MiB; from then on freed blocks of 1-32 MiB stay in its heap. Loading a model in 4 bits frees
    hundreds of them (float32 copies of one weight: 576 x 1536 x 4 B = 3.5 MB in the embedded model),
    so loading it in nf4 peaked at 1.1 GB of RSS with the default and at 0.72 GB with this.
    ``qlearn.models.load`` calls it; perplexity and answers are the same numbers either way.
    """
    libc = _glibc()
    return libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1


_MADV_DONTNEED = 4   # madvise's advice number (Linux): unmap these pages; a file's page is re-read if touched


def _file_maps(suffix: str = ".safetensors") -> list[tuple[int, int]]:
    """(start, end) addresses of this process's memory maps of files named ``*suffix`` (/proc/self/maps)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:   # not Linux
        return []
    spans = [line.split()[0] for line in lines if line.rstrip().endswith(suffix)]
    return [tuple(int(x, 16) for x in span.split("-")) for span in spans]


def _unmap_pages(start: int, end: int, maps) -> None:
    """Unmap the whole pages between two addresses when they lie in one of ``maps`` (file maps: a page
    is read again from the file if touched; never anonymous memory, whose content would be lost)."""
    libc, page = _glibc(), mmap.PAGESIZE
    start, end = -(-start // page) * page, end // page * page      # whole pages only
    if libc is not None and end > start and any(a <= start and end <= b for a, b in maps):
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def upcast_unmapped(model, dtype) -> None:
    """Convert a CPU model still mapped from its checkpoint to ``dtype`` one tensor at a time, unmapping
    each converted tensor's file pages at once.

    ``from_pretrained(dtype=torch.float32)`` on the bf16 embedded model keeps every page of the mapped
    file it has read (0.27 GB) next to the float32 copies (0.54 GB) until the map closes: a 1.3 GB
    peak. Here the peak is the float32 model plus one bf16 tensor. bf16 -> float32 is exact: the same
    weights, the same perplexity. Ties hold (a tied weight is one Parameter, converted once). The
    caller records the new dtype in the model's config.
    """
    maps = _file_maps()
    for module in model.modules():
        for group in (module._parameters, module._buffers):
            for name, tensor in list(group.items()):
                if tensor is None or not tensor.is_floating_point() or tensor.dtype == dtype:
                    continue
                stored = tensor.data
                if isinstance(tensor, torch.nn.Parameter):
                    tensor.data = stored.to(dtype)
                else:
                    group[name] = stored.to(dtype)
                _unmap_pages(stored.data_ptr(), stored.data_ptr() + stored.nbytes, maps)


def copy_out_of_checkpoint(model) -> None:
    """Give the 16-bit weights of a quantized CPU model their own memory, so the checkpoint's map closes.

    transformers maps the safetensors file and keeps the weights it does not quantize (embeddings,
    norms) as views of that map. While one view lives, every page of the file read during loading
    stays in the process's RSS, those of the quantized weights too: 0.21 GB for the embedded model
    in nf4. Those pages are unmapped first (only this model's maps, unwritten since loading), then
    the views are copied: 57 MB, mostly the 49,152 x 576 bf16 embedding (tied with lm_head: one
    Parameter, so the tie holds).
    """
    params = [p for p in model.parameters() if p.device.type == "cpu" and p.dtype.is_floating_point]
    maps = [(a, b) for a, b in _file_maps() if any(a <= p.data_ptr() < b for p in params)]
    for a, b in maps:
        _unmap_pages(a, b, maps)
    for param in params:
        param.data = param.data.clone()
