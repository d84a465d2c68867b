# %% [markdown]
# # 08 · Check your understanding
#
# **Goals.** Answer eight questions on what notebooks 01–07 measured. Each answer goes in a variable;
# the cell below it checks it against qlearn (which is checked bit for bit against bitsandbytes) and says
# ✓ or ✗ with a hint. Leave `...` to skip a question. The last cell gives your score.

# %%
import torch
from IPython.display import Markdown, display

import qlearn as ql

results = {}


def check(question, answer, expected, tol=0.0, hint=""):
    """Compare an answer with the expected value (numbers within tol, anything else by ==)."""
    if answer is ...:
        results[question] = None
        print(f"– {question}: not answered yet")
        return
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        ok = isinstance(answer, (int, float)) and abs(answer - expected) <= tol
    else:
        ok = answer == expected
    results[question] = ok
    print(f"✓ {question}: right" if ok else f"✗ {question}: not quite. {hint}")


check("example: 2 + 2", 4, 2 + 2)   # how a checked answer looks

# %% [markdown]
# **Q1.** By how much does an int8 *weight* shrink compared with fp16? Give the ratio int8 bytes / fp16 bytes.

# %%
q1 = ...
check("Q1 int8 / fp16", q1, 1 / 2, tol=1e-9, hint="One byte against two. The 1/4 is int8 against fp32.")

# %% [markdown]
# **Q2.** Absmax int8 of the row `[0.5, -1.27]`: which two codes? (A list of two ints.)

# %%
q2 = ...
check("Q2 absmax codes", q2, ql.int8_vectorwise(torch.tensor([[0.5, -1.27]])).codes[0].tolist(),
      hint="scale = 127 / max|x| = 127 / 1.27 = 100; round(0.5 * 100).")

# %% [markdown]
# **Q3.** Two 4-bit codes, 3 then 12, are packed into one byte the way bitsandbytes does. What is the byte (an int 0..255)?

# %%
q3 = ...
pair = ql.quantize_4bit(ql.codebooks.NF4[[3, 12, 15]], "nf4", blocksize=64)   # exactly codes 3, 12 and 15 (absmax 1)
assert pair.codes.tolist()[:2] == [3, 12]
check("Q3 packed byte", q3, int(pair.packed[0]), hint="The first element goes in the HIGH nibble: (3 << 4) | 12.")

# %% [markdown]
# **Q4.** Bits per parameter of NF4 with blocksize 128 and **no** double quant (codes plus one float32 absmax per block)?

# %%
q4 = ...
check("Q4 bits/param nf4/128", q4, ql.memory.bits_per_param("nf4", 128), tol=1e-6, hint="4 + 32 / blocksize.")

# %% [markdown]
# **Q5.** Same, with double quant (8-bit absmax, one float32 per 256 blocks)?

# %%
q5 = ...
check("Q5 bits/param nf4/128 + DQ", q5, ql.memory.bits_per_param("nf4+dq", 128), tol=1e-6,
      hint="4 + 8/128 + 32/(128 * 256).")

# %% [markdown]
# **Q6.** A value that, divided by its block's absmax, is 0.3. Which NF4 code index (0..15) does it get?
# (Look at the table in notebook 03, or `ql.codebooks.NF4`: the nearest value.)

# %%
q6 = ...
check("Q6 NF4 code of 0.3", q6, int(ql.quantize_4bit(torch.tensor([0.3, 1.0]), "nf4").codes[0]),
      hint="NF4 values near 0.3: 0.2461 (code 10) and 0.3379 (code 11). Which is nearer?")

# %% [markdown]
# **Q7.** True or False: bitsandbytes' 4-bit weights use a zero point (asymmetric quantization).

# %%
q7 = ...
check("Q7 zero point?", q7, False, hint="They are symmetric absmax per block (notebooks 02 and 03): no zero point.")

# %% [markdown]
# **Q8.** How many GB does Llama-2-7B take in NF4 with double quant, all included (codes, scales, 16-bit
# embeddings and norms)? Within 0.05 GB.

# %%
q8 = ...
check("Q8 Llama-2-7B nf4+DQ GB", q8, ql.memory.estimate("llama-2-7b", "nf4+dq").true_bytes / 1e9,
      tol=0.05, hint="6.48 B linear weights at 4.127 bits, plus 0.26 B parameters kept 16-bit (notebook 01).")

# %% [markdown]
# ## Try this
# Change an answer and rerun its cell; then rerun the score cell. For a harder one, predict before you run:
# `ql.memory.estimate(70e9, "int8").true_bytes / 1e9`.

# %%
answered = {k: v for k, v in results.items() if v is not None and not k.startswith("example")}
right = sum(answered.values())
display(Markdown(f"""## Summary (measured in this run)
- Answered **{len(answered)}** of 8 questions, **{right}** right.
- The expected values were computed in this run by qlearn: int8/fp16 = 0.5; codes {ql.int8_vectorwise(torch.tensor([[0.5, -1.27]])).codes[0].tolist()};
  packed byte {int(pair.packed[0])}; NF4/128 {ql.memory.bits_per_param('nf4', 128)} bits, with DQ {ql.memory.bits_per_param('nf4+dq', 128):.6g};
  Llama-2-7B nf4+DQ {ql.memory.estimate('llama-2-7b', 'nf4+dq').true_bytes / 1e9:.2f} GB.
""" if answered else "## Summary (measured in this run)\n- Answered **0** of 8 questions: fill in `q1` … `q8`, rerun them, then this cell."))
