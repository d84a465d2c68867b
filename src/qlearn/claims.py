"""Claims checked against measurements: the seed article's, and the learner's own predictions.

`seed_claims(measured)` turns the numbers a lesson measured (a plain dict, keys below) into one
`Claim` per statement of the seed article (../shared/seed-article.txt: "load Llama-2 in 8 and 4 bits"),
each with what was measured, a verdict and the lessons that show it. A key that is missing gives the
verdict "not measured". `records(claims)` makes plain dicts for a table (pandas-free: the lesson renders
them; the closing note prints the same). `check_prediction` compares what a learner predicted with
what the run measured, parsing numbers, fractions, percentages, words and orderings tolerantly.
Pure Python: no torch, no pandas.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

__all__ = ["Claim", "Check", "SEED_CLAIMS", "CONSUMER_GPU_GB", "LLAMA_CPP_70B", "QLORA_TABLE2", "seed_claims",
           "records", "parse_number", "check_prediction"]

# The largest memory of a consumer GPU: GeForce RTX 5090, 32 GB (RTX 4090: 24 GB); NVIDIA's spec pages.
CONSUMER_GPU_GB = 32
# llama.cpp tools/perplexity/README.md, "Llama 2 70B Scorechart" (Wikitext-2): perplexity vs fp16 3.4313.
LLAMA_CPP_70B = {"Q4_0": 0.0361, "Q4_1": 0.0237, "Q4_K_M": 0.0120, "Q6_K": 0.0016}
# QLoRA (Dettmers et al. 2023) Table 2: mean Pile-CC perplexity over OPT/LLaMA/Pythia 125M-13B.
QLORA_TABLE2 = {"Int4": 34.34, "FP4 (E2M1)": 31.07, "FP4 (E3M0)": 29.48, "NF4+DQ": 27.41}

# key -> (the seed article's words, lessons that measure it)
SEED_CLAIMS = {
    "int8_quarter": ("INT8: memory 'roughly 1/4th of the full FP16/BF16 model'", "01"),
    "int4_halves": ("INT4 'often halves the memory usage again compared to INT8'", "01"),
    "gb_70b": ("70B: FP16 'over 140GB', INT8 '~70GB', INT4 '~35GB'", "01"),
    "ppl_1pct": ("accuracy loss 'negligible, often less than 1%' in perplexity", "01, 04"),
    "zero_point_qat": ("bitsandbytes uses 'quantization-aware training' and 'zero-point quantization'", "01, 02"),
    "class_names": ("the 8-bit model's layers are 'Int8QaTiedParameters or similar'", "01, 06"),
    "nf4_best": ("NF4 represents normally distributed weights 'more accurately than simple linear quantization'",
                 "01, 03, 04"),
    "dq_saves": ("double quantization 'saving a bit more memory'", "01, 05"),
    "bf16_compute": ("computing in BF16 after dequantizing 'prevents catastrophic accuracy loss'", "01, 07"),
    "consumer_70b": ("a 70B model at 4 bits runs 'on consumer hardware'", "01"),
}


@dataclass(frozen=True)
class Claim:
    """One claim: the article's words, what this run measured (text with the numbers), a verdict
    ("holds", "roughly holds", "partly", "wrong", "not measured") and the lessons that show it."""

    claim: str
    measured: str
    verdict: str
    lessons: str


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB"


def _int8_quarter(m):
    lin, whole = m["int8_over_bf16_linear"], m["int8_over_bf16_model"]
    verdict = "holds" if 0.2 <= lin <= 0.3 else "wrong"
    return (f"int8/bf16: linear weights {lin:.2f} (1 byte vs 2), whole model {whole:.2f}; a quarter is int8 vs fp32",
            verdict)


def _int4_halves(m):
    lin, whole = m["nf4_over_int8_linear"], m["nf4_over_int8_model"]
    verdict = "holds" if lin <= 0.6 and whole <= 0.6 else "partly" if lin <= 0.6 else "wrong"
    return (f"nf4/int8 with scales: linear weights {lin:.2f}, whole model {whole:.2f} "
            "(embeddings and norms stay 16-bit)", verdict)


def _gb_70b(m):
    got = (m["gb_70b_fp16"], m["gb_70b_int8"], m["gb_70b_4bit"])
    close = all(abs(g / 1e9 - want) / want <= 0.1 for g, want in zip(got, (140, 70, 35), strict=True))
    return (f"Llama-2-70B weights (estimate from its config): fp16 {_gb(got[0])}, int8 {_gb(got[1])}, "
            f"nf4+dq {_gb(got[2])}; KV cache and activations come on top", "roughly holds" if close else "wrong")


def _ppl(m):
    loss = m["ppl_4bit"] / m["ppl_bf16"] - 1
    published = ", ".join(f"{k} +{v:.1%}" for k, v in LLAMA_CPP_70B.items() if k in ("Q4_0", "Q4_1"))
    verdict = "holds" if loss < 0.01 else "wrong"
    return (f"this {m.get('model_name', 'model')}: bf16 {m['ppl_bf16']:.2f} -> nf4+dq {m['ppl_4bit']:.2f} "
            f"({loss:+.1%}, {m.get('ppl_tokens', '?')} tokens); published Llama-2-70B (llama.cpp): {published}",
            verdict)


def _zero_point(m):
    fields = [f for f in m["state_fields_4bit"] if "zero" in f.lower()]
    equal = m["bytes_equal_4bit"] and m["bytes_equal_int8"]
    verdict = "wrong" if equal and not fields else "not shown"
    return (f"quant state fields: {', '.join(m['state_fields_4bit'])} (no zero point); bytes == qlearn's "
            f"symmetric absmax, made at load time, no training: 4-bit {m['bytes_equal_4bit']}, "
            f"int8 {m['bytes_equal_int8']}", verdict)


def _class_names(m):
    found = f"{' / '.join(m['int8_classes'])} and {' / '.join(m['four_bit_classes'])}"
    verdict = "wrong" if "Int8QaTiedParameters" not in found else "holds"
    return f"the layers are {found}", verdict


def _nf4_best(m):
    s = m["sqnr_normal"]
    best = max(s, key=s.get)
    verdict = "holds" if best == "nf4" else "wrong"
    text = ", ".join(f"{k} {v:.2f} dB" for k, v in s.items())
    return (f"SQNR on normal samples, blocks of 64: {text}; QLoRA Table 2 (Pile-CC perplexity, 125M-13B): "
            f"NF4+DQ {QLORA_TABLE2['NF4+DQ']}, FP4 {QLORA_TABLE2['FP4 (E2M1)']}, Int4 {QLORA_TABLE2['Int4']}; "
            "this model's layers: lesson 04", verdict)


def _dq(m):
    a, b, whole = m["state_nf4"], m["state_nf4dq"], m["model_true_nf4"]
    verdict = "holds" if b < a else "wrong"
    return (f"scales {a / 1e6:.2f} MB -> {b / 1e6:.2f} MB, {(a - b) / whole:.1%} of the model; "
            "get_memory_footprint() shows no change", verdict)


def _bf16(m):
    q, c, alone = m["err_weights"], m["err_bf16_compute"], m["err_bf16_only"]
    verdict = "partly" if c <= 1.5 * q else "wrong"
    path = m.get("linear4bit_path")
    ran = f"bitsandbytes' 4-bit forward on this machine: {path}. " if path else ""
    return (f"{ran}One layer's output, relative error: 4-bit weights with fp32 compute {q:.2%}, with bf16 compute "
            f"{c:.2%}; bf16 compute on the original weights {alone:.2%}: the loss is the 4-bit weights'; bf16 "
            "compute does not remove it (fp16 vs bf16: lesson 07)", verdict)


def _consumer(m):
    need = m["gb_70b_4bit"] + m["kv_70b_4k"]
    verdict = "wrong" if need / 1e9 > CONSUMER_GPU_GB else "holds"
    fits = [f"{n} x {gb} GB" for n, gb in ((2, 24), (2, CONSUMER_GPU_GB)) if need / 1e9 <= n * gb]
    return (f"70B nf4+dq {_gb(m['gb_70b_4bit'])} + KV cache at 4k tokens {_gb(m['kv_70b_4k'])} = {_gb(need)} "
            f"{'>' if need / 1e9 > CONSUMER_GPU_GB else '<='} {CONSUMER_GPU_GB} GB of the largest consumer GPU"
            f"{'; fits ' + fits[0] if fits else ''} (before runtime overhead)", verdict)


_RULES = {"int8_quarter": _int8_quarter, "int4_halves": _int4_halves, "gb_70b": _gb_70b, "ppl_1pct": _ppl,
          "zero_point_qat": _zero_point, "class_names": _class_names, "nf4_best": _nf4_best, "dq_saves": _dq,
          "bf16_compute": _bf16, "consumer_70b": _consumer}


def seed_claims(measured: Mapping) -> list[Claim]:
    """One Claim per seed-article claim, in ``SEED_CLAIMS`` order, from a dict of measurements.

    Keys: int8_over_bf16_linear / _model, nf4_over_int8_linear / _model (ratios); gb_70b_fp16 / _int8 /
    _4bit, kv_70b_4k (bytes); ppl_bf16, ppl_4bit, ppl_tokens, model_name; state_fields_4bit (names),
    bytes_equal_4bit, bytes_equal_int8 (bools); int8_classes, four_bit_classes (names); sqnr_normal
    ({format: dB}); state_nf4, state_nf4dq, model_true_nf4 (bytes); err_weights, err_bf16_compute,
    err_bf16_only (relative errors of one layer's output); optional linear4bit_path (``backend_info().linear4bit``,
    the path bitsandbytes' 4-bit forward takes on this machine). A claim whose keys are missing says "not measured".
    Worked: int8_over_bf16_linear 0.5 -> "wrong" (a quarter is int8 vs fp32).

    >>> seed_claims({"int8_over_bf16_linear": 0.5, "int8_over_bf16_model": 0.61})[0].verdict
    'wrong'
    """
    if not isinstance(measured, Mapping):
        raise TypeError(f"measured must be a mapping of measurement name -> value; got {type(measured).__name__}")
    out = []
    for key, (words, lessons) in SEED_CLAIMS.items():
        try:
            text, verdict = _RULES[key](measured)
        except KeyError as missing:
            text, verdict = f"not measured in this run (needs {missing})", "not measured"
        out.append(Claim(words, text, verdict, lessons))
    return out


def records(claims: Sequence[Claim]) -> list[dict]:
    """Plain dicts (claim, measured, verdict, lessons) for a table: ``pd.DataFrame(records(c))``."""
    return [asdict(c) for c in claims]


_WORDS = {"half": 0.5, "a half": 0.5, "one half": 0.5, "quarter": 0.25, "a quarter": 0.25, "one quarter": 0.25,
          "third": 1 / 3, "a third": 1 / 3, "double": 2.0, "twice": 2.0}
_TRUE, _FALSE = {"yes", "y", "true", "fits", "it fits", "1"}, {"no", "n", "false", "does not fit", "0"}


def parse_number(text) -> float:
    """A number from what a learner typed: 0.5, "0.5", "1/2", "50%", "half", "3.5 GB", "2x".

    >>> [parse_number(t) for t in (0.25, "1/4", "25 %", "a quarter", "7.2 GB")]
    [0.25, 0.25, 0.25, 0.25, 7.2]
    """
    if isinstance(text, bool):
        raise TypeError(f"expected a number, got the bool {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    if not isinstance(text, str):
        raise TypeError(f"expected a number or a string such as '0.5', '1/2', '50%'; got {type(text).__name__}")
    t = text.strip().lower().replace(",", "")
    if t in _WORDS:
        return _WORDS[t]
    frac = re.fullmatch(r"([-+]?\d*\.?\d+)\s*/\s*(\d*\.?\d+)", t)
    if frac:
        return float(frac.group(1)) / float(frac.group(2))
    num = re.match(r"[-+]?\d*\.?\d+(e[-+]?\d+)?", t)
    if not num:
        raise ValueError(f"could not read a number from {text!r}; write e.g. 0.5, 1/2, 50% or 3.5")
    value = float(num.group(0))
    return value / 100 if t[num.end():].strip().startswith("%") else value


@dataclass(frozen=True)
class Check:
    """The outcome of one prediction: ``ok`` True / False, or None when nothing was predicted yet
    (then ``message`` says what to do and nothing about the answer)."""

    ok: bool | None
    prediction: object
    measured: object
    message: str

    def __str__(self) -> str:
        return self.message

    def _repr_markdown_(self) -> str:
        return self.message


def _ordering(value) -> list[str]:
    if isinstance(value, str):
        value = re.split(r"\s*(?:<|>|,|;|\s)\s*", value.strip())
    return [str(v).strip().lower() for v in value if str(v).strip()]


def _tolerance(rel_tol: float, abs_tol: float, unit: str) -> str:
    """The tolerance ``math.isclose`` used, in words: " (within 10%)", " (within ±0.05 GB)",
    " (within 5% or ±0.5)" (either one suffices), " (exactly)" when both are 0.

    >>> _tolerance(0.0, 0.5, " dB"), _tolerance(0.1, 0.0, "")
    (' (within ±0.5 dB)', ' (within 10%)')
    """
    parts = [f"{100 * rel_tol:.3g}%"] if rel_tol > 0 else []
    parts += [f"±{abs_tol:.4g}{unit}"] if abs_tol > 0 else []
    return f" (within {' or '.join(parts)})" if parts else " (exactly)"


def check_prediction(prediction, measured, *, rel_tol: float = 0.1, abs_tol: float = 0.0, explain: str = "",
                     unit: str = "", sep: str = " < ") -> Check:
    """Compare ``prediction`` with ``measured`` and explain. Numbers: within ``rel_tol`` (10%) or
    ``abs_tol``; bools: yes/no/true/false/fits; sequences of names (an ordering): same order,
    case-insensitive, given as a list, tuple or "a < b < c" (shown joined by ``sep``); other strings:
    equal ignoring case.
    ``prediction`` None or ``...`` means "not yet": the message asks for one and reveals nothing.

    >>> check_prediction("1/2", 0.503).ok, check_prediction(None, 0.503).ok
    (True, None)
    """
    if prediction is None or prediction is Ellipsis:
        return Check(None, prediction, measured, "**No prediction yet.** Set the prediction variable in the cell "
                     "above, run it, then run this cell again.")
    if type(measured).__module__ == "numpy" and type(measured).__name__ in ("bool_", "bool"):   # numpy's bool
        measured = bool(measured)
    try:
        if isinstance(measured, bool):
            p = str(prediction).strip().lower()
            if p not in _TRUE | _FALSE:
                raise ValueError(f"answer yes or no (or True / False); got {prediction!r}")
            ok, shown = (p in _TRUE) == measured, "yes" if measured else "no"
        elif isinstance(measured, numbers.Real):   # int, float and numpy's number types
            p = parse_number(prediction)
            ok = math.isclose(p, measured, rel_tol=rel_tol, abs_tol=abs_tol)
            shown = f"{measured:.4g}{unit}"
        elif isinstance(measured, str):
            ok, shown = str(prediction).strip().lower() == measured.strip().lower(), measured
        else:
            ok, shown = _ordering(prediction) == _ordering(measured), sep.join(map(str, measured))
    except (TypeError, ValueError) as err:
        return Check(False, prediction, measured, f"**Could not read your prediction:** {err}")
    head = "**Right.**" if ok else "**Not quite.**"
    numeric = isinstance(measured, numbers.Real) and not isinstance(measured, bool)
    tol = _tolerance(rel_tol, abs_tol, unit) if numeric else ""
    return Check(ok, prediction, measured,
                 f"{head} You predicted {prediction!r}; this run measured **{shown}**{tol}. {explain}".strip())
