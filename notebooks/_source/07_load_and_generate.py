# %% [markdown]
# # 07 · Load and generate: the two code paths, side by side
#
# **Goals.** After this notebook you can
# 1. write the two `BitsAndBytesConfig`s people copy: `load_in_8bit=True`, and NF4 with double quant and a 16-bit
#    compute dtype (bf16, or fp16 on a GPU without native bf16, and why);
# 2. run both for real on a model, next to bf16, and compare answers, memory and speed;
# 3. measure whether 4-bit is slower or faster **on this machine**, and name the bitsandbytes code path that
#    makes it so (it differs between CPUs and GPUs; neither direction is a rule).

# %%
import statistics
import time

import pandas as pd
import torch
from IPython.display import Markdown, display

import qlearn as ql
import qlearn.claims as claims

pd.options.display.float_format = "{:,.4g}".format

# %% [markdown]
# ## 1. The two configs
#
# This is what `ql.load(..., mode="int8")` and `ql.load(..., mode="nf4+dq")` pass to
# `AutoModelForCausalLM.from_pretrained(..., quantization_config=...)`; nothing else changes. ("nf4" alone
# is the same without double quantization.)

# %%
int8_config = ql.models.quantization_config("int8")
nf4_config = ql.models.quantization_config("nf4+dq")   # NF4, double quant, the compute dtype of this hardware
DEVICE = ql.models.resolve_device("auto")              # where the models below run: "cuda" if there is a GPU
COMPUTE = nf4_config.bnb_4bit_compute_dtype            # torch.bfloat16, or torch.float16 on a GPU older than 8.0
print(f"on {DEVICE}: compute dtype {ql.backend.explain_compute_dtype(DEVICE)}")
show = ["load_in_8bit", "load_in_4bit", "llm_int8_threshold", "bnb_4bit_quant_type",
        "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"]
pd.DataFrame({"int8": {k: str(getattr(int8_config, k)) for k in show},
              "nf4+dq": {k: str(getattr(nf4_config, k)) for k in show}})

# %% [markdown]
# In your own code that is:
# ```python
# from transformers import AutoModelForCausalLM, BitsAndBytesConfig
# int8 = BitsAndBytesConfig(load_in_8bit=True)
# nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
#                          bnb_4bit_compute_dtype=torch.bfloat16)   # torch.float16 on a GPU older than 8.0 (T4)
# model = AutoModelForCausalLM.from_pretrained(model_id, quantization_config=nf4, device_map="auto")
# ```
# (Not `from_pretrained(model_id, load_in_8bit=True)`, as older tutorials write: transformers 5 removed that keyword,
# huggingface/transformers pull request #41287; lesson 01 runs it and prints the error.)
#
# **Why the compute dtype differs by machine.** `bnb_4bit_compute_dtype` is the dtype each 4-bit layer casts its
# input to and multiplies in. Tutorials write `torch.bfloat16`: fp32's range in 16 bits. qlearn picks it from the
# hardware (`ql.backend.default_compute_dtype`): bf16 on a CPU and on GPUs of compute capability 8.0 or newer (A100,
# H100/H200, RTX 30xx and later), which compute bf16 in hardware; **fp16** on older GPUs such as Colab's free T4
# (compute capability 7.5). A T4 has no bf16 units: torch emulates bf16 there, and `torch.cuda.is_bf16_supported()`
# still says True because its `including_emulation` argument defaults to True (ask
# `torch.cuda.is_bf16_supported(including_emulation=False)` for the hardware). bitsandbytes' tensor-core 4-bit
# kernel on compute capability 7.5 is fp16 only (`_gemm_4bit_use_custom_cuda` in its `backends/cuda/ops.py`).
# The line above says which case this machine is; section 4 measures what the choice changes.
#
# ## 2. Same prompt, three modes
#
# The explorer loads each mode, answers, measures, and frees the model before the next one (one model in
# memory at a time). Greedy decoding, so answers are deterministic. Press **Generate** to run again with
# your own prompt or other modes.
#
# Its tokens/s is measured apart from the answer (`ql.models.timed_generate`): a second generation of exactly
# `MAX_NEW_TOKENS` tokens per mode (`min_new_tokens = max_new_tokens`, so no mode stops early at a short answer),
# after an untimed warm-up generation (the first mode does not pay for start-up), with a GPU synchronized before
# each clock read (a CUDA call returns before the GPU has finished). Same work in every mode, so the numbers compare.

# %%
gen = ql.widgets.generation_explorer("What is the capital of France?", modes=("bf16", "int8", "nf4+dq"),
                                     max_new_tokens=MAX_NEW_TOKENS, model_id=MODEL_ID, run=True)
gen

# %%
runs = pd.DataFrame(gen.rows).set_index("mode")
runs

# %%
from transformers import AutoConfig

ratio = runs.loc["bf16", "footprint_mb"] / runs.loc["nf4+dq", "footprint_mb"]
split = ql.memory.estimate(AutoConfig.from_pretrained(ql.embedded_model_path() if MODEL_ID == "embedded" else MODEL_ID),
                           "nf4+dq")   # the model's own shapes: which parameters are quantized, which are not
print(f"Memory (lesson 01 predicts and explains it): {runs.loc['bf16', 'footprint_mb']:.1f} MB / "
      f"{runs.loc['nf4+dq', 'footprint_mb']:.1f} MB = {ratio:.2f}x, not 4x: "
      f"only the {split.quantized_params / 1e6:.1f} M weights of the linear layers inside the blocks are 4-bit; the "
      f"other {split.unquantized_params / 1e6:.1f} M (the token embedding, shared with the output layer, and the "
      f"norms) stay bf16 at 2 bytes each ({split.unquantized_bytes / 1e6:.1f} MB of the nf4+dq footprint), and the "
      "4-bit scales are not counted at all (lesson 05).")

# %% [markdown]
# ## 3. Slower or faster? It depends on the code path
#
# "4-bit is slower" and "4-bit is faster" are both said, and both are true somewhere: what a 4-bit layer does
# in a forward pass depends on the hardware and the bitsandbytes version. First, which path this machine takes:

# %%
info = ql.backend_info(DEVICE)   # the device the models run on
print(info)

# %% [markdown]
# That table is read from this machine and its bitsandbytes version. To see the path with your own eyes,
# ask torch's profiler which operators one layer's forward pass called. The cell below does it for one
# linear layer (`LAYER`), on its real input for one token, after a warm-up call (the first call pays
# one-time costs; on an AVX512-BF16 CPU it is also when bitsandbytes repacks the 4-bit weights). The times are
# each operator's own CPU time; on a GPU that is the time to launch it (the GPU runs it asynchronously).
#
# Each mode is then timed over **1 token** (a forward pass over one token with no KV cache: the same matrix shapes as
# one generation step at batch 1, without the attention over the cache that a real step also does; the explorer's
# tokens/s in section 2 times whole generation steps) and **64 tokens** (reading a prompt), after a warm-up pass
# (on a GPU synchronized before each clock read), and scored for perplexity. The 4-bit model is loaded three times,
# with `bnb_4bit_compute_dtype` set to bf16, fp16 and fp32 (the row called plain `nf4+dq` uses the one qlearn picks
# for this hardware, section 1): the **compute dtype** is the dtype
# bitsandbytes' `Linear4bit.forward` casts each 4-bit layer's input to (and its output back from; embeddings,
# norms and the activations between layers stay bf16). Whether the multiply itself then runs in that dtype
# depends on the path in the table above: section 4 measures what it changed on this machine.

# **Predict first.** On this machine, will a one-token forward of the nf4+dq model take more or less time than
# the bf16 model's? And by how many percent will perplexity change when the same 4-bit weights are computed
# in fp16 instead of bf16?

# %%
PREDICT_STEP = None               # "slower", "faster" or "same" (nf4+dq vs bf16, one token, this machine)
PREDICT_FP16_PPL_CHANGE = None    # percent, e.g. -0.5 or 2 (perplexity with fp16 compute vs bf16 compute)

# %%
from torch.profiler import ProfilerActivity, profile

LAYER = "model.layers.0.mlp.down_proj"
PROMPT = "What is the capital of France?"


def ops_in_one_layer(model, tok):
    """The operators one forward of LAYER called, in call order, with their own CPU time."""
    layer = model.get_submodule(LAYER)
    x = ql.sources.layer_inputs(model, tok, LAYER, PROMPT)[-1:].to(model.dtype)   # (1, 1536): one token
    with torch.inference_mode():
        layer(x)                                                       # warm-up (and repack, where it happens)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            layer(x)
            sync(model)
    first, self_ms = {}, {}
    for event in prof.events():
        first.setdefault(event.name, event.time_range.start)
        self_ms[event.name] = self_ms.get(event.name, 0.0) + event.self_cpu_time_total / 1e3
    total = sum(self_ms.values())
    busy = [name for name in sorted(first, key=first.get)   # bitsandbytes' ops, matmuls, and any op >= 2%
            if name.startswith("bitsandbytes::") or name in ("aten::mm", "aten::addmm", "aten::bmm")
            or self_ms[name] >= 0.02 * total]
    return " → ".join(f"{name} {self_ms[name]:.2f} ms" for name in busy)


def layer_error(model, tok):
    """Relative error of LAYER's output against the exact (float64) product of the SAME stored weights."""
    x = ql.sources.layer_inputs(model, tok, LAYER, PROMPT).to(model.dtype)         # (tokens, 1536), real input
    exact = x.double() @ ql.sources.layer_weight(model, LAYER).double().T         # what the stored weights mean
    with torch.inference_mode():
        out = model.get_submodule(LAYER)(x)
    return ((out.double() - exact).norm() / exact.norm()).item()


def largest_activation(model, tok):
    """The largest |value| entering any linear layer while the model reads 64 tokens (fp16 overflows at 65504)."""
    largest = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: largest.append(args[0].abs().max().item()))
             for name, m in model.named_modules() if name in set(ql.sources.linear_layer_names(model))]
    try:
        with torch.inference_mode():
            model(ql.evaluate.eval_tokens(tok, max_tokens=64).to(model.device))
    finally:
        for h in hooks:
            h.remove()
    return max(largest)


def sync(model):
    """Wait for the GPU to finish what was queued (a CUDA call returns before the work is done); a CPU: nothing."""
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def time_forwards(model, tok):
    ids = ql.evaluate.eval_tokens(tok, max_tokens=64).to(model.device)   # (1, 64) token ids of the offline text
    row = {}
    with torch.inference_mode():
        for label, x, repeats in (("1 token (ms)", ids[:, :1], 3 if FAST else 9), ("64 tokens (ms)", ids, 1 if FAST else 3)):
            model(x)                                              # warm-up
            times = []
            for _ in range(repeats):
                sync(model)
                t0 = time.perf_counter()
                model(x)
                sync(model)
                times.append((time.perf_counter() - t0) * 1e3)
            row[label] = statistics.median(times)                 # the median: shared CPUs are noisy
    return row


def measure(label, model, tok):
    layer = model.get_submodule(LAYER)
    dtype = getattr(layer, "compute_dtype", None)              # Linear4bit's; a bf16 layer computes in bf16
    compute = (str(dtype).removeprefix("torch.") if dtype is not None else
               f"LLM.int8: {info.int8_matmul}" if label == "int8" else str(model.dtype).removeprefix("torch."))
    return {"layer class": type(layer).__name__, "compute dtype": compute,
            "ops in one layer (one token)": ops_in_one_layer(model, tok), **time_forwards(model, tok),
            "perplexity": float(ql.perplexity(model, tok, max_tokens=128 if FAST else PPL_TOKENS, progress=False)),
            "layer output error": layer_error(model, tok), "largest activation": largest_activation(model, tok)}


NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
LABEL = {dt: "nf4+dq" if dt == COMPUTE else f"nf4+dq, {name} compute" for dt, name in NAMES.items()}   # dtype -> row
RUNS = {"bf16": ("bf16", None), "int8": ("int8", None), **{LABEL[dt]: ("nf4+dq", dt) for dt in sorted(
    NAMES, key=lambda dt: dt != COMPUTE)}}   # plain "nf4+dq" first: the compute dtype qlearn picks here
measured = {label: ql.models.measure_mode(MODEL_ID, mode, lambda m, t, label=label: measure(label, m, t),
                                          compute_dtype=compute)                       # load, measure, free
            for label, (mode, compute) in RUNS.items()}
table = pd.DataFrame(measured).T.drop(columns="mode").rename(columns={"load_s": "load (s)"})
speed = table.drop(columns=["ops in one layer (one token)", "layer class", "compute dtype"]).astype(float)
for col in ("1 token (ms)", "64 tokens (ms)"):
    speed[col.replace("(ms)", "vs bf16")] = speed[col] / speed.loc["bf16", col]
speed

# %% [markdown]
# Each row's `LAYER` class and what it computes in (what is inside those classes, byte for byte: lessons 01 and 05):

# %%
table[["layer class", "compute dtype"]]

# %% [markdown]
# What one layer ran, mode by mode (operators in call order, with their own CPU time: bitsandbytes' operators,
# matrix multiplies, and any other operator with at least 2% of the time), and the path that names
# (`ql.backend.measured_4bit_path`):

# %%
paths = {label: ql.backend.measured_4bit_path(ops) for label, ops in table["ops in one layer (one token)"].items()}
for label, ops in table["ops in one layer (one token)"].items():
    print(f"{label:22s} [{paths[label]}] {ops}")

# %%
step = speed.loc["nf4+dq", "1 token vs bf16"]
direction = "slower" if step > 1.05 else "faster" if step < 0.95 else "about as fast"
nf4_ops, nf4_path = table.loc["nf4+dq", "ops in one layer (one token)"], paths["nf4+dq"]
if nf4_path == "fused (CPU repack)":
    path = ("the profiler shows `bitsandbytes::gemv_4bit` for that one token and no `dequantize_4bit`: a fused "
            "kernel that reads the packed 4-bit weights (repacked once, at the first forward: lesson 05 measures "
            "it) instead of writing a 16-bit copy of them first")
elif nf4_path == "fused":
    path = ("the profiler shows `bitsandbytes::gemm_4bit` for that one token, with no decode and no matrix multiply "
            "beside it: bitsandbytes' fused CUDA kernel reads the packed 4-bit codes and the double-quantized scales "
            "and multiplies, without writing a 16-bit copy of the weight")
    path += ("; fused, and still slower: in a model this small (layers of 576 x 1536) a one-token forward is bound "
             "by launching kernels and fixed per-call costs, not by reading weights, so reading a quarter of the "
             "bytes does not pay for the extra work (lesson 09 measures where the time goes)" if direction == "slower"
             else "; reading a quarter of the bytes pays here")
elif nf4_path == "dequantize + matmul" and "dequantize_4bit" in nf4_ops:
    path = ("the profiler shows what each 4-bit layer did for that one token: `bitsandbytes::dequantize_4bit` "
            "(with `dequantize_blockwise` first for the double-quantized scales) rebuilt the whole weight in the "
            "compute dtype, then an ordinary matrix multiply (`aten::mm`) used it. Unpacking every weight is work a "
            "bf16 layer does not do")
elif nf4_path == "dequantize + matmul":
    path = ("the profiler shows `bitsandbytes::gemm_4bit` and then an ordinary matrix multiply: inside that op "
            "bitsandbytes rebuilt the weight in the compute dtype, then multiplied. Unpacking every weight is work a "
            "bf16 layer does not do")
else:
    path = (f"the profiler shows no separate dequantize step in a 4-bit layer ({nf4_ops}): on this machine "
            f"({info.linear4bit}) a fused kernel reads the packed 4-bit weights directly")
display(Markdown(f"Measured here: a one-token forward in nf4+dq is **{step:.2f}×** the bf16 time ({direction}); "
                 f"{path}. What 4-bit always buys is **memory** (the footprint in the explorer's table above)."))

# %%
word = {"slower": "slower", "faster": "faster", "about as fast": "same"}[direction]   # within 5%: "same"
display(claims.check_prediction(PREDICT_STEP, word))
print(f"Measured {step:.2f}x the bf16 time; {path}.")

# %% [markdown]
# ## 4. The compute dtype: what it changes, measured
#
# The seed tutorial says "the computation itself often happens in a higher precision (like BF16) after a quick
# dequantization step, preventing catastrophic accuracy loss". Three measurements test that claim, all in the
# table above: the **perplexity** of the same 4-bit weights computed in bf16, fp16 and fp32; the **layer
# output error** (one layer's output against the exact product of the same stored weights, so the 4-bit
# rounding itself is not in it: only the compute); and the **largest activation** entering a linear layer,
# because fp16's largest finite value is 65,504 while bf16 has fp32's range.

# %%
fp16_max = torch.finfo(torch.float16).max
c = speed.loc[[LABEL[torch.bfloat16], LABEL[torch.float16], LABEL[torch.float32]]]   # bf16, fp16, fp32 compute
fused_4bit = all(paths[k] == "fused (CPU repack)" for k in c.index)    # bitsandbytes' CPU kernel: bf16 inside
gpu_fused = all(paths[k] == "fused" for k in c.index)                  # its CUDA kernel: one per compute dtype
verdict = ("no overflow risk for fp16 on this model" if c["largest activation"].max() < fp16_max / 10
           else "activations come close to fp16's limit")
display(Markdown(
    f"- Perplexity: bf16 compute **{c.iloc[0]['perplexity']:.3f}**, fp16 **{c.iloc[1]['perplexity']:.3f}**, "
    f"fp32 **{c.iloc[2]['perplexity']:.3f}** (the bf16 model: {speed.loc['bf16', 'perplexity']:.3f}).\n"
    f"- Layer output error from the compute alone: bf16 {c.iloc[0]['layer output error']:.2e}, "
    f"fp16 {c.iloc[1]['layer output error']:.2e}, fp32 {c.iloc[2]['layer output error']:.2e}. All three outputs "
    f"are cast back to bf16 (the activations' dtype) on the way out, so each includes that rounding; for scale, the "
    f"bf16 model's layer (no 4-bit weights, bf16 compute) shows {speed.loc['bf16', 'layer output error']:.2e}.\n"
    f"- Largest activation entering a linear layer: {c['largest activation'].max():,.1f} "
    f"(fp16 max {fp16_max:,.0f}): {verdict}.\n"
    f"- One token: fp16 compute {c.iloc[1]['1 token vs bf16']:.2f}×, fp32 compute {c.iloc[2]['1 token vs bf16']:.2f}× "
    f"the bf16 model's time (bf16 compute {c.iloc[0]['1 token vs bf16']:.2f}×).\n"
    f"- The plain `nf4+dq` row uses qlearn's choice for this hardware, {NAMES[COMPUTE]}: "
    f"{ql.backend.explain_compute_dtype(DEVICE).split(': ', 1)[1]}."
    + ("" if not gpu_fused else
       "\n- **On this GPU the 4-bit layers ran `bitsandbytes::gemm_4bit`** for every compute dtype, and that op has a "
       "kernel for each (`cgemm_4bit_bf16`, `_fp16`, `_fp32` in bitsandbytes' `backends/cuda/ops.py`): each setting "
       "really multiplied in its own dtype.")
    + ("" if not fused_4bit else
       "\n- **On this machine the 4-bit layers ran `bitsandbytes::gemv_4bit`** for every compute dtype (the operator "
       "lists above), and bitsandbytes' CPU `gemv_4bit` casts its input to bf16 whatever the compute dtype (\"cpu "
       "fused op only support bf16 for now\", `backends/cpu/ops.py`, bitsandbytes 0.50). So the fp32 setting ran the "
       f"same bf16 kernel (perplexity {c.iloc[2]['perplexity']:.3f} vs {c.iloc[0]['perplexity']:.3f}: "
       f"{'equal' if round(c.iloc[2]['perplexity'], 3) == round(c.iloc[0]['perplexity'], 3) else 'different'}), and "
       "the fp16 setting rounds the input to fp16 before that cast: its difference measures that extra rounding of "
       "the input, not an fp16 multiply.")))


# %%
ppl = c["perplexity"]
fp16_change = 100 * (ppl.iloc[1] / ppl.iloc[0] - 1)
rounding = 100 * (ppl.iloc[0] / speed.loc["bf16", "perplexity"] - 1)
display(claims.check_prediction(PREDICT_FP16_PPL_CHANGE, fp16_change, rel_tol=0, abs_tol=1.0, unit="%",
                                explain="Counted right within 1 percentage point."))
print(f"Measured: fp16 compute changes perplexity by {fp16_change:+.2f}% against bf16 compute; the 4-bit weights "
      f"themselves cost {rounding:+.1f}% against the bf16 model. bf16 and fp16 both keep 16 bits: fp16 spends "
      f"more of them on the mantissa (finer steps: eps {torch.finfo(torch.float16).eps:.1e} vs "
      f"{torch.finfo(torch.bfloat16).eps:.1e}), bf16 on the exponent (range up to "
      f"{torch.finfo(torch.bfloat16).max:.1e} vs {fp16_max:,.0f}). A 'catastrophic loss' in fp16 would be an overflow "
      f"to inf, a value above {fp16_max:,.0f}; the largest layer input here was {c['largest activation'].max():,.1f} "
      f"(layer outputs and the sums inside a matmul are not checked here)."
      + (" On this machine's fused path nothing was multiplied in fp16 at all (section 4's last point)." if fused_4bit
         else ""))

# %% [markdown]
# ## Try this
# - Ask something longer in the explorer (tick **fp4** too) and press **Generate**: where do the answers start
#   to differ? (Lesson 04 puts this model's 4-bit perplexity cost beside published numbers for 7B-70B models.)
# - On Colab with a GPU, set `MODEL_ID = "HuggingFaceTB/SmolLM2-360M-Instruct"` and rerun: which path does
#   `ql.backend_info()` report there, which operators does the profiler list, and which direction does the
#   timing take?
# - Increase `max_tokens=64` to 256 in `time_forwards`: does the gap between int8, nf4+dq and bf16 grow or shrink?

# %%
r = runs
gen_ratio = r.loc["bf16", "tokens_per_s"] / r.loc["nf4+dq", "tokens_per_s"]   # nf4+dq time per token / bf16's
agree = ("the same direction as the one-token forward of section 3" if (gen_ratio > 1) == (step > 1) else
         f"the other direction from the one-token forward of section 3 ({step:.2f}×): a generate call does its own "
         "work around each forward (the cache, the logits, the stopping checks); time both yourself with "
         "`ql.models.timed_generate(model, tok, prompt, 128)`, whose extra arguments go to `model.generate`")
machine = (f"{info.device}: {info.cuda}, compute capability {info.compute_capability[0]}.{info.compute_capability[1]}"
           if info.is_cuda else f"CPU capability {info.cpu_capability}, CUDA {info.cuda}")
display(Markdown(f"""## Summary (measured in this run)
- Answers to "{PROMPT}" (at most {MAX_NEW_TOKENS} new tokens, greedy):
  bf16 "{r.loc['bf16', 'answer']}"; int8 "{r.loc['int8', 'answer']}"; nf4+dq "{r.loc['nf4+dq', 'answer']}".
- Footprint (`get_memory_footprint`): bf16 **{r.loc['bf16', 'footprint_mb']:.1f} MB**, int8 **{r.loc['int8', 'footprint_mb']:.1f} MB**,
  nf4 + double quant **{r.loc['nf4+dq', 'footprint_mb']:.1f} MB** (+{r.loc['nf4+dq', 'quant_state_mb']:.2f} MB of scales it leaves out, as loaded: on an AVX512-BF16 CPU the
  first forward undoes double quantization and the scales grow, which lesson 05 measures).
- Generation speed ({int(r.loc['bf16', 'speed_tokens'])} tokens at a fixed length, after a warm-up{', synchronized' if DEVICE == 'cuda' else ''}): bf16 {r.loc['bf16', 'tokens_per_s']:.1f}, int8 {r.loc['int8', 'tokens_per_s']:.1f},
  nf4+dq {r.loc['nf4+dq', 'tokens_per_s']:.1f} tokens/s: nf4+dq takes {gen_ratio:.2f}× the bf16 time per token, {agree}.
- One token (a forward pass without KV cache): int8 **{speed.loc['int8', '1 token vs bf16']:.2f}×**, nf4+dq **{step:.2f}×**
  the bf16 time; 64 tokens: int8 {speed.loc['int8', '64 tokens vs bf16']:.2f}×, nf4+dq {speed.loc['nf4+dq', '64 tokens vs bf16']:.2f}×.
- Layer classes: {', '.join(f"{k} `{v}`" for k, v in table['layer class'].items())}.
- What a 4-bit layer ran for one token: {nf4_ops}.
- The path that explains it ({nf4_path}): {info.linear4bit} ({machine}).
- Compute dtype here: {NAMES[COMPUTE]} ({ql.backend.explain_compute_dtype(DEVICE).split(': ', 1)[1]}).
- Compute dtype for nf4+dq (bf16 / fp16 / fp32): perplexity {c.iloc[0]['perplexity']:.3f} / {c.iloc[1]['perplexity']:.3f} / {c.iloc[2]['perplexity']:.3f};
  one token {c.iloc[0]['1 token (ms)']:.1f} / {c.iloc[1]['1 token (ms)']:.1f} / {c.iloc[2]['1 token (ms)']:.1f} ms.
- Loading took bf16 {speed.loc['bf16', 'load (s)']:.1f} / int8 {speed.loc['int8', 'load (s)']:.1f} / nf4+dq {speed.loc['nf4+dq', 'load (s)']:.1f} s.
"""))
