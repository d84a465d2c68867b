"""Lesson 08's question bank: `questions(run)` builds the 20 questions from a `qlearn.assessment.Run` and from
qlearn's math, called now. No expected answer is a literal: each is measured (run) or computed (math).

Topics name the lesson that taught or measured it: 01, 02, 03, 04, 05, 06 (memory, integers, codes, double
quant, LLM.int8), 07 and 09 (kernels and speed), 10 (mixed precision), 11 (GPTQ / AWQ / HQQ / GGUF).
Worked number: Q18's budget, nf4+dq/64 + 5 %, buys int8 for 0.05 · 4.127 / (8.056 - 4.127) = 5.25 % of the
weights.

>>> from qlearn.assessment import demo_run
>>> [q.key for q in questions(demo_run())][-3:]
['Q18', 'Q19', 'Q20']
"""

from __future__ import annotations

import torch

from . import codebooks, memory, methods, mixed, sources
from .intquant import absmax_quantize, int8_vectorwise, zeropoint_quantize
from .metrics import error_stats
from .quantize import quantize_4bit
from .quiz import Question

__all__ = ["questions"]

_ABC = ("a", "b", "c")


def _memory(run) -> list:
    other = run.all_params - run.linear_params
    fp, ratio = run.footprint, run.footprint["int8"] / run.footprint["bf16"]
    calc = (run.linear_params + 2 * other) / (2 * run.all_params)
    b128, b128dq = memory.bits_per_param("nf4", 128), memory.bits_per_param("nf4+dq", 128)
    e13 = memory.estimate("llama-2-13b", "nf4+dq", context_length=4096)
    gb13 = (e13.true_bytes + e13.kv_cache_bytes) / 1e9
    return [
        Question("Q1", "Lesson 01 measured model.get_memory_footprint() in bf16 and in int8; this notebook measured "
                 "both again just now. What is the ratio int8 / bf16 for the WHOLE model? (It has "
                 f"{run.all_params / 1e6:.1f} M parameters, {run.linear_params / 1e6:.1f} M of them in linear "
                 "layers.)", ratio, abs_tol=0.03, topic="lesson 01 (measured)",
                 explanation=f"Measured now: {fp['int8'] / 1e6:.1f} MB / {fp['bf16'] / 1e6:.1f} MB = {ratio:.3f}. "
                 f"Only the linear layers become int8 (1 byte instead of 2); the other {other / 1e6:.1f} M parameters "
                 "(the token embedding, tied with lm_head, and the norms) stay bf16: (L·1 + O·2) / (2·(L + O)) = "
                 f"{calc:.3f}, the rest is each row's float32 scale. Far from 0.5."),
        Question("Q2", "Bits per parameter of NF4 with blocksize 128 and NO double quant (4-bit codes plus one float32 "
                 "absmax per block)?", b128, abs_tol=1e-3, topic="lesson 03",
                 explanation=f"4 + 32 / 128 = {b128:g}: one 32-bit absmax shared by 128 weights."),
        Question("Q3", "Same, WITH double quant (each absmax stored in 8 bits, plus one float32 per 256 blocks)?",
                 b128dq, abs_tol=1e-3, topic="lesson 05", explanation=f"4 + 8/128 + 32/(128·256) = {b128dq:.6g}."),
        Question("Q4", "True or False: model.get_memory_footprint() reports fewer bytes for the model loaded in nf4+dq "
                 "than in nf4.", fp["nf4+dq"] < fp["nf4"], kind="bool", topic="lesson 05 (measured)",
                 explanation=f"Measured now: nf4 {fp['nf4']:,} B, nf4+dq {fp['nf4+dq']:,} B. It adds up parameters and "
                 "buffers; the absmax, plain or double-quantized, is an attribute of each weight's quant_state, so the "
                 f"saving is real but invisible there: ql.memory.footprint counts "
                 f"{run.true_bytes['nf4+dq'] - fp['nf4+dq']:,} B of it beside the nf4+dq number."),
        Question("Q5", "Transfer: Llama-2-13B in nf4+dq at a 4,096-token context, batch 1, 16-bit KV cache. How many "
                 "GB do the weights (with scales and 16-bit embeddings) plus the KV cache take? (ql.memory.estimate is "
                 "allowed; so is the arithmetic by hand: 40 layers, hidden size 5120.)", gb13, rel_tol=0.10,
                 topic="lesson 01, transfer", unit=" GB",
                 explanation=f"Weights {e13.true_bytes / 1e9:.2f} GB + KV cache 2·40·5120·4096·2 B = "
                 f"{e13.kv_cache_bytes / 1e9:.2f} GB = {gb13:.2f} GB: {'it fits' if gb13 < 15 else 'it does not fit'} "
                 "in a T4's ~15 GB usable (a \"16 GB\" card) before activations and the framework's own memory."),
    ]


def _codes(run) -> list:
    row = int8_vectorwise(torch.tensor([[0.5, -1.27]]))
    zp = zeropoint_quantize(torch.tensor([-10.2, 0.0, 10.2]), bits=4)
    skewed = sources.synthetic("skewed", 1 << 16, seed=0)
    mse = {"absmax": error_stats(skewed, absmax_quantize(skewed, bits=8).dequantize())["mse"],
           "zero-point": error_stats(skewed, zeropoint_quantize(skewed, bits=8).dequantize())["mse"]}
    pair = quantize_4bit(codebooks.NF4[[3, 12, 15]], "nf4", blocksize=64)   # block absmax 1: codes 3, 12, 15
    w = run.w_real
    sqnr = {"nf4": error_stats(w, quantize_4bit(w, "nf4", 64).dequantize())["sqnr_db"],
            "fp4": error_stats(w, quantize_4bit(w, "fp4", 64).dequantize())["sqnr_db"],
            "int4 absmax": error_stats(w, absmax_quantize(w, bits=4, blocksize=64).dequantize())["sqnr_db"]}
    scale = float(zp.scale)
    return [
        Question("Q6", "Absmax int8 of the row [0.5, -1.27] (scale = max|x| / 127, code = round(x / scale)): which "
                 "two codes?", row.codes[0].tolist(), kind="numbers", topic="lesson 02",
                 explanation=f"scale = 1.27 / 127 = 0.01, so 0.5 -> {row.codes[0, 0]} and -1.27 -> {row.codes[0, 1]}: "
                 "the largest magnitude always gets ±127."),
        Question("Q7", "Zero-point 4-bit (codes 0..15, scale = (max - min) / 15, an integer zero point) of the three "
                 "values [-10.2, 0.0, 10.2]: which code does 0.0 get?", int(zp.codes[1]), topic="lesson 02",
                 explanation=f"scale = 20.4 / 15 = {scale:.4g}; zero_point = round(10.2 / {scale:.4g}) = round("
                 f"{10.2 / scale:.4g}) = {int(zp.zero_point[0])} (half to even), and 0.0 gets exactly that code: "
                 "zero-point keeps 0 exact, at the price of a stored zero point."),
        Question("Q8", "Absmax or zero-point 8-bit quantization: which gives the lower error on one-sided (skewed, "
                 "mostly positive) values such as post-activation outputs?", min(mse, key=mse.get), kind="choice",
                 choices=tuple(mse), topic="lesson 02 (measured)",
                 explanation=f"Measured now on 65,536 skewed values: MSE absmax {mse['absmax']:.3g}, zero-point "
                 f"{mse['zero-point']:.3g}. Absmax keeps half its codes for negative values that barely occur; "
                 "zero-point maps [min, max] onto all 256."),
        Question("Q9", "Two 4-bit codes, 3 then 12, packed into one byte as bitsandbytes packs them: which byte "
                 "(an int 0..255)?", int(pair.packed[0]), topic="lesson 03",
                 explanation="The FIRST code goes in the HIGH nibble: (3 << 4) | 12 = 48 + 12 = "
                 f"{int(pair.packed[0])}."),
        Question("Q10", "Lessons 03 and 04 quantized the embedded model's weights in 4 bits, blocks of 64. On "
                 "model.layers.0.mlp.down_proj, which format has the highest SQNR (least weight error)?",
                 max(sqnr, key=sqnr.get), kind="choice", choices=tuple(sqnr), topic="lesson 04 (measured)",
                 explanation="Measured now: " + ", ".join(f"{k} {v:.2f} dB" for k, v in sqnr.items()) + ". Weight "
                 "SQNR and perplexity need not rank formats the same way (lesson 04); and this model's weights came "
                 "from a Q4_1 file (lesson 02)."),
    ]


def _int8(run) -> list:
    x, w, name = run.x, run.w, run.outlier_layer
    cols = int8_vectorwise(x, threshold=6.0).outlier_cols
    share = 100 * cols.numel() / x.shape[1]
    vec = error_stats(x @ w.T, int8_vectorwise(x).dequantize() @ int8_vectorwise(w).dequantize().T)["sqnr_db"]
    ten = error_stats(x @ w.T, absmax_quantize(x, bits=8).dequantize() @ absmax_quantize(w, bits=8).dequantize().T)
    d, z = run.int8_diff, run.zero_threshold_diff
    return [
        Question("Q11", f"On the prompt {run.prompt!r}, {name} receives a ({x.shape[0]} tokens × {x.shape[1]}) input. "
                 "What percentage of its columns hold a value with |x| >= 6 (so LLM.int8 multiplies them in 16-bit)?",
                 share, abs_tol=0.5, rel_tol=0.5, unit=" %", topic="lesson 06 (measured)",   # says nothing of it
                 explanation=f"Measured now: {share:.2f} % ({cols.numel()} columns; largest |x| "
                 f"{x.abs().max():.1f}). Few columns, but each would set the int8 scale of every token it is in."),
        Question("Q12", f"bitsandbytes' Linear8bitLt ({name}, threshold 6) multiplies the outlier input columns in "
                 "16-bit with which weight columns?  (a) the original fp16 weights, kept beside the int8 ones; "
                 "(b) weights dequantized from the int8 codes, CB·SCB/127; (c) the int8 codes themselves, unscaled.",
                 min(d, key=d.get), kind="choice", choices=_ABC, topic="lesson 06 (measured)",
                 explanation="Measured now, the real layer's output against each simulation (max |difference|): "
                 + ", ".join(f"({k}) {v:.3g}" for k, v in d.items()) + ". bitsandbytes 0.50 keeps only CB and SCB "
                 "after loading; the LLM.int8() paper keeps the outlier weights in fp16 (a)."),
        Question("Q13", "What does llm_int8_threshold = 0 do?  (a) every input column goes 16-bit; (b) no column goes "
                 "16-bit: plain vector-wise int8; (c) int8 is switched off and the layer runs in 16-bit.",
                 min(z, key=z.get), kind="choice", choices=_ABC, topic="lesson 06 (measured)",
                 explanation="Measured now: the real layer at threshold 0 against each (max |difference|): "
                 + ", ".join(f"({k}) {v:.3g}" for k, v in z.items()) + ". bitsandbytes runs the decomposition only "
                 "when threshold > 0."),
        Question("Q14", f"Transfer: on {name} and that prompt, quantize input and weight to int8 with ONE absmax per "
                 "whole tensor (tensor-wise) instead of one per row (vector-wise, as bitsandbytes). Which gives the "
                 "higher output SQNR?", "vector-wise" if vec > ten["sqnr_db"] else "tensor-wise", kind="choice",
                 choices=("vector-wise", "tensor-wise"), topic="lesson 06, transfer",
                 explanation=f"Measured now: vector-wise {vec:.1f} dB, tensor-wise {ten['sqnr_db']:.1f} dB. One scale "
                 "per tensor lets the largest value anywhere set the step for every token and feature."),
        Question("Q15", "True or False: bitsandbytes' 4-bit weights (nf4) use a zero point and come from "
                 "quantization-aware training, as some tutorials say.", not run.dq_bytes_equal, kind="bool",
                 topic="lesson 05 (measured)",
                 explanation="Measured now: qlearn's symmetric blockwise absmax NF4 of the bf16 weight of "
                 f"model.layers.0.mlp.down_proj {'gave exactly' if run.dq_bytes_equal else 'did not give'} the "
                 "nf4+dq model's bytes (codes, 8-bit absmax, offset, nested absmax): no zero point, quantized at "
                 "load time, no training."),
    ]


def _beyond(run) -> list:
    fused = "fused" if run.cpu_fused else "dequantize"
    floor = run.true_bytes["bf16"] / run.true_bytes["nf4+dq"]
    b4, b8 = mixed.format_bits("nf4+dq/64", 576), mixed.format_bits("int8", 576)
    pct = 100 * 0.05 * b4 / (b8 - b4)
    q8 = methods.quantize_gguf(run.w_real, "Q8_0")
    size, type_size = methods.GGUF_TYPES["Q8_0"]
    recs = {"rtn": methods.rtn(run.w, 4, 64), "hqq": methods.hqq(run.w, 4, 64),
            "gptq": methods.gptq(run.w, methods.hessian(run.x), 4, 64)}
    err = {k: methods.output_error(run.x, run.w, r.dequantize()) for k, r in recs.items()}
    return [
        Question("Q16", "On THIS machine's CPU, what does a bitsandbytes Linear4bit do on an inference forward pass?  "
                 "'dequantize': decode the whole weight to 16-bit each forward, then a normal matmul; 'fused': a "
                 "4-bit kernel, after a one-time repack of the weight. (ql.backend_info() tells.)", fused,
                 kind="choice", choices=("dequantize", "fused"), topic="lesson 09 (this machine)",
                 explanation=f"This CPU: {run.cpu_path}. bitsandbytes 0.50 repacks and runs a fused 4-bit kernel only "
                 "on CPUs with AVX512-BF16 (eval mode, no gradients)."),
        Question("Q17", "At batch 1 each generated token reads every weight once, so the shortest time per token is "
                 "bytes / memory bandwidth (lesson 09's floor). For this model as loaded in this run (scales and "
                 "16-bit layers included), how many times lower is that floor in nf4+dq than in bf16?", floor,
                 rel_tol=0.10, topic="lesson 09 (measured)",
                 explanation=f"Measured now: bf16 {run.true_bytes['bf16'] / 1e6:.1f} MB, nf4+dq "
                 f"{run.true_bytes['nf4+dq'] / 1e6:.1f} MB: {floor:.2f}x, not 4x, because "
                 f"{(run.all_params - run.linear_params) / 1e6:.1f} M parameters (the embedding, read again as "
                 "lm_head each token, and the norms) stay 16-bit."),
        Question("Q18", "Lesson 10 spends a byte budget of uniform nf4+dq (blocks of 64) + 5 %. If all the extra bytes "
                 "move layers from nf4+dq/64 to int8 (8 bits plus a float32 scale per row of 576 inputs), what "
                 "percentage of the linear weights can be int8?", pct, rel_tol=0.10, unit=" %",
                 topic="lesson 10", explanation=f"nf4+dq/64 costs {b4:.4f} bits a weight, int8 {b8:.4f} (8 + 32/576): "
                 f"5 % of {b4:.4f} = {0.05 * b4:.4f} bits, and each weight moved costs {b8 - b4:.4f} more: "
                 f"{pct:.2f} %. Which {pct:.1f} % is what the sensitivities decide."),
        Question("Q19", "GGUF's Q8_0 stores blocks of 32 weights: 32 int8 codes and one float16 scale. Bits per "
                 "weight, everything included?", q8.bits_per_param, abs_tol=0.01, topic="lesson 11",
                 explanation=f"A block is {type_size} bytes for {size} weights: 8 · {type_size} / {size} = "
                 f"{q8.bits_per_param:g} bits (measured on model.layers.0.mlp.down_proj's {q8.nbytes:,} bytes)."),
        Question("Q20", f"4-bit, groups of 64, on {run.outlier_layer}: RTN, HQQ (no data) and GPTQ (fitted to the "
                 "prompt's inputs X of that layer). Which has the lowest output error ||X dW^T||² on those same X?",
                 min(err, key=err.get), kind="choice", choices=tuple(err), topic="lesson 11 (measured)",
                 explanation="Measured now: " + ", ".join(f"{k} {v:.3g}" for k, v in err.items()) + ". GPTQ minimises "
                 "exactly this quantity on the inputs it is given; on other text it need not win (lesson 11 "
                 "measured it on evaluation text)."),
    ]


def questions(run) -> list:
    """The 20 `Question`s, Q1..Q20, from `run` (a `qlearn.assessment.Run`) and qlearn's math."""
    return _memory(run) + _codes(run) + _int8(run) + _beyond(run)
