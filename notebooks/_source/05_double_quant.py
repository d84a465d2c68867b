# %% [markdown]
# # 05 · Double quantization: quantizing the scales
#
# **Goals.** After this notebook you can
# 1. list exactly what a 4-bit weight stores with and without double quantization (codes, `absmax`, offset, nested scales);
# 2. compute the bits per parameter both ways and the saving at 7B and 70B;
# 3. measure it on a real model, before and after its first forward pass, and compare it with what
#    `get_memory_footprint()` reports;
# 4. open the box: the real module, parameter and quant-state classes, and qlearn's bytes equal to the model's;
# 5. see where qlearn's exact rule and bitsandbytes' CPU kernel disagree on a few scale codes;
# 6. write the double quantization of the absmax (the offset, then 8 bits) yourself and check its bytes.

# %%
import gc

import pandas as pd
import torch
from IPython.display import Markdown, display

import qlearn as ql
from qlearn.quiz import check_prediction

pd.options.display.float_format = "{:,.6g}".format

# %% [markdown]
# ## 1. What is stored
#
# NF4 with blocks of 64 keeps one float32 `absmax` per block: 32 bits per 64 weights = 0.5 bit per weight
# on top of the 4-bit codes. **Double quantization** (QLoRA; `bnb_4bit_use_double_quant=True`) subtracts the
# mean of all `absmax` values (`offset`, one float32), quantizes the rest to **8 bits** with blocks of 256,
# and keeps one float32 scale per 256 blocks (`nested_absmax`).
#
# *Which 8 bits?* The QLoRA paper (Dettmers et al. 2023, arXiv:2305.14314, section 3, "Double Quantization") says
# the second quantization uses 8-bit **floats** with blocks of 256. bitsandbytes 0.50 uses its 8-bit **dynamic map**
# (`create_dynamic_map` in `bitsandbytes/functional.py`; `ql.codebooks.dynamic_map()`): 256 values with a sign, a
# power of ten set by the run of leading zero bits and a linear fraction in the remaining bits, dense near 0, which
# is neither fp8 E4M3 nor E5M2 (docs/formats.md). The library is what your model holds, and its bytes show it:
# section 4 rebuilds a real layer's nested codes with the dynamic map and gets them bit for bit.
#
# **Predict (1).** With blocks of 64, how many bits per weight does NF4 + double quant store, everything
# included (codes, 8-bit absmax, the float32 scales of the nested blocks)? Write a number.

# %%
PREDICT_DQ_BITS = None   # e.g. 4.5

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

# %%
check_prediction(PREDICT_DQ_BITS, dq.bits_per_param, abs_tol=0.01, explain=(
    f"4 bits of code + 8/64 for the 8-bit absmax + 32/(64·256) for one float32 per 256 blocks = "
    f"{dq.bits_per_param:.6g}, against {plain.bits_per_param:g} without (4 + 32/64). The offset is one float32 "
    "per tensor: too small to show."))

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

# %% [markdown]
# **Predict (2).** Will `model.get_memory_footprint()` be `"smaller"`, `"same"` or `"larger"` with double quant
# than without?

# %%
PREDICT_FOOTPRINT = None   # "smaller", "same" or "larger"

# %%
LAYER = "model.layers.0.mlp.down_proj"
box = {}   # mode -> what LAYER holds as loaded (copied out before the forward pass)


def open_the_box(model):
    layer = model.get_submodule(LAYER)
    w, qs = layer.weight, layer.weight.quant_state
    fields = {k: (f"{v.dtype} {tuple(v.shape)}" if isinstance(v, torch.Tensor) else
                  f"{type(v).__name__} (absmax {v.absmax.dtype} {tuple(v.absmax.shape)}, blocksize {v.blocksize})"
                  if type(v).__name__ == "QuantState" else repr(v))
              for k, v in vars(qs).items()}
    return {"module": f"{type(layer).__module__}.{type(layer).__name__}",
            "weight": f"{type(w).__module__}.{type(w).__name__} {w.dtype} {tuple(w.shape)}",
            "quant_state": f"{type(qs).__module__}.{type(qs).__name__}", "fields": fields,
            "record": ql.Quantized4bit.from_bitsandbytes(w.data.clone(), qs)}   # the model's own bytes


def before_and_after_one_forward(mode, model, tok):
    box[mode] = open_the_box(model)
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
    rows[mode] = ql.models.measure_mode(MODEL_ID, mode, lambda m, t, mode=mode: before_and_after_one_forward(mode, m, t))
real = pd.DataFrame(rows).T.drop(columns=["mode", "load_s"])
real

# %%
same = real.loc["nf4", "get_memory_footprint (MB)"] == real.loc["nf4+dq", "get_memory_footprint (MB)"]
check_prediction(PREDICT_FOOTPRINT, "same" if same else "smaller",
                 choices=("smaller", "same", "larger"), explain=(
    "get_memory_footprint() adds up parameters and buffers: the packed 4-bit codes and the 16-bit layers. The "
    "absmax (plain or double-quantized) lives in each weight's quant_state, an attribute it does not count: "
    f"{real.loc['nf4', 'scales it leaves out (MB)']:.2f} MB without double quant, "
    f"{real.loc['nf4+dq', 'scales it leaves out (MB)']:.2f} MB with it, as loaded."))

# %%
repacked = int(real.loc["nf4+dq", "layers repacked by the forward"])
if repacked:
    display(Markdown(
        f"On this CPU (AVX512-BF16: `{info.avx512bf16}`) the first forward **repacked {repacked} layers**: "
        "bitsandbytes undid double quantization and keeps each block's absmax as a bfloat16, so the scales "
        f"grew from {real.loc['nf4+dq', 'scales it leaves out (MB)']:.2f} to "
        f"{real.loc['nf4+dq', 'scales after one forward (MB)']:.2f} MB. On this machine double quantization saves "
        "memory only until the model first runs."))
else:
    why = (f"the model runs on a GPU ({info.cuda}), where bitsandbytes never repacks" if torch.cuda.is_available()
           else f"AVX512-BF16 is `{info.avx512bf16}`")
    display(Markdown(
        f"On this machine a forward pass leaves the 4-bit layers as they were loaded (no repack: {why}), "
        "so the scales stay at "
        f"{real.loc['nf4+dq', 'scales after one forward (MB)']:.2f} MB with double quant. On a CPU with "
        "AVX512-BF16, bitsandbytes repacks them on the first forward, undoes double quantization and keeps "
        "bfloat16 scales: measured on an AMD EPYC with AVX512-BF16, this model's scales went from 1,685,880 B to "
        "3,317,760 B (docs/formats.md, 'The CPU blocked layout'; the same code, another CPU)."))

# %%
display(Markdown(
    f"`get_memory_footprint()` is **{'the same' if same else 'different'}** with and without double quant "
    f"({real.loc['nf4', 'get_memory_footprint (MB)']:.2f} vs {real.loc['nf4+dq', 'get_memory_footprint (MB)']:.2f} MB): "
    "it counts parameters and buffers, and the scales are attributes of each weight's `quant_state`. As loaded, "
    f"double quant saves {real.loc['nf4', 'scales it leaves out (MB)'] - real.loc['nf4+dq', 'scales it leaves out (MB)']:.2f} MB "
    "of scales that this number does not see."))

# %% [markdown]
# ## 4. Open the box
#
# What `load_in_4bit` put in `model.layers.0.mlp.down_proj`, read before the first forward: the module and
# parameter classes, and every field of the weight's `quant_state`. Then the test of the whole notebook: quantize
# the same bf16 weight with qlearn and compare **bytes** with the model's.

# %%
original = ql.models.measure_mode(MODEL_ID, "bf16", lambda m, t: {
    "w": m.get_submodule(LAYER).weight.detach().clone()})["w"]              # bf16 (576, 1536), as stored
theirs = box["nf4+dq"]
print(f"module      {theirs['module']}\nweight      {theirs['weight']}\nquant_state {theirs['quant_state']}")
display(pd.Series(theirs["fields"], name="quant_state fields (nf4 + double quant)").to_frame())
rec = theirs["record"]   # knows which kernels made it: rec.rule is "bnb_cuda" on a GPU, "bnb_cpu" on a CPU
print(f"the layer was quantized on {rec.packed.device.type}: qlearn follows rule={rec.rule!r}, dq_rule={rec.dq_rule!r}")
mine = ql.quantize_4bit(original.to(rec.packed.device), "nf4", blocksize=64, double_quant=True,
                        rule=rec.rule, dq_rule=rec.dq_rule)
same_bytes = {"packed codes": torch.equal(mine.packed, rec.packed), "absmax (uint8)": torch.equal(mine.absmax, rec.absmax),
              "offset": torch.equal(mine.offset, rec.offset), "nested absmax": torch.equal(mine.nested_absmax, rec.nested_absmax),
              "dequantized values": torch.equal(mine.dequantize(), rec.dequantize())}
plain_rec = box["nf4"]["record"]
same_bytes["plain nf4: codes and float32 absmax"] = (
    torch.equal(ql.quantize_4bit(original, "nf4", 64, rule=plain_rec.rule).packed.to(plain_rec.packed.device),
                plain_rec.packed)
    and torch.equal(ql.quantize_4bit(original, "nf4", 64, rule=plain_rec.rule).absmax.to(plain_rec.absmax.device),
                    plain_rec.absmax))
assert all(same_bytes.values()), same_bytes
print(f"qlearn == the model, bit for bit: {same_bytes}")

# %% [markdown]
# So a `Linear4bit` holds a `Params4bit` of packed uint8 codes (two per byte) and a `QuantState` with the
# block absmax: symmetric absmax scaling per block of 64, no zero point, quantized once at load time (no
# training involved), exactly what qlearn computes from the bf16 weight.
#
# ## 5. Exact rule vs bitsandbytes' CPU and CUDA kernels
#
# The nested 8-bit step maps each (absmax − offset) to the nearest of 256 dynamic-map values. qlearn does
# this exactly by default; bitsandbytes' CPU kernel uses a 65,536-entry look-up table that picks a
# neighbouring code for a few values, and its CUDA kernel (`dQuantize` in csrc/kernels.cu) a binary search
# followed by a midpoint test. `dq_rule="bnb_cpu"` and `dq_rule="bnb_cuda"` reproduce each one's bytes
# (docs/formats.md says how each was checked), on any machine:

# %%
big = ql.sources.synthetic("normal", 4096 * 4096, seed=1)
exact = ql.quantize_4bit(big, "nf4", 64, double_quant=True, dq_rule="nearest")
bnb_like = ql.quantize_4bit(big, "nf4", 64, double_quant=True, dq_rule="bnb_cpu")
differ = (exact.absmax != bnb_like.absmax)
n_differ, n_blocks = int(differ.sum()), differ.numel()
max_step = int((exact.absmax.int() - bnb_like.absmax.int()).abs().max())
print(f"CPU table: {n_differ} of {n_blocks:,} absmax codes differ from the exact rule ({n_differ / n_blocks:.4%}), "
      f"by at most {max_step} code(s); 4-bit codes identical: {torch.equal(exact.packed, bnb_like.packed)}")
cuda_like = ql.quantize_4bit(big, "nf4", 64, double_quant=True, rule="bnb_cpu", dq_rule="bnb_cuda")
n_cuda = int((exact.absmax != cuda_like.absmax).sum())
print(f"CUDA search: {n_cuda} of {n_blocks:,} absmax codes differ from the exact rule "
      f"(its offset and 1/absmax differ slightly too: rule='bnb_cuda' reproduces all of it)")

# %% [markdown]
# ## 6. Build it yourself: double quantization
#
# Write the second quantization of section 1: take a tensor's float32 block absmax values, subtract their mean
# (the **offset**, one float32), and quantize what is left to 8 bits in blocks of 256 with
# `ql.quantize_blockwise_8bit` (the dynamic map). Return the 8-bit codes, the offset and the nested float32 absmax.
# The check runs it on the absmax of `model.layers.0.mlp.down_proj` (the bf16 weight of section 4) and on edge
# cases (three blocks, 300 blocks: a partial nested block, all blocks equal), compares with
# `ql.reference.double_quantize_absmax`, and then with what bitsandbytes stores for that layer.

# %%
def my_double_quant(absmax):
    """absmax: float32 tensor (blocks,). Return (codes uint8 (blocks,), offset float32 scalar tensor,
    nested_absmax float32 (ceil(blocks / 256),))."""
    raise NotImplementedError   # replace this line with your code


# %%
ql.exercises.check_double_quant(my_double_quant, real=original)

# %% [markdown]
# <details><summary>Hint</summary>
#
# `offset = absmax.mean()`. The values left, `absmax - offset`, have both signs, which the signed dynamic map holds.
# `ql.quantize_blockwise_8bit(values, blocksize=256)` returns a record with `.codes` (uint8) and `.absmax` (one
# float32 per 256 values). Forgetting to subtract the offset still gives codes, but the wrong ones.
# </details>
#
# <details><summary>Solution</summary>
#
# ```python
# def my_double_quant(absmax):
#     offset = absmax.mean()                                   # one float32 for the whole tensor
#     nested = ql.quantize_blockwise_8bit(absmax - offset, blocksize=256)
#     return nested.codes, offset, nested.absmax
# ```
# </details>

# %% [markdown]
# ## Try this
# - Set `PREDICT_DQ_BITS` and `PREDICT_FOOTPRINT`, rerun, and read the checks.
# - In the explorer, set **blocksize** to 32: how many bits per parameter do the scales cost without double quant?
# - `ql.memory.bits_per_param("nf4+dq", 64, dq_blocksize=64)`: what if the nested blocks were 64?
# - Is double quant worth it for the 135M model here? Compare the MB saved with its total size.

# %%
display(Markdown(f"""## Summary (measured in this run)
- Bits per weight at blocksize 64: **{plain.bits_per_param}** plain, **{dq.bits_per_param:.6g}** with double quant
  (saving **{saving_bits:.4f}** bit); SQNR {err_plain['sqnr_db']:.3f} → {err_dq['sqnr_db']:.3f} dB.
- Saved at Llama-2-7B: **{saving_gb['llama-2-7b']:.3f} GB**; at Llama-2-70B: **{saving_gb['llama-2-70b']:.2f} GB**.
- {MODEL_ID}: `get_memory_footprint()` {real.iloc[0, 0]:.1f} MB without, {real.iloc[1, 0]:.1f} MB with double quant; scales
  {real.iloc[0, 1]:.2f} MB → {real.iloc[1, 1]:.2f} MB with double quant
  ({real.iloc[0, 3]:.3f} → {real.iloc[1, 3]:.3f} bits per quantized weight); after one forward on this machine
  {real.iloc[1, 4]:.2f} MB ({repacked} layers repacked; CPU capability {info.cpu_capability}).
- Open the box: `{theirs['module']}` holding `{theirs['weight']}`; qlearn's bytes equal the model's for
  `{LAYER}` (codes, uint8 absmax, offset, nested absmax).
- Exact vs bitsandbytes-CPU rule: {n_differ} of {n_blocks:,} nested absmax codes differ (by ≤ {max_step}).
"""))
