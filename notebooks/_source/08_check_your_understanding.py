# %% [markdown]
# # 08 · Check your understanding
#
# **Goals.** An assessment of notebooks 01–07: fifteen questions. Most are about what those lessons
# *measured*; this notebook measures each of them again here, on the embedded model or on the same tensors, so
# the expected answer is this run's number, never a value typed in. Others ask you to explain a mechanism or to
# carry what you learned to a new case.
#
# How it works: each question cell prints the question and the form of answer it takes (a number with its
# tolerance, a list, one of a few choices, True/False). Put your answer in the variable below it (it starts as
# `None`, unanswered), run the check cell, and read the verdict. Nothing prints an expected value before you
# answer; a wrong answer shows its explanation. The last cell gives your score.

# %%
import torch
from IPython.display import Markdown, display

import qlearn as ql
from qlearn.outliers import inputs_of
from qlearn.quiz import Question, Quiz

quiz = Quiz([])

# %% [markdown]
# The measurements behind the questions, made now (one model in memory: the bf16 embedded model; a layer's
# weights and the inputs it receives on a prompt are copied out, then the model is freed). Nothing is printed.

# %%
PROMPT = "The capital of France is Paris. Quantization stores each weight in fewer bits."
model, tok = ql.load(MODEL_ID, mode="bf16", verbose=False)
linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
linear_params = sum(m.weight.numel() for m in linear.values())
all_params = sum(p.numel() for p in model.parameters())
candidates = [f"model.layers.{i}.{k}" for i in range(0, 30, 3) for k in ("self_attn.q_proj", "mlp.down_proj")]
inputs = inputs_of(model, tok, candidates, PROMPT)        # {name: (tokens, in) float32}, one forward pass
OUTLIER_LAYER = max(inputs, key=lambda n: inputs[n].abs().max().item())
X = inputs[OUTLIER_LAYER]
W = model.get_submodule(OUTLIER_LAYER).weight.detach().float().clone()          # (out, in)
WEIGHT_LAYER = "model.layers.0.mlp.down_proj"
w_real = model.get_submodule(WEIGHT_LAYER).weight.detach().float().clone()      # (576, 1536)
del model, tok, linear, inputs
ql.models.release_memory()

# %% [markdown]
# ## Memory (notebooks 01 and 05)

# %%
ratio_int8 = (linear_params * 1 + (all_params - linear_params) * 2) / (all_params * 2)
quiz.add(Question(
    "Q1", "Lesson 01 measured model.get_memory_footprint() for the embedded model in bf16 and in int8. What is the "
    "ratio int8 / bf16 for the WHOLE model (the embedded model has "
    f"{all_params / 1e6:.1f} M parameters, {linear_params / 1e6:.1f} M of them in linear layers)?",
    ratio_int8, tol=0.03, topic="lesson 01 (measured)",
    explanation=f"Only the linear layers become int8 (1 byte instead of 2); the other {(all_params - linear_params) / 1e6:.1f} M "
                "parameters (token embedding tied with lm_head, norms) stay bf16, so the ratio is (L·1 + O·2) / (2·(L + O)) "
                f"= {ratio_int8:.3f}, well above 0.5."))
print(quiz.ask("Q1"))

# %%
q1 = None
print(quiz.check("Q1", q1))

# %%
bits_128 = ql.memory.bits_per_param("nf4", 128)
quiz.add(Question("Q2", "Bits per parameter of NF4 with blocksize 128 and NO double quant (4-bit codes plus one "
                        "float32 absmax per block)?", bits_128, tol=1e-3, topic="lessons 03 and 05",
                  explanation=f"4 + 32 / 128 = {bits_128}: the absmax is 32 bits shared by 128 weights."))
print(quiz.ask("Q2"))

# %%
q2 = None
print(quiz.check("Q2", q2))

# %%
bits_128_dq = ql.memory.bits_per_param("nf4+dq", 128)
quiz.add(Question("Q3", "Same, WITH double quant (each absmax stored in 8 bits, plus one float32 per 256 blocks)?",
                  bits_128_dq, tol=1e-3, topic="lesson 05",
                  explanation=f"4 + 8/128 + 32/(128·256) = {bits_128_dq:.6g}."))
print(quiz.ask("Q3"))

# %%
q3 = None
print(quiz.check("Q3", q3))

# %%
quiz.add(Question("Q4", "True or False: model.get_memory_footprint() reports fewer bytes for a model loaded in nf4+dq "
                        "than for the same model in nf4.", False, kind="bool", topic="lesson 05 (measured)",
                  explanation="It counts parameters and buffers only. The absmax, plain or double-quantized, is an "
                              "attribute of each weight's quant_state, so both report the same number; the saving is "
                              "real but invisible there (ql.memory.footprint shows it)."))
print(quiz.ask("Q4"))

# %%
q4 = None
print(quiz.check("Q4", q4))

# %%
e13 = ql.memory.estimate("llama-2-13b", "nf4+dq", context_length=4096)
gb13 = (e13.true_bytes + e13.kv_cache_bytes) / 1e9
quiz.add(Question("Q5", "Transfer: Llama-2-13B in nf4+dq at a 4,096-token context, batch 1, 16-bit KV cache. How many "
                        "GB do weights (with scales and 16-bit embeddings) plus the KV cache take? (ql.memory.estimate "
                        "is allowed; so is the arithmetic by hand: 40 layers, hidden size 5120.)",
                  gb13, rel_tol=0.10, topic="lessons 01 and 05, transfer",
                  explanation=f"Weights {e13.true_bytes / 1e9:.2f} GB + KV cache 2·40·5120·4096·2 B = "
                              f"{e13.kv_cache_bytes / 1e9:.2f} GB = {gb13:.2f} GB: "
                              f"{'it fits' if gb13 < 16 else 'it does not fit'} in 16 GB before activations and "
                              "the framework's own memory."))
print(quiz.ask("Q5"))

# %%
q5 = None
print(quiz.check("Q5", q5))

# %% [markdown]
# ## Integers and codes (notebooks 02 and 03)

# %%
row = torch.tensor([[0.5, -1.27]])
quiz.add(Question("Q6", "Absmax int8 of the row [0.5, -1.27], as in lesson 02 (scale = max|x| / 127, code = "
                        "round(x / scale)): which two codes?",
                  ql.int8_vectorwise(row).codes[0].tolist(), kind="numbers", topic="lesson 02",
                  explanation="scale = 1.27 / 127 = 0.01, so 0.5 / 0.01 = 50 and -1.27 / 0.01 = -127: the largest "
                              "magnitude always gets code ±127."))
print(quiz.ask("Q6"))

# %%
q6 = None
print(quiz.check("Q6", q6))

# %%
skewed = ql.sources.synthetic("skewed", 1 << 16, seed=0)
mse = {"absmax": ql.error_stats(skewed, ql.absmax_quantize(skewed, bits=8).dequantize())["mse"],
       "zero-point": ql.error_stats(skewed, ql.zeropoint_quantize(skewed, bits=8).dequantize())["mse"]}
quiz.add(Question("Q7", "Lesson 02 compared absmax and zero-point 8-bit quantization on one-sided (skewed, mostly "
                        "positive) values such as post-activation outputs. Which gives the lower error on them?",
                  min(mse, key=mse.get), kind="choice", choices=("absmax", "zero-point"), topic="lesson 02 (measured)",
                  explanation=f"Measured now on 65,536 skewed values: MSE absmax {mse['absmax']:.3g}, zero-point "
                              f"{mse['zero-point']:.3g}. Absmax spends half its 256 codes on negative values that "
                              "barely occur; zero-point maps [min, max] onto all of them."))
print(quiz.ask("Q7"))

# %%
q7 = None
print(quiz.check("Q7", q7))

# %%
pair = ql.quantize_4bit(ql.codebooks.NF4[[3, 12, 15]], "nf4", blocksize=64)   # exactly codes 3, 12, 15 (absmax 1)
assert pair.codes.tolist()[:2] == [3, 12]
quiz.add(Question("Q8", "Two 4-bit codes, 3 then 12, are packed into one byte the way bitsandbytes packs them. "
                        "What is the byte (an int 0..255)?", int(pair.packed[0]), topic="lesson 03",
                  explanation="The FIRST code goes in the HIGH nibble: (3 << 4) | 12 = 48 + 12 = 60."))
print(quiz.ask("Q8"))

# %%
q8 = None
print(quiz.check("Q8", q8))

# %%
sqnr = {"nf4": ql.error_stats(w_real, ql.quantize_4bit(w_real, "nf4", 64).dequantize())["sqnr_db"],
        "fp4": ql.error_stats(w_real, ql.quantize_4bit(w_real, "fp4", 64).dequantize())["sqnr_db"],
        "int4 absmax": ql.error_stats(w_real, ql.absmax_quantize(w_real, bits=4, blocksize=64).dequantize())["sqnr_db"]}
quiz.add(Question("Q9", f"Lessons 03 and 04 quantized the embedded model's weights in 4 bits, blocks of 64. On "
                        f"{WEIGHT_LAYER}, which format has the highest SQNR (least error)?",
                  max(sqnr, key=sqnr.get), kind="choice", choices=tuple(sqnr), topic="lessons 03-04 (measured)",
                  explanation="Measured now: " + ", ".join(f"{k} {v:.2f} dB" for k, v in sqnr.items()) + ". NF4's "
                              "levels are denser near zero where most weights are. (Remember this model's weights "
                              "came from a Q4_1 file: lesson 02.)"))
print(quiz.ask("Q9"))

# %%
q9 = None
print(quiz.check("Q9", q9))

# %% [markdown]
# ## LLM.int8 (notebook 06)

# %%
share = 100 * len(ql.int8_vectorwise(X, threshold=6.0).outlier_cols) / X.shape[1]
quiz.add(Question("Q10", f"Lesson 06 looked for outlier columns in layer inputs. On the prompt {PROMPT!r}, "
                         f"{OUTLIER_LAYER} receives a ({X.shape[0]} tokens × {X.shape[1]}) input. What percentage "
                         "of its columns hold a value with |x| >= 6 (so LLM.int8 multiplies them in 16-bit)?",
                  share, tol=max(0.5 * share, 0.2), topic="lesson 06 (measured)",
                  explanation=f"Measured now: {share:.2f} % ({len(ql.int8_vectorwise(X, threshold=6.0).outlier_cols)} "
                              f"columns; largest |x| {X.abs().max():.1f}). A few columns, but each one would set "
                              "the int8 scale of every token it appears in."))
print(quiz.ask("Q10"))

# %%
q10 = None
print(quiz.check("Q10", q10))

# %%
quiz.add(Question("Q11", "In bitsandbytes 0.50 (the version lesson 06 reproduced bit for bit), the outlier input "
                         "columns are multiplied in 16-bit with which weight columns?  (a) the original fp16 weights, "
                         "kept beside the int8 ones; (b) weights dequantized from the int8 codes, CB·SCB/127; "
                         "(c) the int8 codes themselves, without scaling.", "b", kind="choice", choices=("a", "b", "c"),
                  topic="lesson 06 (measured)",
                  explanation="bitsandbytes keeps only CB and SCB after loading, so its int8_mixed_scaled_mm "
                              "dequantizes those weight columns from CB. The LLM.int8() paper keeps them in fp16 (a); "
                              "lesson 06 shows only (b) reproduces the real Linear8bitLt output exactly."))
print(quiz.ask("Q11"))

# %%
q11 = None
print(quiz.check("Q11", q11))

# %%
quiz.add(Question("Q12", "What does llm_int8_threshold = 0 do?  (a) every input column goes 16-bit; (b) no column "
                         "goes 16-bit: plain vector-wise int8; (c) int8 is switched off and the layer runs in 16-bit.",
                  "b", kind="choice", choices=("a", "b", "c"), topic="lesson 06 (measured)",
                  explanation="bitsandbytes runs the decomposition only when threshold > 0; at 0 it multiplies all "
                              "columns in int8. Lesson 06's sweep counted 0 % of input columns in 16-bit at threshold "
                              "0, and its simulation with threshold 0 gave the same perplexity as bitsandbytes'."))
print(quiz.ask("Q12"))

# %%
q12 = None
print(quiz.check("Q12", q12))

# %%
plain8 = ql.error_stats(X @ W.T, ql.int8_vectorwise(X).dequantize() @ ql.int8_vectorwise(W).dequantize().T)["sqnr_db"]
plain8_tensor = ql.error_stats(X @ W.T, ql.absmax_quantize(X, bits=8).dequantize()
                               @ ql.absmax_quantize(W, bits=8).dequantize().T)["sqnr_db"]
quiz.add(Question("Q13", f"Transfer: on {OUTLIER_LAYER} and that prompt, quantize input and weight to int8 with ONE "
                         "absmax per whole tensor (tensor-wise) instead of one per row (vector-wise, as bitsandbytes). "
                         "Which has the higher output SQNR?", "vector-wise" if plain8 > plain8_tensor else "tensor-wise",
                  kind="choice", choices=("vector-wise", "tensor-wise"), topic="lesson 06, transfer",
                  explanation=f"Measured now: vector-wise {plain8:.1f} dB, tensor-wise {plain8_tensor:.1f} dB. With one "
                              "scale per tensor, the largest value anywhere sets the step for every token and "
                              "feature; per-row scales only suffer in the rows that hold it."))
print(quiz.ask("Q13"))

# %%
q13 = None
print(quiz.check("Q13", q13))

# %% [markdown]
# ## The library and its claims (notebooks 01, 05, 07)

# %%
info = ql.backend_info("cpu")   # the question is about this machine's CPU, even where a GPU is present
path = "fused" if info.linear4bit_repacks else "dequantize"
quiz.add(Question("Q14", "On THIS machine (lesson 07 timed it), what does a bitsandbytes Linear4bit do on a CPU "
                         "forward pass?  'dequantize': decode the whole weight to 16-bit every forward, then a normal "
                         "matmul; 'fused': a 4-bit kernel after a one-time repack of the weight. (ql.backend_info() "
                         "tells; so does knowing what decides it.)", path, kind="choice",
                  choices=("dequantize", "fused"), topic="lessons 05 and 07 (this machine)",
                  explanation=f"This CPU: AVX512-BF16 {'yes' if info.avx512bf16 else 'no'}, so: {info.linear4bit}. "
                              "bitsandbytes 0.50 repacks and uses the fused kernel only on CPUs with AVX512-BF16 (in "
                              "eval mode, without gradients); GPUs have their own fused 4-bit GEMV at batch 1."))
print(quiz.ask("Q14"))

# %%
q14 = None
print(quiz.check("Q14", q14))

# %%
quiz.add(Question("Q15", "True or False: bitsandbytes' 4-bit weights (nf4, fp4) use a zero point and come from "
                         "quantization-aware training, as some tutorials say.", False, kind="bool",
                  topic="lessons 02, 03 and 05 (opened the box)",
                  explanation="Lesson 05 quantized the model's bf16 weight with qlearn's symmetric blockwise absmax and "
                              "got the model's bytes exactly: no zero point, and quantized at load time, no training."))
print(quiz.ask("Q15"))

# %%
q15 = None
print(quiz.check("Q15", q15))

# %% [markdown]
# ## Try this
# - Answer the questions you skipped, rerun their check cells, then rerun the score cell.
# - Change `PROMPT` at the top and rerun everything: which expected answers move with it (Q10, Q13), and which
#   cannot (Q2, Q3, Q8)? Why?
# - For Q5, predict before you run: does Llama-2-70B in nf4+dq fit in 48 GB at 4,096 tokens?
#   `e = ql.memory.estimate("llama-2-70b", "nf4+dq", context_length=4096); (e.true_bytes + e.kv_cache_bytes) / 1e9`

# %%
right, answered, total = quiz.score()
display(Markdown("## Summary (measured in this run)\n" + quiz.summary() + (
    "\n\nEvery expected answer above was computed in this run (bf16 embedded model, the same prompt and layers as "
    "lessons 03 and 06, ql.memory for the sizes)." if answered else
    f"\n\nNo answers yet: fill in `q1` … `q{total}` and rerun their check cells, then this one.")))
