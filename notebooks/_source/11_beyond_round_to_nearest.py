# %% [markdown]
# # 11 · Beyond round-to-nearest: GPTQ, AWQ, HQQ and GGUF
#
# **Goals.** After this notebook you can
# 1. read a GGUF block byte by byte (the embedded model's own Q4_1 block, and a Q4_K super-block);
# 2. say why GPTQ's error compensation lowers a layer's output error, and see it move the later columns;
# 3. say what AWQ protects (the input channels with large activations) and what HQQ optimises with no data;
# 4. put every method on one frontier, perplexity against the bits it really stores, on the same weights;
# 5. choose between NF4, GPTQ, AWQ, HQQ and GGUF for a job, with this run's numbers.
#
# Every bitsandbytes format rounds each weight to its nearest code. The methods most models ship with
# choose the codes with data (GPTQ, AWQ) or an optimiser (HQQ). The implementations here are plain torch
# (`qlearn.methods`), short enough to read, and run where the weights are: on a CPU, or on a CUDA GPU when
# the model was loaded there.

# %%
import time

import pandas as pd
import torch
from IPython.display import Image, Markdown, display

import qlearn as ql
from qlearn import methods as qm
from qlearn.calibration import calibration_ids
from qlearn.methods import apply as qa
from qlearn.methods.gguf_file import gguf_tensor_infos, read_gguf_tensor
from qlearn.plots.methods import block_bytes_figure, frontier_figure
from qlearn.quiz import check_prediction
from qlearn.widgets.methods import MethodExplorer, layer_data

pd.options.display.float_format = "{:,.4g}".format
info = ql.backend_info()
print(info)
GPU = torch.cuda.is_available()   # ql.load puts the model on CUDA when there is one; the methods follow its weights
if GPU:
    print(f"The model, its calibration inputs and every method below run on CUDA ({info.cuda}).")

# %% [markdown]
# ## 1. How GGUF stores blocks: the embedded model's own bytes
#
# The embedded model arrives as a llama.cpp GGUF file. Its linear weights are **Q4_1**: each row is cut
# into blocks of 32 weights, and a block is 20 bytes: a float16 step `d`, a float16 minimum `m`, then
# 16 bytes of 4-bit codes (value i in the low nibble of byte i, value i + 16 in the high nibble).
# A weight is `d * q + m`.
#
# **Predict (1).** How many bits per weight does Q4_1 store, everything included? Write a number.

# %%
PREDICT_Q41_BITS = None   # e.g. 4.25

# %%
path = ql.models.embedded_gguf()
meta, tensors = gguf_tensor_infos(path)
types = pd.Series([t for t, _, _ in tensors.values()]).value_counts()
print(f"{path.name}: GGUF v{meta['version']}, {len(tensors)} tensors; types: {dict(types)}")
q41 = read_gguf_tensor(path, "blk.0.ffn_down.weight")
block = q41.data[0, :20]
d, m = block[:2].view(torch.float16).item(), block[2:4].view(torch.float16).item()
codes0 = q41.codes[0, :32]
print(f"blk.0.ffn_down.weight: {q41.qtype}, shape {tuple(q41.shape)}, {q41.data.shape[1]} bytes a row")
print(f"first block: d = {d:.6g}, m = {m:.6g}, codes {codes0.tolist()}")
print(f"first weight = d * {int(codes0[0])} + m = {d * int(codes0[0]) + m:.6g}; decoded: {q41.dequantize()[0, 0]:.6g}")

# %%
check_prediction(PREDICT_Q41_BITS, q41.bits_per_param, abs_tol=0.01, explain=(
    "32 codes x 4 bits = 16 bytes, plus a float16 d and a float16 m = 20 bytes per 32 weights: "
    "8 * 20 / 32 = 5.0 bits. The zero point (m) is what makes it 0.5 bit more than Q4_0."))

# %% [markdown]
# **Q4_K** packs 8 blocks of 32 into a super-block of 256: one float16 `d` and one `dmin`, then eight
# 6-bit scales and eight 6-bit mins in 12 bytes, then 128 bytes of codes: 144 bytes, 4.5 bits a weight.
# A weight of sub-block j is `d * sc[j] * q - dmin * mn[j]`. Below: the first Q4_1 block of the file, and
# the first Q4_K super-block of the same row quantized by `qlearn.methods.quantize_gguf` (its bytes decode
# exactly as the `gguf` package decodes them; the tests check that).

# %%
w_down = q41.dequantize()                                        # (576, 1536): the weights as stored
q4k = qm.quantize_gguf(w_down, "Q4_K")
fig_blocks = block_bytes_figure([
    ("Q4_1 block (embedded file, blk.0.ffn_down row 0, weights 0-31): 20 bytes", block.numpy(),
     [("d fp16", 0, 2), ("m fp16", 2, 4), ("codes: low nibble = weight i, high = i+16", 4, 20)]),
    ("Q4_K super-block (same row, weights 0-255): 144 bytes", q4k.data[0, :144].numpy(),
     [("d fp16", 0, 2), ("dmin fp16", 2, 4), ("8 scales + 8 mins, 6 bits each", 4, 16),
      ("codes (4 runs of 32 bytes: sub-blocks 2p low, 2p+1 high)", 16, 144)]),
])
display(Image(ql.plots.to_png(fig_blocks)))

# %%
formats = pd.DataFrame({t: {"values a block": s, "bytes a block": b, "bits per weight": 8 * b / s}
                        for t, (s, b) in qm.GGUF_TYPES.items()}).T
again = qm.quantize_gguf(w_down, "Q4_1")
same_codes = float((again.codes == q41.codes).float().mean())
print(f"re-quantizing the file's own Q4_1 weights to Q4_1 gives the same codes for {same_codes:.2%} of them")
formats

# %% [markdown]
# That last line is the **Q4_1 caveat** for everything below: this model was already quantized, to
# asymmetric blocks of 32. Any asymmetric format with aligned groups of 32 finds the original grid again
# and looks almost free. That is a property of this file, not of LLMs; so the frontier also compares
# groups of 64 and 128, which do not line up with the stored grid.
#
# ## 2. GPTQ: round one column, push its error onto the columns not yet rounded
#
# A linear layer's output error after changing W by dW is `||X dW^T||^2` on its inputs X. GPTQ rounds the
# input columns one at a time and, after each, moves the later columns to cancel what the rounding did to
# the output, using the inverse of `H = 2 X^T X / n` (computed from calibration text, not the evaluation
# text). The inputs here come from Python's library docstrings; perplexity is measured on the `pydoc`
# topics (the test suite checks that no 64-character span is shared).

# %%
t0 = time.perf_counter()
model, tok = ql.load(MODEL_ID, mode="fp32", verbose=False)       # bf16 weights, float32 compute (no bf16 unit needed)
LAYERS = ["model.layers.3.self_attn.q_proj", "model.layers.3.mlp.down_proj"]
LAYER_TOKENS = 2048   # H is (in x in): it needs well over `in` tokens (1536 for down_proj) to be full rank
weights, calib_x = layer_data(model, tok, LAYERS, max_tokens=LAYER_TOKENS)
_, eval_x = layer_data(model, tok, LAYERS, text=ql.evaluate.offline_text()[:16 * LAYER_TOKENS], max_tokens=LAYER_TOKENS)
print(f"loaded and captured in {time.perf_counter() - t0:.1f} s; calibration inputs "
      f"{ {n: tuple(x.shape) for n, x in calib_x.items()} }")

# %% [markdown]
# **Predict (2).** On `mlp.down_proj` of layer 3 (4-bit, groups of 128, symmetric), GPTQ's output error on
# *evaluation* text, as a fraction of round-to-nearest's: 1.0 = no better, 0.5 = half. Write a number.

# %%
PREDICT_GPTQ_RATIO = None   # e.g. 0.7

# %%
rows = []
for name in LAYERS:
    w, xc, xe = weights[name], calib_x[name], eval_x[name]
    recs = {"rtn": qm.rtn(w), "gptq": qm.gptq(w, qm.hessian(xc)),
            "awq": qm.awq(w, xc[::4], x_mean_abs=xc.abs().mean(0)), "hqq": qm.hqq(w)}
    for method, rec in recs.items():
        rows.append({"layer": name.split("layers.")[1], "method": method, "bits": rec.bits_per_param,
                     "output err (calibration)": qm.output_error(xc, w, rec.dequantize()),
                     "output err (evaluation)": qm.output_error(xe, w, rec.dequantize())})
layer_table = pd.DataFrame(rows).set_index(["layer", "method"])
rtn_err = layer_table.xs("rtn", level="method")["output err (evaluation)"]
layer_table["vs RTN (evaluation)"] = [r["output err (evaluation)"] / rtn_err[i[0]] for i, r in layer_table.iterrows()]
layer_table

# %%
gptq_ratio = float(layer_table.loc[("3.mlp.down_proj", "gptq"), "vs RTN (evaluation)"])
gptq_calib_ratio = float(layer_table.loc[("3.mlp.down_proj", "gptq"), "output err (calibration)"]
                         / layer_table.loc[("3.mlp.down_proj", "rtn"), "output err (calibration)"])
check_prediction(PREDICT_GPTQ_RATIO, gptq_ratio, rel_tol=0.25, explain=(
    f"GPTQ lowers exactly the quantity it is given, ||X dW^T||^2 on the calibration inputs: here {gptq_calib_ratio:.2f}x "
    f"RTN's. On the evaluation text it measured {gptq_ratio:.2f}x: a fit to one text's H = 2X^TX/n need not carry "
    "over to another text's inputs for one layer. The test that counts is the whole model's perplexity on the "
    "evaluation text: section 4."))

# %% [markdown]
# The explorer: pick a layer and a method. For GPTQ the green line in the first panel is each weight as it
# was when rounded (after earlier columns moved it); the last panel shows how far compensation moved each
# column: nothing for column 0, more and more for later ones. The error per column rises toward the end,
# yet the output error falls: error is moved to where the inputs are small or cancel.

# %%
explorer = MethodExplorer(weights, calib_x, layer=LAYERS[1], method="gptq")
explorer

# %% [markdown]
# ## 3. AWQ protects large-activation channels; HQQ needs no data
#
# **AWQ** scales input column j of W by `s_j = mean|x_j|^alpha` before rounding and divides by it after
# (a real model folds `1/s` into the previous layer). The weights of channels with large activations then
# get finer steps; alpha is picked from a grid by the output error on calibration inputs (alpha = 0 is RTN).
# **HQQ** uses no inputs: it moves each group's zero point to minimise an l_p error (p = 0.7) of the weights,
# which tolerates a few large misses to fit the rest better.

# %%
name = LAYERS[1]
w, xc = weights[name], calib_x[name]
a = qm.awq(w, xc[::4], x_mean_abs=xc.abs().mean(0))
big = xc.abs().mean(0) >= xc.abs().mean(0).quantile(0.99)                  # the top 1% input channels
err_rtn = qm.column_error(w, qm.rtn(w).dequantize())
err_awq = qm.column_error(w, a.dequantize())
h, h0 = qm.hqq(w), qm.hqq(w, iters=0)
lp = {k: float(((r.dequantize() - w).abs() ** 0.7).mean()) for k, r in (("min/max", h0), ("HQQ", h))}
print(f"AWQ chose alpha = {a.alpha}; mean |error| on the top-1% activation channels: RTN {err_rtn[big].mean():.3g}, "
      f"AWQ {err_awq[big].mean():.3g}; on the others: RTN {err_rtn[~big].mean():.3g}, AWQ {err_awq[~big].mean():.3g}")
print(f"HQQ l0.7 error of the weights: min/max start {lp['min/max']:.4g} -> optimised {lp['HQQ']:.4g}")

# %% [markdown]
# ## 4. One frontier: perplexity against the bits each method really stores
#
# Every method below fake-quantizes the same linear layers (the tied embedding stays): the weights are
# replaced by what the format can represent, and perplexity is measured on the evaluation text. Bits count
# everything stored (codes, scales, zero points; AWQ's s as float16). GPTQ and AWQ run layer by layer on the
# calibration text, each layer seeing the earlier ones already quantized (the GPTQ paper's order).
# In FAST mode only the first 2 decoder layers are quantized, 6 runs, and few tokens are scored (the full
# run: every layer, 18 runs; on a busy 2-core CPU that takes a long while: `benchmarks/bench_methods.py`
# measures the same things). The table also gives the seconds each method took to quantize, here.
#
# **Q4_K on this model.** Most of its weight rows are 576 wide (every layer but `down_proj`), and 576 is not
# a multiple of Q4_K's super-block of 256. llama.cpp's quantizer does not write Q4_K there: it stores such a
# tensor in a fallback type (Q5_0 for Q4_K; `src/llama-quant.cpp`, "tensor cols ... are not divisible by
# 256"). Here the flattened weight is cut into super-blocks instead, so the Q4_K row measures Q4_K's
# arithmetic (6-bit scales of 32-weight blocks), not the file llama.cpp would write for this model.

# %%
QUANT_LAYERS = 2 if FAST else None
CALIB_TOKENS = 512 if FAST else 2048
RUNS = [("bf16", None), ("rtn", 128), ("gptq", 128), ("hqq", 128), ("rtn-asym", 32), ("Q4_1", None)]
if not FAST:
    RUNS += [("awq", 128), ("rtn-asym", 128), ("rtn", 64), ("rtn-asym", 64), ("gptq", 64), ("hqq", 64),
             ("Q4_0", None), ("Q4_K", None), ("nf4", None), ("nf4+dq", None), ("fp4", None), ("int8", None)]
calib = calibration_ids(tok, "methods", n_tokens=CALIB_TOKENS)
folder = ql.models.embedded_model_path()
frontier = []
t0 = time.perf_counter()
for method, blocksize in RUNS:
    t1 = time.perf_counter()
    fq = qa.apply_method(model, method, blocksize or 128, calib_ids=calib, keep_originals=False, layers=QUANT_LAYERS)
    if GPU:
        torch.cuda.synchronize()   # the work still queued on the GPU belongs to this method's time
    seconds = time.perf_counter() - t1
    bits = fq.bits_per_param
    ppl = float(ql.perplexity(model, tok, max_tokens=PPL_TOKENS, progress=False))
    qa.restore_from_checkpoint(model, folder)
    frontier.append({"method": method, "blocksize": blocksize, "bits": bits, "ppl": ppl, "quantize s": seconds})
print(f"{len(RUNS)} runs in {time.perf_counter() - t0:.0f} s ({PPL_TOKENS} tokens each, "
      f"{'first ' + str(QUANT_LAYERS) + ' decoder layers' if QUANT_LAYERS else 'all 30 decoder layers'})")
table = pd.DataFrame(frontier, index=[r["method"] + (f" g{r['blocksize']}" if r["blocksize"] else "") for r in frontier])
table = table[["bits", "ppl", "quantize s"]].sort_values("bits")
table

# %%
scope = f"first {QUANT_LAYERS} decoder layers fake-quantized" if QUANT_LAYERS else "every linear layer fake-quantized"
display(Image(ql.plots.to_png(frontier_figure(frontier, scope=scope))))

# %%
ppl = {(r["method"], r["blocksize"]): r["ppl"] for r in frontier}
gap = ppl[("rtn", 128)] - ppl[("bf16", None)]
closed = {m: (ppl[("rtn", 128)] - ppl[(m, 128)]) / gap if gap > 0 else float("nan")
          for m in ("gptq", "hqq", "awq") if (m, 128) in ppl}
print("share of RTN's perplexity gap to bf16 closed at 4-bit g128: "
      + ", ".join(f"{m} {v:.0%}" for m, v in closed.items()))

# %%
secs = {(r["method"], r["blocksize"]): r["quantize s"] for r in frontier}
bits = {(r["method"], r["blocksize"]): r["bits"] for r in frontier}
rise = {k: v / ppl[("bf16", None)] - 1 for k, v in ppl.items() if k != ("bf16", None)}


def measured(key, what="perplexity"):
    """'+27.3% perplexity' from this run, or say that this run did not measure it (FAST mode runs fewer)."""
    return f"{rise[key]:+.1%} {what} over bf16" if key in rise else "(not run in FAST mode)"


def took(key):
    return f"{secs[key]:.1f} s" if key in secs else "(not run in FAST mode)"


q4_0_rise = rise.get(("Q4_0", None))
bigger = ("" if q4_0_rise is None else f": with Q4_0 the 70B model lost {3.61 / (100 * q4_0_rise):.2f}x "
          "the share this 135M model lost here")
display(Markdown(f"""## 5. Which to choose when (this run's numbers beside each)
- **No data, load-time quantization, a GPU with bitsandbytes**: NF4 (+DQ). One line in `from_pretrained`,
  no calibration: round-to-nearest on a code book. Here: {measured(("nf4+dq", None))}.
- **CPU / laptop / llama.cpp / Ollama**: GGUF block formats. Here Q4_1 {measured(("Q4_1", None))}, Q4_0
  {measured(("Q4_0", None))} (the Q4_1 caveat above flatters Q4_1). llama.cpp's own scorechart for
  Llama-2-70B (`tools/perplexity/README.md`, Wikitext-2): Q4_0 +3.61 %, Q4_1 +2.37 %, Q4_K_M +1.20 %{bigger}.
- **Best 4-bit accuracy from a little calibration data**: GPTQ. Here it took {took(("gptq", 128))} to
  quantize against round-to-nearest's {took(("rtn", 128))}, and closed
  {closed.get("gptq", float("nan")):.0%} of RTN's gap at g128. AWQ: {measured(("awq", 128))}; its paper reports
  it needs fewer calibration sequences and is less sensitive to which text they come from than GPTQ
  (arXiv 2306.00978, Figure 8).
- **No data but better than RTN**: HQQ, {took(("hqq", 128))} here for the same layers; it closed
  {closed.get("hqq", float("nan")):.0%} of RTN's gap. Its authors quantize Llama-2-70B in about 4 minutes on a
  GPU (github.com/mobiusml/hqq, README).
"""))

# %% [markdown]
# ## Try this
# - Set `PREDICT_Q41_BITS` and `PREDICT_GPTQ_RATIO`, rerun, and read the checks.
# - In the explorer, switch **method** between gptq and rtn on `down_proj`: where does the error per column go?
# - Change **blocksize** to 32 with method Q4_1 or rtn-asym and compare with 128: which one sees the stored grid?
# - `qm.gptq(w, qm.hessian(xc), act_order=True)`: does rounding the columns with the largest inputs first help?

# %%
summary_rows = "\n".join(f"  - {label}: {r.bits:.3f} bits, perplexity {r.ppl:.2f}" for label, r in table.iterrows())
display(Markdown(f"""## Summary (measured in this run)
- The embedded file: {len(tensors)} tensors, {dict(types)}; Q4_1 stores **{q41.bits_per_param} bits** a weight
  (first block of `blk.0.ffn_down`: d = {d:.4g}, m = {m:.4g}); Q4_K stores {q4k.bits_per_param} bits.
- Re-quantizing the file's Q4_1 weights to Q4_1 gives the same codes for **{same_codes:.2%}** of them: the
  weights already sit on Q4_1 grids of 32 (the caveat for asymmetric group-32 formats below).
- Layer 3 `down_proj` at 4-bit g128 symmetric: GPTQ's output error on evaluation text is **{gptq_ratio:.2f}x**
  RTN's; AWQ chose alpha = {a.alpha}; HQQ lowered the l0.7 weight error {lp['min/max']:.4g} → {lp['HQQ']:.4g}.
- Frontier ({PPL_TOKENS} evaluation tokens, {'first ' + str(QUANT_LAYERS) + ' decoder layers' if QUANT_LAYERS
  else 'all linear layers'}; calibration {CALIB_TOKENS} tokens of another text):
{summary_rows}
- Share of RTN's gap to bf16 closed at g128: {', '.join(f'{k} {v:.0%}' for k, v in closed.items())}
  (HQQ is asymmetric, a float16 scale and a float16 zero per group: {bits[("hqq", 128)]:.3f} bits here, the same
  as symmetric RTN's one float32 scale per group, {bits[("rtn", 128)]:.3f}: above 4.25 because a row of 576 holds 4.5 groups of 128, so it
  stores 5 scales).
  CPU capability: {info.cpu_capability}.{f" Quantized and evaluated on CUDA ({info.cuda})." if GPU else ""}
"""))
