# %% [markdown]
# # 02 · Absmax vs zero-point; per tensor, per channel, per block
#
# **Goals.** After this notebook you can
# 1. quantize a handful of numbers to int8 by hand with **absmax** (symmetric) and **zero-point** (asymmetric) and say what each stores;
# 2. tell when zero-point wins (skewed or shifted values) and when it does not (weights centred on 0);
# 3. show that the model used here **was already quantized** before you got it, and how you can tell;
# 4. measure how the **granularity** of the scale (one per tensor, per output channel, per block of 64) trades error against bits per weight, on real and on synthetic weights;
# 5. write absmax int8 yourself, and check your bytes against qlearn's reference and bitsandbytes.

# %%
import gc

import pandas as pd
import torch
from IPython.display import Image, Markdown, display

import qlearn as ql
import qlearn.claims as claims

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

# **Predict (1).** Take x = [−0.31, −0.02, 0.0, 0.04, 0.11, 0.27, 0.58, 1.20]. Which int8 **absmax** code does
# 0.58 get?

# %%
PREDICT_CODE_058 = None   # an integer

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

# %%
claims.check_prediction(PREDICT_CODE_058, int(qa.codes[6]), rel_tol=0.0, abs_tol=0.5, explain=(
    f"scale = max|x| / 127 = 1.20 / 127 = {qa.scale.item():.6f}; 0.58 / scale = {0.58 / qa.scale.item():.2f}, "
    f"rounded to {int(qa.codes[6])}."))

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
# LLM.int8 (notebook 06), blockwise for NF4/FP4 (notebook 03). No zero point, no training: notebook 01 opens
# a loaded model and finds its bytes equal to `ql.absmax_quantize`-style codes computed from the weights alone.
# For values centred on zero the zero point buys little (the explorer's "normal" sample: the centred gap printed above);
# skewed or shifted values are where it helps (the "skewed" sample, the 2-std shift). LLM.int8 quantizes
# activations only on the fly for its matmul, with absmax as well (notebook 06).
#
# ## 2. The weights we use, and where they came from
#
# We load the model (bf16), copy a few layers out as float32, and free it.

# %%
model, tok = ql.load(MODEL_ID, mode="bf16")
names = ql.sources.linear_layer_names(model)
picked = [n for n in names if n.startswith("model.layers.0.")][:7] + [names[len(names) // 2]]
weights = {n: ql.sources.layer_weight(model, n) for n in picked}   # float32 copies
del model, tok
gc.collect()
{n: tuple(w.shape) for n, w in weights.items()}

# %% [markdown]
# Random normal weights hold, in a block of 32 consecutive values, 32 different numbers (section 3 counts them).
#
# **Predict (2).** What is the largest number of *distinct* values in any block of 32 consecutive weights of
# this model's first layer?

# %%
PREDICT_DISTINCT_32 = None   # an integer from 1 to 32

# %%
w = weights[picked[0]]
distinct = ql.codeusage.distinct_per_block(w, 32)
claims.check_prediction(PREDICT_DISTINCT_32, int(distinct.max()), rel_tol=0.0, abs_tol=0.5, explain=(
    "This model reached us as GGUF **Q4_1**: 4-bit codes in blocks of 32, with a scale and a minimum per block. "
    "16 codes can make at most 16 values per block; qlearn decoded them to bf16, which keeps them exact."))

# %% [markdown]
# ## 3. This model was already quantized: how you can tell
#
# Zero-point **4-bit in blocks of 32** (a scale and a minimum per block: Q4_1's own format) should lose
# information like any 4-bit format. On this model it loses almost nothing, because that is how its weights
# were stored. This is a property of *this file*, not of LLM weights: the second row is random normal weights
# of the same shape and spread.

# %%
q41 = ql.zeropoint_quantize(w, 4, blocksize=32, zero_point_domain="float")
absmax32 = ql.absmax_quantize(w, 4, blocksize=32)
fresh = ql.sources.synthetic("normal", n=w.numel(), seed=0, std=float(w.std()), shape=tuple(w.shape))
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
# ## 4. Granularity: error against bits per weight
#
# One scale for a whole tensor lets a single large weight set the step for all. A scale per output row, or
# per block of 64 consecutive weights, adapts to local ranges **at the cost of storing more scales**, and
# zero-point stores a zero point beside each scale. So the table shows what each scheme costs in bits per
# weight (codes + metadata, from each result's `bits_per_param`) next to its SQNR (signal-to-quantization-noise
# ratio, in dB; higher is better, +6 dB is about one bit more). Measured twice: on this model's weights (which
# sit on Q4_1 grids, see section 3, so blocks that line up with those grids are flattered) and, at 4 bits, on
# synthetic normal weights of the same shapes and spreads.

# %%
synthetic = {n: ql.sources.synthetic("normal", n=w.numel(), seed=i, std=float(w.std()), shape=tuple(w.shape))
             for i, (n, w) in enumerate(weights.items())}
rows = []
for source, tensors in (("this model", weights), ("synthetic normal", synthetic)):
    for name, t in tensors.items():
        for bits in (8, 4) if source == "this model" else (4,):   # synthetic: the 4-bit rows only (time)
            for scheme, fn in (("absmax", ql.absmax_quantize), ("zero-point", ql.zeropoint_quantize)):
                for gran, kw in (("tensor", {}), ("row", {"axis": 0}), ("block 64", {"blocksize": 64})):
                    r = fn(t, bits, **kw)
                    rows.append({"source": source, "bits": bits, "scheme": scheme, "scales": gran,
                                 "bits per weight": r.bits_per_param,
                                 "SQNR dB": ql.error_stats(t, r.dequantize())["sqnr_db"]})
gran = pd.DataFrame(rows)
gran_mean = gran.pivot_table(index=["bits", "scheme", "scales"], columns="source",
                             values=["bits per weight", "SQNR dB"]).loc[[8, 4]]
gran_mean = gran_mean.reindex(["tensor", "row", "block 64"], level="scales")
gran_mean[[("bits per weight", "this model"), ("SQNR dB", "this model"), ("SQNR dB", "synthetic normal")]]

# %%
g = gran_mean["SQNR dB"]
bpw = gran_mean[("bits per weight", "this model")]
display(Markdown(f"""At 4 bits, absmax per tensor → per block of 64 goes from {g.loc[(4, 'absmax', 'tensor'), 'this model']:.1f} to
{g.loc[(4, 'absmax', 'block 64'), 'this model']:.1f} dB on this model ({g.loc[(4, 'absmax', 'tensor'), 'synthetic normal']:.1f} →
{g.loc[(4, 'absmax', 'block 64'), 'synthetic normal']:.1f} dB on synthetic weights) for {bpw.loc[(4, 'absmax', 'block 64')] - bpw.loc[(4, 'absmax', 'tensor')]:.3f}
more bits per weight. Zero-point in blocks of 64 costs {bpw.loc[(4, 'zero-point', 'block 64')]:.4g} bits per weight against absmax's
{bpw.loc[(4, 'absmax', 'block 64')]:.4g}: compare schemes at equal cost, not only at equal code width."""))

# %% [markdown]
# The explorer lets you do the same per layer and see the histogram: pick a **tensor**, a **scheme**, the
# **scales**, and step through blocks or rows with **block / row**.

# %%
hist = ql.widgets.histogram_explorer(weights, scheme="absmax", bits=4, granularity="block", blocksize=64)
hist

# %% [markdown]
# ## 5. Build it yourself: absmax int8
#
# Write section 1's absmax quantizer yourself: `scale = max|x| / 127`, `codes = round(x / scale)` stored as
# int8. Complete the function below (replace the `raise` line) and run the check: it runs your function on the
# eight numbers of section 1, on 4,099 of this model's weights and on edge cases (all zeros, one huge outlier, a
# negative largest value, a single number), and compares your bytes with `ql.reference.absmax_quantize` and
# with bitsandbytes' own int8 quantizer. Until you write it, the check says "not written yet".

# %%
def my_absmax_int8(x):
    """x: float32 tensor (n,). Return (codes, scale): codes int8 (n,), scale = max|x| / 127 (float32)."""
    raise NotImplementedError   # replace this line with your code


# %%
ql.exercises.check_absmax_int8(my_absmax_int8, real=weights[picked[0]])

# %% [markdown]
# <details><summary>Hint</summary>
#
# `x.abs().max()` is the absmax. `torch.round` rounds halves to even, as qlearn and bitsandbytes do; `.to(torch.int8)`
# stores one byte a code. An all-zero `x` has absmax 0: dividing by a zero scale gives NaN, so return zero codes and
# a zero scale for it.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def my_absmax_int8(x):
#     scale = x.abs().max() / 127
#     if scale == 0:                                  # all zeros: nothing to scale
#         return torch.zeros_like(x, dtype=torch.int8), scale
#     return torch.round(x / scale).to(torch.int8), scale
# ```
# </details>

# %% [markdown]
# ## Try this
#
# **Predict (3).** Section 3 reproduced the Q4_1 weights with zero-point 4-bit in blocks of **32**. With blocks of
# **64** (same format, half as many scales), will the SQNR stay within 3 dB of that? Answer yes or no.

# %%
PREDICT_BLOCKS_64_STILL_EXACT = None   # "yes" or "no"

# %%
sqnr32 = tell.iloc[0, 1]
sqnr64 = ql.error_stats(w, ql.zeropoint_quantize(w, 4, blocksize=64, zero_point_domain="float").dequantize())["sqnr_db"]
claims.check_prediction(PREDICT_BLOCKS_64_STILL_EXACT, bool(sqnr64 >= sqnr32 - 3), explain=(
    f"Blocks of 32: {sqnr32:.1f} dB; blocks of 64: {sqnr64:.1f} dB. A block of 64 spans two Q4_1 blocks, each with its "
    "own scale and minimum: up to 32 distinct values that one 16-level grid cannot all hit."))

# %% [markdown]
# More to try:
# - In the zero-point explorer choose **sample = normal** and **shift = 0**: how many dB does zero-point
#   gain over absmax? Now **shift = 2**.
# - In the histogram explorer choose **scales = per tensor**, **bits = 4**: how many of the 15 absmax
#   levels are actually used? Switch to **per block** and step **block / row**.

# %%
g4 = gran_mean["SQNR dB"].loc[4]
b4 = gran_mean[("bits per weight", "this model")].loc[4]
display(Markdown(f"""## Summary (measured in this run)
- Eight skewed numbers, int8: max error absmax {err_a['max_abs']:.5f} vs zero-point {err_z['max_abs']:.5f}.
- 4-bit per-tensor on normal values: zero-point gains {gap0:.2f} dB when centred and {gap2:.2f} dB when shifted by 2 std.
- This model was stored as Q4_1: at most {int(distinct.max())} distinct values per block of 32
  (random weights: {int(distinct_fresh.max())}); zero-point int4/32 reproduces it at
  {tell.iloc[0, 1]:.1f} dB SQNR, against {tell.iloc[1, 1]:.1f} dB on random weights; blocks of 64: {sqnr64:.1f} dB.
- 4-bit absmax SQNR on this model ({len(weights)} layers) / on synthetic normal weights: per tensor
  {g4.loc[('absmax', 'tensor'), 'this model']:.1f} / {g4.loc[('absmax', 'tensor'), 'synthetic normal']:.1f} dB
  ({b4.loc[('absmax', 'tensor')]:.4f} bits per weight), per row {g4.loc[('absmax', 'row'), 'this model']:.1f} /
  {g4.loc[('absmax', 'row'), 'synthetic normal']:.1f} dB ({b4.loc[('absmax', 'row')]:.4f}), blocks of 64
  {g4.loc[('absmax', 'block 64'), 'this model']:.1f} / {g4.loc[('absmax', 'block 64'), 'synthetic normal']:.1f} dB
  ({b4.loc[('absmax', 'block 64')]:.4g}); zero-point blocks of 64 {g4.loc[('zero-point', 'block 64'), 'this model']:.1f} /
  {g4.loc[('zero-point', 'block 64'), 'synthetic normal']:.1f} dB at {b4.loc[('zero-point', 'block 64')]:.4g} bits per weight.
"""))
