"""Claims checked against measurements: the seed article's, and the learner's own predictions.

`seed_claims(measured)` turns the numbers a lesson measured (a plain dict, keys below) into one
`Claim` per statement of the seed article (the tutorial "load Llama-2 in 8 and 4 bits" the lessons test),
each with what was measured, a verdict and the lessons that show it. A key that is missing gives the
verdict "not measured". `records(claims)` makes plain dicts for a table (pandas-free: the lesson renders
them; the closing note prints the same). ``check_prediction`` (compare what a learner predicted with what
the run measured) is `qlearn.quiz.check_prediction`, here too because the lessons call it next to the
claims. Pure Python: no torch, no pandas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .quiz import check_prediction

__all__ = ["Claim", "SEED_CLAIMS", "HARDWARE", "LLAMA_CPP_70B", "LLM_INT8_TABLE1", "QLORA_TABLE2", "seed_claims",
           "records", "check_prediction"]

# Memory to run a model in, bytes, each from a public source. Colab's free T4 is sold as 16 GB; what a program
# gets there: TensorFlow on Colab's T4 logs "deviceMemorySize: 14.73GiB" (googlecolab/colabtools issue #1749).
# GeForce cards: NVIDIA's spec pages (RTX 4090 24 GB, RTX 5090 32 GB, the largest GeForce card), counted as
# 24e9 / 32e9 bytes (a lower bound: the chips hold 24 / 32 GiB). Unified memory: Apple's 64 GB configurations
# (the GPU shares it with the system). All before the runtime's own overhead (CUDA context, activations).
HARDWARE = {"Colab's free T4": 14.73 * 2**30, "one RTX 4090": 24e9, "one RTX 5090": 32e9, "two RTX 4090": 48e9,
            "a 64 GB unified-memory machine": 64e9}
_SINGLE_CONSUMER_GPU = ("one RTX 4090", "one RTX 5090")
# llama.cpp tools/perplexity/README.md, "Llama 2 70B Scorechart" (Wikitext-2): perplexity vs fp16 3.4313.
LLAMA_CPP_70B = {"Q4_0": 0.0361, "Q4_1": 0.0237, "Q4_K_M": 0.0120, "Q6_K": 0.0016}
# LLM.int8() (Dettmers et al. 2022, arXiv:2208.07339) Table 1, C4 validation perplexity, OPT: (fp32, LLM.int8()).
LLM_INT8_TABLE1 = {"125M": (25.65, 25.83), "13B": (12.45, 12.45)}
# QLoRA (Dettmers et al. 2023, arXiv:2305.14314) Table 2: mean Pile-CC perplexity over OPT/LLaMA/Pythia 125M-13B.
QLORA_TABLE2 = {"Int4": 34.34, "FP4 (E2M1)": 31.07, "FP4 (E3M0)": 29.48, "NF4+DQ": 27.41}

# key -> (the seed article's words, lessons that measure it), in the article's order
SEED_CLAIMS = {
    "load_in_8bit": ("`from_pretrained(model_name, load_in_8bit=True, device_map=\"auto\")` loads the model in INT8",
                     "01, 07"),
    "class_names": ("the 8-bit model's layers are 'Int8QaTiedParameters or similar'", "01, 06"),
    "int8_quarter": ("INT8: memory 'roughly 1/4th of the full FP16/BF16 model'", "01"),
    "int4_halves": ("INT4 'often halves the memory usage again compared to INT8'", "01"),
    "gb_70b": ("70B: FP16 'over 140GB', INT8 '~70GB', INT4 '~35GB'", "01"),
    "consumer_70b": ("this makes it feasible to run these models 'on consumer hardware'", "01"),
    "zero_point_qat": ("bitsandbytes uses 'quantization-aware training' and 'zero-point quantization'", "01, 02"),
    "zero_point_learned": ("'A scale factor and a zero-point offset are learned (or derived)'", "01, 02"),
    "quantize_again": ("the weights are dequantized for the matrix multiplications 'and then quantize[d] them again'",
                       "01, 05"),
    "nf4_best": ("NF4 represents normally distributed weights 'more accurately than simple linear quantization'",
                 "01, 03, 04"),
    "dq_saves": ("double quantization 'saving a bit more memory'", "01, 05"),
    "bf16_compute": ("computing in BF16 after dequantizing 'prevents catastrophic accuracy loss'", "01, 07"),
    "ppl_int8": ("accuracy loss 'negligible, often less than 1%' in perplexity: INT8", "01, 06"),
    "ppl_4bit": ("accuracy loss 'negligible, often less than 1%' in perplexity: 4-bit", "01, 04"),
}


@dataclass(frozen=True)
class Claim:
    """One claim: the article's words, what this run measured (text with the numbers), a verdict
    ("holds", "roughly holds", "partly", "wrong", "not shown", "not measured") and the lessons that show it."""

    claim: str
    measured: str
    verdict: str
    lessons: str


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB"


def _load_in_8bit(m):
    err = m["kwarg_error"]
    config = "`quantization_config=BitsAndBytesConfig(load_in_8bit=True)` loaded it in this run"
    if err:
        return (f"transformers {m['transformers_version']}: {err}. The keyword was removed in transformers 5 "
                f"(huggingface/transformers PR #41287, deprecated since 4.x); {config}", "wrong")
    return f"transformers {m['transformers_version']} accepted the keyword (deprecated; removed in 5.0); {config}", \
        "holds"


def _class_names(m):
    found = f"{' / '.join(m['int8_classes'])} and {' / '.join(m['four_bit_classes'])}"
    verdict = "wrong" if "Int8QaTiedParameters" not in found else "holds"
    return f"the layers are {found}", verdict


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
    counted, estimated = m["params_70b_counted"], m["params_70b_estimated"]
    check = m["estimate_over_measured"]                       # mode -> estimated / measured bytes, embedded model
    worst = max(abs(r - 1) for r in check.values())
    ok = counted == estimated and worst <= 0.02
    verdict = ("roughly holds" if close else "wrong") if ok else "not shown"
    return (f"Llama-2-70B, its published config built with no weights: {counted / 1e9:.2f} B parameters counted "
            f"({'=' if counted == estimated else '!='} the estimator's {estimated / 1e9:.2f} B); fp16 {_gb(got[0])}, "
            f"int8 {_gb(got[1])}, nf4+dq {_gb(got[2])}. The same estimator on this run's models, estimated / measured "
            f"bytes: {', '.join(f'{k} {v:.3f}' for k, v in check.items())}. KV cache and activations come on top",
            verdict)


def _fits(need: float) -> list[str]:
    return [name for name, capacity in HARDWARE.items() if need <= capacity]


def _consumer(m):
    need = m["gb_70b_4bit"] + m["kv_70b_4k"]
    fits = _fits(need)
    one_gpu = [n for n in fits if n in _SINGLE_CONSUMER_GPU]
    verdict = "holds" if one_gpu else "partly" if fits else "wrong"
    where = f"fits {' and '.join(fits)}" if fits else "fits none of: " + ", ".join(HARDWARE)
    largest = max(HARDWARE[n] for n in _SINGLE_CONSUMER_GPU)
    text = (f"70B nf4+dq {_gb(m['gb_70b_4bit'])} + KV cache at 4k tokens {_gb(m['kv_70b_4k'])} = {_gb(need)}: "
            f"{where}; {'>' if need > largest else '<='} {largest / 1e9:.0f} GB, the largest single consumer GPU "
            "(before runtime overhead)")
    if "gb_13b_int8" in m:
        t4 = HARDWARE["Colab's free T4"]
        i8, q4 = m["gb_13b_int8"] + m["kv_13b_4k"], m["gb_13b_4bit"] + m["kv_13b_4k"]
        word = {True: "fits", False: "does not fit"}
        text += (f". Colab's free T4 ({t4 / 1e9:.1f} GB usable): 13B + 4k KV cache in int8 {_gb(i8)} "
                 f"{word[i8 <= t4]}, in nf4+dq {_gb(q4)} {word[q4 <= t4]}")
    return text, verdict


def _zero_point(m):
    fields = [f for f in m["state_fields_4bit"] if "zero" in f.lower()]
    equal = m["bytes_equal_4bit"] and m["bytes_equal_int8"]
    verdict = "wrong" if equal and not fields else "not shown"
    return (f"quant state fields: {', '.join(m['state_fields_4bit'])} (no zero point); bytes == qlearn's "
            f"symmetric absmax, made at load time, no training: 4-bit {m['bytes_equal_4bit']}, "
            f"int8 {m['bytes_equal_int8']}", verdict)


def _learned(m):
    scale, zero = m["scale_is_max"], m["zero_point_from_min_max"]
    verdict = "partly" if scale and zero else "not shown"
    return (f"derived, not learned: the int8 model's row scales SCB == max |w| of each row of the bf16 weight: "
            f"{scale}; bitsandbytes stores no zero point; a zero-point quantizer computes its scale and zero point "
            f"from the min and max, no training (ql.zeropoint_quantize on the same weight: scale == (max - min) / 255 "
            f"and zero_point == round(-min / scale): {zero})", verdict)


def _again(m):
    kept, a, b = m["codes_kept_after_forward"], m["state_nf4"], m["state_nf4dq"]
    verdict = "wrong" if kept else "not shown"
    n = m.get("forwards_run")
    after = "after the forward passes" if n is None else f"after {n} forward pass{'' if n == 1 else 'es'}"
    return (f"a layer's 4-bit codes {after} == the codes loaded: {kept} "
            "(the 16-bit weight a forward uses is temporary; nothing is quantized again). What is quantized a second "
            f"time is the scales, once, at load time (double quantization: float32 absmax {a / 1e6:.2f} MB -> uint8 "
            f"codes + nested scales {b / 1e6:.2f} MB)", verdict)


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


def _ppl_int8(m):
    base = m.get("ppl_bf16_int8", m["ppl_bf16"])
    loss = m["ppl_int8"] / base - 1
    paper = {k: b / a - 1 for k, (a, b) in LLM_INT8_TABLE1.items()}
    verdict = "holds" if loss < 0.01 else "partly" if paper["13B"] < 0.01 else "wrong"
    return (f"this {m.get('model_name', 'model')}: bf16 {base:.2f} -> int8 {m['ppl_int8']:.2f} ({loss:+.1%}, "
            f"{m.get('ppl_int8_tokens', m.get('ppl_tokens', '?'))} tokens); LLM.int8() paper, Table 1 (C4, OPT): "
            + ", ".join(f"{k} {v:+.1%}" for k, v in paper.items()), verdict)


def _ppl_4bit(m):
    loss = m["ppl_4bit"] / m["ppl_bf16"] - 1
    published = ", ".join(f"{k} +{v:.1%}" for k, v in LLAMA_CPP_70B.items() if k in ("Q4_0", "Q4_1", "Q4_K_M"))
    verdict = "holds" if loss < 0.01 else "wrong"
    return (f"this {m.get('model_name', 'model')}: bf16 {m['ppl_bf16']:.2f} -> nf4+dq {m['ppl_4bit']:.2f} "
            f"({loss:+.1%}, {m.get('ppl_tokens', '?')} tokens); published Llama-2-70B (llama.cpp's 4-bit formats, "
            f"not NF4): {published}", verdict)


_RULES = {"load_in_8bit": _load_in_8bit, "class_names": _class_names, "int8_quarter": _int8_quarter,
          "int4_halves": _int4_halves, "gb_70b": _gb_70b, "consumer_70b": _consumer, "zero_point_qat": _zero_point,
          "zero_point_learned": _learned, "quantize_again": _again, "nf4_best": _nf4_best, "dq_saves": _dq,
          "bf16_compute": _bf16, "ppl_int8": _ppl_int8, "ppl_4bit": _ppl_4bit}


def seed_claims(measured: Mapping) -> list[Claim]:
    """One Claim per seed-article claim, in ``SEED_CLAIMS`` order, from a dict of measurements.

    Keys: kwarg_error (the error ``from_pretrained(..., load_in_8bit=True)`` raised, "" if none),
    transformers_version; int8_classes, four_bit_classes (names); int8_over_bf16_linear / _model,
    nf4_over_int8_linear / _model (ratios); gb_70b_fp16 / _int8 / _4bit, kv_70b_4k (bytes, estimated from the
    config), params_70b_counted (parameters of the model built from that config), params_70b_estimated,
    estimate_over_measured ({mode: estimated / measured bytes of this run's model}); optional gb_13b_int8 /
    _4bit, kv_13b_4k (the T4 line); state_fields_4bit (names), bytes_equal_4bit, bytes_equal_int8 (bools);
    scale_is_max, zero_point_from_min_max, codes_kept_after_forward (bools), forwards_run; sqnr_normal ({format:
    dB}); state_nf4, state_nf4dq, model_true_nf4 (bytes); err_weights, err_bf16_compute, err_bf16_only
    (relative errors of one layer's output); optional linear4bit_path (``backend_info().linear4bit``); ppl_bf16,
    ppl_4bit, ppl_tokens, model_name; ppl_int8, optional ppl_bf16_int8 and ppl_int8_tokens (when int8 was scored
    on fewer tokens). A claim whose keys are missing says "not measured".
    Worked: int8_over_bf16_linear 0.5 -> "wrong" (a quarter is int8 vs fp32).

    >>> seed_claims({"int8_over_bf16_linear": 0.5, "int8_over_bf16_model": 0.61})[2].verdict
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
