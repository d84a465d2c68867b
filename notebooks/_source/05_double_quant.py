# %% [markdown]
# # 05 · Double quantization: quantizing the scales
#
# **Goals.** After this notebook you can
# 1. list exactly what a 4-bit weight stores with and without double quantization (codes, `absmax`, offset, nested scales);
# 2. compute the bits per parameter both ways (4.5 and 4.127 at blocksize 64) and the saving at 7B and 70B;
# 3. measure it on a real model, and see why `get_memory_footprint()` does not show it;
# 4. see where qlearn's exact rule and bitsandbytes' CPU kernel disagree on a few scale codes.

# %%
import gc

import pandas as pd
import torch
from IPython.display import Markdown, display

import qlearn as ql

pd.options.display.float_format = "{:,.6g}".format

# %% [markdown]
# ## 1. What is stored
#
# NF4 with blocks of 64 keeps one float32 `absmax` per block: 32 bits per 64 weights = 0.5 bit per weight
# on top of the 4-bit codes. **Double quantization** (QLoRA; `bnb_4bit_use_double_quant=True`) subtracts the
# mean of all `absmax` values (`offset`, one float32), quantizes the rest to **8 bits** with blocks of 256
# (the 8-bit dynamic map), and keeps one float32 scale per 256 blocks (`nested_absmax`).

# %%
w = ql.sources.synthetic("normal", 576 * 1536, shape=(576, 1536), seed=0)
plain = ql.quantize_4bit(w, "nf4", blocksize=64)
dq = ql.quantize_4bit(w, "nf4", blocksize=64, double_quant=True)
stored = pd.DataFrame({
    "plain NF4": {"codes (packed)": f"{tuple(plain.packed.shape)} {plain.packed.dtype}",
                  "absmax": f"{tuple(plain.absmax.shape)} {plain.absmax.dtype}", "offset": "-", "nested_absmax": "-"},
    "NF4 + double quant": {"codes (packed)": f"{tuple(dq.packed.shape)} {dq.packed.dtype}",
                           "absmax": f"{tuple(dq.absmax.shape)} {dq.absmax.dtype}",
                           "offset": f"{dq.offset.item():.6f} (float32)",
                           "nested_absmax": f"{tuple(dq.nested_absmax.shape)} {dq.nested_absmax.dtype}"},
})
stored

# %%
nbytes = pd.DataFrame({"plain NF4": plain.nbytes_by_part, "NF4 + double quant": dq.nbytes_by_part}).fillna(0).astype(float)
nbytes.loc["bits per weight"] = [plain.bits_per_param, dq.bits_per_param]
err_plain, err_dq = ql.error_stats(w, plain.dequantize()), ql.error_stats(w, dq.dequantize())
nbytes.loc["SQNR dB"] = [err_plain["sqnr_db"], err_dq["sqnr_db"]]
nbytes

# %% [markdown]
# The formula: `4 + 32/64 = 4.5` bits without, `4 + 8/64 + 32/(64·256) = 4.127` with double quant,
# a saving of 0.373 bit per weight, for a tiny extra error (compare the SQNR rows).
#
# ## 2. What it saves at 7B and 70B

# %%
rows = []
for preset in ("llama-2-7b", "llama-2-70b"):
    for flag in (False, True):
        e = ql.memory.estimate(preset, "nf4+dq" if flag else "nf4")
        rows.append({"model": preset, "double quant": flag, "scales (GB)": e.quant_state_bytes / 1e9,
                     "total (GB)": e.true_bytes / 1e9})
saving = pd.DataFrame(rows).set_index(["model", "double quant"])
saving_gb = {p: saving.loc[(p, False), "scales (GB)"] - saving.loc[(p, True), "scales (GB)"]
             for p in ("llama-2-7b", "llama-2-70b")}
saving_bits = ql.memory.bits_per_param("nf4", 64) - ql.memory.bits_per_param("nf4+dq", 64)
print(f"saving: {saving_bits:.4f} bit/param -> 7B {saving_gb['llama-2-7b']:.3f} GB, 70B {saving_gb['llama-2-70b']:.2f} GB")
saving

# %% [markdown]
# Move **blocksize** and **model size**: smaller blocks make the scales cost more, and double quant
# matters more. (QLoRA quotes ~3 GB saved at 65B. The explorer counts every parameter of a model size as
# quantized; the table above leaves the 16-bit embeddings out, hence its slightly smaller saving.)

# %%
dqx = ql.widgets.double_quant_explorer(blocksize=64, model_size=70e9)
dqx

# %% [markdown]
# ## 3. On a real model
#
# Load NF4 without, then with double quant (one at a time), and measure what `get_memory_footprint()`
# reports and what `ql.memory.footprint` finds beside it: once as loaded, and again after **one forward
# pass**, because on some CPUs bitsandbytes rewrites the 4-bit layers the first time they run. Which path
# this machine takes:

# %%
info = ql.backend_info()
print(info)

# %%
def before_and_after_one_forward(model, tok):
    loaded = ql.memory.footprint(model)
    ql.generate(model, tok, "Hi", max_new_tokens=1)              # one forward pass
    after = ql.memory.footprint(model)
    return {"get_memory_footprint (MB)": loaded.reported_bytes / 1e6,
            "scales it leaves out (MB)": loaded.quant_state_bytes / 1e6,
            "true total (MB)": loaded.true_bytes / 1e6,
            "bits per quantized weight": loaded.bits_per_quantized_weight,
            "scales after one forward (MB)": after.quant_state_bytes / 1e6,
            "layers repacked by the forward": after.cpu_blocked_layers}


rows = {}
for mode in ("nf4", "nf4+dq"):                                    # load, measure, free: one model at a time
    rows[mode] = ql.models.measure_mode(MODEL_ID, mode, before_and_after_one_forward)
real = pd.DataFrame(rows).T.drop(columns=["mode", "load_s"])
real

# %%
repacked = int(real.loc["nf4+dq", "layers repacked by the forward"])
if repacked:
    display(Markdown(
        f"On this CPU (AVX512-BF16: `{info.avx512bf16}`) the first forward **repacked {repacked} layers**: "
        "bitsandbytes undid double quantization and keeps each block's absmax as a bfloat16, so the scales "
        f"grew from {real.loc['nf4+dq', 'scales it leaves out (MB)']:.2f} to "
        f"{real.loc['nf4+dq', 'scales after one forward (MB)']:.2f} MB. Double quantization saves memory on this "
        "machine only until the model runs; it still saves it on disk and on GPUs."))
else:
    display(Markdown(
        "On this machine a forward pass leaves the 4-bit layers as they were loaded (no repack: "
        f"AVX512-BF16 is `{info.avx512bf16}`), so the scales stay at "
        f"{real.loc['nf4+dq', 'scales after one forward (MB)']:.2f} MB with double quant. On a CPU with "
        "AVX512-BF16, bitsandbytes would repack them on the first forward, undo double quantization and keep "
        "bfloat16 scales (docs/formats.md)."))

# %% [markdown]
# `get_memory_footprint()` is **the same** with and without double quant: it counts parameters and
# buffers, and the scales are attributes of each weight's `quant_state`. The saving is real as loaded; that
# number just does not see it.
#
# ## 4. Exact rule vs bitsandbytes' CPU kernel
#
# The nested 8-bit step maps each (absmax − offset) to the nearest of 256 dynamic-map values. qlearn does
# this exactly by default; bitsandbytes' CPU kernel uses a 65,536-entry look-up table that picks a
# neighbouring code for a few values. `dq_rule="bnb_cpu"` reproduces bitsandbytes' bytes:

# %%
big = ql.sources.synthetic("normal", 4096 * 4096, seed=1)
exact = ql.quantize_4bit(big, "nf4", 64, double_quant=True, dq_rule="nearest")
bnb_like = ql.quantize_4bit(big, "nf4", 64, double_quant=True, dq_rule="bnb_cpu")
differ = (exact.absmax != bnb_like.absmax)
n_differ, n_blocks = int(differ.sum()), differ.numel()
max_step = int((exact.absmax.int() - bnb_like.absmax.int()).abs().max())
print(f"{n_differ} of {n_blocks:,} absmax codes differ ({n_differ / n_blocks:.4%}), by at most {max_step} code(s); "
      f"4-bit codes identical: {torch.equal(exact.packed, bnb_like.packed)}")

# %% [markdown]
# ## Try this
# - In the explorer, set **blocksize** to 32: how many bits per parameter do the scales cost without double quant?
# - `ql.memory.bits_per_param("nf4+dq", 64, dq_blocksize=64)`: what if the nested blocks were 64?
# - Is double quant worth it for the 135M model here? Compare the MB saved with its total size.

# %%
display(Markdown(f"""## Summary (measured in this run)
- Bits per weight at blocksize 64: **{plain.bits_per_param}** plain, **{dq.bits_per_param:.6g}** with double quant
  (saving **{saving_bits:.4f}** bit); SQNR {err_plain['sqnr_db']:.3f} → {err_dq['sqnr_db']:.3f} dB.
- Saved at Llama-2-7B: **{saving_gb['llama-2-7b']:.3f} GB**; at Llama-2-70B: **{saving_gb['llama-2-70b']:.2f} GB**.
- {MODEL_ID}: `get_memory_footprint()` {real.iloc[0, 0]:.1f} MB both ways; scales
  {real.iloc[0, 1]:.2f} MB → {real.iloc[1, 1]:.2f} MB with double quant
  ({real.iloc[0, 3]:.3f} → {real.iloc[1, 3]:.3f} bits per quantized weight); after one forward on this machine
  {real.iloc[1, 4]:.2f} MB ({repacked} layers repacked; CPU capability {info.cpu_capability}).
- Exact vs bitsandbytes-CPU rule: {n_differ} of {n_blocks:,} nested absmax codes differ (by ≤ {max_step}).
"""))
