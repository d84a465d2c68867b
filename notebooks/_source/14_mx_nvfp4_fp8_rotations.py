# %% [markdown]
# # 14 · The formats of 2025-2026: MXFP4, NVFP4, FP8, and rotating before rounding
#
# **Goals.** After this notebook you can
# 1. decode E2M1, the 4-bit float every new 4-bit format stores, and compute an MXFP4 block scale by hand;
# 2. say what MXFP4 (a power of two per 32 weights) and NVFP4 (an 8-bit float per 16, plus one per tensor)
#    store, their bits per weight, and which one fits a block of real weights better, and why;
# 3. quantize a weight to FP8 (E4M3 / E5M2) per tensor and per 128 x 128 tile, as FP8 checkpoints store it;
# 4. rotate a layer with a randomized Hadamard transform before rounding, and measure what it does to each
#    row's outliers, to the layer's error and to the whole model's perplexity;
# 5. place all of them on one frontier beside NF4 and round-to-nearest int4, on the same weights.
#
# The microscaling formats are defined by the OCP Microscaling Formats (MX) v1.0 specification (2023);
# NVFP4 by NVIDIA for its Blackwell GPUs; gpt-oss ships its MoE weights in MXFP4. The implementations here
# are plain torch (`qlearn.microscaling`, `qlearn.fp8`, `qlearn.rotation`), checked byte for byte against
# torchao's reference implementation (`torchao/prototype/mx_formats`) in qlearn's tests. None of this needs
# a new GPU: the formats are numbers, and this notebook fake-quantizes (quantize, then dequantize) on
# whatever device it runs.

# %%
import time

import pandas as pd
import torch
from IPython.display import Image, Markdown, display

import qlearn as ql
from qlearn import methods as qm
from qlearn.fakequant import fake_quantize, quantizable_layers
from qlearn.formats import FORMATS
from qlearn.fp8 import quantize_fp8
from qlearn.matched4bit import FORMATS as MATCHED, grids
from qlearn.microscaling import e2m1_codes, e2m1_values, quantize_mxfp4
from qlearn.plots.methods import frontier_figure
from qlearn.quiz import check_prediction
from qlearn.rotation import peak_to_mean, rotate, rotated
from qlearn.widgets.methods import layer_data
from qlearn.widgets.microscaling import BlockFormatExplorer

pd.options.display.float_format = "{:,.4g}".format
t_start = time.perf_counter()
model, tok = ql.load(MODEL_ID, mode="fp32", verbose=False)   # bf16 weights held in float32 (fast on any CPU)
modules = dict(model.named_modules())
LAYER = "model.layers.0.self_attn.q_proj"
w = modules[LAYER].weight.detach().float().cpu()
print(f"{MODEL_ID}: loaded in {time.perf_counter() - t_start:.1f} s; {LAYER} is {tuple(w.shape)}")

# %% [markdown]
# ## 1. E2M1: one sign bit, two exponent bits, one mantissa bit
#
# MXFP4 and NVFP4 store every weight as the same 4-bit float, E2M1. Its 16 codes decode to the values below
# (code 8 is -0). Rounding is to the nearest value, ties to the even code; anything above 6 becomes 6.
# (Lesson 04 compared bitsandbytes' own FP4, which spaces its values differently.)

# %%
codes = torch.arange(16, dtype=torch.uint8)
pd.DataFrame({"code": codes.tolist(), "bits": [f"{c:04b}" for c in codes.tolist()],
              "value": e2m1_values(codes).tolist()}).set_index("code").T

# %% [markdown]
# An MXFP4 block is 32 consecutive weights of a row with one shared scale, stored as E8M0: 8 bits of
# exponent and nothing else, so the scale is a power of two. The OCP specification sets it to
# 2^(floor(log2(absmax)) - 2): the largest power of two not above the block's absmax, divided by 4 (the
# largest power of two E2M1 holds). The block's largest weight then lands between 4 and 8, and above 6 it
# is clipped to 6.
#
# **Predict (1).** The first 32 weights of row 0 of `q_proj` (printed below: their absmax): which exponent
# e does MXFP4 store, scale = 2^e? Write an integer.

# %%
block = w[0, :32]
absmax = float(block.abs().max())
print(f"absmax of the block = {absmax:.5f}")
PREDICT_MX_EXPONENT = None   # e.g. -6

# %%
mx_row = quantize_mxfp4(w[:1])
exponent = int(mx_row.scale_e8m0[0, 0]) - 127
check_prediction(PREDICT_MX_EXPONENT, exponent, explain=(
    f"log2({absmax:.5f}) = {torch.log2(torch.tensor(absmax)):.3f}, floor = {exponent + 2}, minus 2 = {exponent}: "
    f"scale 2^{exponent} = {2.0 ** exponent:.6g}. The largest weight becomes {absmax / 2 ** exponent:.3f} in E2M1 "
    f"units{' and is clipped to 6' if absmax / 2 ** exponent > 6 else ''}."))

# %%
deq = mx_row.dequantize()[0, :32]
pd.DataFrame({"weight": block, "weight / scale": block / 2.0 ** exponent,
              "E2M1 code": e2m1_codes(block / 2.0 ** exponent).tolist(), "stored": deq}).head(8)

# %% [markdown]
# ## 2. MXFP4 against NVFP4 (and NF4, int4) on the same weights
#
# **NVFP4** keeps E2M1 elements but makes the blocks 16 long and gives each an E4M3 scale (an 8-bit float,
# 3 mantissa bits: steps of 1/8 between powers of two instead of a factor of 2), under one float32 scale for
# the whole tensor so that the E4M3 scales use their range. NF4 (lesson 03) and absmax int4 (lesson 02) at
# blocks of 64 store the same 4.5 bits.
#
# **Predict (2).** On all of `q_proj`, NVFP4's squared error as a fraction of MXFP4's (1.0 = the same, 0.5 =
# half)? Write a number.

# %%
PREDICT_NV_OVER_MX = None   # e.g. 0.8

# %%
g = grids(w)
layer_err = {f: float(((g[f].dequantize() - w) ** 2).sum() / (w ** 2).sum()) for f in MATCHED}
fmt_table = pd.DataFrame({"bits per weight": {f: g[f].bits_per_param for f in MATCHED},
                          "relative squared error": layer_err}).sort_values("relative squared error")
nv_over_mx = layer_err["NVFP4"] / layer_err["MXFP4"]
fmt_table

# %%
check_prediction(PREDICT_NV_OVER_MX, nv_over_mx, rel_tol=0.15, explain=(
    f"NVFP4's error is {nv_over_mx:.2f}x MXFP4's on this layer, for 0.25 bit more. Two things help it: a block "
    "of 16 has a smaller absmax than the 32 around it, and an E4M3 scale can sit just above the absmax, "
    "while a power of two leaves the block's largest value anywhere from 4 to 8 E2M1 units (above 6 it "
    "clips; below, the top codes go unused)."))

# %% [markdown]
# The explorer shows one window of 32 weights of a row: the black dots are the weights, the coloured marks
# what each format stores, and the grey ticks every value the chosen format allowed each weight (switch
# **levels of**). Move **window** and **row**: where NVFP4's second block starts, its ticks change; MXFP4's
# ticks are the same for all 32; NF4's and int4's span a block of 64.

# %%
explorer = BlockFormatExplorer({LAYER: w, "model.layers.0.mlp.down_proj":
                                modules["model.layers.0.mlp.down_proj"].weight.detach().float().cpu()})
explorer

# %% [markdown]
# ## 3. FP8: E4M3 and E5M2, per tensor and per 128 x 128 tile
#
# FP8 comes in two formats (Micikevicius et al. 2022, arXiv 2209.05433): **E4M3** (largest 448, more
# precision) for weights and activations, **E5M2** (largest 57344, more range) for gradients. A weight is
# multiplied so its largest magnitude lands on the format's largest value, then rounded. DeepSeek-V3
# (arXiv 2412.19437, section 3.3) keeps one scale per 128 x 128 tile of each weight; its checkpoints store
# the scale as `weight_scale_inv`, and transformers' fine-grained FP8 loads them.

# %%
fp8_rows = {}
for fmt in ("e4m3", "e5m2"):
    for tile in (None, 128):
        q = quantize_fp8(w, fmt, tile)
        fp8_rows[f"{fmt}, {'per tensor' if tile is None else '128x128 tiles'}"] = {
            "bits per weight": q.bits_per_param, "scales": q.scale.numel(),
            "relative squared error": float(((q.dequantize(torch.float32) - w) ** 2).sum() / (w ** 2).sum())}
fp8_table = pd.DataFrame(fp8_rows).T
fp8_err = fp8_table["relative squared error"]
display(fp8_table)
display(Markdown(
    f"E5M2's error is **{fp8_err['e5m2, per tensor'] / fp8_err['e4m3, per tensor']:.1f}x** E4M3's here: one mantissa "
    "bit fewer doubles the step between neighbouring values, so the squared error grows about 4x. The 128 x 128 "
    f"tiles change E4M3's error by {fp8_err['e4m3, 128x128 tiles'] / fp8_err['e4m3, per tensor'] - 1:+.1%} on this "
    "layer: a float's relative step is the same at every size, so a finer scale only helps where a tile's "
    "weights would otherwise fall below the format's smallest normal values or above its largest."))

# %% [markdown]
# ## 4. Rotate, then round
#
# For any orthogonal matrix R, `x W^T = (x R)(W R)^T`: rotate the weight's input dimension, rotate the input
# the same way when the layer runs, and the layer computes the same thing. QuaRot (arXiv 2404.00456) and
# SpinQuant (arXiv 2405.16406) rotate with Hadamard matrices; FP-Quant (arXiv 2509.23202) uses blocks matched
# to the quantization group. Here R = diag(random signs) x blockdiag(H_64 / 8): every rotated weight is a
# +-1/8 mix of 64 weights, so a row's few large weights are spread over their block.
#
# **Predict (3).** Whole model, every linear layer in round-to-nearest int4 (symmetric, groups of 128): what
# share of RTN's perplexity gap to bf16 does rotating first close? (0 = none, 1 = all of it.) Write a number.

# %%
PREDICT_GAP_CLOSED = None   # e.g. 0.3

# %%
wr = rotate(w, 64, seed=0)
peak = (float(peak_to_mean(w).mean()), float(peak_to_mean(wr).mean()))
print(f"q_proj, largest |weight| of a row over its mean |weight| (mean over rows): {peak[0]:.2f} as stored, "
      f"{peak[1]:.2f} rotated")

# %% [markdown]
# Every projection of decoder layer 3, in RTN int4 g128 as stored and rotated first: the weights' relative
# squared error, and the layer's output error `||X dW^T||^2 / ||X W^T||^2` on inputs captured from calibration
# text (not the evaluation text).

# %%
BLOCK = [f"model.layers.3.{p}" for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
block_w, block_x = layer_data(model, tok, BLOCK, max_tokens=256 if FAST else 1024)
rot_rows = {}
for name in BLOCK:
    wb, xb = block_w[name].float().cpu(), block_x[name].float().cpu()
    errs = {}
    for label, quantize in (("stored", qm.rtn), ("rotated", rotated(qm.rtn, 64, seed=0))):
        dw = quantize(wb).dequantize(torch.float32) - wb
        errs[label] = (float((dw ** 2).sum() / (wb ** 2).sum()), float(((xb @ dw.T) ** 2).sum() / ((xb @ wb.T) ** 2).sum()))
    rot_rows[name.split("layers.3.")[1]] = {
        "weight error, stored": errs["stored"][0], "weight error, rotated": errs["rotated"][0],
        "output error, stored": errs["stored"][1], "output error, rotated": errs["rotated"][1]}
rot_table = pd.DataFrame(rot_rows).T
lower_w = int((rot_table["weight error, rotated"] < rot_table["weight error, stored"]).sum())
lower_o = int((rot_table["output error, rotated"] < rot_table["output error, stored"]).sum())
rot_table

# %%
print(f"rotating first lowered the weight error of {lower_w} of 7 projections and the output error of {lower_o} of 7")

# %% [markdown]
# ## 5. One frontier: perplexity against stored bits
#
# Every format below fake-quantizes the same linear layers (the tied embedding stays) and perplexity is
# measured on the evaluation text. In FAST mode only the first 2 decoder layers are quantized and few tokens
# are scored; `benchmarks/bench_formats.py` runs every layer.

# %%
QUANT_LAYERS = 2 if FAST else None
names = quantizable_layers(model)
if QUANT_LAYERS:
    names = [n for n in names if int(n.split("layers.")[1].split(".")[0]) < QUANT_LAYERS]
RUNS = [("bf16", None), ("rtn", 128), ("rtn-hadamard", 128), ("mxfp4", None), ("nvfp4", None)]
if not FAST:
    RUNS += [("nf4", None), ("fp8-e4m3", 128)]
frontier = []
t0 = time.perf_counter()
for name, group in RUNS:
    if name == "bf16":
        bits, ppl = 16.0, float(ql.perplexity(model, tok, max_tokens=PPL_TOKENS, progress=False))
    else:
        fmt = FORMATS[name]                          # the registry: every format qlearn knows, with its quantizer
        with fake_quantize(model, {n: (lambda m, f=fmt, b=group: f.quantize(m, b)) for n in names}) as fq:
            bits = fq.bits_per_param
            ppl = float(ql.perplexity(model, tok, max_tokens=PPL_TOKENS, progress=False))
    frontier.append({"method": name, "blocksize": group, "bits": bits, "ppl": ppl})
print(f"{len(RUNS)} runs in {time.perf_counter() - t0:.0f} s ({PPL_TOKENS} tokens each, "
      f"{len(names)} linear layers quantized)")
table = pd.DataFrame(frontier, index=[r["method"] + (f" g{r['blocksize']}" if r["blocksize"] else "") for r in frontier])
table = table[["bits", "ppl"]].sort_values("bits")
table

# %%
scope = f"first {QUANT_LAYERS} decoder layers fake-quantized" if QUANT_LAYERS else "every linear layer fake-quantized"
display(Image(ql.plots.to_png(frontier_figure(frontier, scope=scope))))

# %%
ppl = table["ppl"]
gap = ppl["rtn g128"] - ppl["bf16"]
closed = (ppl["rtn g128"] - ppl["rtn-hadamard g128"]) / gap if gap > 0 else float("nan")
check_prediction(PREDICT_GAP_CLOSED, closed, abs_tol=0.15, explain=(
    f"Rotating first took RTN int4 g128 from perplexity {ppl['rtn g128']:.3f} to {ppl['rtn-hadamard g128']:.3f} "
    f"(bf16 {ppl['bf16']:.3f}): {closed:.0%} of the gap. It spread each row's large weights (peak/mean "
    f"{peak[0]:.1f} -> {peak[1]:.1f} on q_proj) and lowered the weight error of {lower_w} of 7 projections of "
    f"layer 3 and their output error on calibration inputs for {lower_o} of 7."))

# %%
verdict = ("closed part of the gap" if closed > 0.05 else
           "made perplexity worse" if closed < -0.05 else "changed perplexity little")
display(Markdown(f"""**What this run shows.** On this model, rotating before weight-only RTN int4 **{verdict}**
({closed:+.0%} of the gap), although it lowered the layers' own errors. A lower error per layer is not the same as
a lower perplexity: what matters is where in the output each layer's error lands and how the next layers
amplify it, which a per-layer squared error does not see. The rotation papers measure end to end for that
reason. QuaRot and SpinQuant rotate to quantize the *activations* (and KV cache) to 4 bits as well, where a few
huge activation channels are the obstacle (QuaRot, arXiv 2404.00456, abstract: it quantizes "all weights,
activations, and KV cache in 4 bits"); weight-only 4-bit formats with small groups already give each group its
own scale."""))

# %% [markdown]
# ## Try this
# - Set the three predictions, rerun, and read the checks.
# - In the explorer, find a window where MXFP4 clips (a stored value below the largest weight) and one where
#   its top codes go unused; compare NVFP4 there.
# - `rotated(quantize_mxfp4, 32)`: does a rotation matched to MXFP4's block of 32 help MXFP4 as much as int4?
# - `quantize_fp8(w, "e4m3", 32)`: how much do smaller tiles buy on this layer?

# %%
rows = "\n".join(f"  - {label}: {r.bits:.3f} bits, perplexity {r.ppl:.3f}" for label, r in table.iterrows())
display(Markdown(f"""## Summary (measured in this run)
- MXFP4 scale of `q_proj` row 0, weights 0-31: absmax {absmax:.5f} → **2^{exponent}**; every weight stores 4 bits
  plus 8 bits per 32: **{g['MXFP4'].bits_per_param:.2f} bits**. NVFP4 stores {g['NVFP4'].bits_per_param:.3f}.
- On all of `q_proj`, relative squared error: MXFP4 {layer_err['MXFP4']:.4g}, NVFP4 {layer_err['NVFP4']:.4g}
  (**{nv_over_mx:.2f}x**), NF4 {layer_err['NF4']:.4g}, int4 {layer_err['int4']:.4g}.
- FP8 on the same layer: E4M3 {fp8_err['e4m3, per tensor']:.3g} per tensor, E5M2 {fp8_err['e5m2, per tensor']:.3g}
  (the 4-bit formats: {min(layer_err.values()):.3g} and above).
- Rotation (Hadamard blocks of 64, random signs): peak/mean per row {peak[0]:.2f} → {peak[1]:.2f} on `q_proj`;
  weight error lower for {lower_w} of 7 projections of layer 3, output error lower for {lower_o} of 7; share of the
  whole model's perplexity gap closed: **{closed:+.0%}**.
- Frontier ({PPL_TOKENS} evaluation tokens, {len(names)} linear layers):
{rows}
"""))
