# %% [markdown]
# # 13 · The questions people ask, each answered by a measurement
#
# **Goals.** After this notebook you can
# 1. answer fourteen questions that come back again and again in the issue trackers of bitsandbytes,
#    transformers, peft, llama.cpp and AutoGPTQ, each with a number this run measures on the embedded model;
# 2. tell which answers depend on the hardware (speed, the compute dtype, bf16) and which do not (bytes, parameter
#    counts, what a saved file holds), and re-measure the first kind on your own machine;
# 3. save and reload a 4-bit model and prove it came back byte for byte; quantize a KV cache and say what it saves
#    and what it costs.
#
# Each question is quoted short, as a user wrote it, with the thread it comes from. Then a cell measures, and
# the answer is written from that measurement (every number in an answer is a variable of this run). Where this
# machine cannot measure something (a GPU-only path on a CPU run) the lesson says so and measures what it can.
# The model is SmolLM2-135M-Instruct, whose weights were already stored as GGUF Q4_1 (blocks of 32) and its
# embedding as Q8_0: a small model, so some answers (the share of bytes in the embedding, speed) are about a
# 135M model and are scaled to a 7B one from its published config where size matters.

# %%
import copy
import importlib
import importlib.util
import logging
import time

import pandas as pd
import torch
from accelerate import infer_auto_device_map  # what device_map="auto" calls (Q10)
from IPython.display import Markdown, display

import qlearn as ql
from qlearn import bnb_interop, kvcache, roundtrip
from qlearn import methods as qm
from qlearn.calibration import calibration_text
from qlearn.kernels.bandwidth import matmul_flops
from qlearn.kernels.timesplit import time_forward
from qlearn.quiz import check_prediction

pd.options.display.float_format = "{:,.4g}".format
info = ql.backend_info()
print(info)
GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
# FAST (the test suite): fewer tokens everywhere; the same cells, the same questions.
KV_CONTEXT, KV_SCORED = (128, 33) if FAST else (1024, 257)   # KV cache: tokens read first, tokens scored after
CALIB_TOKENS = 640 if FAST else 2048                         # GPTQ calibration tokens (> 576 inputs of q_proj)
HELD_OUT_TOKENS = 256 if FAST else 1024                      # held-out tokens the calibrations are judged on
EMB_ROWS = 1024 if FAST else 8192                            # embedding rows the GGUF formats are compared on
REPEATS = 3 if FAST else 7                                   # timings: best of
answers = {}   # question number -> (question, the one-line measured answer): the summary table at the end


def mb(n):
    return f"{n / 1e6:,.1f} MB"


# %% [markdown]
# ## Part 1 · Questions answered on the unquantized model
#
# One float model serves the first questions: it is loaded in float32 (the checkpoint is bf16, so converting
# between the two loses nothing) and switched to bf16 where bf16 is asked about.

# %%
t0 = time.perf_counter()
model, tok = ql.load(MODEL_ID, mode="fp32", verbose=False)
print(f"loaded {MODEL_ID} in fp32 on {model.device} in {time.perf_counter() - t0:.1f} s")

# %% [markdown]
# ### Q8. Colab's T4 and bf16: "bfloat16 not supported on Google Colab T4"
#
# - metavoice-src #27, "bfloat16 not supported on Google Colab T4":
#   https://github.com/metavoiceio/metavoice-src/issues/27
# - Soup #385, "A T4 answers `torch.cuda.is_bf16_supported()` with True":
#   https://github.com/MakazhanAlpamys/Soup/issues/385
#
# `torch.cuda.is_bf16_supported()` has an argument `including_emulation=True`: a GPU that can *hold* bf16 values
# answers True even when it has no bf16 arithmetic (compute capability below 8.0, a T4 is 7.5). What matters is the
# speed of a bf16 matmul against the other dtypes on the device in front of you. A CPU has the same question:
# without AVX512-BF16 or AMX, bf16 arithmetic is emulated.

# %%
n8 = None if GPU else 256   # an emulated 768 x 768 bf16 matmul takes seconds on a CPU without bf16 units
flops = {str(dt).removeprefix("torch."): matmul_flops(n8, dtype=dt, repeats=REPEATS, device=DEVICE)
         for dt in (torch.float32, torch.bfloat16, torch.float16)}
bf16_vs_fp32 = flops["bfloat16"] / flops["float32"]
if GPU:
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    bf16_claimed = torch.cuda.is_bf16_supported()
    capability8 = ".".join(map(str, torch.cuda.get_device_capability()))
    where = f"{torch.cuda.get_device_name()} (compute capability {capability8})"
else:
    native_bf16 = info.avx512bf16
    bf16_claimed = True   # a CPU tensor can always hold bf16
    where = f"this CPU ({info.cpu_capability})"
speed8 = (f"{1 / bf16_vs_fp32:.1f}x slower than" if bf16_vs_fp32 < 1 else f"{bf16_vs_fp32:.2f}x the speed of")
t4_capability = (7, 5)   # a T4's compute capability (NVIDIA's table); bf16 in hardware needs 8.0
t4_default = ql.backend.default_compute_dtype("cuda", capability=t4_capability)
print({k: f"{v / 1e9:,.1f} GFLOP/s" for k, v in flops.items()}, f"bf16 / fp32 = {bf16_vs_fp32:.2f}")

# %%
answers[8] = ("Is bf16 real on my hardware (Colab T4)?",
              f"bf16 matmuls ran {speed8} fp32 on {where}; qlearn picks "
              f"{str(t4_default).removeprefix('torch.')} for a T4's 4-bit compute")
display(Markdown(f"""**Answer (8).** On {where} a bf16 matmul ran at **{flops['bfloat16'] / 1e9:,.1f} GFLOP/s**, fp32 at
{flops['float32'] / 1e9:,.1f} and fp16 at {flops['float16'] / 1e9:,.1f}: bf16 ran **{speed8}** fp32
here{", bf16 arithmetic in hardware" if native_bf16 else ", so bf16 is emulated on this device"}. The device says it
"supports" bf16: {bf16_claimed}; without emulation: {native_bf16}. On a T4 (capability
{'.'.join(map(str, t4_capability))}, not measured in this run)
the check without emulation is False, so qlearn's 4-bit compute dtype there is
`{str(t4_default).removeprefix('torch.')}` (`ql.backend.default_compute_dtype`)."""))

# %% [markdown]
# ### Q5. How do I merge a LoRA into a 4-bit model?
#
# - peft #1080, "What is the correct way to merge the adapters now ... after training a 4-bit quantized model?":
#   https://github.com/huggingface/peft/issues/1080
# - peft #2105, "merge_and_unload docs do not clarify behaviour for quantized base models":
#   https://github.com/huggingface/peft/issues/2105
# - peft #2321, the warning "Merge lora module to 4-bit linear may get different generations due to rounding
#   errors": https://github.com/huggingface/peft/issues/2321
#
# An adapter was trained on top of the *quantized* weights, W_q + BA (lesson 12 trains one). Three ways to merge:
# (a) into the dequantized weights, stored in bf16: the model is 16-bit again; (b) into the
# dequantized weights, then quantize again (what peft's merge into a 4-bit layer does): every weight is rounded a
# second time; (c) into the original 16-bit weights W: the adapter then sits on weights it never saw. Below, one
# real layer (NF4, blocks of 64) and a rank-16 update BA of growing size, measured against the NF4 step (the RMS of
# W - W_q); the error is the layer output's, on real inputs, as a share of the update's own effect.

# %%
name5 = "model.layers.3.self_attn.q_proj"
w5 = ql.sources.layer_weight(model, name5).float()                           # (576, 576)
x5 = ql.sources.layer_inputs(model, tok, name5, ql.evaluate.offline_text()[:4000], max_tokens=256)
wq5 = ql.quantize_4bit(w5, "nf4", 64).dequantize()
step5 = float((w5 - wq5).pow(2).mean().sqrt())
g = torch.Generator().manual_seed(0)
b5, a5 = torch.randn(576, 16, generator=g).to(w5.device), torch.randn(16, 576, generator=g).to(w5.device)
ba_unit = b5 @ a5 / float((b5 @ a5).pow(2).mean().sqrt())                  # RMS 1
rows5 = []
small5, large5 = 0.3, 3.0   # update sizes the answer quotes, in NF4 steps
for size in (0.1, small5, 1.0, large5):
    delta = size * step5 * ba_unit
    trained = wq5 + delta                                                     # what the adapter was trained as
    effect = float((x5 @ delta.T).pow(2).mean())
    requantized = ql.quantize_4bit(trained, "nf4", 64).dequantize()
    rows5.append({"update RMS / NF4 step": size,
                  "(a) merge, keep bf16": qm.output_error(x5, trained, trained.bfloat16()) / effect,
                  "(b) merge, then NF4 again": qm.output_error(x5, trained, requantized) / effect,
                  "(c) merge into original W": qm.output_error(x5, trained, w5 + delta) / effect})
merge_table = pd.DataFrame(rows5).set_index("update RMS / NF4 step")
merge_table

# %%
lost_small = merge_table.loc[small5, "(b) merge, then NF4 again"]
lost_large = merge_table.loc[large5, "(b) merge, then NF4 again"]
wrong_base = merge_table.loc[small5, "(c) merge into original W"]
answers[5] = ("How do I merge a LoRA into a 4-bit model?",
              f"re-quantizing after the merge erred by {lost_small:.2f}x the update's effect (update {small5} "
              "NF4 steps); "
              "keep the merged weights 16-bit, or keep the adapter separate")
display(Markdown(f"""**Answer (5).** Merge into the dequantized weights and keep them in bf16: error
{merge_table.loc[small5, '(a) merge, keep bf16']:.1%} of the update's effect. Quantizing again after the merge
made an output error of
**{lost_small:.2f}x** the update's own effect for an update of {small5} NF4 steps, {lost_large:.2f}x at {large5:g}
steps: a
small update is largely rounded away. Merging into the original 16-bit W instead erred by {wrong_base:.1f}x (the
adapter learned to correct W_q, not W). So: keep the adapter unmerged on the 4-bit model, or merge into the
dequantized weights and ship 16-bit (then quantize that model afresh if it must be small). Lesson 12 measures
this on a trained adapter."""))

# %% [markdown]
# ### Q12. Which GGUF quant should I pick (Q4_0, Q4_K_M, ...)?
#
# - llama.cpp #1114, "Need help to understand q4_0, q4_1, q4_2, q4_3 quantization":
#   https://github.com/ggml-org/llama.cpp/issues/1114
# - llama.cpp #1684 (k-quants), "Too many choices will provide too much confusion for new comers":
#   https://github.com/ggml-org/llama.cpp/pull/1684
# - ollama #1388, "what do K and M mean?": https://github.com/ollama/ollama/issues/1388
#
# The formats `qlearn.methods` writes byte for byte as llama.cpp does (lesson 11): Q8_0, Q4_0, Q4_1 and Q4_K, here
# on rows of the token embedding (the file stored it as Q8_0, so unlike the Q4_1 linear weights it is not already on
# a 4-bit grid). "_M" in Q4_K_M is a mix: llama.cpp keeps some tensors in Q6_K, which is not implemented here.
#
# **Predict (12).** Q4_K and Q4_0 both store 4.5 bits a weight. By how much does Q4_K's relative error differ from
# Q4_0's? Write Q4_K's error as a fraction of Q4_0's (1.0 = the same).

# %%
PREDICT_Q4K_VS_Q40 = None   # e.g. 0.8

# %%
emb = model.get_input_embeddings().weight[:EMB_ROWS].detach().float().cpu()   # (rows, 576)
rows12 = []
for qtype in ("Q8_0", "Q4_1", "Q4_0", "Q4_K"):
    rec = qm.quantize_gguf_weight(emb, qtype)
    rows12.append({"format": qtype, "bits a weight": rec.bits_per_param,
                   "relative RMS error": float((rec.dequantize() - emb).norm() / emb.norm())})
nf4rec = ql.quantize_4bit(emb, "nf4", 64)
rows12.append({"format": "NF4 (bitsandbytes, blocks of 64)", "bits a weight": nf4rec.bits_per_param,
               "relative RMS error": float((nf4rec.dequantize() - emb).norm() / emb.norm())})
gguf_table = pd.DataFrame(rows12).set_index("format")
gguf_table

# %%
err12 = gguf_table["relative RMS error"]
q4k_vs_q40 = err12["Q4_K"] / err12["Q4_0"]
check_prediction(PREDICT_Q4K_VS_Q40, q4k_vs_q40, rel_tol=0.15, explain=(
    "Q4_K has the same bits as Q4_0 but a minimum per 32 weights (asymmetric) and 6-bit scales under one float16 "
    "per 256: a finer fit for the same storage."))

# %%
bits12 = gguf_table["bits a weight"]
answers[12] = ("Which GGUF quant should I pick?",
               f"at {bits12['Q4_K']} bits Q4_K's error was {q4k_vs_q40:.2f}x Q4_0's; Q4_1 ({bits12['Q4_1']} bits) "
               f"{err12['Q4_1'] / err12['Q4_0']:.2f}x; Q8_0 ({bits12['Q8_0']} bits) "
               f"{err12['Q8_0'] / err12['Q4_0']:.3f}x")
display(Markdown(f"""**Answer (12).** On {EMB_ROWS:,} embedding rows: Q4_0 ({bits12['Q4_0']} bits) relative error
{err12['Q4_0']:.4f}, Q4_1 ({bits12['Q4_1']} bits) {err12['Q4_1']:.4f}, **Q4_K ({bits12['Q4_K']} bits)
{err12['Q4_K']:.4f}** = {q4k_vs_q40:.2f}x Q4_0's for the same bytes, Q8_0 ({bits12['Q8_0']} bits)
{err12['Q8_0']:.5f}. So among the 4-bit choices pick a
K-quant (Q4_K_M: Q4_K plus a few Q6_K tensors); Q4_0 / Q4_1 are the older formats. Lesson 11 puts these formats on
one perplexity frontier with GPTQ, AWQ and HQQ."""))

# %% [markdown]
# ### Q13. Does the calibration data matter?
#
# - AutoGPTQ #11, "Importance of dataset used during quantisation?": https://github.com/AutoGPTQ/AutoGPTQ/issues/11
# - AutoGPTQ #650, "Why LLaMA3-8B after GPTQ test in wikitext2 so bad?" (c4 vs wikitext2 calibration):
#   https://github.com/AutoGPTQ/AutoGPTQ/issues/650
# - llm-compressor #1522, "How important are datasets?": https://github.com/vllm-project/llm-compressor/issues/1522
#
# GPTQ (lesson 11) on one layer, calibrated three ways, judged on held-out evaluation text it never saw: library
# docstrings (lesson 11's calibration), another library prose (lesson 10's), and a later, disjoint part of the
# evaluation text itself (in-domain).

# %%
name13 = "model.layers.3.self_attn.q_proj"
eval_text = ql.evaluate.offline_text()
w13 = ql.sources.layer_weight(model, name13).float()
held_out = ql.sources.layer_inputs(model, tok, name13, eval_text[:8 * HELD_OUT_TOKENS], max_tokens=HELD_OUT_TOKENS)
calibrations = {"docstrings (lesson 11)": calibration_text("methods"),
                "other library prose (lesson 10)": calibration_text("sensitivity"),
                "in-domain (later part of the evaluation text)": eval_text[-8 * CALIB_TOKENS:]}
rtn13 = qm.output_error(held_out, w13, qm.rtn(w13).dequantize())
rows13 = []
for label, text in calibrations.items():
    xc = ql.sources.layer_inputs(model, tok, name13, text[:8 * CALIB_TOKENS], max_tokens=CALIB_TOKENS)
    err = qm.output_error(held_out, w13, qm.gptq(w13, qm.hessian(xc)).dequantize())
    rows13.append({"calibration": label, "tokens": xc.shape[0], "held-out output error": err, "vs RTN": err / rtn13})
calib_table = pd.DataFrame(rows13).set_index("calibration")
calib_table

# %%
vs_rtn = calib_table["vs RTN"]
spread13 = vs_rtn.max() / vs_rtn.min() - 1
verdict13 = ("So it matters, by this much" if spread13 >= 0.1 else
             "So here it matters less than using GPTQ at all (every calibration beat RTN by far)")
answers[13] = ("Does the calibration data matter?",
               f"GPTQ's held-out error was {vs_rtn.min():.2f}-{vs_rtn.max():.2f}x RTN's across three calibration "
               f"texts (best: {vs_rtn.idxmin()})")
display(Markdown(f"""**Answer (13).** On `{name13}` GPTQ's held-out output error was **{vs_rtn.min():.2f}x to
{vs_rtn.max():.2f}x** round-to-nearest's, depending on the calibration text; the best was {vs_rtn.idxmin()}, and the
worst was {spread13:.0%} above it. {verdict13}, on one layer of a small model; text like the one the model will
see is the safe default; the threads' c4-versus-wikitext2 gaps are whole-model perplexities,
where layer errors add up."""))

# %% [markdown]
# ### Q14. Can I quantize the KV cache?
#
# - transformers #30483, "Quantized KV Cache" (`cache_implementation="quantized"`, after KIVI, arXiv 2402.02750):
#   https://github.com/huggingface/transformers/pull/30483
#
# The cache holds every past token's keys and values in every layer; it grows with the context, not with the
# weights. Here: read `KV_CONTEXT` tokens, quantize the cache, then score the next tokens (they attend to the
# quantized past). qlearn's own KIVI-style quantizer (keys per channel, values per token, groups of 32, a scale and a
# minimum each) runs everywhere; transformers' `QuantizedCache` runs where its backend is installed
# (`kvcache.backends()`: "hqq" needs the `hqq` package, "quanto" `optimum-quanto`, "fp8" nothing more).
#
# **Predict (14).** A 16-bit cache quantized to 4 bits in groups of 32 (a float32 scale and minimum per group): how
# many times smaller? Write a number.

# %%
PREDICT_KV_RATIO = None   # e.g. 4

# %%
ids14 = tok(eval_text[: 8 * (KV_CONTEXT + KV_SCORED)], return_tensors="pt").input_ids.to(model.device)
context14, scored14 = ids14[:, :KV_CONTEXT], ids14[:, KV_CONTEXT:KV_CONTEXT + KV_SCORED]
cache14, _ = kvcache.prefill(model, context14)
held14 = kvcache.cache_nbytes(cache14)
rows14 = [{"cache": f"as held ({str(cache14.layers[0].keys.dtype).removeprefix('torch.')})", "bytes": held14,
           "perplexity": float(torch.tensor(kvcache.continuation_nll(model, cache14, scored14)).exp())}]
for bits in (16, 8, 4, 2):
    c = copy.deepcopy(cache14)
    q = kvcache.fake_quantize_cache(c, bits=bits, group=32)
    rows14.append({"cache": "bf16" if bits == 16 else f"KIVI int{bits} (qlearn)", "bytes": q.stored_bytes,
                   "perplexity": float(torch.tensor(kvcache.continuation_nll(model, c, scored14, False)).exp()),
                   "key error": q.key_rel_error, "value error": q.value_rel_error})
backends14 = kvcache.backends()
for backend, options in (("hqq", {"nbits": 4, "q_group_size": 64, "residual_length": 0}), ("fp8", {})):
    if backends14[backend] and not (FAST and backend == "hqq"):   # FAST: hqq's optimiser takes seconds on a CPU
        qc = kvcache.quantized_cache(model.config, cache14, backend, **options)
        rows14.append({"cache": f"transformers {backend} " + (f"{options['nbits']}-bit" if options else ""),
                       "bytes": kvcache.cache_nbytes(qc),
                       "perplexity": float(torch.tensor(kvcache.continuation_nll(model, qc, scored14)).exp())})
kv_table = pd.DataFrame(rows14).set_index("cache")
kv_table["vs bf16 bytes"] = kv_table.loc["bf16", "bytes"] / kv_table["bytes"]
print(f"backends here: {backends14}; {KV_CONTEXT} context tokens, {KV_SCORED - 1} scored")
kv_table

# %%
kv4 = kv_table.loc["KIVI int4 (qlearn)"]
kv2 = kv_table.loc["KIVI int2 (qlearn)"]
ppl16 = kv_table.loc["bf16", "perplexity"]
check_prediction(PREDICT_KV_RATIO, float(kv4["vs bf16 bytes"]), rel_tol=0.05, explain=(
    "4 bits a value plus a float32 scale and a float32 minimum per 32 values = 4 + 64/32 = 6 bits: 16/6 = 2.67x, "
    "not 4x. Stored as float16 (KIVI's choice) they would cost 5 bits (3.2x)."))

# %%
ctx7 = 4096   # a context length people run Llama-2-7B at (its maximum)
llama7 = ql.memory.estimate("llama-2-7b", "nf4+dq", context_length=ctx7)
kv7_16 = llama7.kv_cache_bytes
hf_rows = [r for r in kv_table.index if r.startswith("transformers")]
hf_note = ("; transformers' " + ", ".join(f"{r.removeprefix('transformers ').strip()} "
                                          f"{kv_table.loc[r, 'vs bf16 bytes']:.2f}x smaller, perplexity "
                                          f"{kv_table.loc[r, 'perplexity']:.2f}" for r in hf_rows)
           if hf_rows else "; transformers' own backends are not installed here (pip install hqq)")
answers[14] = ("Can I quantize the KV cache?",
               f"int4 (KIVI) made the cache {kv4['vs bf16 bytes']:.2f}x smaller, perplexity {ppl16:.2f} -> "
               f"{kv4['perplexity']:.2f}; int2 {kv2['vs bf16 bytes']:.1f}x, {kv2['perplexity']:.2f}")
display(Markdown(f"""**Answer (14).** Yes. After {KV_CONTEXT} tokens, 4-bit keys (per channel) and values (per token)
made the cache **{kv4['vs bf16 bytes']:.2f}x** smaller than bf16 ({kv_table.loc['bf16', 'bytes']:,} ->
{int(kv4['bytes']):,} bytes) and moved the next tokens' perplexity from {ppl16:.2f} to **{kv4['perplexity']:.2f}**;
2 bits saved
{kv2['vs bf16 bytes']:.1f}x and gave {kv2['perplexity']:.2f}{hf_note}. The weights do not change, so this pays only
when the context is long: Llama-2-7B's bf16 cache at {ctx7:,} tokens is {kv7_16 / 1e9:.2f} GB (its NF4 weights
{llama7.true_bytes / 1e9:.2f} GB), {kv7_16 / kv4['vs bf16 bytes'] / 1e9:.2f} GB at this int4 ratio."""))

# %%
if backends14["hqq"] or backends14["fp8"]:   # FAST: fp8 (hqq's optimiser takes seconds on a CPU)
    backend = "hqq" if backends14["hqq"] and not FAST else "fp8"
    config14 = {"backend": backend, "nbits": 4} if backend == "hqq" else {"backend": backend}
    plain = ql.generate(model, tok, "What is the capital of France?", MAX_NEW_TOKENS)
    quantized = ql.generate(model, tok, "What is the capital of France?", MAX_NEW_TOKENS,
                            cache_implementation="quantized", cache_config=config14)
    print(f"generate, plain cache:      {plain!r}\ngenerate, {backend} cache: {quantized!r}")

# %% [markdown]
# ### Q1 (first half). The 16-bit model's speed, for the comparison in Part 2
#
# One decode step (one new token, batch 1) of the 16-bit model, in fp32 and in bf16, best of `REPEATS`.

# %%
step_ms = {"fp32": 1e3 * time_forward(model, seq=1, repeats=REPEATS)}
model.to(torch.bfloat16)
step_ms["bf16"] = 1e3 * time_forward(model, seq=1, repeats=REPEATS)
bf16_fp = ql.memory.footprint(model)                     # the bf16 model's bytes, for Q3
emb_bytes = model.get_input_embeddings().weight.nbytes
print({k: f"{v:.1f} ms" for k, v in step_ms.items()}, f"bf16 footprint {mb(bf16_fp.reported_bytes)}")
del model, cache14
ql.models.release_memory()

# %% [markdown]
# ## Part 2 · Questions answered on the 4-bit model
#
# The same checkpoint in NF4 with double quantization (the tutorials' `BitsAndBytesConfig`), on the same device.

# %%
t0 = time.perf_counter()
model, tok = ql.load(MODEL_ID, mode="nf4+dq", verbose=False)
load_s = time.perf_counter() - t0
nf4_fp = ql.memory.footprint(model)
print(f"loaded in nf4+dq on {model.device} in {load_s:.1f} s; footprint {mb(nf4_fp.reported_bytes)} reported, "
      f"{mb(nf4_fp.true_bytes)} with its quantization state")

# %% [markdown]
# ### Q3. "The memory is not reduced", or not by 4x
#
# - transformers #23807, "Same size on memory usage when loading gpt2 from torch.float16 and 8bit Quantization":
#   https://github.com/huggingface/transformers/issues/23807
# - transformers #31474, "Quantization support for heads and embeddings":
#   https://github.com/huggingface/transformers/issues/31474
# - bitsandbytes #1141, "Quantized 4-bit models use more memory than 16-bit models":
#   https://github.com/bitsandbytes-foundation/bitsandbytes/issues/1141
# - bitsandbytes #790, "extra memory usage for loading the model":
#   https://github.com/bitsandbytes-foundation/bitsandbytes/issues/790
#
# **Predict (3).** bf16 footprint / NF4 + double-quant footprint for this model: write a number (4 would be "4-bit
# is a quarter of 16-bit").

# %%
PREDICT_MEMORY_RATIO = None   # e.g. 3.5

# %%
ratio3 = bf16_fp.reported_bytes / nf4_fp.true_bytes
emb_share = emb_bytes / nf4_fp.true_bytes
linear_ratio = bf16_fp.linear_weight_bytes / (nf4_fp.quantized_weight_bytes + nf4_fp.quant_state_bytes)
check_prediction(PREDICT_MEMORY_RATIO, ratio3, rel_tol=0.1, explain=(
    "Only the linear layers inside the blocks are quantized. The token embedding (tied to lm_head) stays 16-bit, "
    f"and in a 135M model with a {tok.vocab_size:,}-token vocabulary it is {emb_share:.0%} of the 4-bit model."))

# %%
llama3 = {m: ql.memory.estimate("llama-2-7b", m) for m in ("bf16", "nf4+dq")}
ratio3_7b = llama3["bf16"].true_bytes / llama3["nf4+dq"].true_bytes
answers[3] = ("Why is the memory not 4x smaller?",
              f"bf16 / nf4+dq = {ratio3:.2f}x here: the 16-bit embedding is {emb_share:.0%} of the 4-bit model; "
              f"{ratio3_7b:.2f}x for Llama-2-7B")
display(Markdown(f"""**Answer (3).** bf16 {mb(bf16_fp.reported_bytes)} against NF4 + double quant
{mb(nf4_fp.true_bytes)} (get_memory_footprint {mb(nf4_fp.reported_bytes)} + {mb(nf4_fp.quant_state_bytes)} of
scales it does not count): **{ratio3:.2f}x**, not four times. The quantized linear weights did shrink
{linear_ratio:.2f}x ({nf4_fp.bits_per_quantized_weight:.3f} bits a weight against 16), but the embedding, tied to
`lm_head`, stays bf16: {mb(emb_bytes)},
**{emb_share:.0%}** of the 4-bit model. For Llama-2-7B (32,000-token vocabulary, from its config) the same
arithmetic gives {ratio3_7b:.2f}x. On a GPU add the CUDA context and the activations, which do not shrink
(`torch.cuda.memory_allocated()` is the number to compare, not nvidia-smi)."""))

# %% [markdown]
# ### Q4. "The parameter count halved after 4-bit loading"
#
# - bitsandbytes #834, "After loading the llama2-7b-text model using 4-bit quantization, the total parameter count
#   is reduced to ~3.5B": https://github.com/bitsandbytes-foundation/bitsandbytes/issues/834
# - transformers #25978, "The impact of a quantization config on .num_parameters":
#   https://github.com/huggingface/transformers/issues/25978 (fixed for `num_parameters()` in PR #26132)
#
# **Predict (4).** `sum(p.numel() for p in model.parameters())` on this 4-bit model, in millions (the bf16 model has
# 134.5 M).

# %%
PREDICT_NUMEL_M = None   # e.g. 134.5

# %%
numel4 = sum(p.numel() for p in model.parameters())
logical4 = model.num_parameters()
packed_share = nf4_fp.quantized_params / logical4
check_prediction(PREDICT_NUMEL_M, numel4 / 1e6, abs_tol=1.0, unit=" M", explain=(
    "A 4-bit weight is stored two codes to a byte, as a uint8 tensor with half as many elements; numel() counts "
    "bytes of codes, not weights. transformers' num_parameters() doubles them back."))

# %%
answers[4] = ("Why did the parameter count halve?",
              f"numel() counted {numel4 / 1e6:.1f} M (two 4-bit codes a uint8 element); num_parameters() "
              f"{logical4 / 1e6:.1f} M")
display(Markdown(f"""**Answer (4).** Nothing was lost: `sum(p.numel())` gives **{numel4 / 1e6:.1f} M** because the
{nf4_fp.quantized_params / 1e6:.1f} M quantized weights ({packed_share:.0%} of the model) are stored as
{nf4_fp.quantized_weight_bytes / 1e6:.1f} M uint8 elements, two codes each, and the other
{nf4_fp.unquantized_params / 1e6:.1f} M stay as they were. `model.num_parameters()` counts
**{logical4 / 1e6:.1f} M**, the bf16 model's count."""))

# %% [markdown]
# ### Q9. "`.to` is not supported for `4-bit` or `8-bit` models"
#
# - bitsandbytes #547, "`.to` is not supported for `4-bit` or `8-bit` models.":
#   https://github.com/bitsandbytes-foundation/bitsandbytes/issues/547
# - transformers #38717, the same message raised from accelerate's `dispatch_model`:
#   https://github.com/huggingface/transformers/issues/38717

# %%
tried = {}
for label, call in (("model.to(torch.bfloat16)", lambda: model.to(torch.bfloat16)),
                    ("model.half()", lambda: model.half()),
                    (f"model.to('{model.device.type}') (where it already is)", lambda: model.to(model.device))):
    try:
        call()
        tried[label] = "works"
    except (ValueError, RuntimeError, TypeError) as err:
        tried[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:110]}"
for label, outcome in tried.items():
    print(f"{label:44s} -> {outcome}")
n_refused = sum(v != "works" for v in tried.values())

# %%
transformers_version = importlib.import_module("transformers").__version__
answers[9] = ("`.to` is not supported for 4-bit models?",
              f"transformers {transformers_version}: {n_refused} of {len(tried)} calls refused (dtype casts); "
              "a move to the device it is on works")
display(Markdown(f"""**Answer (9).** With transformers {transformers_version}, {n_refused} of the {len(tried)} calls
were refused: casting a 4-bit model's dtype (`.to(torch.bfloat16)`, `.half()`) raises, because the packed uint8
codes cannot be cast, and `.to('{model.device.type}')` to where it already is {tried[list(tried)[-1]]}. Choose the
device when loading (`device_map`); older releases (the threads) refused every `.to`, and accelerate's
`dispatch_model` called `.to` itself."""))

# %% [markdown]
# ### Q11. How do I save a 4-bit model and load it back?
#
# - transformers #23904, "isn't it possible to serialize 4-bit models then?":
#   https://github.com/huggingface/transformers/issues/23904
# - bitsandbytes #738, "Is there any way to save models trained with 4 bit quantization?":
#   https://github.com/bitsandbytes-foundation/bitsandbytes/issues/738
# - the fixes: bitsandbytes PR #753 (https://github.com/bitsandbytes-foundation/bitsandbytes/pull/753) and
#   transformers PR #26037 (https://github.com/huggingface/transformers/pull/26037)
#
# `ql.roundtrip.roundtrip` saves with `save_pretrained`, loads the folder with `from_pretrained`, and compares every
# tensor of the two state dicts byte for byte, and the logits of one prompt.

# %%
state_before = {k: v.clone() for k, v in model.state_dict().items()}   # for the next cell
check_ids = tok("The capital of France is", return_tensors="pt").input_ids
rt11, _ = roundtrip.roundtrip(model, check_ids=check_ids)
file_table = pd.Series(rt11.file_bytes, name="bytes in the file").to_frame()
file_table.loc["total tensors"] = sum(rt11.file_bytes.values())
print(f"{rt11.tensors} tensors: {len(rt11.compared['equal'])} equal, {len(rt11.compared['different'])} different, "
      f"{len(rt11.compared['missing'])} missing; logits equal: {rt11.same_logits}; saved in {rt11.save_s:.1f} s, "
      f"loaded in {rt11.load_s:.1f} s")
file_table

# %%
# The logits check ran this model's first forward in eval mode. On a CPU with AVX512-BF16 that forward repacks
# every 4-bit layer for bitsandbytes' fused kernel (layout "cpu-blocked"), and the state dict is then rebuilt from it.
layouts = pd.Series(bnb_interop.four_bit_layouts(model)).value_counts().to_dict()
state_after = model.state_dict()
after = roundtrip.compare_state_dicts(state_before, state_after)
print(f"layouts of the 4-bit layers now: {layouts}; this model's state dict against the one before the forward: "
      f"{len(after['equal'])} equal, {len(after['different'])} different")
if after["different"]:
    kinds = pd.Series([roundtrip.kind(n, state_after[n].dtype) for n in after["different"]]).value_counts()
    codes = "the codes are the same" if "codes" not in kinds else f"{kinds['codes']} code tensors differ too"
    print(f"What differs, by kind: {kinds.to_dict()}: {codes}. The double-quantized scales, undone "
          "by the repack, were quantized again when the state dict was built, so a model saved after a forward on "
          f"this {model.device.type} device does not hold the bytes it was loaded from. The comparison above is made "
          "before the forward.")
else:
    print(f"This {model.device.type} device kept the flat layout: saving before or after a forward writes the same "
          "bytes.")
del state_before, state_after

# %%
answers[11] = ("How do I save and reload a 4-bit model?",
               f"save_pretrained + from_pretrained: {len(rt11.compared['equal'])}/{rt11.tensors} tensors byte-equal, "
               f"logits equal: {rt11.same_logits}; file {mb(rt11.folder_bytes)} vs footprint {mb(rt11.true_bytes)}")
display(Markdown(f"""**Answer (11).** `model.save_pretrained(folder)` then
`AutoModelForCausalLM.from_pretrained(folder)` (the folder's config.json carries the quantization config, so no
`BitsAndBytesConfig` is passed): **{len(rt11.compared['equal'])} of {rt11.tensors}** tensors came back byte for byte,
logits equal: **{rt11.same_logits}**.
The folder is {mb(rt11.folder_bytes)}: codes {mb(rt11.file_bytes['codes'])}, scales {mb(rt11.file_bytes['scales'])},
code books {mb(rt11.file_bytes['code books'])}, JSON records {rt11.file_bytes['records']:,} bytes, 16-bit tensors
{mb(rt11.file_bytes['unquantized'])}, against a footprint of {mb(rt11.true_bytes)}. `push_to_hub` uploads the same
files."""))

# %% [markdown]
# ### Q1. "Why is 4-bit slower than fp16?"
#
# - bitsandbytes #611, "I am also seeing slower speed with 4bit vs FP16":
#   https://github.com/bitsandbytes-foundation/bitsandbytes/issues/611
# - bitsandbytes #181, "It seems FP16 is faster.": https://github.com/bitsandbytes-foundation/bitsandbytes/issues/181
# - bitsandbytes #490, "load_in_8bit very slow and slower than load_in_4bit now?":
#   https://github.com/bitsandbytes-foundation/bitsandbytes/issues/490
# - bitsandbytes #605, "Significant slowdown using Linear8bitLt and Linear4bit compared to nn.Linear":
#   https://github.com/bitsandbytes-foundation/bitsandbytes/issues/605
# - transformers #24762, "Abnormally slow inference speed of quantized model?":
#   https://github.com/huggingface/transformers/issues/24762
#
# **Predict (1).** Is one decode step of the NF4 model faster than the bf16 model's on this machine? True or False.

# %%
PREDICT_NF4_FASTER = None   # True or False

# %%
step_ms["nf4+dq"] = 1e3 * time_forward(model, seq=1, repeats=REPEATS)
nf4_faster = step_ms["nf4+dq"] < step_ms["bf16"]
check_prediction(PREDICT_NF4_FASTER, bool(nf4_faster), explain=(
    "It depends on the path: " + info.linear4bit if not GPU else "It depends on the path and the batch: on a "
    "GPU at batch 1 bitsandbytes runs a fused 4-bit kernel that reads 4 times fewer weight bytes, but a 135M model's "
    "step is dominated by kernel launches, not by reading weights."))

# %% [markdown]
# ### Q2. "compute_dtype=float32 (default) will be slow": is it W4A16 or W4A32?
#
# - bitsandbytes #1177, "does setting load_in_4bit=True use w4a4, w4a8 or w4a16 ?":
#   https://github.com/bitsandbytes-foundation/bitsandbytes/issues/1177
# - bitsandbytes PR #2077, "Warn once when Linear4bit computes in float32 on GPU":
#   https://github.com/bitsandbytes-foundation/bitsandbytes/pull/2077
#
# The 4-bit layers store weights in 4 bits and compute in `compute_dtype`: the input is cast to it and the weight is
# dequantized to it (`bnb_4bit_compute_dtype` in `BitsAndBytesConfig` sets each `Linear4bit`'s `compute_dtype`; here
# the attribute is switched on the loaded layers instead of loading the model twice). Below: one layer's output in
# each compute dtype against a float64 reference, and the decode step with every layer in each.

# %%
layers4 = [m for m in model.modules() if hasattr(m, "compute_dtype") and bnb_interop.is_4bit_weight(m.weight)]
layer2 = layers4[6]                                                          # layer 0's down_proj
x2 = torch.randn(4, layer2.in_features, generator=torch.Generator().manual_seed(1)).to(model.device, torch.bfloat16)
w2 = bnb_interop.record_from_layer(layer2).dequantize(torch.float64).to(model.device)
ref2 = x2.double() @ w2.T
rows2, start_dtype = [], layer2.compute_dtype
for dt in (torch.bfloat16, torch.float32):
    for m in layers4:
        m.compute_dtype = dt
    with torch.inference_mode():
        y = layer2(x2.to(dt))
    rows2.append({"compute dtype": str(dt).removeprefix("torch."), "output dtype": str(y.dtype).removeprefix("torch."),
                  "relative error vs float64": float((y.double() - ref2).norm() / ref2.norm()),
                  "decode step ms": 1e3 * time_forward(model, seq=1, repeats=REPEATS)})
for m in layers4:
    m.compute_dtype = start_dtype
compute_table = pd.DataFrame(rows2).set_index("compute dtype")
compute_table

# %%
fp32_vs_bf16 = compute_table.loc["float32", "decode step ms"] / compute_table.loc["bfloat16", "decode step ms"]
err_ratio2 = compute_table.loc["bfloat16", "relative error vs float64"] / compute_table.loc["float32",
                                                                                          "relative error vs float64"]
answers[2] = ("compute_dtype float32: W4A16 or W4A32?",
              f"W4A(compute dtype): fp32 compute took {fp32_vs_bf16:.2f}x bf16's decode time here; bf16's output "
              f"error was {err_ratio2:,.0f}x fp32's")
display(Markdown(f"""**Answer (2).** The weights are 4-bit either way; the arithmetic runs in the compute dtype, so
float32 is **W4A32** and bfloat16 **W4A16**: the layer's error against float64 was
{compute_table.loc['float32', 'relative error vs float64']:.1e} in float32 and
{compute_table.loc['bfloat16', 'relative error vs float64']:.1e} in bf16. Speed depends on the hardware: a decode step
in float32 took **{fp32_vs_bf16:.2f}x** the bf16 one on {where}. On a GPU with bf16 units float32 is the slow
path (bitsandbytes has no fast fp32 4-bit kernel, PR #2077); on a CPU without bf16 arithmetic (Q8) float32 can be the
faster one. Set `bnb_4bit_compute_dtype` to the dtype your device computes fastest, usually the model's own."""))

# %% [markdown]
# ### Q7. Does bitsandbytes work on CPU?
#
# - bitsandbytes #112, "The installed version of bitsandbytes was compiled without GPU support.":
#   https://github.com/bitsandbytes-foundation/bitsandbytes/issues/112
# - bitsandbytes PR #1206, "Support 4bit on CPU backend":
#   https://github.com/bitsandbytes-foundation/bitsandbytes/pull/1206

# %%
t0 = time.perf_counter()
answer7 = ql.generate(model, tok, "What is the capital of France?", min(MAX_NEW_TOKENS, 10))
gen_s = time.perf_counter() - t0
tokens7 = len(tok(answer7, add_special_tokens=False).input_ids)
print(f"{answer7!r}: {tokens7} tokens in {gen_s:.1f} s")

# %%
answers[7] = ("Does bitsandbytes work on CPU?",
              f"yes: bitsandbytes {info.bitsandbytes_version} NF4 answered {answer7[:40]!r} on "
              f"{model.device.type}")
display(Markdown(f"""**Answer (7).** This run loaded the model in NF4 + double quant with bitsandbytes
{info.bitsandbytes_version} on **{model.device.type}** and it answered "{answer7}" ({tokens7} tokens in
{gen_s:.1f} s). On a
CPU, bitsandbytes runs 4-bit and LLM.int8 since its CPU backend (PR #1206 and the later backend work); the path
depends on the CPU:
here, {info.linear4bit} (CPU capability {info.cpu_capability}). The old warning "compiled without GPU support"
came from releases that had no CPU kernels for these formats."""))

# %% [markdown]
# ### Q10. "Some modules are dispatched on the CPU or the disk"
#
# - bitsandbytes #881, "Some modules are dispatched on the CPU or the disk. Make sure you have enough GPU RAM to fit
#   the quantized model": https://github.com/bitsandbytes-foundation/bitsandbytes/issues/881
# - transformers #26153, asking for a "load_in_4bit_fp32_cpu_offload":
#   https://github.com/huggingface/transformers/issues/26153
#
# transformers raises it when a 4-bit model's `device_map` puts some modules on a GPU and others on "cpu" or "disk";
# `device_map="auto"` does that when the quantized model does not fit the GPU's memory. Both below: the error from a
# hand-written map (on any machine), and what "auto" would place where for a GPU with room for three quarters of this
# model.

# %%
try:
    ql.load(MODEL_ID, mode="nf4", device_map={"model": 0 if GPU else "cpu", "lm_head": "disk"}, verbose=False)
    error10 = "(no error)"
except ValueError as err:
    error10 = str(err).split(". ")[0]
print(error10)
budget10 = 3 * nf4_fp.reported_bytes // 4   # a GPU with room for three quarters of the 4-bit model
accelerate_log = logging.getLogger("accelerate.utils.modeling")
level = accelerate_log.level
accelerate_log.setLevel(logging.ERROR)   # a CPU-only run: "Device 0 is not available"; the map is arithmetic
try:
    placed = infer_auto_device_map(model, max_memory={0: budget10, "cpu": 8 * nf4_fp.true_bytes},
                                   no_split_module_classes=model._no_split_modules)
finally:
    accelerate_log.setLevel(level)
off = [n for n, d in placed.items() if d in ("cpu", "disk")]
off_params = sum(bnb_interop.logical_numel(p) for n, p in model.named_parameters()
                 if any(n == o or n.startswith(o + ".") for o in off))
off_4bit = sum(p.nbytes for n, p in model.named_parameters() if any(n == o or n.startswith(o + ".") for o in off))
print(f"GPU budget {mb(budget10)}: {len(off)} modules to the CPU: {off[:4]}{' ...' if len(off) > 4 else ''}")

# %%
answers[10] = ("\"Some modules are dispatched on the CPU or the disk\"?",
               f"the quantized model did not fit: with 3/4 of it ({mb(budget10)}) as GPU budget, 'auto' put "
               f"{len(off)} modules on the CPU")
display(Markdown(f"""**Answer (10).** The message means the *quantized* model did not fit the GPU budget, so
`device_map="auto"` sent modules elsewhere, and transformers refuses a 4-bit model split that way (reproduced here:
"{error10}"). With a GPU budget of {mb(budget10)} (three quarters of this model) "auto" placed **{len(off)}** modules
on the CPU:
{off_params / 1e6:.1f} M weights, {mb(off_4bit)} in 4-bit. `llm_int8_enable_fp32_cpu_offload=True` allows the split
but keeps those modules unquantized ({mb(2 * off_params)} at 16 bits, {mb(4 * off_params)} at 32): the fix is a GPU
that fits the 4-bit model, a smaller model, or leaving the offloaded modules in 16/32-bit on purpose."""))

# %% [markdown]
# ### Q6. "QLoRA uses more memory than LoRA"
#
# - bitsandbytes #1569, "When i call prepare_model_for_kbit_training to wrap the model, the memory consumption is
#   even higher than the bf16 counterpart.": https://github.com/bitsandbytes-foundation/bitsandbytes/issues/1569
# - torchtune #2255, "Qlora uses more memory than regular lora": https://github.com/meta-pytorch/torchtune/issues/2255
#
# peft's `prepare_model_for_kbit_training` casts every parameter that is not quantized (here the embedding and the
# norms) to float32. Measured on the 4-bit model (the last use of it: this changes it in place). Lesson 12 measures
# a whole QLoRA training step.

# %%
before6 = ql.memory.footprint(model)
if importlib.util.find_spec("peft") is not None:
    from peft import prepare_model_for_kbit_training
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    how6 = "peft's prepare_model_for_kbit_training"
else:   # what it does, by hand: every parameter that is not quantized to float32
    for p in model.parameters():
        if not (bnb_interop.is_4bit_weight(p) or bnb_interop.is_int8_weight(p)):
            p.data = p.data.float()
    how6 = "the same cast by hand (peft is not installed)"
after6 = ql.memory.footprint(model)
grown6 = after6.true_bytes / before6.true_bytes
vs_bf16 = after6.true_bytes / bf16_fp.reported_bytes
print(f"{how6}: {mb(before6.true_bytes)} -> {mb(after6.true_bytes)}")

# %%
answers[6] = ("Why does QLoRA use more memory than LoRA?",
              f"prepare_model_for_kbit_training grew the 4-bit model {grown6:.2f}x ({mb(after6.true_bytes)}), "
              f"{vs_bf16:.0%} of the bf16 model")
display(Markdown(f"""**Answer (6).** With {how6} the 4-bit model grew from {mb(before6.true_bytes)} to
**{mb(after6.true_bytes)}** ({grown6:.2f}x): the {mb(emb_bytes)} bf16 embedding became float32. That is
{vs_bf16:.0%} of the whole bf16 model, for a model whose weights are mostly embedding. Add activations (identical for
LoRA and QLoRA) and the dequantized copies of each 4-bit layer during the backward pass, and a small model can need
more memory in QLoRA than in bf16 LoRA; for a 7B model the linear weights dominate and QLoRA saves (lesson 12)."""))

# %%
answers[1] = ("Why is 4-bit slower than fp16?",
              f"decode step: bf16 {step_ms['bf16']:.1f} ms, fp32 {step_ms['fp32']:.1f} ms, nf4+dq "
              f"{step_ms['nf4+dq']:.1f} ms on {model.device.type}: nf4 {'faster' if nf4_faster else 'slower'}")
display(Markdown(f"""**Answer (1).** One decode step here: bf16 **{step_ms['bf16']:.1f} ms**, fp32
{step_ms['fp32']:.1f} ms, NF4 + double quant **{step_ms['nf4+dq']:.1f} ms** ({step_ms['nf4+dq'] / step_ms['bf16']:.2f}x
bf16's). 4-bit saves memory; it is faster only where reading the weights is the bottleneck *and* a fused kernel
reads the 4-bit codes directly (bitsandbytes' batch-1 GEMV on a GPU). Otherwise every forward dequantizes the weights
first, extra work on top of the same matmul: on this machine, {info.linear4bit}. Lesson 09 splits where the time
goes."""))

# %%
del model
ql.models.release_memory()

# %% [markdown]
# ## Try this
# - Set the `PREDICT_*` variables, rerun, and read the checks.
# - Q5: change `size` to 10 NF4 steps. When does re-quantizing after a merge stop mattering?
# - Q14: try `group=64`, or a residual of 32 recent tokens (`fake_quantize_cache(c, 2, 32, residual=32)`): how much
#   of the int2 damage does keeping the newest tokens in 16 bits undo?
# - Q2: on a GPU, compare the two compute dtypes again: which way does the speed go there?

# %%
summary = pd.DataFrame([{"question": q, "measured answer": a} for _, (q, a) in sorted(answers.items())],
                       index=[f"Q{n}" for n in sorted(answers)])
lines = "\n".join(f"- **Q{n}. {q}** {a}." for n, (q, a) in sorted(answers.items()))
display(Markdown(f"""## Summary (measured in this run)
{len(answers)} of the 14 questions answered with a value measured on {MODEL_ID} ({DEVICE}, bitsandbytes
{info.bitsandbytes_version}, transformers {transformers_version}):
{lines}
- Not measured in this run: a T4's own bf16 speed (Q8 shows the rule and this device's numbers)."""))
summary
