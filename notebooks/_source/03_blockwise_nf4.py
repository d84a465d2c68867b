# %% [markdown]
# # 03 · Blockwise quantization and NF4
#
# **Goals.** After this notebook you can
# 1. build NF4's 16 values yourself from quantiles of the normal distribution, and check them against the table bitsandbytes uses;
# 2. explain why NF4 is asymmetric (8 positive values, 7 negative, an exact zero);
# 3. see how a real layer's weights fall into NF4's bins after blockwise scaling, how evenly NF4, INT4 and FP4 use their codes, and why even use is not the same as least error;
# 4. measure what the blocksize trades: error against bits per weight;
# 5. write the nearest-NF4-code rule and the packing of two codes a byte yourself, byte-equal to bitsandbytes.

# %%
import gc
import inspect

import pandas as pd
import torch
from IPython.display import Markdown, display

import qlearn as ql
import qlearn.claims as claims

pd.options.display.float_format = "{:,.4g}".format

# %% [markdown]
# ## 1. NF4 from normal quantiles
#
# Weights of a layer look roughly normal. If each of the 16 codes should catch about the same share
# of weights, the codes should sit at **quantiles** of the normal distribution. bitsandbytes takes 8
# probabilities evenly spaced from `offset = 0.9677` down to 0.5 for the positive side, 7 for the
# negative side, adds an exact 0, and divides by the largest so the ends are ±1:

# %%
parts = ql.codebooks.nf4_construction()
built = ql.codebooks.nf4_from_normal()
construction = pd.DataFrame({"code": range(16), "NF4 (bitsandbytes table)": ql.codebooks.NF4.numpy(),
                             "built from quantiles": built.numpy()})
print("identical to the table:", torch.equal(built, ql.codebooks.NF4))
print(f"positive values: {(ql.codebooks.NF4 > 0).sum().item()}, negative: {(ql.codebooks.NF4 < 0).sum().item()}, "
      f"zero: {(ql.codebooks.NF4 == 0).sum().item()}")
construction

# %% [markdown]
# With 16 codes and a wish for an exact zero, one side must get one code fewer: NF4 gives the positive
# side 8 and the negative side 7. (The QLoRA paper describes this; the table above is what the code uses.)
#
# ## 2. Blockwise: one absmax per 64 weights
#
# NF4 values live in [−1, 1]. Each block of 64 consecutive weights is divided by its own `absmax`
# (largest |w| in the block), each value snaps to the nearest NF4 code, and the block stores 64 4-bit
# codes plus one float32 `absmax`. Two codes go in one byte, **the first element in the high nibble**:

# %%
x = torch.tensor([0.5, -1.0, 0.08, 0.0, 0.3, -0.2, 1.0, 0.9])
q = ql.quantize_4bit(x, "nf4", blocksize=64)
print("codes :", q.codes.tolist())
print("packed:", [f"0x{b:02x}" for b in q.packed.tolist()], "<- (codes[0] << 4) | codes[1], ...")
print("absmax:", q.absmax.tolist(), " dequantized:", [round(v, 4) for v in q.dequantize().tolist()])
print("bits per weight:", q.bits_per_param, "(8 weights share one float32 absmax here; a full block of 64: 4.5)")

# %% [markdown]
# ## 3. Bins over real weights
#
# We load the model in bf16 and look at its layers. *Keep in mind:* this SmolLM2 was stored as GGUF
# Q4_1 (4-bit, blocks of 32) before qlearn converted it (notebook 02 shows how to tell). NF4 in blocks
# of 64 re-quantizes values that were already on a 4-bit grid, so the shapes you see are not those of
# a freshly trained model. The synthetic "normal" sample in the first explorer is the clean case.

# %%
nf4_synth = ql.widgets.nf4_explorer()
nf4_synth

# %% [markdown]
# What the explorer computes for each block, written plainly: `ql.reference.quantize_4bit` below is the
# textbook version (scale by 1/absmax, snap to the nearest code, pack two codes a byte). The fast path the
# explorer calls, `ql.quantize_4bit`, cuts the work into chunks and looks codes up in a table; the tests
# check that it gives exactly the same bytes as this function on random tensors of many shapes, in all four dtypes.

# %%
source = inspect.getsource(ql.reference.quantize_4bit)
display({"text/markdown": f"```python\n{source}```", "text/plain": source}, raw=True)
print("same bytes as ql.quantize_4bit on the 8 values above:", torch.equal(ql.reference.quantize_4bit(x).packed, q.packed))

# %%
model, tok = ql.load(MODEL_ID, mode="bf16")
layer = "model.layers.15.mlp.down_proj"
real = {n: ql.sources.layer_weight(model, n) for n in (layer, "model.layers.0.self_attn.q_proj", "model.layers.29.mlp.up_proj")}
nf4_real = ql.widgets.nf4_explorer(real)   # float32 copies of three layers: the model itself can be freed
nf4_real

# %% [markdown]
# The right panel shows the share of weights on each level. Its **entropy** (in bits) measures how evenly the
# levels are used: at most log2(number of distinct levels), reached when all are used equally. NF4 has 16
# distinct values (max 4.0 bits); INT4 absmax uses the 15 levels −7 … 7 and bitsandbytes' FP4 has 15 distinct
# values (+0 and −0 are both codes), so their maximum is log2 15 ≈ 3.91 bits.
#
# **Predict (1).** On the synthetic normal sample (blocks of 64), which format uses its levels most evenly
# (highest entropy): NF4, INT4 or FP4?

# %%
PREDICT_MOST_EVEN = None   # "nf4", "int4" or "fp4"

# %%
entropy = pd.DataFrame({"synthetic normal": nf4_synth.entropy, layer: nf4_real.entropy}).T
most_even = max(nf4_synth.entropy, key=nf4_synth.entropy.get)
display(entropy)
claims.check_prediction(PREDICT_MOST_EVEN, most_even, explain=(
    "NF4's values sit at quantiles of the normal distribution, so each catches about the same share of normal "
    "weights: that is how QLoRA built it (quantile quantization)."))

# %% [markdown]
# Even use is QLoRA's **motivation** for NF4, not proof that it has the least error: entropy counts how
# often codes are used, not how far each weight lands from its level. QLoRA calls NF4
# "information-theoretically optimal" for normal weights; that claim is disputed (Yoshida, "NF4 Isn't
# Information Theoretically Optimal (and that's Good)", arXiv 2306.06965). The tests are the error itself
# (SQNR) and the model's perplexity (notebook 04). The same samples, measured both ways:

# %%
tests = {"synthetic normal": ql.sources.synthetic("normal", n=65536, seed=0), layer: real[layer]}
rows = []
for sample, t in tests.items():
    for fmt, r in (("nf4", ql.quantize_4bit(t, "nf4", 64)), ("int4", ql.absmax_quantize(t, 4, blocksize=64)),
                   ("fp4", ql.quantize_4bit(t, "fp4", 64))):
        rows.append({"sample": sample, "format": fmt, "distinct levels": len(ql.codeusage.occupancy(r)[0]),
                     "entropy (bits)": ql.codeusage.entropy_bits(ql.codeusage.occupancy(r)[1]),
                     "SQNR dB": ql.error_stats(t, r.dequantize())["sqnr_db"]})
even_vs_error = pd.DataFrame(rows).set_index(["sample", "format"])
display(even_vs_error)
for sample in tests:
    part = even_vs_error.loc[sample]
    print(f"{sample}: by entropy {' > '.join(part['entropy (bits)'].sort_values(ascending=False).index)};  "
          f"by SQNR {' > '.join(part['SQNR dB'].sort_values(ascending=False).index)}")

# %% [markdown]
# ## 4. What the blocksize trades
#
# Smaller blocks follow the local range better (less error) but store more `absmax` values.
#
# **Predict (2).** One float32 `absmax` per block: how many bits per weight does NF4 take with blocks of **32**?

# %%
PREDICT_BITS_BLOCK_32 = None   # a number

# %% [markdown]
# Measured on every linear layer of block 15:

# %%
w15 = {n: ql.sources.layer_weight(model, n) for n in ql.sources.linear_layer_names(model) if ".layers.15." in n}
del model, tok   # one model at a time: free it before anything else loads
gc.collect()
rows = []
for bs in (32, 64, 128, 256, 1024, 4096):
    for kind in ("nf4", "fp4"):
        sq = [ql.error_stats(w, ql.quantize_4bit(w, kind, blocksize=bs).dequantize())["sqnr_db"] for w in w15.values()]
        rows.append({"blocksize": bs, "format": kind, "mean SQNR dB": sum(sq) / len(sq),
                     "bits per weight": ql.memory.bits_per_param(kind, bs)})
trade = pd.DataFrame(rows).pivot(index="blocksize", columns="format", values=["mean SQNR dB", "bits per weight"])
trade

# %%
claims.check_prediction(PREDICT_BITS_BLOCK_32, trade.loc[32, ("bits per weight", "nf4")], rel_tol=0.0, abs_tol=0.01,
                        explain="4 bits of code + 32 bits of absmax shared by 32 weights = 4 + 32/32 = 5 bits.")

# %% [markdown]
# ## 5. Build it yourself: the nearest NF4 code, and two codes a byte
#
# **(a) The nearest code.** Given values already divided by their block's absmax (so in [−1, 1]), return the
# index 0..15 of the nearest NF4 value. One rule decides the bytes: a value exactly halfway between two codes
# takes the **lower** one, as bitsandbytes does. The check runs your function on the 16 NF4 values, the 15
# midpoints, the values just above them, zero and tiny values, and 4,032 weights of `model.layers.15.mlp.down_proj`
# scaled by their blocks' absmax; it compares your codes with `ql.reference.quantize_4bit` and bitsandbytes'.

# %%
NF4 = ql.codebooks.NF4   # (16,) float32, sorted: NF4[0] = -1.0 ... NF4[15] = 1.0


def my_nearest_nf4(v):
    """v: float32 tensor (n,) in [-1, 1]. Return codes: an integer tensor (n,), the index of the nearest NF4 value."""
    raise NotImplementedError   # replace this line with your code


# %%
ql.exercises.check_nearest_nf4(my_nearest_nf4, real=real[layer])

# %% [markdown]
# <details><summary>Hint</summary>
#
# The boundaries between neighbouring codes are the 15 midpoints, `ql.codebooks.midpoints(NF4)`. A value's code is
# the number of midpoints strictly below it: `torch.bucketize(v, midpoints)` counts exactly that (a value equal to a
# midpoint is not above it, so it gets the lower code). The distance to every code plus `argmin` looks right, but on
# a midpoint the two distances differ only by float rounding: `(v[:, None] - NF4).abs().argmin(1)` picks the upper
# code on 6 of the 15 midpoints.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def my_nearest_nf4(v):
#     return torch.bucketize(v, ql.codebooks.midpoints(NF4)).to(torch.uint8)
# ```
# </details>
#
# **(b) Two codes a byte.** Pack 4-bit codes as bitsandbytes stores them: the **first** code of each pair in the
# **high** nibble (bits 7..4), the second in the low nibble; an odd count is padded with code 7 (NF4's 0.0, what
# bitsandbytes' zero padding becomes). Section 2 printed such bytes. The check packs short lists (3, 12, 0, 15 and
# 0..15), edge cases (one code, an odd count) and 4,095 codes of the real layer, and compares with the bytes of
# `ql.reference.quantize_4bit` and of bitsandbytes.

# %%
def my_pack_4bit(codes):
    """codes: uint8 tensor (n,), values 0..15. Return packed: uint8 tensor (ceil(n / 2),)."""
    raise NotImplementedError   # replace this line with your code


# %%
ql.exercises.check_pack_4bit(my_pack_4bit, real=real[layer])

# %% [markdown]
# <details><summary>Hint</summary>
#
# `codes[0::2]` are the first codes of the pairs and `codes[1::2]` the second ones. `a << 4` moves a code to the high
# nibble and `|` combines two. For an odd count, append one 7 first: `torch.cat([codes, codes.new_tensor([7])])`.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def my_pack_4bit(codes):
#     if codes.numel() % 2:                       # odd: pad with NF4's zero code
#         codes = torch.cat([codes, codes.new_tensor([7])])
#     return (codes[0::2] << 4) | codes[1::2]
# ```
# </details>

# %% [markdown]
# ## Try this
#
# **Predict (3).** Heavy tails: on a Student-t sample (3 degrees of freedom), which format has the **highest
# SQNR** (least error) in blocks of 64: NF4, INT4 or FP4? And is it also the one with the most even code use?
# Answer the first question.

# %%
PREDICT_BEST_ON_HEAVY_TAILS = None   # "nf4", "int4" or "fp4"

# %%
heavy = ql.sources.synthetic("student_t", n=65536, seed=0)
heavy_rows = {}
for fmt, r in (("nf4", ql.quantize_4bit(heavy, "nf4", 64)), ("int4", ql.absmax_quantize(heavy, 4, blocksize=64)),
               ("fp4", ql.quantize_4bit(heavy, "fp4", 64))):
    heavy_rows[fmt] = {"entropy (bits)": ql.codeusage.entropy_bits(ql.codeusage.occupancy(r)[1]),
                       "SQNR dB": ql.error_stats(heavy, r.dequantize())["sqnr_db"]}
heavy_table = pd.DataFrame(heavy_rows).T
best_heavy = heavy_table["SQNR dB"].idxmax()
display(heavy_table)
claims.check_prediction(PREDICT_BEST_ON_HEAVY_TAILS, best_heavy, explain=(
    f"Least error: {best_heavy} ({heavy_table.loc[best_heavy, 'SQNR dB']:.2f} dB); by entropy: "
    f"{' > '.join(heavy_table['entropy (bits)'].sort_values(ascending=False).index)}; by SQNR: "
    f"{' > '.join(heavy_table['SQNR dB'].sort_values(ascending=False).index)}. The two rankings are different "
    "measurements; when they disagree (compare section 3), the error is what the model feels."))

# %% [markdown]
# More to try:
# - In the first explorer, move **offset** from 0.9677 to 0.99: the outer codes move out; what happens to the
#   share of weights in the outermost bins, and to the entropy?
# - Set **blocksize** to 4096 on the real layer: where does the occupancy go, and what happens to the entropy? Why?

# %%
t = trade["mean SQNR dB"]
ranked = {name: [" > ".join(tab[col].sort_values(ascending=False).index) for col in ("entropy (bits)", "SQNR dB")]
          for name, tab in [(n, even_vs_error.loc[n]) for n in tests] + [("Student-t", heavy_table)]}
rank_lines = "\n".join(f"- {name}: by code use (entropy) {e}; by least error (SQNR) {q}"
                        f"{' (the rankings differ)' if e != q else ' (the same ranking)'}." for name, (e, q) in ranked.items())
display(Markdown(f"""## Summary (measured in this run)
- NF4 built from normal quantiles equals bitsandbytes' table exactly: **{torch.equal(built, ql.codebooks.NF4)}**
  ({(ql.codebooks.NF4 > 0).sum().item()} positive, {(ql.codebooks.NF4 < 0).sum().item()} negative values, and 0).
- Code usage (entropy; the most a format can reach is 4.0 bits for NF4's 16 values, log2 15 = 3.91 for INT4's and FP4's 15),
  synthetic normal sample, blocks of 64: NF4 {entropy.iloc[0]['nf4']:.3f},
  INT4 {entropy.iloc[0]['int4']:.3f}, FP4 {entropy.iloc[0]['fp4']:.3f} bits; on `{layer}`: NF4 {entropy.iloc[1]['nf4']:.3f},
  INT4 {entropy.iloc[1]['int4']:.3f}, FP4 {entropy.iloc[1]['fp4']:.3f}.
- Block 15's linear layers, NF4: blocks of 32 → {t.loc[32, 'nf4']:.2f} dB at {ql.memory.bits_per_param('nf4', 32)} bits/weight,
  64 → {t.loc[64, 'nf4']:.2f} dB at {ql.memory.bits_per_param('nf4', 64)}, 4096 → {t.loc[4096, 'nf4']:.2f} dB at
  {ql.memory.bits_per_param('nf4', 4096):.4g}. FP4 at 64: {t.loc[64, 'fp4']:.2f} dB.
{rank_lines}
"""))
