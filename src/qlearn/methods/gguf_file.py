"""Reading tensors out of a .gguf file as stored, with the standard library (no numpy, no gguf package).

File layout (GGUF v3, little-endian): magic b"GGUF", version u32, tensor count u64, metadata count u64;
the metadata (key string, value type u32, value; arrays: element type u32, count u64, elements;
a string: length u64 + UTF-8 bytes); then one record per tensor (name, n_dims u32, dims u64 x n_dims
(fastest-varying first), ggml type u32, offset u64); then the tensor data, which starts at the next
multiple of ``general.alignment`` (32 unless the metadata says otherwise), each tensor at its offset.
gguf-py's GGUFReader builds Python objects for all 147k metadata parts (the tokenizer's vocabulary),
~20 s here; skipping them takes well under a second.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from .gguf import GGUF_TYPES, GGUFQuantized

__all__ = ["GGML_TYPES", "gguf_tensor_infos", "read_gguf_tensor"]

GGML_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0", 12: "Q4_K", 14: "Q6_K", 30: "BF16"}
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _Cursor:
    def __init__(self, f):
        self.f = f

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.f.read(size))

    def string(self) -> str:
        (n,) = self.read("Q")
        return self.f.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool):
        if vtype == 8:
            return self.string()
        if vtype == 9:                                   # array: skipped unless small
            etype, count = self.read("IQ")
            if etype in _SCALAR and not keep:
                self.f.seek(count * struct.calcsize(_SCALAR[etype]), 1)
                return None
            return [self.value(etype, keep) for _ in range(count)]
        return self.read(_SCALAR[vtype])[0]


def gguf_tensor_infos(path) -> tuple[dict, dict]:
    """(scalar metadata {key: value}, tensors {name: (ggml type name, shape (rows, cols), file offset)}).

    Shapes are PyTorch's (the GGUF dims reversed); offsets are absolute positions in the file.
    """
    with open(Path(path), "rb") as f:
        cur = _Cursor(f)
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic)")
        version, n_tensors, n_kv = cur.read("IQQ")
        meta = {"version": version}
        for _ in range(n_kv):
            key = cur.string()
            (vtype,) = cur.read("I")
            value = cur.value(vtype, keep=False)
            if value is not None:
                meta[key] = value
        tensors = {}
        for _ in range(n_tensors):
            name = cur.string()
            (n_dims,) = cur.read("I")
            dims = cur.read("Q" * n_dims)
            ttype, offset = cur.read("IQ")
            tensors[name] = (GGML_TYPES.get(ttype, str(ttype)), tuple(int(d) for d in reversed(dims)), offset)
        align = int(meta.get("general.alignment", 32))
        start = -(-f.tell() // align) * align
    return meta, {k: (t, s, start + o) for k, (t, s, o) in tensors.items()}


def read_gguf_tensor(path, name: str) -> GGUFQuantized:
    """A tensor of a .gguf file as stored (its bytes untouched), e.g. ``"blk.0.ffn_down.weight"``.

    Worked number: the embedded model's ``blk.0.ffn_down.weight`` is Q4_1 (576, 1536): 48 blocks
    of 20 bytes a row, 960 bytes a row.
    """
    _, tensors = gguf_tensor_infos(path)
    if name not in tensors:
        raise ValueError(f"no tensor {name!r} in {path}; it has e.g. {list(tensors)[:3]}")
    qtype, shape, offset = tensors[name]
    if qtype not in GGUF_TYPES:
        raise ValueError(f"{name} is {qtype}; readable types: {', '.join(GGUF_TYPES)}")
    size, type_size = GGUF_TYPES[qtype]
    n_bytes = shape[0] * shape[-1] // size * type_size if len(shape) == 2 else shape[0] // size * type_size
    with open(Path(path), "rb") as f:
        f.seek(offset)
        data = torch.frombuffer(bytearray(f.read(n_bytes)), dtype=torch.uint8)
    return GGUFQuantized(data.view(shape[0] if len(shape) == 2 else 1, -1), qtype, torch.Size(shape), torch.float32)
