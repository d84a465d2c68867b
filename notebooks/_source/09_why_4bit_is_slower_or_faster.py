# %% [markdown]
# # 09 · Why 4-bit is slower, or faster: where the time goes
#
# **Goals.** After this notebook you can
# 1. split the time of one forward pass into dequantize, matmul and everything else, per layer type, for
#    bf16, bitsandbytes 4-bit and a fused int4 kernel, on this machine;
# 2. measure this machine's memory bandwidth and turn bytes per token into a floor on time per token;
# 3. read a roofline: where a mode is memory-bound, where compute-bound, where it is pure overhead;
# 4. swap a fused int4 `Linear` (torch's own kernel, on a CPU or a CUDA GPU) into the model and put its speed
#    and perplexity beside bf16 and NF4;
# 5. answer the most-asked bitsandbytes question, "why is my 4-bit model slower than fp16?", with numbers.

# %%
import pandas as pd
import torch
from IPython.display import Image, Markdown, display

import qlearn as ql
from qlearn import kernels as qk
from qlearn.kernels.layerbench import build_paths, time_layer_paths
from qlearn.plots import _base as pbase
from qlearn.plots._base import to_png
from qlearn.plots.kernels import crossover, roofline, time_split_bars
from qlearn.quiz import check_prediction
from qlearn.widgets.kernels import speed_explorer

pd.options.display.float_format = "{:,.4g}".format
BATCHES = (1, 4) if FAST else (1, 4, 16, 64)     # sequences decoded at once (one new token each)
PROMPT_LEN = 8 if FAST else 64                  # the prompt of the time split
REPEATS = 1 if FAST else 5                      # timings per number (the fastest of REPEATS + 1 is kept)
PPL = 64 if FAST else min(PPL_TOKENS, 1024)     # tokens scored for perplexity
BLOCKSIZES = (64,) if FAST else (32, 64, 128)   # int4 blocksizes whose perplexity is measured
LAYER_BATCHES = (1,) if FAST else (1, 16)       # batch sizes of the per-layer comparison
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")   # where ql.load puts the model
GPU = DEVICE.type == "cuda"
INT4_PATH = qk.int4_path(DEVICE)                 # which fused int4 kernel this device gets
info = ql.backend_info()
print(info)
if GPU:
    print(f"The model runs on {DEVICE} ({info.cuda}); fused int4 here: {qk.describe_int4_path(INT4_PATH)}.")

# %% [markdown]
# ## 1. The question, as people ask it
#
# - bitsandbytes [#611](https://github.com/bitsandbytes-foundation/bitsandbytes/issues/611) "How to obtain the
#   4-bit inference speedup?": Mistral-7B in OpenNMT-py, NF4 **36.5** tokens/s against FP16 **48.6**.
# - [#712](https://github.com/bitsandbytes-foundation/bitsandbytes/issues/712) "low performance with
#   Llama-2-13b-hf": int4 below fp16 on an A100 and a 3090 (TGI 1.0.1, bitsandbytes 0.41.1); the reply:
#   GPUs have no NF4 arithmetic, the 4-bit values are decoded to 16-bit first.
# - [#518](https://github.com/bitsandbytes-foundation/bitsandbytes/issues/518): falcon-7b 4-bit **3.5×** slower
#   than 8-bit on an RTX 3060; the maintainer: fixed in 0.40.0 "where fast inference is available for batch
#   size 1", larger batches planned.
# - [#347](https://github.com/bitsandbytes-foundation/bitsandbytes/issues/347) "much slower infering llama-7b":
#   fp16 **32.89 ms** against LLM.int8() **154.55 ms** on an RTX 3090.
# - [#605](https://github.com/bitsandbytes-foundation/bitsandbytes/issues/605): its thread was not available when
#   this lesson was written, so it is neither quoted nor answered here.
#
# Section 9 answers each of them with what this run measures.
#
# Two different things happen under the name "4-bit": **dequantize-then-matmul** (decode every weight to
# 16-bit, write it, read it back in an ordinary matmul) and a **fused** kernel (read the 4-bit codes and their
# scales and multiply at once). Which one bitsandbytes 0.50 runs, read from its code: `Linear4bit.forward`
# (`bitsandbytes/nn/modules.py`) calls `matmul_4bit` (`bitsandbytes/autograd/_functions.py`), and every 4-bit
# forward, with or without gradients, is then one op, `bitsandbytes::gemm_4bit`, whose kernel depends on the device:
# - **CUDA** (`bitsandbytes/backends/cuda/ops.py`): the fused kernel for up to 4 input rows (tokens × sequences);
#   from 5 to 1536 rows the fused kernel or dequantize + `F.linear`, as a table per GPU generation and weight shape
#   picks (`_gemm_4bit_use_custom_cuda`); above 1536 rows, or when the input width is not a multiple of the
#   blocksize, dequantize + `F.linear`.
# - **A CPU with AVX512-BF16**, model in eval mode, input without gradients: the first forward repacks the weight
#   (lesson 05), and from then on `matmul_4bit` calls a fused CPU kernel, `gemv_4bit` (`backends/cpu/ops.py`), at any
#   number of rows.
# - **Any other CPU** (and an AVX512-BF16 CPU while training): the portable implementation,
#   `_gemm_4bit_default_impl` in `backends/default/ops.py`: dequantize the whole weight to the input's dtype, then
#   `F.linear`, at every batch size.
#
# (Gradients add a backward pass, which dequantizes.) This notebook times both kinds on this machine; the first cell
# printed which one bitsandbytes takes here (`Linear4bit forward on CPU`; on a CUDA GPU, the line after it).
#
# **Predict (1).** On this machine, at batch 1, how many times faster than bitsandbytes' dequantize-then-matmul
# is a fused int4 kernel, per linear layer of this model? (e.g. `0.5` = twice as slow, `3` = three times faster)

# %%
PREDICT_FUSED_SPEEDUP = None   # e.g. 2.0

# %% [markdown]
# ## 2. One layer, five ways
#
# The linear layers of every third block (10 blocks of 7 layers; 5 in FAST mode), multiplied one after the
# other so no layer's weights stay in the cache, one thread, batch 1 (and 16 on full settings):
# bf16 `F.linear`; qlearn's int4 decode then `F.linear`; bitsandbytes `dequantize_4bit` (nf4) then `F.linear`;
# torch's fused int4 kernel `aten._weight_int4pack_mm_for_cpu` (asymmetric, groups of 64: the same codes as
# qlearn's decode); torch's int8 weight-only kernel `aten._weight_int8pack_mm`. On a CUDA GPU the fused int4
# kernel is `aten._weight_int4pack_mm` (compute capability 8.0 or newer; below that bitsandbytes' NF4
# `matmul_4bit`), and a sixth way is timed: `bitsandbytes.matmul_4bit`, what bitsandbytes' own 4-bit layer runs
# there (the op `bitsandbytes::gemm_4bit`). On a GPU each timing waits for the GPU to finish.

# %%
model, tok = ql.load(MODEL_ID, mode="bf16")
blocks = range(0, 30, 6) if FAST else range(0, 30, 3)
names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
layer_weights = [model.get_submodule(f"model.layers.{b}.{'self_attn' if n[0] in 'qkvo' else 'mlp'}.{n}").weight.detach()
                 for b in blocks for n in names]
fns = build_paths(layer_weights)
in_features = [w.shape[1] for w in layer_weights]
layer_t = {b: time_layer_paths(fns, in_features, batch=b, rounds=REPEATS + 1, device=DEVICE) for b in LAYER_BATCHES}
del fns                            # the five copies of the layers: gone before the whole model is timed
ql.models.release_memory()
per_layer = pd.DataFrame({f"batch {b} (ms/layer)": {p: 1e3 * s for p, s in t.seconds.items()} for b, t in layer_t.items()})
per_layer["batch 1 vs bf16"] = per_layer["batch 1 (ms/layer)"]["bf16"] / per_layer["batch 1 (ms/layer)"]
per_layer

# %%
t1 = layer_t[1]
fused_vs_bnb, fused_vs_qlearn = t1.ratio("bnb-nf4", "int4"), t1.ratio("int4-dequant", "int4")
decoder = info.dequantize_4bit if not GPU else "a CUDA kernel here"
on_gpu = ("" if not GPU else
          f" On this GPU bitsandbytes' own 4-bit layer calls `bitsandbytes.matmul_4bit` (op bitsandbytes::gemm_4bit: "
          f"a fused kernel for up to 4 rows, no decode at batch 1): {1e3 * t1.seconds['bnb-gemm_4bit']:.3f} ms per "
          f"layer, {t1.ratio('bnb-gemm_4bit', 'int4'):.2f}x the fused int4 kernel's time "
          f"({1e3 * t1.seconds['int4']:.3f} ms, {INT4_PATH}).")
check_prediction(PREDICT_FUSED_SPEEDUP, fused_vs_bnb, rel_tol=0.3, explain=(
    f"bitsandbytes' decode alone writes a 16-bit copy of the layer ({decoder}); the fused kernel never "
    f"does. Fused int4 was {fused_vs_bnb:.1f}x faster than bitsandbytes nf4 dequantize + F.linear and "
    f"{fused_vs_qlearn:.1f}x faster than qlearn's plain decode + F.linear on the very same codes; against bf16 "
    f"F.linear it was {t1.ratio('bf16', 'int4'):.2f}x." + on_gpu))

# %% [markdown]
# ## 3. Memory bandwidth: the floor under every token
#
# At batch 1, each generated token reads every weight once and does 2 flops per weight: little arithmetic
# per byte. So the time per token cannot be shorter than **bytes read / bytes per second**. A copy from one
# 64 MiB buffer into another measures the bytes per second, in the memory the model sits in (on a GPU, the GPU's
# own memory: a device-to-device copy). That is main-memory bandwidth only where the two buffers (128 MiB) do not
# fit in a cache: more than most caches hold, not more than all (AMD's 3D V-Cache CPUs have 96 MB of L3 per die,
# AMD's Ryzen 7 7800X3D spec page), so the cell prints this machine's largest cache beside it. For compute, the ceiling is the fastest flop rate any kernel
# reached on this machine: the layer timings above (at each batch size timed) and a large square matmul in
# bf16 and in float32. A floor built on the fastest rate is a true floor: no mode can beat it.

# %%
def largest_cache_bytes(device):
    """A CUDA GPU's L2, or the CPU's highest cache level as Linux reports it for cpu0; None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    from pathlib import Path
    sizes = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, size = int((index / "level").read_text()), (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        sizes[level] = int(size.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1], 1)
    return sizes[max(sizes)] if sizes else None


bw = qk.copy_bandwidth(repeats=3 if FAST else 5, device=DEVICE)
cache = largest_cache_bytes(DEVICE)
print("largest cache here: " + ("unknown (no Linux sysfs)" if cache is None else
      f"{cache / 2**20:.0f} MiB, {'less' if cache < 2 * 64 * 2**20 else 'MORE'} than the 128 MiB the copy moves"
      + ("" if cache < 2 * 64 * 2**20 else ": the bandwidth below is partly the cache's, an upper bound")))
mean_params = sum(w.numel() for w in layer_weights) / len(layer_weights)
flops = {p: max(2 * mean_params * b / t.seconds[p] for b, t in layer_t.items()) for p in ("bf16", "int4")}
N_MM = 4096 if GPU else 768      # a square matmul big enough to keep this device busy
flops["bf16 matmul"] = qk.matmul_flops(N_MM, dtype=torch.bfloat16, repeats=2, device=DEVICE)
flops["fp32 matmul"] = qk.matmul_flops(N_MM, repeats=2, device=DEVICE)
peak = max(flops.values())       # the compute ceiling of the roofline: the fastest rate measured here
print(f"copy bandwidth {bw / 1e9:.2f} GB/s; flop/s reached: bf16 F.linear {flops['bf16'] / 1e9:.2f} G, fused int4 "
      f"{flops['int4'] / 1e9:.2f} G (layers above, best batch size); {N_MM}x{N_MM} matmul bf16 "
      f"{flops['bf16 matmul'] / 1e9:.2f} G, float32 {flops['fp32 matmul'] / 1e9:.2f} G. Ceiling: {peak / 1e9:.2f} G")
del layer_weights
ql.models.release_memory()

# %% [markdown]
# **Predict (2).** The bf16 model holds about 270 MB. Using the bandwidth just printed, what is the
# shortest possible time for one generated token in bf16, in ms? And will the measured time be close to it?

# %%
PREDICT_BF16_FLOOR_MS = None   # e.g. 50

# %% [markdown]
# ## 4. Where the time goes, mode by mode
#
# `qk.time_split` reads a clock before and after every linear layer's `forward`, replays the decode each layer
# runs on its own stored state (bitsandbytes `dequantize_4bit`; the float copy LLM.int8 multiplies on CPUs
# without AVX-512; qlearn's int4 decode) to split the layer into dequantize and matmul, and counts the rest of
# the forward as "other". On a CUDA GPU it first measures which layers decoded at all (a layer whose forward
# allocated a 16-bit copy of its weight) and replays only those, and every clock read waits for the GPU.
# It alternates plain and clocked forwards: `gap` is how far the sum of the parts is from a forward without
# clocks (what the measuring costs, plus the machine's noise). One model at a time: bf16, then the same model
# swapped to int4 (on full settings first qlearn's dequantize-then-matmul, then the fused kernel on the very
# same codes), then bitsandbytes modes.

# %%
splits, points, tps, rows = {}, [], [], []
linear_params = sum(m.weight.numel() for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and qk.layer_type(n))


def measure(label, model):
    """Time split at batch 1 (one token) and for the prompt, forward time per batch size, and the floors."""
    split1 = qk.time_split(model, 1, 1, repeats=REPEATS, label=label)
    splits[(label, 1)] = split1
    prompt = qk.time_split(model, 1, PROMPT_LEN, repeats=REPEATS, label=label)
    fp = ql.memory.footprint(model)
    read = fp.true_bytes
    embedding = model.get_input_embeddings().weight
    if getattr(model.get_output_embeddings(), "weight", None) is not embedding:   # untied: one row read per token
        read -= embedding.numel() * embedding.element_size()
    fl = qk.floors(read, split1.decoded_bytes, linear_params, bw, peak)
    for b in BATCHES:
        t = split1.forward_s if b == 1 else qk.time_forward(model, b, 1, repeats=REPEATS)
        if b != 1 and b == BATCHES[-1] and not FAST:     # the explorer's second batch size (full settings)
            splits[(label, b)] = qk.time_split(model, b, 1, repeats=1, label=label)
        points.append(dict(label=label, batch=b, measured_s=t, memory_s=fl.memory_s(), compute_s=fl.compute_s(b)))
    rows.append({"mode": label, "MB read per token": read / 1e6, "MB decoded per token": split1.decoded_bytes / 1e6,
                 "floor (ms)": 1e3 * fl.memory_s(), "1 token (ms)": 1e3 * split1.forward_s,
                 "x floor": split1.forward_s / fl.memory_s(), "dequantize %": 100 * split1.totals()["dequantize"] / split1.parts_s,
                 f"{PROMPT_LEN}-token prompt (ms/token)": 1e3 * prompt.forward_s / prompt.tokens,
                 "split gap 1 token %": 100 * split1.gap, "split gap prompt %": 100 * prompt.gap})
    splits[(label, f"prompt {PROMPT_LEN}")] = prompt


measure("bf16", model)
ppl = {"bf16": float(ql.perplexity(model, tok, max_tokens=PPL))}
if not FAST:   # qlearn's plain decode is slower than bitsandbytes' C++ one: full settings only
    qk.swap_linears(model, "int4-dequant", blocksize=64)
    # the bf16 linears are gone, but the embedding still points into the checkpoint's memory map and keeps
    # all of its pages resident: copy what is left out of it, so the map (and those pages) can go
    qk.release_checkpoint(model)
    measure("int4 dequant+matmul", model)
qk.swap_linears(model, "int4", blocksize=64)       # (after the swap above: the same codes, fused)
qk.release_checkpoint(model)
ql.models.release_memory()
measure("int4 fused", model)
ppl["int4 g64"] = float(ql.perplexity(model, tok, max_tokens=PPL))
qk.swap_linears(model, "int4", blocksize=64, lm_head=True)   # now the tied output layer too (a 4-bit copy)
measure("int4 fused +lm_head", model)
ppl["int4 g64 +lm_head"] = float(ql.perplexity(model, tok, max_tokens=PPL))
del model
ql.models.release_memory()

# %%
for mode in (("nf4",) if FAST else ("nf4", "nf4+dq", "fp4", "int8")):
    model, tok = ql.load(MODEL_ID, mode=mode)
    measure(mode, model)
    if mode == "nf4":
        ppl["nf4"] = float(ql.perplexity(model, tok, max_tokens=PPL))
    del model
    ql.models.release_memory()
table = pd.DataFrame(rows).set_index("mode")
if GPU:   # what ran: layers that wrote a decoded weight (measured by the split on this GPU)
    for label in table.index:
        one, prompt = splits[(label, 1)], splits[(label, f"prompt {PROMPT_LEN}")]
        print(f"{label}: {len(one.decoded_layers)} layers decoded to 16-bit for one token, "
              f"{len(prompt.decoded_layers)} for the {PROMPT_LEN}-token prompt")
table

# %% [markdown]
# The output layer (`lm_head`, 49152 × 576) is tied to the token embedding, so `swap_linears` leaves it in
# bf16 by default: quantizing it adds a 4-bit copy beside the bf16 table the embedding still needs. The
# mode "int4 fused +lm_head" swaps it too: watch the lm_head bar in the split below.

# %%
fig, axes = pbase.new_figure(1, figsize=(9.6, 3.8))
fig.subplots_adjust(left=0.24, bottom=0.3)
time_split_bars([splits[(r, 1)] for r in table.index], ax=axes[0])
display(Image(to_png(fig)))

# %%
bf16_row = table.loc["bf16"]
check_prediction(PREDICT_BF16_FLOOR_MS, float(bf16_row["floor (ms)"]), rel_tol=0.3, explain=(
    f"{bf16_row['MB read per token']:.0f} MB / {bw / 1e9:.2f} GB/s = {bf16_row['floor (ms)']:.1f} ms. The measured bf16 "
    f"token took {bf16_row['1 token (ms)']:.1f} ms, {bf16_row['x floor']:.1f}x the floor: "
    + ("close to the floor, so bandwidth-bound." if bf16_row["x floor"] < 2 else
       f"far above the floor, so on this machine bf16 at batch 1 is not bandwidth-bound: the split above puts "
       f"{100 * splits[('bf16', 1)].totals()['matmul'] / splits[('bf16', 1)].parts_s:.0f}% of it in the matmuls and "
       f"{100 * splits[('bf16', 1)].totals()['other'] / splits[('bf16', 1)].parts_s:.0f}% in everything else.")))

# %% [markdown]
# ## 5. The roofline: measured time against the floor, per batch size
#
# Solid: measured time of one forward step (every sequence in the batch gets one token). Dashed: that mode's
# floor, the larger of bytes / bandwidth (flat: the weights are read once per step whatever the batch) and
# flops / flop/s (rising with the batch). A solid line on its dashed one is bound by that resource; far above
# it, the time goes to overhead (Python, small kernels, the decode). Right panel: tokens per second.

# %%
fig, axes = pbase.new_figure(2, figsize=(11, 4))
roofline(points, ax=axes[0])
crossover(points, ax=axes[1])
display(Image(to_png(fig)))

# %%
tput = pd.DataFrame(points).assign(tokens_per_s=lambda d: d.batch / d.measured_s).pivot(
    index="label", columns="batch", values="tokens_per_s")
tput.columns = [f"batch {b} (tok/s)" for b in tput.columns]
tput

# %% [markdown]
# ## 6. Quality: fused int4 beside NF4 — and why group 32 fits *this* model
#
# The embedded weights were stored as GGUF **Q4_1**: asymmetric 4-bit with groups of 32 (min and scale per
# group). Asymmetric int4 with groups of 32, aligned the same way, finds those very levels again, so its
# perplexity is unusually close to bf16: this model was already quantized, and this is how you can tell. It is
# not a property of LLMs: lesson 02's granularity table puts the same formats side by side on synthetic normal
# weights that were never quantized.

# %%
for g in BLOCKSIZES:
    if f"int4 g{g}" in ppl:
        continue
    model, tok = ql.load(MODEL_ID, mode="bf16")
    qk.swap_linears(model, "int4", blocksize=g)
    qk.release_checkpoint(model)
    ppl[f"int4 g{g}"] = float(ql.perplexity(model, tok, max_tokens=PPL))
    del model
    ql.models.release_memory()
quality = pd.Series(ppl, name=f"perplexity ({PPL} tokens)").to_frame()
quality

# %% [markdown]
# ## 7. Explore: mode × batch size
#
# Pick a mode and a batch size: left, where the time of one step goes (hatched = dequantize; black tick =
# the forward without clocks); right, the roofline with that mode drawn thick. (Batch sizes with a split:
# 1 and, on full settings, the largest measured.)

# %%
explorer_splits = {k: v for k, v in splits.items() if isinstance(k[1], int)}
w = speed_explorer(explorer_splits, points, mode="int4 fused", batch=1)
w

# %% [markdown]
# ## 8. On a GPU
#
# bitsandbytes' CUDA path has a fused kernel: since 0.40, `Linear4bit` at batch 1 in inference reads the packed
# codes and their absmax and never writes 16-bit weights (the batch-1 fix of #518). In bitsandbytes 0.50 every
# 4-bit forward without gradients is one op, `bitsandbytes::gemm_4bit` (`bitsandbytes/autograd/_functions.py`,
# `matmul_4bit`); on CUDA it runs the fused kernel for up to 4 input rows, and above that the fused kernel or
# dequantize + `F.linear`, as a table per GPU generation picks (`bitsandbytes/backends/cuda/ops.py`,
# `_gemm_4bit_use_custom_cuda`; always dequantize above 1536 rows). The same roofline applies: a GPU's memory
# bandwidth is far higher, and so is its compute. A small model's token on a GPU can still be far above its
# bandwidth floor: each of its ~200 small layers costs a kernel launch. When this notebook runs on a GPU, the
# cell below says what that GPU ran; `scripts/gpu_check.py` measures the per-layer paths on CUDA too.

# %%
if GPU:
    nf4_one, nf4_prompt = splits[("nf4", 1)], splits[("nf4", f"prompt {PROMPT_LEN}")]
    print(f"This run is on {info.cuda}. bitsandbytes nf4: {len(nf4_one.decoded_layers)} layers decoded to 16-bit "
          f"for one token and {len(nf4_prompt.decoded_layers)} for the {PROMPT_LEN}-token prompt (the rest ran "
          f"gemm_4bit's fused kernel); one nf4 token took {1e3 * nf4_one.forward_s:.2f} ms against bf16's "
          f"{1e3 * splits[('bf16', 1)].forward_s:.2f} ms, {table.loc['nf4', 'x floor']:.1f}x its bandwidth floor. "
          f"The fused int4 layers ran {qk.describe_int4_path(INT4_PATH)}.")

# %% [markdown]
# ## 9. The questions, answered with this run's numbers
#
# Each answer below is printed from what this notebook measured on this machine (a CPU unless the top of the
# notebook printed a GPU; not the GPUs of the issues): the same questions, asked of the modes timed above at
# batch 1, one token.

# %%
tok_s = tput["batch 1 (tok/s)"]
ms = table["1 token (ms)"]


def part_ms(label, part):
    """Milliseconds of that mode's clocked token spent in ``part`` (from its time split at batch 1)."""
    return 1e3 * splits[(label, 1)].totals()[part]


def share(label, part="dequantize"):
    """Percent of that mode's clocked token spent in ``part`` (from its time split)."""
    split = splits[(label, 1)]
    return 100 * split.totals()[part] / split.parts_s


nf4_decoded = share("nf4") > 0    # False where bitsandbytes ran its fused kernel: nothing to replay
linear4bit = info.linear4bit if not GPU else (
    "runs the op bitsandbytes::gemm_4bit, on CUDA a fused kernel for up to 4 input rows (above that the fused kernel "
    "or dequantize + F.linear, as bitsandbytes' table for this GPU picks)")
not_taken = ("a path this CPU's bitsandbytes does not take." if not GPU else
             f"a path bitsandbytes did not take here for one token (for the {PROMPT_LEN}-token prompt "
             f"{len(splits[('nf4', f'prompt {PROMPT_LEN}')].decoded_layers)} nf4 layers decoded first).")
int8_path = (f"this CPU multiplies the int8 codes without a float copy ({info.int8_matmul})" if not GPU else
             "bitsandbytes' CUDA int8 path quantizes each activation row to int8 and multiplies int8 by int8 "
             "(`int8_linear_matmul`; outlier columns in float16), with no float copy of the weights")
answers = [
    ("[#611](https://github.com/bitsandbytes-foundation/bitsandbytes/issues/611) \"How to obtain the 4-bit "
     "inference speedup?\" (NF4 36.5 vs FP16 48.6 tokens/s)",
     f"here at batch 1: bf16 {tok_s['bf16']:.1f} tokens/s, bitsandbytes nf4 {tok_s['nf4']:.1f}, fused int4 "
     f"{tok_s['int4 fused']:.1f}. "
     + (f"The nf4 token spent {share('nf4'):.0f}% of its time in the replayed `dequantize_4bit`, which wrote "
        f"{table.loc['nf4', 'MB decoded per token'] / 2:.0f} MB of bf16 weights per token for the matmuls to read back."
        if nf4_decoded else
        f"On this machine bitsandbytes' nf4 layer {linear4bit}: its time split has no dequantize part "
        f"(0 MB decoded per token), and nf4 is {'faster' if tok_s['nf4'] > tok_s['bf16'] else 'not faster'} than "
        f"bf16. The slowdown in the issue belongs to dequantize-then-matmul, {not_taken}")),
    ("[#712](https://github.com/bitsandbytes-foundation/bitsandbytes/issues/712) \"low performance with "
     "Llama-2-13b-hf\" (int4 below fp16)",
     (f"the nf4 layers here ({linear4bit}) took {part_ms('nf4', 'dequantize'):.1f} ms "
      f"decoding and {part_ms('nf4', 'matmul'):.1f} ms multiplying per token"
      if nf4_decoded else
      f"the nf4 layers here spent {part_ms('nf4', 'matmul'):.1f} ms per token in bitsandbytes' "
      f"fused kernel, against {part_ms('bf16', 'matmul'):.1f} ms for bf16's matmuls")
     + f"; per layer, the same int4 codes took {1e3 * t1.seconds['int4-dequant']:.3f} ms decoded then multiplied "
       f"(qlearn's plain decode) and {1e3 * t1.seconds['int4']:.3f} ms in the fused kernel ({fused_vs_qlearn:.1f}x), "
       f"against {1e3 * t1.seconds['bf16']:.3f} ms for the bf16 layer: decoded first, int4 is "
       f"{'slower' if t1.seconds['int4-dequant'] > t1.seconds['bf16'] else 'not slower'} than bf16; fused, "
       f"{'faster' if t1.seconds['int4'] < t1.seconds['bf16'] else 'not faster'}."),
]
if "int8" in ms:
    answers += [
        ("[#518](https://github.com/bitsandbytes-foundation/bitsandbytes/issues/518) \"3.5x slow 4bit inference "
         "... as compared to 8bit\"",
         f"here nf4 took {ms['nf4']:.1f} ms per token and int8 {ms['int8']:.1f} ms: nf4 is "
         + (f"{ms['nf4'] / ms['int8']:.1f}x slower than int8." if ms["nf4"] > ms["int8"] else
            f"{ms['int8'] / ms['nf4']:.1f}x faster than int8.")),
        ("[#347](https://github.com/bitsandbytes-foundation/bitsandbytes/issues/347) \"much slower infering "
         "llama-7b\" (fp16 32.89 ms vs LLM.int8() 154.55 ms, 4.7x)",
         f"here bf16 {ms['bf16']:.1f} ms per token, LLM.int8 {ms['int8']:.1f} ms ({ms['int8'] / ms['bf16']:.1f}x); "
         + (f"{share('int8'):.0f}% of the int8 token went to the replayed float copy of its int8 weights "
            f"({table.loc['int8', 'MB decoded per token']:.0f} MB per token)." if share("int8") > 0 else
            f"{int8_path}, so the split has no "
            f"dequantize part; the int8 layers' matmuls took {part_ms('int8', 'matmul'):.1f} ms "
            f"of the token against bf16's {part_ms('bf16', 'matmul'):.1f} ms.")),
    ]
else:
    answers.append(("[#518](https://github.com/bitsandbytes-foundation/bitsandbytes/issues/518) and "
                    "[#347](https://github.com/bitsandbytes-foundation/bitsandbytes/issues/347) (4-bit and "
                    "LLM.int8 against 8-bit and fp16)", "int8 is timed on full settings only (QLEARN_FAST unset)."))
display(Markdown("\n".join(f"- {q}: {a}" for q, a in answers)))

# %% [markdown]
# ## Try this
# - Set `BATCHES = (1, 2, 4, 8, 16, 32, 64)` and rerun section 4: where does the dequantize share stop mattering?
# - In section 2, time `build_paths(..., int4_blocksize=32)`: does the block size change the fused kernel's speed?
# - Swap `lm_head` too (`qk.swap_linears(model, "int4", lm_head=True)`): how many MB does that add (the
#   embedding stays bf16) and how much time per token does it save?

# %%
r = table
fused = r.loc["int4 fused"]
best_b = max(BATCHES)
fastest, slowest = r["1 token (ms)"].idxmin(), r["1 token (ms)"].idxmax()
if GPU:
    machine = (f"the model ran on CUDA ({info.cuda}); CPU capability {info.cpu_capability}; bitsandbytes "
               f"{info.bitsandbytes_version}: `Linear4bit` on CUDA {linear4bit}; fused int4: {INT4_PATH}.")
else:
    machine = (f"CPU capability {info.cpu_capability}, AVX512-BF16 {'yes' if info.avx512bf16 else 'no'}, "
               f"CUDA {info.cuda};\n  bitsandbytes {info.bitsandbytes_version}: `Linear4bit` on CPU {info.linear4bit}.")
display(Markdown(f"""## Summary (measured in this run)
- Machine: {machine}
- Copy bandwidth **{bw / 1e9:.2f} GB/s**; flop/s reached: bf16 F.linear {flops['bf16'] / 1e9:.2f} G,
  fused int4 {flops['int4'] / 1e9:.2f} G, 768x768 matmul bf16 {flops['bf16 matmul'] / 1e9:.2f} G and float32
  {flops['fp32 matmul'] / 1e9:.2f} G (the roofline's compute ceiling: {peak / 1e9:.2f} G).
- Per linear layer at batch 1 (one thread, layers cycled): bf16 {1e3 * t1.seconds['bf16']:.3f} ms, bitsandbytes nf4
  dequantize + matmul {1e3 * t1.seconds['bnb-nf4']:.3f} ms, qlearn int4 decode + matmul {1e3 * t1.seconds['int4-dequant']:.3f} ms,
  fused int4 **{1e3 * t1.seconds['int4']:.3f} ms** (**{fused_vs_bnb:.1f}x** faster than bitsandbytes' dequantize-then-matmul).
- One token (batch 1, whole model): bf16 {r.loc['bf16', '1 token (ms)']:.1f} ms ({r.loc['bf16', 'x floor']:.1f}x its bandwidth
  floor), nf4 {r.loc['nf4', '1 token (ms)']:.1f} ms ({r.loc['nf4', 'dequantize %']:.0f}% of it dequantize),
  fused int4 **{fused['1 token (ms)']:.1f} ms**
  ({fused['x floor']:.1f}x its floor of {fused['floor (ms)']:.1f} ms).
- lm_head (kept bf16, tied): {100 * splits[('int4 fused', 1)].parts[('lm_head', 'matmul')] / splits[('int4 fused', 1)].parts_s:.0f}%
  of the fused int4 token; swapping it too: **{r.loc['int4 fused +lm_head', '1 token (ms)']:.1f} ms** per token,
  perplexity {ppl['int4 g64 +lm_head']:.2f} (vs {ppl['int4 g64']:.2f}).
- Time splits add up to the forward without clocks within {table[['split gap 1 token %', 'split gap prompt %']].max().max():.0f}%
  (worst: {table[['split gap 1 token %', 'split gap prompt %']].max(axis=1).idxmax()}).
- Tokens/s at batch {best_b}: {', '.join(f"{k} {v:.0f}" for k, v in tput[f'batch {best_b} (tok/s)'].items())}.
- Perplexity ({PPL} tokens): {', '.join(f"{k} {v:.2f}" for k, v in ppl.items())}.
- Fastest mode for one token here: **{fastest}**; slowest: {slowest}. The very same int4 codes took
  {1e3 * t1.seconds['int4-dequant']:.3f} ms per layer decoded then multiplied and {1e3 * t1.seconds['int4']:.3f} ms in
  the fused kernel: on this machine, which 4-bit is slower depends on the kernel, not on the 4 bits.
- The bitsandbytes questions above, answered: {len([a for a in answers if 'full settings only' not in a[1]])} of them
  with this run's numbers (section 9).
"""))
