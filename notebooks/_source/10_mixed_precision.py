# %% [markdown]
# # 10 · Different formats for different layers
#
# **Goals.** After this notebook you can
# 1. measure how sensitive each linear layer is: the KL divergence to the unquantized model when only that layer
#    is quantized, on **calibration** text that is not the evaluation text;
# 2. say which layers are sensitive on this model, and which reasons the run supports (position in the network,
#    what reaches the layer) and which it does not;
# 3. choose one format per layer under a byte budget (a small solver), and check the plan against uniform NF4 +
#    double quant, a random plan and a llama.cpp-style rule on one perplexity-against-bits frontier;
# 4. tell a result from noise: re-solve on several calibration draws and report the gain with its spread;
# 5. spot the Q4_1 origin of the embedded weights in the numbers, and keep it out of your conclusions.

# %%
import statistics
import time
from dataclasses import replace

import pandas as pd
import torch
from IPython.display import Image, Markdown, display
from matplotlib.figure import Figure

import qlearn as ql
from qlearn import calibration, mixed, sensitivity
from qlearn.fakequant import fake_quantize
from qlearn.plots.mixed import block_profile, frontier
from qlearn.quiz import check_prediction
from qlearn.widgets.mixed import mixed_precision_explorer

pd.options.display.float_format = "{:,.4g}".format
# FAST (the test suite): a shorter calibration, the layers of the last 5 blocks only, fewer formats and plans, a float32
# model (2.5x faster on CPUs without bf16 units). Full settings: every layer, the whole menu, the bf16 model.
CALIBRATION = sensitivity.Calibration(1, 32, 2) if FAST else sensitivity.Calibration()
BLOCKS = range(25, 30) if FAST else None   # FAST: five late blocks (a rerun starts at the layer's block: late is cheap)
FORMATS = (mixed.LADDER if FAST else mixed.PLAN_FORMATS) + ("int4-zp/32", "nf4/32")
MODE = "fp32" if FAST else "bf16"

# %% [markdown]
# ## 1. Calibration text is not evaluation text
#
# Choosing formats by looking at the perplexity we then report would be tuning on the test set. The
# sensitivities here come from the docstrings of a fixed list of standard-library modules; perplexity is
# measured on `pydoc_data.topics` (lessons 01-08). This cell checks they share no run of 8 words.

# %%
def ngrams(text, n=8):
    words = text.split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


calib_text, eval_text = calibration.calibration_text("sensitivity"), ql.evaluate.offline_text()
shared = ngrams(calib_text) & ngrams(eval_text)
print(f"calibration: {len(calib_text):,} characters from {', '.join(calibration.CALIBRATION_MODULES['sensitivity'])}")
print(f"evaluation: {len(eval_text):,} characters; 8-word runs shared: {len(shared)}")
print("calibration starts:", calib_text[:80].replace("\n", " "))

# %% [markdown]
# ## 2. Sensitivity: quantize one layer, measure how far the output moves
#
# For each linear layer: fake-quantize only that layer in NF4 + double quant (blocks of 64; `ql.fakequant` puts
# `record.dequantize()` into the weight and puts the original back after), rerun the model from that layer's
# block on (the blocks before it are unchanged, so their output is cached) and measure the KL divergence of the
# next-token distribution to the unquantized model's. The other formats are *predicted* from each layer's output
# error (KL grows with the error's energy); `benchmarks/bench_mixed.py --validate` measures how well.
#
# **Predict (1).** Of the seven kinds of linear layer in a block (q, k, v, o projections of attention; gate, up,
# down of the MLP), which one has the largest summed KL over the blocks? Write its name, e.g. `"q_proj"`.

# %%
PREDICT_KIND = None   # e.g. "up_proj"

# %%
model, tok = ql.load(MODEL_ID, mode=MODE)
layers = None if BLOCKS is None else [n for n in ql.fakequant.quantizable_layers(model)
                                      if sensitivity.block_of(n) in BLOCKS]
t0 = time.perf_counter()
sens = sensitivity.sensitivities(model, tok, FORMATS, calibration=CALIBRATION, layers=layers)
print(f"sensitivities of {len(sens.layers)} layers: {time.perf_counter() - t0:.1f} s in this run "
      f"(0 if cached; measured when computed: {', '.join(f'{k} {v:.1f} s' for k, v in sens.seconds.items())})")
kinds = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
blocks = sorted(sens.blocks)
by_kind = {k: [sens.measured[n] for n in sens.layers if n.endswith(k)] for k in kinds}
fig_profile = block_profile(by_kind, blocks, block_kl=[sens.blocks[b] for b in blocks])[-1].figure
display(Image(ql.plots.to_png(fig_profile)))

# %%
table = pd.DataFrame({"KL nf4+dq/64": sens.measured, "weights": sens.numel}).sort_values("KL nf4+dq/64",
                                                                                          ascending=False)
table["KL per M weights"] = table["KL nf4+dq/64"] / table["weights"] * 1e6
display(table.head(8))
summed = {k: sum(v) for k, v in by_kind.items()}
top_kind = max(summed, key=summed.get)
pd.Series(summed, name="summed KL").to_frame().T

# %%
check_prediction(PREDICT_KIND, top_kind, choices=kinds, explain=(
    f"summed over the blocks measured here, {top_kind} moves the output most "
    f"({summed[top_kind]:.3g} nats); the most sensitive single layer is {table.index[0]} "
    f"({table.iloc[0, 0]:.3g}). Position matters too: compare the first and last blocks in the figure."))

# %% [markdown]
# **Why these layers?** What this run shows: (a) the KL depends on *where* the layer is (the figure: the same
# kind differs by orders of magnitude across blocks); (b) it follows the layer's output error on the
# calibration inputs, `sum_ij energy_j (w_ij - w_hat_ij)^2`, which weights each input channel by the energy of
# the activations reaching it, so a layer fed by a few large-activation channels (outliers, lesson 06) errs more
# for the same weights. The correlation below measures (b). What it does not show: *why* a given block's
# activations are large; that would need the activations themselves (lesson 06's explorer).

# %%
err = pd.Series({n: sens.error[n]["nf4+dq/64"] for n in sens.layers})
kl = pd.Series(sens.measured)
rank_corr = err.rank().corr(kl.rank())
print(f"rank correlation of measured KL with output error over {len(kl)} layers: {rank_corr:.2f}")

# %% [markdown]
# ### The Q4_1 flag
#
# The embedded weights were stored as **Q4_1** in the GGUF file: 4-bit codes with a scale *and a minimum* per
# group of 32 (asymmetric). A zero-point INT4 format with a float minimum and aligned groups of 32
# (`int4-zp/32`, lesson 02's section 3) can therefore land on those weights' own grid, which says nothing about
# LLMs in general: it says this model was already quantized. Compare its output error with NF4 in the same
# groups of 32 (a ratio far below 1 is the flag):

# %%
zp = pd.Series({n: sens.error[n]["int4-zp/32"] / sens.error[n]["nf4/32"] for n in sens.layers})
print(f"output error of int4-zp/32 relative to nf4/32: median {zp.median():.3g}, max {zp.max():.3g} "
      f"over {len(zp)} layers")
print("int4-zp/32 stays out of the menu below: on this checkpoint its error says more about the GGUF file "
      "than about the format.")

# %% [markdown]
# ## 3. Plans under a byte budget
#
# The menu: NF4 / FP4 in blocks of 32-256 with and without double quant, LLM.int8 weights and bf16 (FAST: the
# NF4 + double quant ladder, int8 and bf16). Each costs its exact bits per weight from
# `ql.memory.bits_per_param`. `mixed.solve` picks one format per layer minimising the summed predicted KL with
# at most the budget's bits per weight (a price per bit, found by bisection, then a greedy fill).
#
# Two budgets: **5% more bytes** than uniform NF4 + double quant, and **the same bytes**. Against each, two
# baselines that spend exactly as much: a **random** plan (the solver's own formats handed to random layers of the
# same size) and a **llama.cpp-style rule** (v_proj and down_proj one step up, as llama.cpp's Q4_K_M does).

# %%
t = mixed.tables(sens, mixed.PLAN_FORMATS)
uniform = mixed.uniform(t, "nf4+dq/64")
budget = uniform.bits_per_weight
plan5 = mixed.solve(t, 1.05 * budget, "plan (+5% bytes)")
rand5 = replace(mixed.shuffled(t, plan5, seed=0), name="random (+5% bytes)")
rule5 = replace(mixed.llama_rule(t, 1.05 * budget), name="rule (+5% bytes)")
plan = mixed.solve(t, budget, "plan (equal bytes)")
rand = replace(mixed.shuffled(t, plan, seed=0), name="random (equal bytes)")
rule = replace(mixed.llama_rule(t, budget), name="rule (equal bytes)")
plans = [uniform, plan5, rand5, rule5, plan, rand, rule]
pd.DataFrame({p.name: {"bits/weight": p.bits_per_weight, "predicted KL": p.cost, "formats": p.counts()}
              for p in plans}).T

# %%
explorer = mixed_precision_explorer(sens, budget=round(budget, 3))
explorer

# %% [markdown]
# **Predict (2).** Call the perplexity gap between uniform NF4 + double quant and bf16 "the gap". With 5% more
# bytes, spent where the calibration KL says, what share of the gap will the solver's plan close on the evaluation
# text? (0: none, 1: all of it; e.g. `0.2`.)

# %%
PREDICT_GAP_CLOSED = None   # e.g. 0.2

# %%
def ppl(p):
    with fake_quantize(model, p.as_dict(), values_dtype=torch.bfloat16):
        return float(ql.perplexity(model, tok, max_tokens=PPL_TOKENS, progress=False))


t0 = time.perf_counter()
ppl_bf16 = float(ql.perplexity(model, tok, max_tokens=PPL_TOKENS, progress=False))
measured = {p.name: ppl(p) for p in plans}
gap = measured[uniform.name] - ppl_bf16
closed = {k: (measured[uniform.name] - v) / gap for k, v in measured.items()}
print(f"{len(measured) + 1} perplexities on {PPL_TOKENS} evaluation tokens: {time.perf_counter() - t0:.0f} s")
pd.DataFrame({"bits/weight": {p.name: p.bits_per_weight for p in plans}, "perplexity": measured,
              "gap closed": closed})

# %%
check_prediction(PREDICT_GAP_CLOSED, closed[plan5.name], abs_tol=0.15, explain=(
    f"bf16 {ppl_bf16:.2f}, uniform nf4+dq {measured[uniform.name]:.2f}; with 5% more bytes the plan scored "
    f"{measured[plan5.name]:.2f}, the random plan with the same formats {measured[rand5.name]:.2f} (gap closed "
    f"{closed[rand5.name]:+.2f}) and the rule {measured[rule5.name]:.2f} ({closed[rule5.name]:+.2f}). At equal bytes: "
    f"plan {closed[plan.name]:+.2f}, random {closed[rand.name]:+.2f}, rule {closed[rule.name]:+.2f}. Whether these "
    "differences are more than the calibration draw: next cell."))

# %% [markdown]
# ### How much of that is the calibration draw?
#
# The sensitivities came from one stretch of calibration text. Another stretch of the same text gives other KLs,
# another plan and another perplexity: a result that flips with the draw is noise. `mixed.CalibrationDraw(..., draw=d)`
# takes the d-th stretch of the calibration text that does not overlap the others (draw 0 is the one above); each draw
# below re-measures the sensitivities, re-solves both budgets and scores both plans. The bars are the mean ± one
# standard deviation over the draws, the dots the draws themselves. Draws cost time, so this run makes only 3 (in the
# test suite's FAST mode each on 35 layers and 32 calibration tokens); beside them the figure shows the same
# measurement made once on full settings by `benchmarks/bench_mixed.py --calib 2,128,2 --draws 5` (its numbers are
# written into the cell).

# %%
DRAWS = 3                     # each further draw: one sensitivity run and two perplexities
gaps = {"equal bytes": [closed[plan.name]], "+5% bytes": [closed[plan5.name]]}
t0 = time.perf_counter()
for draw in range(1, DRAWS):
    calib = mixed.CalibrationDraw(CALIBRATION.n_seqs, CALIBRATION.seq_len, CALIBRATION.every, draw=draw)
    s_d = sensitivity.sensitivities(model, tok, FORMATS, calibration=calib, layers=layers, progress=False)
    t_d = mixed.tables(s_d, mixed.PLAN_FORMATS)
    for key, factor in (("equal bytes", 1.0), ("+5% bytes", 1.05)):
        gaps[key].append((measured[uniform.name] - ppl(mixed.solve(t_d, factor * budget))) / gap)
spread = pd.DataFrame({k: {"mean": statistics.mean(v), "sd": statistics.stdev(v), "min": min(v), "max": max(v),
                           "draws above 0": f"{sum(x > 0 for x in v)} of {len(v)}"} for k, v in gaps.items()}).T
print(f"{DRAWS - 1} more draws of {CALIBRATION.n_seqs} x {CALIBRATION.seq_len} calibration tokens: "
      f"{time.perf_counter() - t0:.0f} s")
spread

# %%
# The same, measured once on full settings by benchmarks/bench_mixed.py --calib 2,128,2 --draws 5 (all 210 layers,
# 2 x 128 calibration tokens per draw, 4,096 evaluation tokens, float32 compute of bf16 values; a 2-core AMD EPYC,
# bf16 14.704, uniform nf4+dq/64 18.748). Gap closed per draw 0-4; the random plans with the same formats closed
# -0.42 ± 0.01 (equal bytes) and +0.02 ± 0.04 (+5%), below the plan in every draw.
BENCHMARK = {"equal bytes": [0.091, 0.075, 0.123, 0.138, 0.105], "+5% bytes": [0.395, 0.482, 0.460, 0.492, 0.442]}
fig = Figure(figsize=(7.5, 3.6))
ax = fig.add_subplot(1, 1, 1)
for i, (label, runs) in enumerate((("this run", gaps), ("benchmark, full settings", BENCHMARK))):
    for j, key in enumerate(gaps):
        v = runs[key]
        x = j + (i - 0.5) * 0.3
        ax.errorbar(x, statistics.mean(v), yerr=statistics.stdev(v), fmt="o", capsize=5, color=f"C{i}",
                    label=label if j == 0 else None)
        ax.plot([x + 0.06] * len(v), v, ".", color=f"C{i}", alpha=0.5)
ax.axhline(0, color="#777777", lw=1, ls=":")
ax.set_xlim(-0.6, len(gaps) - 0.4)
ax.set_xticks(range(len(gaps)), [f"plan at {k}" for k in gaps])
ax.set_ylabel("share of the gap closed\n(uniform nf4+dq = 0, bf16 = 1)")
ax.set_title(f"Over calibration draws (this run: {DRAWS}, {len(sens.layers)} layers)", fontsize=10)
ax.legend(fontsize=8)
fig.tight_layout()
display(Image(ql.plots.to_png(fig)))

# %%
def sign(values):
    """What the draws agree on: the sign of every draw, or that it changed."""
    return ("above 0 in every draw" if min(values) > 0 else "below 0 in every draw" if max(values) < 0
            else "its sign changed between draws")


bench = {k: (statistics.mean(v), statistics.stdev(v)) for k, v in BENCHMARK.items()}
held = [k for k, v in BENCHMARK.items() if min(v) > 0]            # closed part of the gap in every benchmark draw
conclusion = ((f"the plan at {' and at '.join(held)} closed part of the gap in every one of them" if held else
               "no budget's plan closed part of the gap in every one of them")
              + "".join(f"; at {k} {sign(BENCHMARK[k])}" for k in BENCHMARK if k not in held))
display(Markdown(
    "**What holds, and what does not.** In this run, over " + f"{DRAWS} calibration draws, the +5% plan closed "
    f"{spread.loc['+5% bytes', 'mean']:+.2f} ± {spread.loc['+5% bytes', 'sd']:.2f} of the gap, "
    f"{sign(gaps['+5% bytes'])}; the equal-bytes plan {spread.loc['equal bytes', 'mean']:+.2f} ± "
    f"{spread.loc['equal bytes', 'sd']:.2f}, {sign(gaps['equal bytes'])}. "
    + (f"FAST settings ({len(sens.layers)} layers, {CALIBRATION.n_seqs} x {CALIBRATION.seq_len} calibration tokens, "
       f"{PPL_TOKENS} evaluation tokens, {DRAWS} draws) are a small sample: the gap itself is {gap:.2f} perplexity "
       "points, and the evaluation text has its own noise, which the draws do not vary. " if FAST else "")
    + f"On full settings the benchmark measured, over {len(BENCHMARK['+5% bytes'])} draws, +5%: "
    f"{bench['+5% bytes'][0]:+.2f} ± {bench['+5% bytes'][1]:.2f}, equal bytes: {bench['equal bytes'][0]:+.2f} ± "
    f"{bench['equal bytes'][1]:.2f}: **{conclusion}.** A gain is a result when it keeps its sign over the draws; "
    "report it with its spread, never from one draw."))

# %% [markdown]
# ## 4. The frontier: perplexity against bits
#
# Uniform formats are single points; the solver gives a curve. FAST: the plans above only; full settings: more.

# %%
ladder = ("nf4+dq/32",) if FAST else ("nf4+dq/256", "nf4+dq/128", "nf4+dq/32")
budgets = () if FAST else (4.05, 4.08, 4.2, 4.5)
uni_pts = [(uniform.bits_per_weight, measured[uniform.name])]
uni_pts += [(mixed.uniform(t, f).bits_per_weight, ppl(mixed.uniform(t, f))) for f in ladder]
plan_pts = sorted([(p.bits_per_weight, measured[p.name]) for p in (plan, plan5)]
                  + [(b, ppl(mixed.solve(t, b))) for b in budgets])
uni_pts.sort()
series = {"uniform NF4 + DQ (blocks 256 ... 32)": ([b for b, _ in uni_pts], [p for _, p in uni_pts], "s--"),
          "solver's plans": ([b for b, _ in plan_pts], [p for _, p in plan_pts], "o-"),
          "random plans (same formats)": ([p.bits_per_weight for p in (rand, rand5)],
                                          [measured[p.name] for p in (rand, rand5)], "x"),
          "llama.cpp-style rule": ([p.bits_per_weight for p in (rule, rule5)], [measured[p.name] for p in (rule, rule5)],
                                   "^")}
fig_frontier = frontier(series, reference={"bf16": ppl_bf16})[-1].figure
display(Image(ql.plots.to_png(fig_frontier)))

# %% [markdown]
# **Reading it.** A plan at *equal* bytes pays for every upgrade with a downgrade somewhere else. Measured by
# this project on a 2-core CPU (Python 3.11, float32 compute of bf16 values, 4,096 tokens of the evaluation text
# that ships with qlearn; bf16 14.70): uniform NF4 + double quant in blocks of 256 / 128 / 64 / 32 scored
# 21.80 / 19.81 / 18.75 / 18.16 at 4.032 / 4.064 / 4.127 / 4.254 bits per weight (`benchmarks/bench_mixed.py
# --frontier`), so around blocks of 64 a step down costs about 17 perplexity points per bit and a step up buys back
# about 4.7: moving bytes between layers only pays where the layers' sensitivities differ by more than that, so at
# equal bytes the gain is small (the benchmark's draws: about a tenth of the gap) and it needs enough calibration and
# enough layers to show at all (FAST settings lose it). Extra bytes buy an upgrade without a downgrade, and the
# solver spends them on the layers the KL ranks near the top: about 4 times the gain, on every draw. Real bitsandbytes modules can express only part of such a plan:
# `BitsAndBytesConfig(llm_int8_skip_modules=[...])` keeps named layers in 16-bit, but transformers fixes the 4-bit
# blocksize at 64.

# %% [markdown]
# ## Try this
#
# - Drag the explorer's budget from 4.03 to 8 bits: which layers get int8 first? Are they the top of the table
#   in section 2?
# - Switch its colour to "weighted error" (each layer's output error, energy-weighted): which layers stand out,
#   and are they the same as by KL?
# - Rerun with `sensitivity.Calibration(4, 256, 2)` (four times the text and the scored positions, what
#   `benchmarks/bench_mixed.py` uses by default; the sensitivities take about four times as long) and more `DRAWS`:
#   does the equal-bytes plan's spread shrink, and does its mean move away from 0?
# - Put `"int4-zp/32"` into `mixed.tables(sens, mixed.PLAN_FORMATS + ("int4-zp/32",))` and solve again: the plan
#   will love it; explain why that is about this checkpoint, not about LLMs.

# %%
del model
ql.models.release_memory()
display(Markdown(f"""## Summary (measured in this run)

- Calibration text ({len(calib_text):,} characters of stdlib docstrings) and evaluation text share
  {len(shared)} runs of 8 words.
- Sensitivities of {len(sens.layers)} layers in nf4+dq/64 (calibration {sens.calibration}); the most sensitive
  kind summed over blocks: **{top_kind}**; the top layer: {table.index[0]} (KL {table.iloc[0, 0]:.3g}).
  Rank correlation of KL with the output error: {rank_corr:.2f}.
- int4-zp/32 (the Q4_1 family of the checkpoint) has a median {zp.median():.3g} of NF4/32's output error:
  flagged and kept out of the menu.
- **+5% bytes:** the plan closed **{spread.loc['+5% bytes', 'mean']:+.2f} ± {spread.loc['+5% bytes', 'sd']:.2f}** of the
  uniform-to-bf16 gap over {DRAWS} calibration draws (draw 0: {closed[plan5.name]:+.2f}; random plan with the same
  formats {closed[rand5.name]:+.2f}, rule {closed[rule5.name]:+.2f}); full-settings benchmark
  {bench['+5% bytes'][0]:+.2f} ± {bench['+5% bytes'][1]:.2f} over {len(BENCHMARK['+5% bytes'])} draws.
- **Equal bytes:** {spread.loc['equal bytes', 'mean']:+.2f} ± {spread.loc['equal bytes', 'sd']:.2f} over {DRAWS} draws{' (FAST settings: a small sample, section 3)' if FAST else ''}
  (draw 0: {closed[plan.name]:+.2f}; random {closed[rand.name]:+.2f}, rule {closed[rule.name]:+.2f}); benchmark
  {bench['equal bytes'][0]:+.2f} ± {bench['equal bytes'][1]:.2f}: {conclusion}.
- Perplexity on {PPL_TOKENS} evaluation tokens: bf16 {ppl_bf16:.2f}; uniform nf4+dq/64 {measured[uniform.name]:.2f}
  at {uniform.bits_per_weight:.4f} bits/weight; plan {measured[plan5.name]:.2f} at {plan5.bits_per_weight:.4f}
  (+5% bytes) and {measured[plan.name]:.2f} at {plan.bits_per_weight:.4f} (equal bytes).
"""))
