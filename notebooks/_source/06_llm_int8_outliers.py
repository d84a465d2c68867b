# %% [markdown]
# # 06 · LLM.int8 and outliers
#
# **Goals.** After this notebook you can
# 1. quantize a matrix row by row to int8 the way bitsandbytes does (`int8_vectorwise`), by hand and with qlearn;
# 2. find the **outlier columns** of a layer's input (|x| ≥ 6) on a real prompt, and say what LLM.int8 does with them;
# 3. measure how much the mixed int8 + 16-bit product gains over plain int8 on that layer;
# 4. measure an int8 model's perplexity against bf16.

# %%
import pandas as pd
import torch
from IPython.display import Markdown, display

import qlearn as ql

pd.options.display.float_format = "{:,.4g}".format

# %% [markdown]
# ## 1. Row-wise int8 by hand
#
# For each row: `absmax` = max |x| of the row, `code = round(x · 127 / absmax)` (half to even), stored as int8
# plus one float32 per row. With a **threshold** (transformers' `llm_int8_threshold`, default 6.0), every
# column holding a value with |x| ≥ threshold is an *outlier column*: it is left out of the int8 codes and
# multiplied in 16-bit instead.

# %%
x = torch.tensor([[0.5, -1.27, 0.1, 7.5],
                  [0.2, 0.4, -0.3, -0.1]])
plain = ql.int8_vectorwise(x, threshold=0.0)
mixed = ql.int8_vectorwise(x, threshold=6.0)
print("threshold 0: codes", plain.codes.tolist(), "row absmax", plain.row_absmax.tolist())
print("threshold 6: codes", mixed.codes.tolist(), "row absmax", mixed.row_absmax.tolist(),
      "outlier columns", mixed.outlier_cols.tolist())

# %% [markdown]
# Without the threshold, the 7.5 sets row 0's scale: 0.1 becomes code 2, and 0.5 code 8, so row 0 keeps
# barely 4 bits of precision. With it, column 3 goes to 16-bit and row 0's scale comes from 1.27 again.
#
# ## 2. Outliers in a real model's activations
#
# *Weights* are quantized with threshold 0 (LLM.int8 handles outliers on the *input* side). The LLM.int8
# paper finds outlier features in ~0.1 % of hidden dimensions, and that from 6.7B parameters on they
# break plain int8. Here is what our 135M model's layers receive on a prompt. Move **threshold**,
# type another **layer** or **prompt**:

# %%
model, tok = ql.load(MODEL_ID, mode="bf16")
prompt = "The capital of France is Paris. Quantization stores each weight in fewer bits."
out = ql.widgets.outlier_explorer(model, tok, layer="model.layers.15.self_attn.q_proj", prompt=prompt, threshold=6.0)
out

# %%
blocks = range(0, 30, 3) if FAST else range(30)
rows = []
for i in blocks:
    for kind in ("self_attn.q_proj", "mlp.down_proj"):
        name = f"model.layers.{i}.{kind}"
        inputs = ql.sources.layer_inputs(model, tok, name, prompt)          # (tokens, in_features)
        cols = ql.int8_vectorwise(inputs, threshold=6.0).outlier_cols
        rows.append({"block": i, "layer": kind, "max |x|": inputs.abs().max().item(),
                     "outlier columns": len(cols), "share": len(cols) / inputs.shape[1]})
outliers = pd.DataFrame(rows)
outliers.pivot(index="block", columns="layer", values=["max |x|", "outlier columns"])

# %% [markdown]
# ## 3. What the 16-bit columns buy, on one layer
#
# Take the layer with the largest inputs and compute its output three ways: in float32 (reference), with
# both input and weight in row-wise int8, and LLM.int8-style: the outlier columns multiplied in float, the
# rest in int8.

# %%
worst = outliers.loc[outliers["max |x|"].idxmax()]
name = f"model.layers.{worst['block']}.{worst['layer']}"
X = ql.sources.layer_inputs(model, tok, name, prompt)            # (tokens, in)
W = ql.sources.layer_weight(model, name)                         # (out, in)
out.release_model()   # the explorer keeps the inputs it captured (threshold still works), not the model
del model, tok        # free the model before anything else loads
ql.models.release_memory()
reference = X @ W.T
Wq = ql.int8_vectorwise(W).dequantize()                          # weights: threshold 0
plain_int8 = ql.int8_vectorwise(X).dequantize() @ Wq.T
xq = ql.int8_vectorwise(X, threshold=6.0)
cols = xq.outlier_cols
llm_int8 = xq.dequantize() @ Wq.T + X[:, cols] @ W[:, cols].T    # int8 part + 16-bit outlier columns
e_plain, e_mixed = ql.error_stats(reference, plain_int8), ql.error_stats(reference, llm_int8)
pd.DataFrame({"plain int8": e_plain, "LLM.int8 (threshold 6)": e_mixed}).T[["sqnr_db", "rel_err", "max_abs"]]

# %% [markdown]
# (Here the outputs are computed from dequantized values in float32; bitsandbytes multiplies the int8 codes
# in int32 and rescales, which gives the same numbers up to rounding.)
#
# ## 4. Perplexity of the int8 model
#
# `load_in_8bit=True` goes through bitsandbytes' `Linear8bitLt` with threshold 6.0. One model at a time:

# %%
table = ql.compare(modes=("bf16", "int8"), model_id=MODEL_ID, max_new_tokens=MAX_NEW_TOKENS,
                   ppl_tokens=PPL_TOKENS, progress=False)
table[["perplexity", "reported_bytes", "tokens_per_s", "answer"]]

# %% [markdown]
# ## Try this
# - In the explorer set **threshold** to 1 and to 20: how does the share of 16-bit columns change? What would
#   a threshold of 1 cost in memory and speed?
# - Try **layer** `model.layers.29.mlp.down_proj` and a long prompt of your own.
# - In section 3, use `threshold=3.0`: how many columns move to 16-bit, and how much closer is the output?

# %%
display(Markdown(f"""## Summary (measured in this run)
- By hand: a 7.5 in row 0 makes its scale 7.5/127; threshold 6 moves column {mixed.outlier_cols.tolist()} to 16-bit
  and row 0's absmax back to {mixed.row_absmax[0].item():.2f}.
- On the prompt, {len(outliers)} layer inputs checked: {int((outliers['outlier columns'] > 0).sum())} have outlier columns
  (|x| ≥ 6); the largest input is {outliers['max |x|'].max():.1f} (`{name}`), with {len(cols)} outlier column(s) of {X.shape[1]}
  ({len(cols) / X.shape[1]:.2%}).
- On that layer: plain int8 output SQNR **{e_plain['sqnr_db']:.1f} dB**, LLM.int8 **{e_mixed['sqnr_db']:.1f} dB**.
- Perplexity ({PPL_TOKENS} tokens): bf16 **{table.loc['bf16', 'perplexity']:.2f}**, int8 **{table.loc['int8', 'perplexity']:.2f}**;
  footprint {table.loc['bf16', 'reported_bytes'] / 1e6:.1f} → {table.loc['int8', 'reported_bytes'] / 1e6:.1f} MB.
"""))
