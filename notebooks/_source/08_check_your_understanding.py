# %% [markdown]
# # 08 · Check your understanding
#
# **Goals.** An assessment of lessons 01–11: twenty questions on memory (01, 05), integers and codes (02–04),
# LLM.int8 (06), kernels and speed (07, 09), mixed precision (10) and the methods beyond round-to-nearest (11).
# Most ask what those lessons *measured*, and this notebook measures each of them again now, on the embedded model
# loaded four ways (bf16, int8, nf4, nf4+dq, one at a time); the rest are computed now with qlearn's own functions.
# No expected answer is typed into this notebook, and none is shown before you answer.
#
# How it works: a question cell prints the question and the form of answer it takes (a number with its tolerance,
# a list, one of a few choices, True/False). Put your answer in the variable of the next cell (it starts as
# `None`, unanswered) and run it: it says right or wrong, and then why, with this run's numbers. The last cell
# gives your score and every explanation of the questions you answered.

# %%
from IPython.display import Markdown, display

import qlearn as ql

# %% [markdown]
# The measurements behind the questions, made now (about a minute on a CPU). `quiz` holds the questions and their
# answers; nothing is printed but the count.

# %%
PROMPT = ql.assessment.PROMPT   # the text whose layer inputs Q11-Q14 and Q20 are about
run = ql.assessment.measure(MODEL_ID, prompt=PROMPT)
quiz = ql.assessment.build_quiz(run)
print(f"{len(quiz.questions)} questions ready.")

# %% [markdown]
# ## Memory (lessons 01, 03 and 05)

# %%
print(quiz.ask("Q1"))

# %%
q1 = None   # your answer
quiz.check("Q1", q1)

# %%
print(quiz.ask("Q2"))

# %%
q2 = None   # your answer
quiz.check("Q2", q2)

# %%
print(quiz.ask("Q3"))

# %%
q3 = None   # your answer
quiz.check("Q3", q3)

# %%
print(quiz.ask("Q4"))

# %%
q4 = None   # your answer
quiz.check("Q4", q4)

# %%
print(quiz.ask("Q5"))

# %%
q5 = None   # your answer
quiz.check("Q5", q5)

# %% [markdown]
# ## Integers and codes (lessons 02, 03 and 04)

# %%
print(quiz.ask("Q6"))

# %%
q6 = None   # your answer
quiz.check("Q6", q6)

# %%
print(quiz.ask("Q7"))

# %%
q7 = None   # your answer
quiz.check("Q7", q7)

# %%
print(quiz.ask("Q8"))

# %%
q8 = None   # your answer
quiz.check("Q8", q8)

# %%
print(quiz.ask("Q9"))

# %%
q9 = None   # your answer
quiz.check("Q9", q9)

# %%
print(quiz.ask("Q10"))

# %%
q10 = None   # your answer
quiz.check("Q10", q10)

# %% [markdown]
# ## LLM.int8 (lesson 06) and what bitsandbytes stores (lesson 05)

# %%
print(quiz.ask("Q11"))

# %%
q11 = None   # your answer
quiz.check("Q11", q11)

# %%
print(quiz.ask("Q12"))

# %%
q12 = None   # your answer
quiz.check("Q12", q12)

# %%
print(quiz.ask("Q13"))

# %%
q13 = None   # your answer
quiz.check("Q13", q13)

# %%
print(quiz.ask("Q14"))

# %%
q14 = None   # your answer
quiz.check("Q14", q14)

# %%
print(quiz.ask("Q15"))

# %%
q15 = None   # your answer
quiz.check("Q15", q15)

# %% [markdown]
# ## Kernels and speed (lessons 07 and 09)

# %%
print(quiz.ask("Q16"))

# %%
q16 = None   # your answer
quiz.check("Q16", q16)

# %%
print(quiz.ask("Q17"))

# %%
q17 = None   # your answer
quiz.check("Q17", q17)

# %% [markdown]
# ## Mixed precision (lesson 10)

# %%
print(quiz.ask("Q18"))

# %%
q18 = None   # your answer
quiz.check("Q18", q18)

# %% [markdown]
# ## GPTQ, AWQ, HQQ and GGUF (lesson 11)

# %%
print(quiz.ask("Q19"))

# %%
q19 = None   # your answer
quiz.check("Q19", q19)

# %%
print(quiz.ask("Q20"))

# %%
q20 = None   # your answer
quiz.check("Q20", q20)

# %% [markdown]
# ## Try this
# - Answer the questions you skipped, rerun their cells, then rerun the summary.
# - Change `PROMPT` at the top and rerun everything: which expected answers move with it (Q11, Q14, Q20), and which
#   cannot (Q2, Q3, Q9)? Why?
# - After Q5, predict before you run: does Llama-2-70B in nf4+dq fit in 48 GB at 4,096 tokens?
#   `e = ql.memory.estimate("llama-2-70b", "nf4+dq", context_length=4096); (e.true_bytes + e.kv_cache_bytes) / 1e9`

# %%
display(Markdown("## Summary (measured in this run)\n" + ql.assessment.report(quiz) + (
    "\n\nEvery expected answer above was measured in this run (the embedded model in bf16, int8, nf4 and nf4+dq, "
    "the same prompt and layers as lessons 03 and 06) or computed now with qlearn (ql.memory for the sizes, "
    "ql.methods for GPTQ / HQQ / GGUF).")))
