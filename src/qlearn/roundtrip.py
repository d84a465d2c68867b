"""Save a quantized model with ``save_pretrained``, load it back, and compare every tensor byte for byte.

Since bitsandbytes 0.41.3 (its PR #753) and transformers' PR #26037, a 4-bit model serializes: each
``Linear4bit`` weight is written as its packed uint8 codes plus, beside it, the tensors of its quant state
(``weight.absmax``, ``weight.quant_map``, with double quantization ``weight.nested_absmax`` and
``weight.nested_quant_map``) and a small uint8 tensor ``weight.quant_state.bitsandbytes__nf4`` holding the
rest as JSON (blocksize, shape, dtype, the nested offset). `roundtrip` saves to a folder, loads that folder
with ``from_pretrained`` (its config.json carries the quantization config), and compares the two state dicts
(`compare_state_dicts`: same names, dtypes, shapes and bytes); `file_tensors` reads the safetensors headers
(stdlib only) so the file's bytes can be split by `kind` and set against ``ql.memory.footprint``.

Worked number (embedded SmolLM2, nf4 + double quant): 1,323 state-dict tensors (1,322 in the file: lm_head is
tied to the embedding); get_memory_footprint() reports
109,777,792 bytes and the quant state adds 1,685,880; the file's tensors add the code books (16 + 256
float32 values a layer) and the JSON records on top. transformers is imported inside functions only.

The state dicts are compared before the logits check runs a forward. On a CPU with AVX512-BF16, a 4-bit
layer's first forward in eval mode repacks it (``qlearn.bnb_interop.layout`` turns "cpu-blocked": nesting
undone, absmax in bfloat16), and its state dict is then nested again from those values: measured on the
embedded model, 630 of the 1,323 tensors (each of the 210 layers' absmax, nested_absmax and JSON record) then
differ from the ones just loaded, while the codes and the logits stay the same. Two models that have both run
a forward compare equal again.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import bnb_interop
from .memory import footprint

__all__ = ["KINDS", "kind", "file_tensors", "compare_state_dicts", "RoundTrip", "roundtrip"]

KINDS = ("codes", "scales", "code books", "records", "unquantized")
# key suffix -> kind, as transformers writes a bitsandbytes model's state dict (longest suffix first)
_SUFFIXES = ((".nested_quant_map", "code books"), (".quant_map", "code books"), (".nested_absmax", "scales"),
             (".absmax", "scales"), (".SCB", "scales"), (".weight_format", "records"))


def kind(name: str, dtype) -> str:
    """Which of `KINDS` a saved tensor is, from its name and dtype: 8-bit integer weights are "codes"
    (packed 4-bit or int8), their absmax / SCB "scales", quant maps "code books", the JSON-in-uint8 quant
    state "records", anything else (embeddings, norms) "unquantized".

    >>> kind("model.layers.0.mlp.down_proj.weight", "U8"), kind("lm_head.weight", torch.bfloat16)
    ('codes', 'unquantized')
    >>> kind("model.layers.0.mlp.down_proj.weight.quant_state.bitsandbytes__nf4", "U8")
    'records'
    """
    for suffix, k in _SUFFIXES:
        if name.endswith(suffix):
            return k
    if ".quant_state." in name:
        return "records"
    integer = str(dtype).removeprefix("torch.") in ("U8", "I8", "uint8", "int8")
    return "codes" if integer and name.endswith(".weight") else "unquantized"


def file_tensors(folder) -> dict[str, tuple[str, tuple, int]]:
    """{name: (dtype, shape, bytes)} of every tensor in the folder's ``*.safetensors`` files, read from their
    headers (8 bytes little-endian header length, then JSON): the tensors themselves are not loaded.

    >>> import tempfile, safetensors.torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     safetensors.torch.save_file({"w": torch.zeros(3, 2)}, d + "/m.safetensors")
    ...     file_tensors(d)
    {'w': ('F32', (3, 2), 24)}
    """
    out = {}
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {str(folder)!r}")
    for path in files:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, info in header.items():
            if name != "__metadata__":
                start, end = info["data_offsets"]
                out[name] = (info["dtype"], tuple(info["shape"]), end - start)
    return out


def compare_state_dicts(before: dict, after: dict) -> dict[str, list[str]]:
    """{"equal", "different", "missing", "extra"}: names whose tensors are equal (same dtype, shape and every
    byte), differ, are only in `before`, or only in `after`.

    >>> a = {"w": torch.tensor([1, 2], dtype=torch.uint8), "b": torch.ones(2)}
    >>> compare_state_dicts(a, {"w": torch.tensor([1, 3], dtype=torch.uint8), "b": torch.ones(2), "c": torch.ones(1)})
    {'equal': ['b'], 'different': ['w'], 'missing': [], 'extra': ['c']}
    """
    out = {"equal": [], "different": [], "missing": sorted(set(before) - set(after)),
           "extra": sorted(set(after) - set(before))}
    for name in sorted(set(before) & set(after)):
        a, b = before[name], after[name]
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bytes(a), _bytes(b))
        out["equal" if same else "different"].append(name)
    return out


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor (so -0.0 vs 0.0 and NaN payloads count as different)."""
    flat = t.detach().cpu().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else flat.to(torch.uint8)


@dataclass(frozen=True)
class RoundTrip:
    """What `roundtrip` measured: the folder's bytes, the file's tensor bytes by kind, and the comparison."""

    folder_bytes: int            # every file written (safetensors, config.json, generation_config.json)
    file_bytes: dict             # kind -> bytes of the safetensors tensors of that kind
    reported_bytes: int          # the saved model's get_memory_footprint()
    true_bytes: int              # ... plus the quantization state it leaves out (ql.memory.footprint)
    compared: dict = field(repr=False)   # compare_state_dicts(saved model, loaded model)
    same_logits: bool | None     # logits on `check_ids` bit-equal before and after (None: not checked)
    save_s: float
    load_s: float

    @property
    def identical(self) -> bool:
        """Every tensor came back with the same name, dtype, shape and bytes."""
        c = self.compared
        return bool(c["equal"]) and not (c["different"] or c["missing"] or c["extra"])

    @property
    def tensors(self) -> int:
        return len(self.compared["equal"]) + len(self.compared["different"]) + len(self.compared["missing"])


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def roundtrip(model, folder=None, check_ids: torch.Tensor | None = None, keep: bool = False):
    """Save `model` with ``save_pretrained``, load the folder with ``from_pretrained`` on the same device, and
    compare: returns ``(RoundTrip, loaded model or None)``.

    folder: where to save (None: a temporary folder, removed after). check_ids: token ids (1, n): the logits
    of both models on them are compared with ``torch.equal``. keep: return the loaded model (else it is
    freed and None is returned). Works for any transformers model; for a bitsandbytes one the comparison
    covers the packed codes and every quant-state tensor.

    >>> rt, _ = roundtrip(model)  # doctest: +SKIP
    >>> rt.identical, rt.folder_bytes  # doctest: +SKIP
    (True, 111881216)
    """
    from transformers import AutoModelForCausalLM

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "save_pretrained"):
        raise TypeError(f"model must be a transformers model (it has save_pretrained); got {type(model).__name__}")
    fp = footprint(model)
    before = _state(model)
    temp = folder is None
    folder = Path(tempfile.mkdtemp(prefix="qlearn-roundtrip-") if temp else folder)
    try:
        t0 = time.perf_counter()
        model.save_pretrained(folder)
        save_s = time.perf_counter() - t0
        folder_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        by_kind = dict.fromkeys(KINDS, 0)
        for name, (dtype, _, nbytes) in file_tensors(folder).items():
            by_kind[kind(name, dtype)] += nbytes
        t0 = time.perf_counter()
        with bnb_interop.quiet_logs():
            loaded = AutoModelForCausalLM.from_pretrained(folder, device_map=str(model.device))
        loaded.eval()
        load_s = time.perf_counter() - t0
        compared = compare_state_dicts(before, _state(loaded))   # before any forward: see the note above
        same = None
        if check_ids is not None:
            with torch.inference_mode():
                ids = check_ids.to(model.device)
                same = torch.equal(model(ids).logits, loaded(ids).logits)
    finally:
        if temp:
            shutil.rmtree(folder, ignore_errors=True)
    result = RoundTrip(folder_bytes, by_kind, fp.reported_bytes, fp.true_bytes, compared, same, save_s, load_s)
    if keep:
        return result, loaded
    del loaded
    return result, None

