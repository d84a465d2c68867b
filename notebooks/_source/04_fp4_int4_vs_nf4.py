# %% [markdown]
# # 04 · FP4 and INT4 against NF4: error and perplexity
#
# **Goals.** After this notebook you can
# 1. read bitsandbytes' FP4 code book and say how it differs from NF4 and from a plain 4-bit integer grid (INT4);
# 2. measure the weight error of the three formats on every layer of a real model;
# 3. measure what that error does to the model: perplexity on a fixed English text, one model in memory at a time;
# 4. compare the ordering you measure with the one the QLoRA paper reports (NF4 < FP4 < INT4).

# %%
import pandas as pd
import torch
from IPython.display import Markdown, display

import qlearn as ql

pd.options.display.float_format = "{:,.4g}".format

# %% [markdown]
# ## 1. Three sets of 16 values
#
# All three formats scale each block of 64 weights by its `absmax` and store a 4-bit code per weight;
# they differ only in *which* 16 values the codes stand for:
# - **INT4 (absmax)**: evenly spaced, −7/7 … 7/7 (15 values used; symmetric);
# - **NF4**: normal quantiles (notebook 03), dense near 0;
# - **FP4** as bitsandbytes defines it: a tiny float (1 sign bit, exponent and mantissa bits), divided by 12.
#   These are **not** the OCP E2M1 values {0, 0.5, 1, 1.5, 2, 3, 4, 6}.

# %%
books = pd.DataFrame({
    "INT4 absmax": sorted([k / 7 for k in range(-7, 8)] + [float("nan")], key=lambda v: (v != v, v)),
    "NF4": ql.codebooks.NF4.sort().values.numpy(),
    "FP4 (bitsandbytes)": ql.codebooks.FP4.sort().values.numpy(),
})
books

# %%
fp4_times_12 = sorted({abs(round(v * 12, 4)) for v in ql.codebooks.FP4.tolist()})
print("FP4 magnitudes × 12:", fp4_times_12, "-> +0 and -0 are both codes, so FP4 has 15 distinct values")

# %% [markdown]
# ## 2. Weight error on every linear layer
#
# *Remember:* this model's weights were stored as GGUF Q4_1 (4-bit, blocks of 32) before qlearn converted
# them to bf16 (notebook 02). Every number below measures re-quantizing those weights.

# %%
model, tok = ql.load(MODEL_ID, mode="bf16")
head = model.get_output_embeddings()
all_names = [n for n in ql.sources.linear_layer_names(model) if model.get_submodule(n) is not head]
names = all_names[::7] if FAST else all_names     # FAST (CI): every 7th layer, same code
rows = []
for name in names:
    w = ql.sources.layer_weight(model, name)
    for fmt, result in (("INT4", ql.absmax_quantize(w, 4, blocksize=64)),
                        ("NF4", ql.quantize_4bit(w, "nf4", blocksize=64)),
                        ("FP4", ql.quantize_4bit(w, "fp4", blocksize=64))):
        s = ql.error_stats(w, result.dequantize())
        rows.append({"layer": name, "format": fmt, "SQNR dB": s["sqnr_db"], "rel_err": s["rel_err"]})
errors = pd.DataFrame(rows)
sqnr = errors.pivot_table(index="format", values=["SQNR dB", "rel_err"], aggfunc="mean").loc[["NF4", "FP4", "INT4"]]
print(f"{len(names)} layers")
sqnr

# %% [markdown]
# Look at a few layers yourself: pick the **scheme** (NF4, FP4, absmax = INT4 at **bits** 4) and a
# **tensor**; panel (a) shows one block with its 16 levels. (The explorer gets float32 copies of these
# layers, not the model, so the model can be freed below while the explorer stays alive.)

# %%
few = {n: ql.sources.layer_weight(model, n) for n in ("model.layers.0.self_attn.q_proj",
                                                      "model.layers.15.mlp.down_proj", "model.layers.29.mlp.up_proj")}
hist = ql.widgets.histogram_explorer(few, scheme="nf4", bits=4)
hist

# %% [markdown]
# ## 3. Perplexity: what the error does to the model
#
# Perplexity = exp(mean negative log-likelihood per token) on a fixed English text (`pydoc_data.topics`, which
# every Python carries): lower is better. NF4 and FP4 go through transformers + bitsandbytes for real
# (`ql.compare` loads each mode, scores it and frees it). bitsandbytes has no INT4 format, so for INT4 we
# replace each linear weight of the bf16 model by its absmax 4-bit (blocks of 64) dequantized copy
# ("fake quantization": same numbers, still stored in bf16).

# %%
int4_model = model   # the bf16 model loaded above, modified in place
with torch.no_grad():
    for name in all_names:   # every linear layer except lm_head (tied to the embedding; bitsandbytes skips it too)
        layer = int4_model.get_submodule(name)
        layer.weight.copy_(ql.absmax_quantize(layer.weight.float(), 4, blocksize=64).dequantize().to(layer.weight.dtype))
ppl_int4 = ql.perplexity(int4_model, tok, max_tokens=PPL_TOKENS, progress=False)
del model, int4_model, tok, head, layer   # head and layer are parts of the model: they keep it alive too
ql.models.release_memory()                # collect it, and hand the freed memory back before the next load

table = ql.compare(modes=("bf16", "nf4+dq", "fp4+dq"), model_id=MODEL_ID, max_new_tokens=MAX_NEW_TOKENS,
                   ppl_tokens=PPL_TOKENS, progress=False)
ppl = table["perplexity"].rename({"nf4+dq": "NF4 (+DQ)", "fp4+dq": "FP4 (+DQ)"}).to_dict()
ppl["INT4 absmax (fake-quantized)"] = ppl_int4
ppl = pd.Series(ppl, name=f"perplexity, {PPL_TOKENS} tokens")
ppl.to_frame().assign(**{"vs bf16": ppl / ppl["bf16"] - 1})

# %%
order = " < ".join(ppl.drop("bf16").sort_values().index)
print("measured ordering (lower is better):", order)
print("answers:", table["answer"].to_dict())

# %% [markdown]
# QLoRA (Table 2) reports NF4 < FP4 < INT4 in perplexity on models of 125M–13B parameters. The "vs bf16"
# column above is what 4 bits cost *this* 135M model; it is far from the "<1 %" often quoted for 7B+ models,
# which we cannot check here (try a bigger `MODEL_ID` on Colab). With few tokens (`QLEARN_FAST=1` scores
# only 256) the numbers are noisy; the default is 4,096.
#
# ## Try this
# - In the explorer, switch **scheme** between NF4 and FP4 on `model.layers.0.self_attn.q_proj`: where in the
#   range does FP4 put its levels, and where does NF4?
# - Re-run the perplexity cell with `PPL_TOKENS = 4096`: does the ordering change?
# - Change `blocksize=64` in the fake-quantization loop to 128 or 1024: how much does INT4's perplexity grow?

# %%
display(Markdown(f"""## Summary (measured in this run)
- Mean weight SQNR over {len(names)} linear layers, blocks of 64: NF4 **{sqnr.loc['NF4', 'SQNR dB']:.2f} dB**,
  FP4 **{sqnr.loc['FP4', 'SQNR dB']:.2f} dB**, INT4 **{sqnr.loc['INT4', 'SQNR dB']:.2f} dB**.
- Perplexity on {PPL_TOKENS} tokens: bf16 **{ppl['bf16']:.2f}**, NF4+DQ **{ppl['NF4 (+DQ)']:.2f}**,
  FP4+DQ **{ppl['FP4 (+DQ)']:.2f}**, INT4 absmax (fake-quantized) **{ppl['INT4 absmax (fake-quantized)']:.2f}**.
- Measured ordering: {order} (QLoRA: NF4 < FP4 < INT4).
- Reminder: these weights came from a Q4_1 GGUF file, so "bf16" is itself a decoded 4-bit model.
"""))
