# %% [markdown]
# # 07 · Load and generate: the two code paths, side by side
#
# **Goals.** After this notebook you can
# 1. write the two `BitsAndBytesConfig`s people copy: `load_in_8bit=True`, and NF4 with double quant and bf16 compute;
# 2. run both for real on a model, next to bf16, and compare answers, memory and speed;
# 3. explain what gets slower with 4-bit and why (and what it buys instead).

# %%
import gc
import statistics
import time

import pandas as pd
import torch
from IPython.display import Markdown, display

import qlearn as ql

pd.options.display.float_format = "{:,.4g}".format

# %% [markdown]
# ## 1. The two configs
#
# This is what `ql.load(..., mode="int8")` and `ql.load(..., mode="nf4")` pass to
# `AutoModelForCausalLM.from_pretrained(..., quantization_config=...)`; nothing else changes:

# %%
int8_config = ql.models.quantization_config("int8")
nf4_config = ql.models.quantization_config("nf4")   # double quant and bf16 compute by default
show = ["load_in_8bit", "load_in_4bit", "llm_int8_threshold", "bnb_4bit_quant_type",
        "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"]
pd.DataFrame({"int8": {k: str(getattr(int8_config, k)) for k in show},
              "nf4": {k: str(getattr(nf4_config, k)) for k in show}})

# %% [markdown]
# In your own code that is:
# ```python
# from transformers import AutoModelForCausalLM, BitsAndBytesConfig
# int8 = BitsAndBytesConfig(load_in_8bit=True)
# nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
#                          bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
# model = AutoModelForCausalLM.from_pretrained(model_id, quantization_config=nf4, device_map="auto")
# ```
#
# ## 2. Same prompt, three modes
#
# The explorer loads each mode, answers, measures, and frees the model before the next one (one model in
# memory at a time). Greedy decoding, so answers are deterministic. Press **Generate** to run again with
# your own prompt or other modes.

# %%
gen = ql.widgets.generation_explorer("What is the capital of France?", modes=("bf16", "int8", "nf4"),
                                     max_new_tokens=MAX_NEW_TOKENS, model_id=MODEL_ID, run=True)
gen

# %%
runs = pd.DataFrame(gen.rows).set_index("mode")
runs

# %% [markdown]
# ## 3. What gets slower, and why
#
# bitsandbytes stores 4-bit weights packed and **dequantizes them before each matrix multiply** (on CPU and,
# at batch 1, usually on GPU too): every token pays for unpacking and scaling every weight. LLM.int8
# additionally splits each input into int8 and 16-bit outlier parts. Loading is slower too, because the
# bf16 weights are quantized on the way in. What 4-bit buys is **memory**, which decides whether a model fits
# at all. Measured here, per mode: a forward pass over **1 token** (the shape of each generation step at
# batch 1) and over **64 tokens** (the shape of reading a prompt). fp32 is included as the CPU's native
# precision: on a CPU without bf16 matrix instructions, bf16 itself can be slow for many tokens at once,
# which has nothing to do with quantization.

# %%
ids = None
forward = {}
for mode in ("fp32", "bf16", "int8", "nf4"):
    t0 = time.perf_counter()
    model, tok = ql.load(MODEL_ID, mode=mode, verbose=False)
    load_s = time.perf_counter() - t0
    if ids is None:
        ids = ql.evaluate.eval_tokens(tok, max_tokens=64)        # (1, 64) token ids of the offline text
    row = {"load (s)": load_s}
    with torch.inference_mode():
        for label, x, repeats in (("1 token (ms)", ids[:, :1], 9), ("64 tokens (ms)", ids, 3)):
            model(x)                                              # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1e3)
            row[label] = statistics.median(times)                 # the median: shared CPUs are noisy
    forward[mode] = row
    del model, tok
    gc.collect()
speed = pd.DataFrame(forward).T
for col in ("1 token (ms)", "64 tokens (ms)"):
    speed[col.replace("(ms)", "vs bf16")] = speed[col] / speed.loc["bf16", col]
speed

# %% [markdown]
# ## Try this
# - Ask something longer in the explorer (tick **fp4** too) and press **Generate**: where do the answers start
#   to differ? (This model is small: 4-bit costs it more than it costs a 7B model.)
# - On Colab with a GPU, set `MODEL_ID = "HuggingFaceTB/SmolLM2-360M-Instruct"` and rerun: is 4-bit still slower there?
# - Increase `max_tokens=64` to 256 in the timing cell: does the slowdown of int8 and nf4 grow or shrink?

# %%
r = runs
display(Markdown(f"""## Summary (measured in this run)
- Answers to "What is the capital of France?" ({MAX_NEW_TOKENS} new tokens, greedy):
  bf16 "{r.loc['bf16', 'answer']}"; int8 "{r.loc['int8', 'answer']}"; nf4 "{r.loc['nf4', 'answer']}".
- Footprint (`get_memory_footprint`): bf16 **{r.loc['bf16', 'footprint_mb']:.1f} MB**, int8 **{r.loc['int8', 'footprint_mb']:.1f} MB**,
  nf4 + double quant **{r.loc['nf4', 'footprint_mb']:.1f} MB** (+{r.loc['nf4', 'quant_state_mb']:.2f} MB of scales it leaves out).
- Generation speed: bf16 {r.loc['bf16', 'tokens_per_s']:.1f}, int8 {r.loc['int8', 'tokens_per_s']:.1f}, nf4 {r.loc['nf4', 'tokens_per_s']:.1f} tokens/s.
- One token (a generation step): int8 **{speed.loc['int8', '1 token vs bf16']:.2f}×**, nf4 **{speed.loc['nf4', '1 token vs bf16']:.2f}×**
  the bf16 time (fp32 {speed.loc['fp32', '1 token vs bf16']:.2f}×); 64 tokens: int8 {speed.loc['int8', '64 tokens vs bf16']:.2f}×,
  nf4 {speed.loc['nf4', '64 tokens vs bf16']:.2f}×, fp32 {speed.loc['fp32', '64 tokens vs bf16']:.2f}×.
- Loading took fp32 {speed.loc['fp32', 'load (s)']:.1f} / bf16 {speed.loc['bf16', 'load (s)']:.1f} / int8 {speed.loc['int8', 'load (s)']:.1f} / nf4 {speed.loc['nf4', 'load (s)']:.1f} s.
"""))
