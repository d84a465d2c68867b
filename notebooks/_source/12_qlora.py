# %% [markdown]
# # 12 · Fine-tune the 4-bit model: QLoRA, measured against LoRA, and three ways to ship it
#
# **Goals.** After this notebook you can
# 1. say what QLoRA trains (small low-rank adapters beside frozen NF4 + double-quant weights) and count it;
# 2. teach the 4-bit model a fixed answer format in minutes on a CPU, and see it: answers before and after,
#    a held-out loss that falls;
# 3. compare QLoRA with LoRA on the 16-bit weights at equal steps and data: held-out loss, speed, trainable
#    parameters, and one step's memory split into weights, adapters, gradients, optimizer state and activations,
#    each measured from its tensors, with and without gradient checkpointing;
# 4. say what peft's `prepare_model_for_kbit_training` changes and what it costs;
# 5. ship the result three ways (4-bit base + adapter, merged into bf16, merged then 4-bit again) and show on one
#    layer why the last one loses what the adapter learned.
#
# NF4, double quantization and bf16 compute were introduced together, by QLoRA (Dettmers et al. 2023,
# arXiv 2305.14314): the base model is frozen in 4 bits, and only adapters `B @ A` of rank r beside each linear
# layer are trained, in 16 or 32 bits. The training here is peft's and transformers' (`LoraConfig`,
# `prepare_model_for_kbit_training`, `merge_and_unload`); `qlearn.finetune` adds the task, the measurements and
# the pictures. The model is SmolLM2-135M-Instruct, whose weights were stored as GGUF Q4_1 (blocks of 32): the
# "16-bit" model below holds those values in bf16.

# %%
# peft (Hugging Face's LoRA library) is one of qlearn's dependencies. On Colab the install cell adds qlearn
# without its dependencies, so add peft here when it is missing or older than qlearn was tested with (it never
# upgrades torch or transformers: any version of them peft accepts is already there).
import importlib.metadata
import subprocess
import sys

try:
    PEFT = tuple(int(p) for p in importlib.metadata.version("peft").split(".")[:2])
except importlib.metadata.PackageNotFoundError:
    PEFT = None
if PEFT is None or PEFT < (0, 21):
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "peft>=0.21"])

# %%
import resource
import time

import pandas as pd
import torch
from IPython.display import Image, Markdown, display

import qlearn as ql
from qlearn import finetune as ft
from qlearn.plots import finetune as pf
from qlearn.quiz import check_prediction

pd.options.display.float_format = "{:,.4g}".format
info = ql.backend_info()
print(info)
GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
DTYPE = ft.train_dtype(DEVICE)         # bf16 where the hardware computes it; float32 on a CPU without bf16 units
STEPS = 3 if FAST else 24              # training steps (every run below: the same steps, batches and seed)
BATCH = 2 if FAST else 4               # orders a step
LR = 2e-3 if FAST else 1e-3            # AdamW's learning rate
EVAL_EVERY = 3 if FAST else 6          # held-out loss and answers every this many steps
N_HELD = 4 if FAST else 16             # held-out orders the loss is scored on
N_PROMPTS = 1 if FAST else 4           # held-out orders answered at each checkpoint
ANSWER_TOKENS = MAX_NEW_TOKENS if FAST else 32   # a whole answer is 26 tokens
# trained after the nf4+dq run, one model at a time; "lora@nf4+dq": LoRA on the values nf4+dq computes with
COMPARE = ("lora", "lora@nf4+dq") if FAST else ("lora", "lora@nf4+dq", "nf4", "fp4")
print(f"training computes in {DTYPE} on {DEVICE}; {STEPS} steps of {BATCH} orders, lr {LR}")


def mb(n):
    return f"{n / 1e6:,.1f} MB"


# %% [markdown]
# ## 1. The task: log an order in a fixed format
#
# A request, phrased one of several ways, and the one answer format the model should learn. The orders are drawn
# by code (names, items, cities, days), so there is no dataset to download and no licence to check. The held-out
# orders are other draws, and one of their phrasings ("Last Monday Alice went to ...") never appears in training.
# Loss is scored on the answer's tokens only (the prompt is given).

# %%
train, held = ft.task(256, N_HELD)
prompts, expected = [h.prompt for h in held[:N_PROMPTS]], [h.answer for h in held[:N_PROMPTS]]
pd.DataFrame([{"split": "training", "prompt": e.prompt, "answer": e.answer} for e in train[:3]]
             + [{"split": "held out", "prompt": e.prompt, "answer": e.answer} for e in held[:2]])

# %% [markdown]
# ## 2. What QLoRA trains
#
# The base is loaded in nf4 + double quantization; peft's `prepare_model_for_kbit_training` freezes it, and
# `get_peft_model` puts an adapter beside every linear layer: `A` (r x in) and `B` (out x r), with `B` starting
# at zero so the model starts unchanged. The layer then computes `W x + (alpha / r) B A x`.
#
# **Predict (1).** With r = 8 on all 7 linear layers of each of the 30 blocks (q, k, v, o, gate, up, down; hidden
# size 576, MLP 1536, keys and values 192 wide), how many parameters are trained? Write a number.

# %%
PREDICT_TRAINABLE = None   # e.g. 2e6

# %%
t0 = time.perf_counter()
model, tok = ft.load_for_training("nf4+dq", model_id=MODEL_ID)
loaded = ql.memory.footprint(model)
qlora, prep = ft.attach_lora(model, rank=8, targets="all-linear")
shapes = ft.adapter_shapes(qlora)
trainable = sum(p.numel() for p in qlora.parameters() if p.requires_grad)
per_kind = pd.DataFrame([{"layer": n.rsplit(".", 1)[1], "in": i, "out": o, "r x (in + out)": r * (i + o)}
                         for n, (r, i, o) in shapes.items() if ".layers.0." in n]).set_index("layer")
print(f"loaded and prepared in {time.perf_counter() - t0:.0f} s: {len(shapes)} LoRA layers, {trainable:,} trainable "
      f"parameters ({trainable / (loaded.quantized_params + loaded.unquantized_params):.2%} of the model's)")
per_kind

# %%
check_prediction(PREDICT_TRAINABLE, trainable, rel_tol=0.1, explain=(
    f"Each adapter holds r x (in + out) values; one block sums to {int(per_kind['r x (in + out)'].sum()):,}, and 30 "
    f"blocks to {trainable:,}. The base keeps its {loaded.quantized_params + loaded.unquantized_params:,} weights, "
    "frozen: only the adapters get gradients and optimizer state."))

# %% [markdown]
# What `prepare_model_for_kbit_training` changed, measured on the parameters before and after: it casts every
# parameter that is not 4-bit (the embedding, tied to the output layer, and the norms) from bf16 to float32, for
# numerical stability, and would also turn gradient checkpointing on (here it is asked not to: section 3 measures
# it on and off). That is the extra memory people see in QLoRA (peft issue #3265, bitsandbytes #1569).

# %%
cast_names = pd.Series(["embedding" if "embed" in n else "norm" for n, _ in prep.cast]).value_counts()
print(f"upcast to float32: {len(prep.cast)} parameters ({dict(cast_names)}), +{mb(prep.added_bytes)}; "
      f"the 4-bit base as loaded held {mb(loaded.true_bytes)} (codes and quantization state included)")

# %% [markdown]
# ## 3. Where one training step's memory goes
#
# One step, measured part by part (`ft.memory_split`): the frozen weights, the adapters, AdamW's state (two moments
# per value), the activations autograd keeps for the backward pass, and the adapters' gradients. A separate count
# of every tensor created during the step gives its peak; activations and gradients should explain most of it,
# and the rest (**other**) is the backward's short-lived tensors. **total** adds the weights, adapters and optimizer
# state that live through the whole run; **process_peak** is how far the process's own resident memory rose
# during the step (more: the C allocator keeps freed small blocks for reuse).
#
# **Predict (2).** Without gradient checkpointing, which part is the largest for this 135M model and a batch of a
# few short orders: weights, adapters, gradients, optimizer or activations?

# %%
PREDICT_LARGEST = None   # e.g. "weights"

# %%
mem = {gc: ft.memory_split(qlora, tok, train[:BATCH], gradient_checkpointing=gc) for gc in (False, True)}
parts = ("weights", "adapters", "gradients", "optimizer", "activations")
mem_table = pd.DataFrame({f"checkpointing {'on' if gc else 'off'}": {**{k: v / 1e6 for k, v in m.as_dict().items()
                                                                          if v is not None}, "seconds": m.seconds}
                          for gc, m in mem.items()})
largest = max(parts, key=lambda k: mem[False].as_dict()[k])
display(Image(ql.plots.to_png(pf.memory_bars(
    {f"QLoRA nf4+dq, checkpointing {'on' if gc else 'off'}": m.as_dict() for gc, m in mem.items()},
    title=f"One training step of {BATCH} orders (MB)")[0][0].figure)))
mem_table

# %%
act, act_gc = mem[False].activations, mem[True].activations
check_prediction(PREDICT_LARGEST, largest, choices=parts, explain=(
    f"Activations: {mb(act)} for {BATCH} orders, against {mb(mem[False].weights)} of 4-bit weights (plus their "
    f"float32 embedding). Every layer keeps its inputs for the backward pass, in {DTYPE}. Gradient checkpointing "
    f"keeps only each block's input and recomputes the rest during backward: {mb(act_gc)} "
    f"({act_gc / act:.0%}), for {mem[True].seconds / mem[False].seconds:.1f}x the time of the step. Activations and "
    f"gradients leave {mb(mem[False].other)} of the step's measured peak ({mb(mem[False].peak)}): the backward's "
    "short-lived tensors. For a 7B model the weights dominate again (3.9 GB in nf4 + dq), while activations grow "
    "with batch x sequence length."))

# %% [markdown]
# ## 4. Train, and watch the answers change
#
# AdamW on the adapters only, the same seeded batches for every run in this notebook; the held-out loss and the
# answers to held-out orders are recorded at every checkpoint.

# %%
run = ft.train(qlora, tok, train, held, steps=STEPS, batch_size=BATCH, lr=LR, eval_every=EVAL_EVERY,
               prompts=prompts, max_new_tokens=ANSWER_TOKENS)
print(f"held-out loss {run.heldout[0]:.3f} -> {run.heldout[-1]:.4f} nats per answer token in {STEPS} steps; "
      f"{run.s_per_step:.1f} s a step, {run.tokens_per_s:.0f} tokens/s")
display(Image(ql.plots.to_png(pf.loss_curves({"QLoRA nf4+dq": run})[0].figure)))
pd.DataFrame({"held-out order": prompts, "right answer": expected, "before": run.answers[0],
              f"after {STEPS} steps": run.answers[-1]})

# %% [markdown]
# ## 5. Three ways to ship it
#
# (a) keep the 4-bit base and the adapter apart (peft loads both): the update is applied exactly, on top of the
# 4-bit layer's output; (b) merge into a dequantized copy: `W = dequantize(W4) + (alpha / r) B A`, stored in bf16,
# four times the bytes; (c) merge, then quantize again to nf4 + dq, what `merge_and_unload` does to a 4-bit model
# (peft warns: "may get different generations due to rounding errors"; peft #1080, #2105, #2321).
#
# **Predict (3).** Re-quantize one merged layer (block 3's `mlp.down_proj`) to nf4 + dq. What share of its 4-bit
# codes change? Write a fraction (0 to 1).

# %%
PREDICT_CODES_CHANGED = None   # e.g. 0.3

# %%
name = "model.layers.3.mlp.down_proj"
rnd = ft.rounding(dict(qlora.named_modules())[f"base_model.model.{name}"], name)
display(Image(ql.plots.to_png(pf.rounding_figure(
    rnd.step_ratio, rnd.delta, rnd.applied,
    f"{name}: {rnd.below_half_step:.1%} of the updates are under half a step; {rnd.codes_changed:.2%} of the codes "
    f"change; {rnd.kept:.1%} of the update survives"))))

# %%
check_prediction(PREDICT_CODES_CHANGED, rnd.codes_changed, abs_tol=0.05, explain=(
    f"{rnd.codes_changed:.2%} changed. A code moves only when its weight's update passes half the gap to the "
    f"next NF4 level at that weight (level gap x the block's absmax); here {rnd.below_half_step:.1%} of the "
    f"updates were smaller than that, so re-quantizing rounded them back where they were. Along the update's "
    f"own direction {rnd.kept:.1%} of it survives; the rest of what route (c) applies is rounding "
    f"(||applied - update|| / ||update|| = {rnd.error:.2f})."))

# %%
routes, merged16 = ft.ship(qlora, tok, held, prompts=prompts, max_new_tokens=ANSWER_TOKENS)
route_table = pd.DataFrame([{"route": s.route, "MB": s.stored_bytes / 1e6, "held-out loss": s.loss,
                             "perplexity": s.perplexity, "exact answers": sum(a == e for a, e in zip(s.answers, expected)),
                             "first answer": s.answers[0]} for s in routes]).set_index("route")
del merged16, qlora, model
ql.models.release_memory()
route_table

# %% [markdown]
# ## 6. LoRA on the 16-bit weights against QLoRA, at equal steps and data
#
# Each mode is loaded on its own (one model in memory at a time) and trained exactly as above: the same adapter
# initialisation, batches and steps. LoRA needs no preparation: its base is frozen by peft and stays as loaded
# (bf16; float32 on a CPU without bf16 arithmetic, the same values). nf4 and fp4 (full settings) are QLoRA
# without double quantization and with the other 4-bit code book.
#
# One more run is a control: **LoRA on nf4+dq values** is LoRA on plain `nn.Linear` layers whose weights hold
# exactly the numbers the nf4 + dq layers compute with (quantized by bitsandbytes, dequantized as its 4-bit matmul
# does; `ft.load_rounded`). If QLoRA's training itself cost anything, this run would do better than QLoRA; if the
# two match, whatever separates QLoRA from LoRA is the 4-bit base, not the 4-bit training. (Its embedding and norms
# are float32 and each layer computes in the training dtype, as QLoRA's are after `prepare_model_for_kbit_training`.)
#
# Why QLoRA can need more memory than LoRA: `prepare_model_for_kbit_training` makes the embedding float32, so
# every block's input (the residual stream) is float32 too. Where training computes in bf16 (a GPU, an
# AVX512-BF16 CPU), QLoRA's activations are then larger than LoRA's bf16 ones; where it computes in float32 (a
# CPU without bf16 units) both are float32 and the activations match, and only the weights differ.
#
# **Predict (4).** QLoRA's held-out loss after training divided by LoRA's: write a number (1.0 = the same).

# %%
PREDICT_RATIO = None   # e.g. 1.1

# %%
runs, splits, rows = {"QLoRA nf4+dq": run}, {}, {}
rows["QLoRA nf4+dq"] = dict(weights_MB=mem[False].weights / 1e6, activations_MB=act / 1e6,
                            total_MB=mem[False].total / 1e6, total_checkpointed_MB=mem[True].total / 1e6)
splits.update({f"QLoRA nf4+dq{', ckpt' if gc else ''}": m.as_dict() for gc, m in mem.items()})
for mode in COMPARE:
    if mode.startswith("lora@"):   # plain layers holding the 4-bit values: QLoRA's numbers without 4-bit layers
        label = f"LoRA on {mode[5:]} values"
        m, t = ft.load_rounded(mode[5:], model_id=MODEL_ID)
    else:
        label = f"LoRA {ft.lora_mode(DEVICE)}" if mode == "lora" else f"QLoRA {mode}"
        m, t = ft.load_for_training(ft.lora_mode(DEVICE) if mode == "lora" else mode, model_id=MODEL_ID)
    pm, _ = ft.attach_lora(m, rank=8, targets="all-linear")
    ms = {gc: ft.memory_split(pm, t, train[:BATCH], gradient_checkpointing=gc) for gc in (False, True)}
    runs[label] = ft.train(pm, t, train, held, steps=STEPS, batch_size=BATCH, lr=LR, eval_every=EVAL_EVERY,
                           progress=False)
    rows[label] = dict(weights_MB=ms[False].weights / 1e6, activations_MB=ms[False].activations / 1e6,
                       total_MB=ms[False].total / 1e6, total_checkpointed_MB=ms[True].total / 1e6)
    splits.update({f"{label}{', ckpt' if gc else ''}": s.as_dict() for gc, s in ms.items()})
    del pm, m, t
    ql.models.release_memory()
compare = pd.DataFrame({k: {"held-out before": r.heldout[0], "held-out after": r.heldout[-1], "s a step": r.s_per_step,
                            "tokens/s": r.tokens_per_s, "trainable": r.trainable, **rows[k]}
                        for k, r in runs.items()}).T
lora_key = f"LoRA {ft.lora_mode(DEVICE)}"
ratio = run.heldout[-1] / runs[lora_key].heldout[-1]
display(Image(ql.plots.to_png(pf.loss_curves(runs)[0].figure)))
display(Image(ql.plots.to_png(pf.memory_bars(splits, title=f"One step of {BATCH} orders")[0][0].figure)))
compare

# %%
rounded = runs["LoRA on nf4+dq values"]
control = run.heldout[-1] / rounded.heldout[-1]
check_prediction(PREDICT_RATIO, ratio, rel_tol=0.1, explain=(
    f"{ratio:.3f}: QLoRA started higher ({run.heldout[0]:.3f} against {runs[lora_key].heldout[0]:.3f} nats: its base "
    f"is the 4-bit model) and ended at {run.heldout[-1]:.4f} against {runs[lora_key].heldout[-1]:.4f}. LoRA on the "
    f"same nf4+dq values started at {rounded.heldout[0]:.6f} (QLoRA: {run.heldout[0]:.6f}) and ended at "
    f"{rounded.heldout[-1]:.4f}: QLoRA / that control = {control:.4f}. So the gap here is what rounding to NF4 costs "
    f"this 135M model ({run.heldout[0] - runs[lora_key].heldout[0]:+.3f} nats before any training), not anything "
    "QLoRA's training loses. "
    "The paper reports NF4 QLoRA matching 16-bit LoRA on its benchmarks (Dettmers et al. 2023, Tables 3 and 4: "
    "RoBERTa-large, T5 80M to 11B, LLaMA 7B to 65B), measured by task scores after full fine-tuning runs; at "
    "losses this low a ratio is that of two small numbers, so compare the curves and the answers too."))

# %% [markdown]
# ## 7. Explore: rank, target modules, steps
#
# The explorer starts with this notebook's QLoRA run (r = 8 on all linear layers). Choose another rank or other
# target modules and it trains that setting on the same data and steps (it loads the nf4 + dq model again the
# first time: a full run takes minutes on a CPU), and keeps every run. **step** shows the answers recorded at
# that checkpoint.

# %%
def fresh_qlora():
    return ft.attach_lora(ft.load_for_training("nf4+dq", model_id=MODEL_ID)[0], rank=8)[0]


runner = ft.adapter_runner(fresh_qlora, tok, train, held, prompts, steps=STEPS, eval_every=EVAL_EVERY,
                           batch_size=BATCH, lr=LR, max_new_tokens=ANSWER_TOKENS)
explorer = ql.widgets.finetune_explorer(runner, runs={(8, "all-linear"): run}, prompts=prompts, expected=expected)
explorer

# %% [markdown]
# ## Try this
# - Set the four predictions and rerun, then read the checks.
# - In the explorer, choose rank 1, then 32: does the loss curve care? Then **LoRA on** `q,v` (the LoRA paper's
#   choice) against `all-linear` (QLoRA's): how many parameters, and how good are the answers?
# - `ft.attach_lora(model, gradient_checkpointing=True)` and time a step: what does the memory saving cost?
# - Train for more steps, then run `ft.rounding` again: do more codes move once the adapter has grown?

# %%
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
comparison_rows = "\n".join(f"  - {k}: held-out {r['held-out before']:.3f} → {r['held-out after']:.4f}, "
                            f"{r['s a step']:.1f} s a step, {r['tokens/s']:.0f} tokens/s, weights {r['weights_MB']:.0f} MB, "
                            f"activations {r['activations_MB']:.0f} MB, a step's memory {r['total_MB']:.0f} MB "
                            f"({r['total_checkpointed_MB']:.0f} MB checkpointed)" for k, r in compare.iterrows())
route_rows = "\n".join(f"  - {k}: {r['MB']:.1f} MB, held-out perplexity {r['perplexity']:.4f}, "
                       f"{int(r['exact answers'])}/{len(expected)} answers exactly right" for k, r in route_table.iterrows())
display(Markdown(f"""## Summary (measured in this run)
- QLoRA, r = 8 on every linear layer: **{trainable:,}** trainable parameters beside a frozen nf4 + dq base of
  {mb(loaded.true_bytes)}; `prepare_model_for_kbit_training` upcast {len(prep.cast)} parameters to float32
  (+{mb(prep.added_bytes)}).
- {STEPS} steps of {BATCH} orders ({DTYPE} compute on {DEVICE}): held-out loss {run.heldout[0]:.3f} → **{run.heldout[-1]:.4f}**
  nats per answer token; the first held-out order was answered `{run.answers[0][0]}` before and `{run.answers[-1][0]}` after.
- One step's memory (QLoRA, {BATCH} orders): activations {mb(act)} ({mb(act_gc)} with gradient checkpointing),
  weights {mb(mem[False].weights)}, adapters {mb(mem[False].adapters)}, gradients {mb(mem[False].gradients)}, AdamW
  {mb(mem[False].optimizer)}, short-lived {mb(mem[False].other)}: {mb(mem[False].total)} in all.
- At equal steps and data (QLoRA / LoRA held-out loss = **{ratio:.3f}**; QLoRA / LoRA on the same nf4+dq values
  = **{control:.4f}**):
{comparison_rows}
- Three ways to ship:
{route_rows}
- Re-quantizing `{name}` after the merge: {rnd.codes_changed:.2%} of its codes changed and {rnd.kept:.1%} of the update
  survived along its direction, because {rnd.below_half_step:.1%} of the updates were under half an NF4 step.
- Peak resident memory of this kernel so far: {peak_kb / 1e6:.2f} GB. {info.cpu_capability} CPU capability{
  f"; CUDA: {info.cuda}" if GPU else ""}.
"""))
