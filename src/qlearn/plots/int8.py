"""Pictures of LLM.int8 on real activations: the decomposition step by step, and the threshold sweep.

The numbers come from `qlearn.int8matmul` (an `Int8Product`) and from the lesson's measured tables;
these functions only draw them (matplotlib's object API, no pyplot).
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ._base import COLORS, to_numpy

__all__ = ["decomposition_figure", "threshold_sweep_figure"]


def decomposition_figure(x, product, reference, plain, threshold: float, title: str = "") -> Figure:
    """Four panels: (1) max |x| per input column with the threshold; (2) |x| (tokens x columns) with
    the outlier columns marked; (3) the int8 codes that are multiplied (outlier columns zeroed);
    (4) per token, the output error of plain int8 and of int8 + 16-bit columns against float.

    x: float (tokens, in); product: the `Int8Product` at `threshold`; reference: float (tokens, out)
    x @ w.T; plain: the `Int8Product` at threshold 0.
    """
    a = np.abs(to_numpy(x))                       # (tokens, in)
    cols = to_numpy(product.outlier_cols).astype(int)
    fig = Figure(figsize=(9.6, 6.4), dpi=90, layout="constrained")
    ax = fig.subplots(2, 2).ravel()
    col_max = a.max(axis=0)
    ax[0].plot(col_max, lw=0.7, color=COLORS["orig"])
    ax[0].scatter(cols, col_max[cols], color=COLORS["level"], s=14, zorder=3, label=f"{len(cols)} outlier column(s)")
    ax[0].axhline(threshold, color=COLORS["level"], ls="--", lw=0.8, label=f"threshold {threshold:g}")
    ax[0].set(yscale="log", xlabel="input column (feature)", ylabel="max |x| over tokens",
              title="1. Find columns with any |x| >= threshold")
    ax[0].set_ylim(top=max(col_max.max(), threshold) * 30)       # room for the legend above the largest column
    ax[0].legend(loc="upper center", ncols=2, fontsize=8, frameon=False)
    im = ax[1].imshow(np.maximum(a, 1e-3), aspect="auto", norm=LogNorm(vmin=1e-2, vmax=max(a.max(), 1e-1)),
                      cmap="magma", interpolation="nearest")
    for c in cols:
        ax[1].axvline(c, color="cyan", lw=0.6, alpha=0.8)
    ax[1].plot(cols, np.full(len(cols), -0.5), "v", color="cyan", markeredgecolor="black", markeredgewidth=0.4,
               ms=6, clip_on=False, zorder=4)                   # a marker above each outlier column
    ax[1].set(xlabel="input column", ylabel="token", title="2. |x| on this prompt (cyan ▼: outlier columns)")
    fig.colorbar(im, ax=ax[1], shrink=0.85)
    codes = to_numpy(product.x_codes)
    im2 = ax[2].imshow(codes, aspect="auto", cmap="RdBu_r", vmin=-127, vmax=127, interpolation="nearest")
    ax[2].set(xlabel="input column", ylabel="token",
              title="3. int8 codes, each row scaled by its own absmax\n(outlier columns zeroed: they go 16-bit)")
    fig.colorbar(im2, ax=ax[2], shrink=0.85)
    for prod, label, color in ((plain, "plain int8 (threshold 0)", COLORS["muted"]),
                               (product, f"int8 + 16-bit columns (threshold {threshold:g})", COLORS["nf4"])):
        err = to_numpy(prod.rms_error_per_token(reference))
        ax[3].plot(err, marker=".", lw=0.8, color=color, label=label)
    ax[3].set(yscale="log", xlabel="token", ylabel="RMS error of the layer output",
              title="4. Output error per token against the float product")
    ax[3].legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def threshold_sweep_figure(sweep, reference_ppl: float, reference_label: str = "bf16") -> Figure:
    """Perplexity (left) and % of input columns kept in 16-bit (right) against the outlier threshold.

    sweep: a DataFrame indexed by threshold (floats; 0 = no decomposition, inf = no column ever
    qualifies) with columns "perplexity" and "16-bit columns (%)". Finite thresholds > 0 are drawn
    on a log axis; 0 and inf as separate markers at the ends.
    """
    fig = Figure(figsize=(9.6, 3.6), dpi=90, layout="constrained")
    ax = fig.subplots(1, 2)
    ts = [float(t) for t in sweep.index]
    finite = [t for t in ts if 0 < t < math.inf]
    lo, hi = (min(finite) / 2, max(finite) * 2) if finite else (0.5, 20)
    xpos = {t: (lo if t == 0 else hi if t == math.inf else t) for t in ts}
    ticks = sorted(xpos.values())
    labels = [("0 (off)" if t == 0 else "inf" if t == math.inf else f"{t:g}") for t in sorted(ts, key=xpos.get)]
    for axis, column, color in ((ax[0], "perplexity", COLORS["orig"]), (ax[1], "16-bit columns (%)", COLORS["level"])):
        ys = [sweep.loc[t, column] for t in sorted(ts, key=xpos.get)]
        axis.plot(ticks, ys, marker="o", color=color)
        for x, y in zip(ticks, ys, strict=True):
            axis.annotate(f"{y:.4g}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        axis.set(xscale="log", xlabel="outlier threshold (llm_int8_threshold)", ylabel=column)
        axis.set_xticks(ticks, labels)
        axis.minorticks_off()
        axis.margins(x=0.08)                                      # end labels inside the axes
        low, high = min(ys), max(ys)
        axis.set_ylim(low - 0.08 * (high - low + 1e-9), high + 0.18 * (high - low + 1e-9))
    ax[0].axhline(reference_ppl, color=COLORS["muted"], ls="--", lw=0.9, label=f"{reference_label} {reference_ppl:.3g}")
    bottom, top = ax[0].get_ylim()
    ax[0].set_ylim(min(bottom, reference_ppl - 0.05 * (top - bottom)), top)
    ax[0].legend(loc="upper center")
    ax[0].set_title("Whole-model perplexity (Linear8bitLt)")
    ax[1].set_title("% of input columns kept in 16-bit")
    return fig
