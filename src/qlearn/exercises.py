"""Build-it-yourself checks: a learner writes a short quantizer, a check runs it on real and edge-case inputs
and compares its bytes with `qlearn.reference` (the pass mark) and with bitsandbytes where it is installed.

Each ``check_*(fn, real=None)`` calls the learner's ``fn`` on a list of cases (the lesson's real tensor when
given, else a seeded synthetic one, plus all-zero inputs, a single outlier, odd lengths, exact ties) and
returns a `qlearn.quiz.Result`, shown once as the cell's value: "right" (every case equal to the reference,
byte for byte), "wrong" (which case, which element, yours and the expected value; or the error your function
raised on a case), "unanswered" (``fn`` raised NotImplementedError or returned None: "not written yet") or
"invalid" (it returned the wrong kind of thing: not a tensor, another dtype, a tuple of the wrong length).
A last sentence says whether bitsandbytes' own function gives the same bytes on the same inputs (informative:
the reference is tested equal to it; where the two legitimately differ, the message says why).

Worked number: codes [3, 12] pack to the byte (3 << 4) | 12 = 0x3c = 60; a packer with the nibbles swapped
writes 0xc3 = 195, and the check names that byte.

>>> print(check_absmax_int8(lambda x: None))
[ -- ] absmax_int8: not written yet: complete the function above, run its cell, then this one.
>>> swapped = lambda c: (torch.cat([c, c.new_full((c.numel() % 2,), 7)])[1::2] << 4) | c[0::2]
>>> print(check_pack_4bit(swapped).message.split(". ")[1].split("; ")[0])
codes 3, 12, 0, 15: bytes: 2 of 2 differ, first at index 0: yours 0xc3, expected 0x3c
"""

from __future__ import annotations

import torch

from . import bnb_interop, codebooks, reference
from .quiz import Result

__all__ = ["check_absmax_int8", "check_nearest_nf4", "check_pack_4bit", "check_double_quant", "check_int8_outliers"]


class _Invalid(Exception):
    """The learner's function returned something of the wrong kind (the message says what is expected)."""


class _Wrong(Exception):
    """The right kind of output, of the wrong size: a wrong answer, said in the message."""


def _default_real(real, shape=(64, 96)) -> torch.Tensor:
    """The lesson's real tensor as float32 on the CPU, or a seeded heavy-tailed stand-in of `shape`."""
    if real is None:
        g = torch.Generator().manual_seed(0)
        t = torch.randn(shape, generator=g) * 0.02
        t.view(-1)[:: 997] *= 20                                 # a few large values, as real weights have
        return t
    if not isinstance(real, torch.Tensor) or not real.is_floating_point() or real.numel() == 0:
        raise TypeError(f"real must be a non-empty float tensor (a layer's weight or input), got {real!r:.80}")
    return real.detach().float().cpu()


def _tensor(value, what: str, dtype, shape) -> torch.Tensor:
    """The learner's output as a CPU tensor of `dtype` ("int": any integer dtype) holding prod(shape) values,
    reshaped to `shape`; _Invalid saying what was expected otherwise."""
    if not isinstance(value, torch.Tensor):
        raise _Invalid(f"{what} must be a torch tensor, got {type(value).__name__}")
    if dtype == "int" and (value.is_floating_point() or value.dtype == torch.bool):
        raise _Invalid(f"{what} must be an integer tensor, got {value.dtype}")
    if dtype != "int" and value.dtype != dtype:
        raise _Invalid(f"{what} must have dtype {dtype} (int8 / uint8: one byte each), got {value.dtype}: "
                       f"convert with .to({dtype})")
    if value.numel() != torch.Size(shape).numel():
        raise _Wrong(f"{what} holds {value.numel()} values (shape {tuple(value.shape)}), expected "
                     f"{torch.Size(shape).numel()} (shape {tuple(shape)})")
    return value.detach().cpu().reshape(shape)


def _first_diff(name: str, got: torch.Tensor, expected: torch.Tensor, inputs=None, fmt=str) -> str | None:
    """None when equal value for value (a NaN never is), else how many differ and the first one."""
    a, b = got.reshape(-1), expected.reshape(-1)
    if not expected.is_floating_point():
        a, b = a.long(), b.long()
    if torch.equal(a, b):
        return None
    diff = a != b
    i = int(diff.nonzero()[0])
    where = f" (input {float(inputs.reshape(-1)[i]):.6g})" if inputs is not None and inputs.numel() == a.numel() else ""
    return (f"{name}: {int(diff.sum())} of {diff.numel()} differ, first at index {i}{where}: "
            f"yours {fmt(a[i].item())}, expected {fmt(b[i].item())}")


def _run(key: str, fn, cases: list, compare, bnb=None) -> Result:
    """Call ``fn(*args)`` on each (label, args, expected) case; `compare(out, expected, args)` gives None or what
    differs; `bnb(fn_outputs)` gives the line about bitsandbytes. One Result for all cases."""
    if not callable(fn):
        return Result(key, "invalid", f"pass your function itself (no parentheses), got {type(fn).__name__}")
    outputs, wrong = [], []
    for label, args, expected in cases:
        try:
            out = fn(*args)
        except NotImplementedError:
            out = None
        except Exception as err:                                 # the learner's bug: shown, never raised
            return Result(key, "wrong", f"on {label}, your function raised {type(err).__name__}: {err}")
        if out is None:
            return Result(key, "unanswered", "not written yet: complete the function above, run its cell, then "
                                             "this one.")
        try:
            problem = compare(out, expected, args)
        except _Invalid as err:
            return Result(key, "invalid", f"on {label}: {err}.")
        except _Wrong as err:
            problem = str(err)
        outputs.append(out)
        if problem:
            wrong.append(f"{label}: {problem}")
    if wrong:
        shown = "; ".join(wrong[:3]) + (f"; and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        return Result(key, "wrong", f"{len(wrong)} of {len(cases)} cases differ from qlearn.reference. {shown}.")
    line = bnb(outputs) if bnb is not None and bnb_interop.available() else "bitsandbytes is not installed here."
    return Result(key, "right", f"equal to qlearn.reference, byte for byte, on all {len(cases)} cases "
                                f"({', '.join(c[0] for c in cases)}). {line}")


def _bnb_int8(x: torch.Tensor, threshold: float) -> tuple:
    """bitsandbytes' ``int8_vectorwise_quant(x, threshold)``: (codes int8, row absmax float32, columns int64)."""
    return bnb_interop.int8_vectorwise_quant(x, threshold)


def _tally(pairs) -> str:
    same = sum(bool(p) for p in pairs)
    return f"{same} of {len(pairs)}"


# ---- lesson 02: absmax int8 ----------------------------------------------------------------------------

def check_absmax_int8(fn, real=None) -> Result:
    """Check ``fn(x) -> (codes, scale)``: x float32 (n,); codes int8 (n,) = round(x / scale) with
    scale = max|x| / 127 (float32, a 0-d or one-element tensor, or a float); an all-zero x has scale 0, codes 0.
    Compared with `qlearn.reference.absmax_quantize(x, bits=8)`. Worked number: [0.5, -1.27] -> scale 0.01,
    codes [50, -127]."""
    flat = _default_real(real).reshape(-1)
    inputs = {"lesson 02's eight numbers": torch.tensor([-0.31, -0.02, 0.0, 0.04, 0.11, 0.27, 0.58, 1.20]),
              "4,099 real values (odd length)": flat[:4099].contiguous(),
              "all zeros": torch.zeros(7), "one outlier among small values": torch.tensor([0.01] * 30 + [-50.0, 0.02]),
              "largest magnitude negative": torch.tensor([-3.0, 1.0, 0.5, -0.25, 2.0]),
              "a single value": torch.tensor([0.7])}
    cases = [(k, (x.clone(),), reference.absmax_quantize(x, bits=8)) for k, x in inputs.items()]

    def compare(out, ref, args):
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise _Invalid("return two things: (codes, scale)")
        codes = _tensor(out[0], "codes", torch.int8, args[0].shape)
        scale = torch.as_tensor(out[1], dtype=torch.float32).reshape(-1)
        if scale.numel() != 1:
            raise _Invalid(f"scale must be one number, got {scale.numel()}")
        return (_first_diff("scale", scale, ref.scale.reshape(-1), fmt=lambda v: f"{v:.9g}")
                or _first_diff("codes", codes, ref.codes, args[0]))

    def bnb(outs):
        same = [torch.equal(_bnb_int8(x.view(1, -1), 0.0)[0].view(-1), o[0].cpu().view(-1))
                for x, o in zip(inputs.values(), outs, strict=True)]
        return (f"bitsandbytes' int8_vectorwise_quant (one row, x · 127/absmax) gives your codes on {_tally(same)} "
                "cases.")
    return _run("absmax_int8", fn, cases, compare, bnb)


# ---- lesson 03: the nearest NF4 code, and packing two codes a byte ------------------------------------

def _nf4_ref(v: torch.Tensor) -> torch.Tensor:
    """NF4 codes of values already in [-1, 1], from `reference.quantize_4bit` (a 1.0 appended keeps absmax 1)."""
    return reference.quantize_4bit(torch.cat([v, torch.ones(1)]), "nf4", blocksize=4096).codes[: v.numel()]


def _bnb_codes(values: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' NF4 codes (unpacked, high nibble first) of values whose block absmax is 1."""
    packed, _ = bnb_interop.quantize_nf4(values, blocksize=4096)
    return torch.stack([packed.view(-1) >> 4, packed.view(-1) & 15], 1).reshape(-1)[: values.numel()]


def check_nearest_nf4(fn, real=None) -> Result:
    """Check ``fn(v) -> codes``: v float32 (n,) already scaled into [-1, 1]; codes (n,) an integer tensor,
    the index 0..15 of the nearest value of `qlearn.codebooks.NF4`; exactly on a midpoint between two
    codes, the LOWER one (as bitsandbytes). Worked number: 0.5 -> code 12 (0.4407; the midpoint to 0.5626 is 0.5017)."""
    nf4, mids = codebooks.NF4, codebooks.midpoints(codebooks.NF4)
    w = _default_real(real).reshape(-1)[: 64 * 63]
    blocks = w.reshape(-1, 64)
    scaled = (blocks * (1.0 / blocks.abs().amax(1, keepdim=True).clamp(min=1e-38))).reshape(-1).clamp(-1, 1)
    inputs = {"the 16 NF4 values": nf4.clone(), "the 15 midpoints (ties)": mids.clone(),
              "just above each midpoint": torch.nextafter(mids, torch.ones(15)),
              "zero and tiny values": torch.tensor([0.0, 1e-9, -1e-9, 0.03, -0.04, 1.0, -1.0]),
              f"{scaled.numel():,} real weights scaled by their block's absmax": scaled[:4095]}
    cases = [(k, (v.clone(),), _nf4_ref(v)) for k, v in inputs.items()]

    def compare(out, ref, args):
        return _first_diff("codes", _tensor(out, "codes", "int", args[0].shape), ref, args[0])

    def bnb(outs):
        same = [torch.equal(_bnb_codes(torch.cat([v, torch.ones(1)])).long(), torch.cat([o.long().cpu().view(-1),
                torch.tensor([15])])) for v, o in zip(inputs.values(), outs, strict=True)]
        return f"bitsandbytes' quantize_4bit (nf4) picks your codes on {_tally(same)} cases."
    return _run("nearest_nf4", fn, cases, compare, bnb)


def check_pack_4bit(fn, real=None) -> Result:
    """Check ``fn(codes) -> packed``: codes uint8 (n,) in 0..15; packed uint8 (ceil(n / 2),), two codes a byte,
    the FIRST in the HIGH nibble, an odd count padded with code 7 (NF4's 0.0, what bitsandbytes' padding
    0.0 becomes). Compared with `qlearn.reference.quantize_4bit`'s bytes. Worked number: [3, 12] -> [60]."""
    real_codes = reference.quantize_4bit(_default_real(real).reshape(-1)[:4095], "nf4", blocksize=4096).codes
    inputs = {"codes 3, 12, 0, 15": [3, 12, 0, 15], "codes 0..15": list(range(16)),
              "an odd count (15, 3, 12)": [15, 3, 12], "one code (15)": [15],
              f"{real_codes.numel():,} codes of real weights (odd)": real_codes.tolist()}
    inputs = {k: torch.tensor(c, dtype=torch.uint8) for k, c in inputs.items()}
    for c in inputs.values():           # each case holds code 0 or 15 (value -1 or 1): its absmax is 1, codes kept
        assert bool(((c == 0) | (c == 15)).any())
    cases = [(k, (c.clone(),), reference.quantize_4bit(codebooks.NF4[c.long()], "nf4", 4096).packed)
             for k, c in inputs.items()]

    def compare(out, ref, args):
        got = _tensor(out, "packed", torch.uint8, ref.shape)
        return _first_diff("bytes", got, ref, fmt=lambda v: f"0x{int(v):02x}")

    def bnb(outs):
        same = [torch.equal(bnb_interop.quantize_nf4(codebooks.NF4[c.long()], 4096)[0].view(-1), o.cpu().view(-1))
                for c, o in zip(inputs.values(), outs, strict=True)]
        return f"bitsandbytes' quantize_4bit (nf4) stores the same bytes on {_tally(same)} cases."
    return _run("pack_4bit", fn, cases, compare, bnb)


# ---- lesson 05: double quantization's offset -----------------------------------------------------------

def check_double_quant(fn, real=None) -> Result:
    """Check ``fn(absmax) -> (codes, offset, nested_absmax)``: absmax float32 (blocks,) of a 4-bit tensor;
    offset = its mean (float32 scalar); codes uint8 (blocks,) and nested_absmax float32 (ceil(blocks / 256),)
    from `qlearn.quantize_blockwise_8bit(absmax - offset, blocksize=256)`. Compared with
    `qlearn.reference.double_quantize_absmax`. Worked number: [1, 2, 3] -> codes [0, 127, 255], offset 2, [1.0]."""
    w = _default_real(real)
    g = torch.Generator().manual_seed(1)
    inputs = {"the absmax of a real layer (blocks of 64)": reference.quantize_4bit(w, "nf4", 64).absmax,
              "three blocks 1, 2, 3": torch.tensor([1.0, 2.0, 3.0]), "300 blocks (a partial nested block)":
              torch.rand(300, generator=g) * 0.1 + 0.01, "all equal (absmax - offset = 0)": torch.full((10,), 0.5)}
    cases = [(k, (a.clone(),), reference.double_quantize_absmax(a)) for k, a in inputs.items()]

    def compare(out, ref, args):
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise _Invalid("return three things: (codes, offset, nested_absmax)")
        codes = _tensor(out[0], "codes", torch.uint8, ref[0].shape)
        offset = _tensor(torch.as_tensor(out[1]), "offset", torch.float32, ())
        nested = _tensor(out[2], "nested_absmax", torch.float32, ref[2].shape)
        return (_first_diff("offset", offset.reshape(1), ref[1].reshape(1), fmt=lambda v: f"{v:.9g}")
                or _first_diff("nested_absmax", nested, ref[2], fmt=lambda v: f"{v:.9g}")
                or _first_diff("codes", codes, ref[0], args[0]))

    def bnb(outs):
        plain = bnb_interop.quantize_4bit_record(w, "nf4", 64)
        theirs = bnb_interop.quantize_4bit_record(w, "nf4", 64, double_quant=True)
        codes, offset, nested = fn(plain.absmax.clone())                # bitsandbytes' float32 absmax, yours next
        differ = int((codes.cpu() != theirs.absmax).sum())
        same_offset = torch.equal(torch.as_tensor(offset).reshape(1).cpu(), theirs.offset.reshape(1))
        same_nested = torch.equal(nested.cpu(), theirs.nested_absmax)
        why = (" (its CPU kernel's look-up table picks a neighbouring code for a few values: lesson 05, section 5)"
               if differ else "")
        return (f"On the real layer, bitsandbytes' own double quantization: offset "
                f"{'equal' if same_offset else 'DIFFERENT'}, nested absmax {'equal' if same_nested else 'DIFFERENT'}, "
                f"{differ} of {codes.numel():,} codes differ{why}.")
    return _run("double_quant", fn, cases, compare, bnb)


# ---- lesson 06: LLM.int8's outlier split -------------------------------------------------------------------

def check_int8_outliers(fn, real=None) -> Result:
    """Check ``fn(x, threshold) -> (codes, row_absmax, outlier_cols)``: x float32 (rows, cols). Every |x| >=
    threshold (when threshold > 0) is an outlier: left out of its row's absmax; its whole column is zeroed in the
    codes (LLM.int8 multiplies it in 16-bit). codes int8 = round(x · 127 / row_absmax) (an all-zero row: 0),
    row_absmax float32 (rows,), outlier_cols int64 (k,) sorted. Compared with `qlearn.reference.int8_vectorwise`.
    Worked number: [[0.5, -1.27, 0.1, 7.5]], threshold 6 -> codes [[50, -127, 10, 0]], absmax [1.27], cols [3]."""
    if real is None:                                             # 17 tokens x 96 features, two outlier features
        x_real = torch.randn(17, 96, generator=torch.Generator().manual_seed(2))
        x_real[:, [5, 40]] *= 8
    else:
        x_real = _default_real(real)
        x_real = x_real.reshape(-1, x_real.shape[-1])
    section1 = torch.tensor([[0.5, -1.27, 0.1, 7.5], [0.2, 0.4, -0.3, -0.1]])
    inputs = {"lesson 06's matrix, threshold 6": (section1, 6.0), "the same, threshold 0": (section1, 0.0),
              "a value exactly at the threshold": (torch.tensor([[6.0, 1.0, 0.5], [0.5, -2.0, 0.25]]), 6.0),
              "a row of outliers only": (torch.tensor([[7.0, -8.0], [1.0, 2.0]]), 6.0),
              "all zeros": (torch.zeros(3, 5), 6.0),
              f"a real ({x_real.shape[0]} x {x_real.shape[1]}) input, threshold 6": (x_real, 6.0)}
    cases = [(k, (x.clone(), t), reference.int8_vectorwise(x, t)) for k, (x, t) in inputs.items()]

    def compare(out, ref, args):
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise _Invalid("return three things: (codes, row_absmax, outlier_cols)")
        if not isinstance(out[2], torch.Tensor) or out[2].dim() != 1:
            raise _Invalid("outlier_cols must be a 1-d integer tensor (torch.empty(0, dtype=torch.int64) when none)")
        cols = _tensor(out[2], "outlier_cols", "int", out[2].shape)
        if cols.numel() != ref.outlier_cols.numel():
            return (f"outlier_cols: yours {cols.tolist()[:8]}, expected {ref.outlier_cols.tolist()[:8]} "
                    f"({ref.outlier_cols.numel()} columns)")
        return (_first_diff("outlier columns", cols, ref.outlier_cols)
                or _first_diff("row_absmax", _tensor(out[1], "row_absmax", torch.float32, ref.row_absmax.shape),
                               ref.row_absmax, fmt=lambda v: f"{v:.9g}")
                or _first_diff("codes", _tensor(out[0], "codes", torch.int8, args[0].shape), ref.codes, args[0]))

    def bnb(outs):
        same = []
        for (x, t), o in zip(inputs.values(), outs, strict=True):
            codes, absmax, cols = _bnb_int8(x, t)
            same.append(torch.equal(codes, o[0].cpu().reshape(codes.shape)) and torch.equal(cols, o[2].cpu().long())
                        and torch.equal(absmax, o[1].cpu().reshape(-1)))
        return f"bitsandbytes' int8_vectorwise_quant gives your codes, row absmax and columns on {_tally(same)} cases."
    return _run("int8_outliers", fn, cases, compare, bnb)
