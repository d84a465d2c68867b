# %% [markdown]
# # 01 · Why quantize? Memory first
#
# **Goals.** After this notebook you can
# 1. work out how many GB a 7B, 13B or 70B model needs in fp32, fp16, int8 and 4-bit, before loading anything;
# 2. check three claims that tutorials repeat, by measuring them on a real model here;
# 3. explain why a whole model shrinks less than its quantized layers do.
#
# Everything below is computed when you run it; the summary at the end quotes this run's numbers.

# %%
import gc

import pandas as pd
import torch
from IPython.display import Markdown, display

import qlearn as ql

pd.options.display.float_format = "{:,.2f}".format

# %% [markdown]
# ## 1. The arithmetic: parameters × bits
#
# A weight in fp32 takes 32 bits, in fp16/bf16 16, in int8 8 and in a 4-bit format 4, **plus** the
# scales the quantizer keeps beside the codes (one float32 `absmax` per block of 64 weights for
# NF4: 32/64 = 0.5 extra bit). `ql.memory.estimate` does this sum layer by layer for a Llama-style
# model from its config. Here are Llama-2 7B, 13B and 70B (their published shapes):

# %%
rows = []
for preset in ("llama-2-7b", "llama-2-13b", "llama-2-70b"):
    for mode in ("fp32", "fp16", "int8", "nf4", "nf4+dq"):
        e = ql.memory.estimate(preset, mode)
        rows.append({"model": preset, "mode": mode, "parameters (B)": e.n_params / 1e9,
                     "GB": e.true_bytes / 1e9, "of which scales (GB)": e.quant_state_bytes / 1e9,
                     "kept 16-bit (GB)": e.unquantized_bytes / 1e9 if mode in ("int8", "nf4", "nf4+dq") else 0.0})
sizes = pd.DataFrame(rows)
sizes.pivot(index="model", columns="mode", values="GB").loc[["llama-2-7b", "llama-2-13b", "llama-2-70b"],
                                                          ["fp32", "fp16", "int8", "nf4", "nf4+dq"]]

# %% [markdown]
# Read the 70B row: in fp16 it needs two 80 GB GPUs, in NF4 one ("nf4+dq" adds double quantization,
# notebook 05, which shrinks the scales). That is the whole reason for quantizing: **memory**. The full
# table, with the scales and the layers that stay 16-bit (embeddings, `lm_head`, norms):

# %%
sizes

# %%
est = {p: {m: ql.memory.estimate(p, m) for m in ("fp32", "fp16", "int8", "nf4")}
       for p in ("llama-2-7b", "llama-2-13b", "llama-2-70b")}
e7 = est["llama-2-7b"]
print(f"7B:  int8 / fp16 = {e7['int8'].true_bytes / e7['fp16'].true_bytes:.3f}   "
      f"int8 / fp32 = {e7['int8'].true_bytes / e7['fp32'].true_bytes:.3f}   "
      f"nf4 / fp16 = {e7['nf4'].true_bytes / e7['fp16'].true_bytes:.3f}")

# %% [markdown]
# ## 2. Three claims, measured on a real model
#
# The model here is **SmolLM2-135M-Instruct** (`MODEL_ID = "embedded"`, offline). We load it three
# times, through the ordinary transformers + bitsandbytes path, **one at a time** (Binder gives 1–2 GB),
# and record what `model.get_memory_footprint()` reports plus what it leaves out.
# `ql.compare` loads a mode, measures it and frees it before the next.
#
# *A note on this model:* its weights were shipped as GGUF **Q4_1** (4-bit, blocks of 32, with a
# minimum per block); qlearn converts them to bf16 once. So "bf16" here means bf16 values that came
# from 4-bit ones. That does not change any byte count below; notebook 02 shows how you can tell.

# %%
table = ql.compare(modes=("bf16", "int8", "nf4"), model_id=MODEL_ID, max_new_tokens=MAX_NEW_TOKENS,
                   ppl_tokens=0, progress=False)
mb = table[["reported_bytes", "quant_state_bytes", "linear_weight_bytes", "other_bytes"]] / 1e6
mb.columns = ["get_memory_footprint (MB)", "scales it leaves out (MB)", "linear weights (MB)",
              "everything else (MB)"]
mb

# %% [markdown]
# ### Claim 1: "INT8 is a quarter of FP16"
#
# One int8 weight is one byte; one fp16 weight is two. So int8 weights are **half** of fp16 (a quarter
# of fp32). The quarter is int8 vs **fp32**. Measured on the linear layers of the model you just loaded:

# %%
lin = table["linear_weight_bytes"]
ratio_lin_int8 = lin["int8"] / lin["bf16"]
ratio_lin_nf4 = lin["nf4"] / lin["bf16"]
ratio_int8 = table.loc["int8", "reported_bytes"] / table.loc["bf16", "reported_bytes"]
ratio_nf4 = table.loc["nf4", "reported_bytes"] / table.loc["bf16", "reported_bytes"]
print(f"linear weights: int8 / bf16 = {ratio_lin_int8:.3f}, nf4 / bf16 = {ratio_lin_nf4:.3f}")
print(f"whole model:    int8 / bf16 = {ratio_int8:.3f}, nf4 / bf16 = {ratio_nf4:.3f}")

# %% [markdown]
# ### Claim 2: "4-bit halves it again"
#
# For the linear weights, yes (4 bits vs 8). For the **whole model**, no: look at the column
# "everything else". The token embedding (49,152 × 576 values here, tied with `lm_head`) and the
# norms stay 16-bit in every mode, and in a 135M model they are a big share. bitsandbytes
# quantizes `nn.Linear` layers only.

# %%
other_share = table.loc["bf16", "other_bytes"] / table.loc["bf16", "reported_bytes"]
share_7b = e7["fp16"].unquantized_bytes / e7["fp16"].true_bytes
print(f"this model: {other_share:.1%} of the bf16 footprint is never quantized;  "
      f"Llama-2-7B: {share_7b:.1%}")

# %% [markdown]
# ### Claim 3: "get_memory_footprint() is what 4-bit costs"
#
# Not quite: the per-block `absmax` scales of a 4-bit weight are attributes, not parameters, so
# `get_memory_footprint()` does not count them. `ql.memory.footprint` counts both. The `nf4` row
# is plain NF4 (one float32 `absmax` per 64 weights); double quantization (notebook 05) shrinks it:

# %%
state_nf4 = table.loc["nf4", "quant_state_bytes"]
print(f"nf4: reported {table.loc['nf4', 'reported_bytes'] / 1e6:.1f} MB, plus {state_nf4 / 1e6:.2f} MB of scales "
      f"-> {table.loc['nf4', 'bits_per_weight']:.3f} bits per quantized weight")

# %% [markdown]
# ## Try this
# - Estimate a model size that is not in the table: `ql.memory.estimate(34e9, "nf4").true_bytes / 1e9`
#   (a bare count treats every parameter as a quantized linear weight).
# - Add the KV cache for a long prompt: `ql.memory.estimate("llama-2-7b", "nf4", context_length=4096)`.
#   Which grows faster with context, the weights or the cache?
# - On Colab or Binder, set `MODEL_ID = "HuggingFaceTB/SmolLM2-360M-Instruct"` in the parameters cell and
#   rerun: does the share that stays 16-bit go up or down with a bigger model?

# %%
gc.collect()
display(Markdown(f"""## Summary (measured in this run)
- Llama-2-7B needs **{e7['fp32'].true_bytes / 1e9:.1f} GB** in fp32, **{e7['fp16'].true_bytes / 1e9:.1f} GB** in fp16,
  **{e7['int8'].true_bytes / 1e9:.1f} GB** in int8 and **{e7['nf4'].true_bytes / 1e9:.2f} GB** in NF4;
  13B {est['llama-2-13b']['fp16'].true_bytes / 1e9:.1f} → {est['llama-2-13b']['nf4'].true_bytes / 1e9:.1f} GB;
  70B {est['llama-2-70b']['fp16'].true_bytes / 1e9:.1f} → {est['llama-2-70b']['nf4'].true_bytes / 1e9:.1f} GB (fp16 → NF4).
- INT8 weights are **{ratio_lin_int8:.2f}×** their bf16 size here (half, not a quarter); NF4 weights **{ratio_lin_nf4:.2f}×**.
- The whole {MODEL_ID} model: bf16 {table.loc['bf16', 'reported_bytes'] / 1e6:.1f} MB, int8 {table.loc['int8', 'reported_bytes'] / 1e6:.1f} MB
  (**{ratio_int8:.2f}×**), nf4 {table.loc['nf4', 'reported_bytes'] / 1e6:.1f} MB (**{ratio_nf4:.2f}×**): smaller savings,
  because {other_share:.0%} of it (embeddings, norms) stays 16-bit.
- `get_memory_footprint()` leaves out {state_nf4 / 1e6:.2f} MB of 4-bit scales here.
"""))
