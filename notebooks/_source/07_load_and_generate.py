# %% [markdown]
# # 07 · Load and generate: the two code paths, side by side
#
# **Goals.** After this notebook you can
# 1. write the two `BitsAndBytesConfig`s people copy: `load_in_8bit=True`, and NF4 with double quant and bf16 compute;
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

pd.options.display.float_format = "{:,.4g}".format

# %% [markdown]
# ## 1. The two configs
#
# This is what `ql.load(..., mode="int8")` and `ql.load(..., mode="nf4+dq")` pass to
# `AutoModelForCausalLM.from_pretrained(..., quantization_config=...)`; nothing else changes. ("nf4" alone
# is the same without double quantization.)

# %%
int8_config = ql.models.quantization_config("int8")
nf4_config = ql.models.quantization_config("nf4+dq")   # NF4, double quant, bf16 compute
show = ["load_in_8bit", "load_in_4bit", "llm_int8_threshold", "bnb_4bit_quant_type",
        "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"]
pd.DataFrame({"int8": {k: str(getattr(int8_config, k)) for k in show},
              "nf4+dq": {k: str(getattr(nf4_config, k)) for k in show}})

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
gen = ql.widgets.generation_explorer("What is the capital of France?", modes=("bf16", "int8", "nf4+dq"),
                                     max_new_tokens=MAX_NEW_TOKENS, model_id=MODEL_ID, run=True)
gen

# %%
runs = pd.DataFrame(gen.rows).set_index("mode")
runs

# %% [markdown]
# ## 3. Slower or faster? It depends on the code path
#
# "4-bit is slower" and "4-bit is faster" are both said, and both are true somewhere: what a 4-bit layer does
# in a forward pass depends on the hardware and the bitsandbytes version. First, which path this machine takes:

# %%
info = ql.backend_info()
print(info)

# %% [markdown]
# Now the time of a forward pass per mode, over **1 token** (the shape of each generation step at batch 1)
# and over **64 tokens** (the shape of reading a prompt), each after a warm-up pass (the first call pays
# one-time costs; on an AVX512-BF16 CPU it is also when bitsandbytes repacks the 4-bit layers). fp32 is
# included as the CPU's native precision: on a CPU without bf16 matrix instructions, bf16 itself can be
# slow for many tokens at once, which has nothing to do with quantization.

# %%
def time_forwards(model, tok):
    ids = ql.evaluate.eval_tokens(tok, max_tokens=64).to(model.device)   # (1, 64) token ids of the offline text
    row = {}
    with torch.inference_mode():
        for label, x, repeats in (("1 token (ms)", ids[:, :1], 9), ("64 tokens (ms)", ids, 3)):
            model(x)                                              # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1e3)
            row[label] = statistics.median(times)                 # the median: shared CPUs are noisy
    return row


forward = {mode: ql.models.measure_mode(MODEL_ID, mode, time_forwards)   # load, measure, free
           for mode in ("fp32", "bf16", "int8", "nf4+dq")}
speed = pd.DataFrame(forward).T.drop(columns="mode").rename(columns={"load_s": "load (s)"}).astype(float)
for col in ("1 token (ms)", "64 tokens (ms)"):
    speed[col.replace("(ms)", "vs bf16")] = speed[col] / speed.loc["bf16", col]
speed

# %%
step = speed.loc["nf4+dq", "1 token vs bf16"]
direction = "slower" if step > 1.05 else "faster" if step < 0.95 else "about as fast"
if info.cuda != "none":
    path = ("on this GPU bitsandbytes runs a fused 4-bit matrix-vector kernel for one token at a time (batch 1); "
            "for many tokens it dequantizes the weight to 16 bits, then multiplies")
elif info.linear4bit_repacks:
    path = ("on this CPU (AVX512-BF16) bitsandbytes repacked each 4-bit layer at the warm-up pass and then runs "
            "a fused 4-bit kernel that reads the packed weights directly")
else:
    path = ("on this CPU (no AVX512-BF16) every forward dequantizes each whole 4-bit weight to 16 bits and then "
            "runs an ordinary matrix multiply, so each token pays for unpacking and scaling every weight")
display(Markdown(f"Measured here: a one-token step in nf4+dq is **{step:.2f}×** the bf16 time ({direction}); "
                 f"{path}. What 4-bit always buys is **memory** (the footprint in the explorer's table above)."))

# %% [markdown]
# ## Try this
# - Ask something longer in the explorer (tick **fp4** too) and press **Generate**: where do the answers start
#   to differ? (This model is small: 4-bit costs it more than it costs a 7B model.)
# - On Colab with a GPU, set `MODEL_ID = "HuggingFaceTB/SmolLM2-360M-Instruct"` and rerun: which path does
#   `ql.backend_info()` report there, and which direction does the timing take?
# - Increase `max_tokens=64` to 256 in the timing cell: does the gap between int8, nf4+dq and bf16 grow or shrink?

# %%
r = runs
display(Markdown(f"""## Summary (measured in this run)
- Answers to "What is the capital of France?" ({MAX_NEW_TOKENS} new tokens, greedy):
  bf16 "{r.loc['bf16', 'answer']}"; int8 "{r.loc['int8', 'answer']}"; nf4+dq "{r.loc['nf4+dq', 'answer']}".
- Footprint (`get_memory_footprint`): bf16 **{r.loc['bf16', 'footprint_mb']:.1f} MB**, int8 **{r.loc['int8', 'footprint_mb']:.1f} MB**,
  nf4 + double quant **{r.loc['nf4+dq', 'footprint_mb']:.1f} MB** (+{r.loc['nf4+dq', 'quant_state_mb']:.2f} MB of scales it leaves out).
- Generation speed (after a one-token warm-up): bf16 {r.loc['bf16', 'tokens_per_s']:.1f}, int8 {r.loc['int8', 'tokens_per_s']:.1f},
  nf4+dq {r.loc['nf4+dq', 'tokens_per_s']:.1f} tokens/s.
- One token (a generation step): int8 **{speed.loc['int8', '1 token vs bf16']:.2f}×**, nf4+dq **{step:.2f}×**
  the bf16 time (fp32 {speed.loc['fp32', '1 token vs bf16']:.2f}×); 64 tokens: int8 {speed.loc['int8', '64 tokens vs bf16']:.2f}×,
  nf4+dq {speed.loc['nf4+dq', '64 tokens vs bf16']:.2f}×, fp32 {speed.loc['fp32', '64 tokens vs bf16']:.2f}×.
- The path that explains it: {info.linear4bit} (CPU capability {info.cpu_capability}, CUDA {info.cuda}).
- Loading took fp32 {speed.loc['fp32', 'load (s)']:.1f} / bf16 {speed.loc['bf16', 'load (s)']:.1f} / int8 {speed.loc['int8', 'load (s)']:.1f} / nf4+dq {speed.loc['nf4+dq', 'load (s)']:.1f} s.
"""))
