# %% [markdown]
# # 02 · Absmax vs zero-point; per tensor, per channel, per block
#
# **Goals.** After this notebook you can
# 1. quantize a handful of numbers to int8 by hand with **absmax** (symmetric) and **zero-point** (asymmetric) and say what each stores;
# 2. tell when zero-point wins (skewed or shifted values) and when it does not (weights centred on 0);
# 3. measure how the **granularity** of the scale (one per tensor, per output channel, per block of 64) changes the error on real weights;
# 4. show that the model used here **was already quantized** before you got it, and how you can tell.

# %%
import gc

import pandas as pd
import torch
from IPython.display import Image, Markdown, display

import qlearn as ql

pd.options.display.float_format = "{:,.4g}".format

# %% [markdown]
# ## 1. Eight numbers by hand
#
# **Absmax** (symmetric): `scale = max|x| / 127`, `q = round(x / scale)`, stored as int8 together with
# one float `scale`. The value 0 maps to code 0 exactly.
#
# **Zero-point** (asymmetric): `scale = (max - min) / 255`, `zero_point = round(-min / scale)`,
# `q = round(x / scale) + zero_point` as uint8; it stores a scale *and* a zero point, and uses all 256
# codes between min and max.

# %%
x = torch.tensor([-0.31, -0.02, 0.0, 0.04, 0.11, 0.27, 0.58, 1.20])
qa = ql.absmax_quantize(x, bits=8)
qz = ql.zeropoint_quantize(x, bits=8)
pd.DataFrame({"x": x, "absmax code": qa.codes, "absmax x̂": qa.dequantize(),
              "zero-point code": qz.codes, "zero-point x̂": qz.dequantize()})

# %%
print(f"absmax:     scale = {qa.scale.item():.6f} (= 1.20 / 127)")
print(f"zero-point: scale = {qz.scale.item():.6f} (= (1.20 - (-0.31)) / 255), zero_point = {qz.zero_point.item():.0f}")
err_a, err_z = ql.error_stats(x, qa.dequantize()), ql.error_stats(x, qz.dequantize())
print(f"max |error|: absmax {err_a['max_abs']:.5f}, zero-point {err_z['max_abs']:.5f}")

# %% [markdown]
# These values are skewed (mostly positive), so absmax wastes the codes between −127 and −33 that
# no value uses, and zero-point is more precise. The explorer shows the same on 65,536 values.
# Move **shift** to push a centred tensor off zero, and **bits** to go from 8 down to 2:

# %%
zp = ql.widgets.zeropoint_explorer(bits=4)
zp

# %%
sqnr_gap = {s: zp.update(source="normal", shift=s, bits=4).sqnr for s in (0.0, 2.0)}
gap0 = sqnr_gap[0.0]["zeropoint"][2] - sqnr_gap[0.0]["absmax"][2]   # index 2 = 4 bits (2..8)
gap2 = sqnr_gap[2.0]["zeropoint"][2] - sqnr_gap[2.0]["absmax"][2]
zp.update(source="skewed", shift=0.0, bits=4)
print(f"4-bit, per tensor, normal values: zero-point beats absmax by {gap0:.2f} dB centred, "
      f"by {gap2:.2f} dB when shifted 2 std")

# %% [markdown]
# **What bitsandbytes does.** Its weight formats are **post-training, symmetric absmax**: row-wise for
# LLM.int8 (notebook 06), blockwise for NF4/FP4 (notebook 03). No zero point, no training. LLM weights
# are centred on zero, so the zero point buys little there; activations (skewed, after GELU/SiLU) are
# where it helps, and bitsandbytes does not quantize those to store them.
#
# ## 2. Granularity on real weights
#
# One scale for a whole tensor lets a single large weight set the step for all. A scale per output
# row, or per block of 64 consecutive weights, adapts to local ranges at the cost of storing more
# scales. We load the model (bf16), copy a few layers out, and free it.

# %%
model, tok = ql.load(MODEL_ID, mode="bf16")
names = ql.sources.linear_layer_names(model)
picked = [n for n in names if n.startswith("model.layers.0.")][:7] + [names[len(names) // 2]]
weights = {n: ql.sources.layer_weight(model, n) for n in picked}   # float32 copies
del model, tok
gc.collect()
{n: tuple(w.shape) for n, w in weights.items()}

# %%
rows = []
for name, w in weights.items():
    for bits in (8, 4):
        for scheme, fn in (("absmax", ql.absmax_quantize), ("zero-point", ql.zeropoint_quantize)):
            for gran, kw in (("tensor", {}), ("row", {"axis": 0}), ("block 64", {"blocksize": 64})):
                r = fn(w, bits, **kw)
                rows.append({"layer": name.removeprefix("model."), "bits": bits, "scheme": scheme,
                             "scales": gran, "SQNR dB": ql.error_stats(w, r.dequantize())["sqnr_db"]})
gran = pd.DataFrame(rows)
gran_mean = gran.pivot_table(index=["bits", "scheme"], columns="scales", values="SQNR dB")[["tensor", "row", "block 64"]]
gran_mean

# %% [markdown]
# Higher SQNR (signal-to-quantization-noise ratio, in dB) is better; +6 dB is one bit more. Finer
# scales help a lot at 4 bits. The explorer below lets you do the same per layer and see the
# histogram: pick a **tensor**, a **scheme**, the **scales**, and step through blocks or rows with
# **block / row**.

# %%
hist = ql.widgets.histogram_explorer(weights, scheme="absmax", bits=4, granularity="block", blocksize=64)
hist

# %% [markdown]
# ## 3. This model was already quantized: how you can tell
#
# Zero-point **4-bit in blocks of 32** should lose information like any 4-bit format. On this model it
# loses almost nothing, because SmolLM2 reached us as GGUF **Q4_1**: exactly that format (blocks of 32,
# 4-bit codes, a scale and a minimum per block). Each block of 32 still holds at most 16 distinct values.
# This is a property of *this file*, not of LLM weights; a model trained in bf16 holds 32 distinct
# values per block.

# %%
w = weights[picked[0]]
q41 = ql.zeropoint_quantize(w, 4, blocksize=32, zero_point_domain="float")
absmax32 = ql.absmax_quantize(w, 4, blocksize=32)
distinct = ql.codeusage.distinct_per_block(w, 32)
fresh = torch.randn_like(w) * w.std()
distinct_fresh = ql.codeusage.distinct_per_block(fresh, 32)
tell = pd.DataFrame({
    "max distinct values per block of 32": [int(distinct.max()), int(distinct_fresh.max())],
    "zero-point int4/32 SQNR dB": [ql.error_stats(w, q41.dequantize())["sqnr_db"],
                                  ql.error_stats(fresh, ql.zeropoint_quantize(fresh, 4, blocksize=32, zero_point_domain="float").dequantize())["sqnr_db"]],
    "absmax int4/32 SQNR dB": [ql.error_stats(w, absmax32.dequantize())["sqnr_db"],
                               ql.error_stats(fresh, ql.absmax_quantize(fresh, 4, blocksize=32).dequantize())["sqnr_db"]],
}, index=[f"{picked[0]} (this model)", "random normal, same shape"])
tell

# %%
fig, axes = ql.plots.new_figure(2)
ql.plots.block_zoom(w, block=0, blocksize=32, result=q41, axes=axes)
display(Image(ql.plots.to_png(fig)))

# %% [markdown]
# ## Try this
# - In the zero-point explorer choose **sample = normal** and **shift = 0**: how many dB does zero-point
#   gain over absmax? Now **shift = 2**.
# - In the histogram explorer choose **scales = per tensor**, **bits = 4**: how many of the 15 absmax
#   levels are actually used? Switch to **per block** and step **block / row**.
# - Try `ql.zeropoint_quantize(w, 4, blocksize=64, zero_point_domain="float")` on the weight above: do
#   blocks of 64 still reproduce the Q4_1 weights? Why not?

# %%
g4 = gran_mean.loc[4]
display(Markdown(f"""## Summary (measured in this run)
- Eight skewed numbers, int8: max error absmax {err_a['max_abs']:.5f} vs zero-point {err_z['max_abs']:.5f}.
- 4-bit per-tensor on normal values: zero-point gains {gap0:.2f} dB when centred and {gap2:.2f} dB when shifted by 2 std.
- Real weights ({len(weights)} layers), 4-bit absmax SQNR: per tensor {g4.loc['absmax', 'tensor']:.1f} dB,
  per row {g4.loc['absmax', 'row']:.1f} dB, blocks of 64 {g4.loc['absmax', 'block 64']:.1f} dB
  (zero-point: {g4.loc['zero-point', 'tensor']:.1f} / {g4.loc['zero-point', 'row']:.1f} / {g4.loc['zero-point', 'block 64']:.1f} dB).
- This model was stored as Q4_1: at most {int(distinct.max())} distinct values per block of 32
  (random weights: {int(distinct_fresh.max())}); zero-point int4/32 reproduces it at
  {tell.iloc[0, 1]:.1f} dB SQNR, against {tell.iloc[1, 1]:.1f} dB on random weights.
"""))
