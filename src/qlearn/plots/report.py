"""The figures of the `qlearn tour` report: memory per mode, perplexity per mode, the answers.

Each takes the DataFrame `ql.compare` returns (one row per mode) and returns a Figure of its own
(matplotlib's object API, never pyplot); `qlearn.cli.write_report` saves them as PNG.
"""

from __future__ import annotations

import textwrap

from matplotlib.figure import Figure

__all__ = ["memory_figure", "perplexity_figure", "answers_figure"]

MB = 1e6
_COLORS = {"weights": "#4C72B0", "state": "#DD8452", "other": "#8C8C8C"}


def memory_figure(df) -> Figure:
    """Stacked bars per mode (MB): linear weights, quant state (absmax/SCB), layers kept in 16-bit.

    df: one row per mode (index), with linear_weight_bytes, quant_state_bytes, other_bytes,
    reported_bytes and true_bytes (as `ql.compare` returns it)."""
    fig = Figure(figsize=(7, 4), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    x = range(len(df))
    weights, state, other = df.linear_weight_bytes / MB, df.quant_state_bytes / MB, df.other_bytes / MB
    ax.bar(x, other, color=_COLORS["other"], label="embeddings, norms (16-bit, never quantized)")
    ax.bar(x, weights, bottom=other, color=_COLORS["weights"], label="linear weights (as stored)")
    ax.bar(x, state, bottom=other + weights, color=_COLORS["state"],
           label="quant state: absmax / SCB (not in get_memory_footprint)")
    for i, (rep, true) in enumerate(zip(df.reported_bytes / MB, df.true_bytes / MB, strict=True)):
        ax.text(i, true + 3, f"{true:.1f}", ha="center", va="bottom", fontsize=8)
        ax.hlines(rep, i - 0.4, i + 0.4, colors="black", linewidth=0.8)
    ax.set_xticks(list(x), list(df.index))
    ax.set_ylabel("MB (10^6 bytes)")
    ax.set_title("Memory per mode (black line: model.get_memory_footprint())")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_ylim(0, (df.true_bytes / MB).max() * 1.25)
    return fig


def perplexity_figure(df, n_tokens: int | None = None, window: int | None = None) -> Figure:
    """Bars of perplexity per mode (df.perplexity), with the first mode as the reference line."""
    fig = Figure(figsize=(7, 3.6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ppl = df.perplexity
    if ppl.isna().all():
        ax.text(0.5, 0.5, "perplexity not measured (--ppl-tokens 0)", ha="center", transform=ax.transAxes)
        return fig
    ax.bar(range(len(df)), ppl, color="#55A868")
    ax.axhline(ppl.iloc[0], color="black", linewidth=0.8, linestyle="--", label=f"{df.index[0]} reference")
    for i, v in enumerate(ppl):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(df)), list(df.index))
    ax.set_ylabel("perplexity (lower is better)")
    where = f" ({n_tokens} tokens of pydoc_data.topics, windows of {window})" if n_tokens else ""
    ax.set_title("Perplexity per mode" + where, fontsize=9)
    ax.set_ylim(0, ppl.max() * 1.2)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def answers_figure(df, prompt: str, width: int = 70) -> Figure:
    """The answers (df.answer) side by side: one row per mode, the text wrapped; answers that do
    not say "Paris" in red."""
    wrapped = [textwrap.fill(str(a), width) or "(empty)" for a in df.answer]
    lines = [w.count("\n") + 1 for w in wrapped]
    line, gap, top = 0.17, 0.14, 0.45                                # inches
    height = top + line * sum(lines) + gap * len(df) + 0.1
    fig = Figure(figsize=(8, height), dpi=110)
    fig.text(0.01, 1 - 0.12 / height, f"Q: {prompt}  (greedy)", va="top", fontsize=10, weight="bold")
    y = 1 - top / height
    for mode, text, n in zip(df.index, wrapped, lines, strict=True):
        fig.text(0.01, y, mode, va="top", fontsize=9, weight="bold", family="monospace")
        fig.text(0.13, y, text, va="top", fontsize=9, family="monospace", linespacing=1.25,
                 color="black" if "Paris" in text else "#C44E52")
        y -= (line * n + gap) / height
    return fig
