"""Pictures of real models: LLM.int8 outliers, a per-layer error map, a block zoom that shows a
model was already quantized, and the generation comparison (footprint, tokens/s).
The numbers come from the math layer (`qlearn.outliers`, `qlearn.metrics`, `qlearn.codeusage`,
`qlearn.levels`); these functions draw them.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..codeusage import distinct_per_block
from ..granularity import group
from ..levels import code_values
from ..outliers import column_absmax, share_above
from ._base import COLORS, axes_or_new, new_figure, stairs_data, to_numpy

__all__ = ["OutlierView", "layer_error_map", "model_error_map", "block_zoom", "GenerationView"]


class OutlierView:
    """(a) max |input| per hidden dimension of one layer on a prompt, the LLM.int8 threshold and
    the columns at or above it in red; (b) the share of columns above a threshold, for every
    threshold, with the current one marked. `share` holds the last share shown.

    >>> view = OutlierView().update(torch.tensor([[0.5, 8.0, -1.0]]), torch.tensor([1]), 6.0)
    >>> round(view.share, 3)
    0.333
    """

    def __init__(self, fig: Figure | None = None):
        if fig is None:
            fig, _ = new_figure(2, gridspec_kw={"width_ratios": [2.2, 1]})
        self.fig, self.axes = fig, np.array(fig.axes)
        a, b = self.axes
        # stems as two single-path lines (NaN-separated): one path transforms fast on a log axis
        (self.stems,) = a.plot([], [], color=COLORS["orig"], lw=0.8)
        (self.hot_stems,) = a.plot([], [], color=COLORS["level"], lw=0.9)
        self.line_a = a.axhline(6.0, color="black", ls="--", lw=1)
        a.set_yscale("log")
        a.set_xlabel("hidden dimension (input column)")
        a.set_ylabel("max |input| over tokens")
        (self.curve,) = b.plot([], [], color=COLORS["orig"], lw=1.4)
        (self.marker,) = b.plot([], [], "o", color=COLORS["level"], ms=6)
        b.set_xscale("log")
        b.set_xlabel("threshold")
        b.set_ylabel("% of columns above")
        self._cols, self.share = None, 0.0

    def update(self, inputs: torch.Tensor, outlier_cols: torch.Tensor, threshold: float,
               layer: str = "") -> OutlierView:
        """inputs: (tokens, features) what the layer received; outlier_cols: the columns
        `ql.int8_vectorwise(inputs, threshold)` kept in 16-bit."""
        a, b = self.axes
        if self._cols is None or inputs is not self._inputs:
            self._inputs = inputs
            col_absmax = column_absmax(inputs)                                     # (features,)
            self._cols = cols = to_numpy(col_absmax)
            n = len(cols)
            floor = min(max(cols.min() * 0.5, 1e-3), 0.1)
            top = max(cols.max() * 2, 120.0)           # the threshold slider's 0.1..100 always fits
            self._floor = floor
            a.set_xlim(-1, n)
            a.set_ylim(floor, top)
            t = np.geomspace(floor, top, 160)
            self.curve.set_data(t, 100 * to_numpy(share_above(col_absmax, t)))
            b.set_xlim(t[0], t[-1])
            b.set_ylim(-2, 102)
        cols, n = self._cols, len(self._cols)
        hot = np.zeros(n, dtype=bool)
        hot[outlier_cols.cpu().numpy()] = True
        self.stems.set_data(*_stem_path(np.flatnonzero(~hot), cols, self._floor))
        self.hot_stems.set_data(*_stem_path(np.flatnonzero(hot), cols, self._floor))
        self.line_a.set_ydata([threshold, threshold])
        self.share = float(hot.sum() / n)
        self.marker.set_data([threshold], [100 * self.share])
        a.set_title(f"{layer} input, {inputs.shape[0]} tokens: {hot.sum()} of {n} columns "
                    f"({self.share:.1%})\nat or above the threshold {threshold:g} stay 16-bit (red)")
        b.set_title(f"share above threshold\n(now {self.share:.1%})")
        return self


def _stem_path(idx: np.ndarray, values: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """x, y of vertical segments (i, floor) -> (i, values[i]) joined by NaN breaks."""
    x = np.repeat(idx, 3).astype(float)
    y = np.column_stack([np.full(len(idx), floor), values[idx], np.full(len(idx), np.nan)]).ravel()
    x[2::3] = np.nan
    return x, y


def layer_error_map(sqnr: dict[str, float], ax: Axes | None = None, title: str = "") -> dict:
    """Heat map of SQNR (dB) per linear layer: rows = transformer blocks, columns = the layer
    kinds (q/k/v/o/gate/up/down) when names look like ``...layers.<i>.<path>``; a bar chart
    otherwise. Returns {"image" or "bars": artist, "colorbar": ...}.

    >>> artists = layer_error_map({"model.layers.0.q": 20.0, "model.layers.1.q": 21.5})
    >>> artists["image"].get_array().shape
    (2, 1)
    """
    ax = axes_or_new(ax, figsize=(5.6, 6.0))
    parsed = [re.search(r"layers\.(\d+)\.(.+)$", name) for name in sqnr]
    if sqnr and all(parsed):
        kinds = list(dict.fromkeys(m.group(2) for m in parsed))
        blocks = sorted({int(m.group(1)) for m in parsed})
        grid = np.full((len(blocks), len(kinds)), np.nan)
        for m, value in zip(parsed, sqnr.values(), strict=True):
            grid[blocks.index(int(m.group(1))), kinds.index(m.group(2))] = value
        image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(len(kinds)), [k.split(".")[-1] for k in kinds], rotation=45, ha="right")
        step = max(1, len(blocks) // 10)
        ax.set_yticks(range(0, len(blocks), step), [str(b) for b in blocks[::step]])
        ax.set_ylabel("transformer block")
        colorbar = ax.figure.colorbar(image, ax=ax, label="SQNR (dB), higher = closer")
        worst = min(sqnr, key=sqnr.get)
        ax.set_title(title or f"SQNR per linear layer\nworst: {worst} ({sqnr[worst]:.1f} dB)")
        return {"image": image, "colorbar": colorbar}
    bars = ax.barh(range(len(sqnr)), list(sqnr.values()), color=COLORS["orig"])
    ax.set_yticks(range(len(sqnr)), list(sqnr))
    ax.set_xlabel("SQNR (dB)")
    ax.set_title(title or "SQNR per linear layer")
    return {"bars": bars, "colorbar": None}


def model_error_map(model, quantize=None, ax: Axes | None = None, skip: tuple[str, ...] = ("lm_head",),
                    include: str | None = None, title: str = "") -> dict:
    r"""Quantize every linear layer of `model` and draw `layer_error_map` of the SQNR (dB).

    quantize: a function weight -> quantization result (with .dequantize()); default NF4 in blocks
    of 64, ``lambda w: ql.quantize_4bit(w, "nf4", 64)``. Layers whose name contains a `skip`
    entry are left out (the tied lm_head is the embedding); `include` (a regex) keeps only the
    names it matches, e.g. ``r"layers\.[0-4]\."``. One layer at a time is in float32.
    Returns the artists plus "sqnr": {layer name: dB}. SmolLM2-135M (211 layers): ~10 s on a CPU.
    """
    from ..metrics import sqnr_per_layer
    from ..quantize import quantize_4bit
    from ..sources import linear_layers

    quantize = quantize or (lambda w: quantize_4bit(w, "nf4", blocksize=64))
    picked = ((name, w) for name, w in linear_layers(model)
              if not any(s in name for s in skip) and (include is None or re.search(include, name)))
    sqnr = sqnr_per_layer(picked, quantize)
    return {**layer_error_map(sqnr, ax=ax, title=title), "sqnr": sqnr}


def block_zoom(w: torch.Tensor, block: int = 0, blocksize: int = 32, result=None,
               axes: np.ndarray | None = None) -> dict:
    """Zoom into one block of `w` to tell whether it was already quantized.

    (a) the block's values against their index, with the 16 levels min + k * scale of a 4-bit
    zero-point fit of that block (`result`, e.g. ``ql.zeropoint_quantize(w, 4, blocksize=32,
    zero_point_domain="float")``; drawn when given); (b) distinct values per block over the tensor.
    Worked number: the embedded SmolLM2 (stored as Q4_1) has <= 16 distinct values in every block
    of 32, where fresh float weights have 32. Returns the artists.
    """
    if axes is None:
        _, axes = new_figure(2)
    a, b = axes
    n_blocks = w.numel() // blocksize
    if not 0 <= block < n_blocks:
        raise ValueError(f"block must be in 0..{n_blocks - 1} for {w.numel()} values in blocks of "
                         f"{blocksize}; got {block!r}")
    vals = to_numpy(group(w.detach(), None, blocksize)[block])                 # (blocksize,)
    points = a.scatter(np.arange(blocksize), vals, s=14, color=COLORS["orig"], zorder=3)
    lines = None
    if result is not None:                                                      # its 2**bits levels
        lines = a.hlines(to_numpy(code_values(result, block)), -0.5, blocksize - 0.5,
                         colors=COLORS["level"], lw=0.6)
    per_block = distinct_per_block(w, blocksize)                                # (blocks,) int64
    distinct = to_numpy(per_block)
    a.set_xlabel("index in block")
    a.set_ylabel("weight value")
    a.set_title(f"block {block}: {blocksize} values, {int(distinct[block])} distinct\n"
                "red: 16 levels min + k * scale")
    counts, edges = stairs_data(per_block, blocksize, 0.5, blocksize + 0.5)
    bars = b.stairs(counts, edges, fill=True, color=COLORS["orig"], alpha=0.7)
    b.axvline(16.5, color=COLORS["level"], ls="--", lw=1)
    b.set_xlabel(f"distinct values in a block of {blocksize}")
    b.set_ylabel("blocks")
    share = float((distinct <= 16).mean())
    b.set_title(f"{share:.1%} of {len(distinct):,} blocks hold <= 16 values\n"
                + ("-> stored as 4-bit before" if share > 0.99 else "-> ordinary float weights"))
    return {"points": points, "levels": lines, "distinct": bars}


class GenerationView:
    """Bars per mode: memory footprint (MB) and generation speed (tokens/s)."""

    def __init__(self, fig: Figure | None = None):
        self.fig, self.axes = (fig, np.array(fig.axes)) if fig is not None else new_figure(
            2, figsize=(9.6, 2.8))
        a, b = self.axes
        a.set_xlabel("footprint (MB, get_memory_footprint)")
        b.set_xlabel("tokens / s")
        a.set_title("memory")
        b.set_title("speed")

    def update(self, rows: list[dict]) -> GenerationView:
        """rows: [{"mode": "nf4", "footprint_mb": 109.8, "tokens_per_s": 21.3}, ...]; with "speed_tokens" and
        "fixed_length" (``timed_generate``) the speed axis says how many tokens each mode generated."""
        fixed = [r.get("speed_tokens") for r in rows if r.get("fixed_length")]
        self.axes[1].set_xlabel(f"tokens / s ({fixed[0]} tokens, fixed length, warm)" if fixed else "tokens / s")
        for ax, key, fmt in ((self.axes[0], "footprint_mb", "{:.1f}"), (self.axes[1], "tokens_per_s", "{:.1f}")):
            for artist in list(ax.patches) + list(ax.texts):
                artist.remove()
            labels = [r["mode"] for r in rows]
            values = [float(r.get(key) or 0.0) for r in rows]
            bars = ax.barh(range(len(rows)), values, color=COLORS["orig"])
            ax.set_yticks(range(len(rows)), labels)
            for bar, v in zip(bars, values, strict=True):
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + fmt.format(v),
                        va="center", fontsize=8)
            ax.set_xlim(0, max(values + [1.0]) * 1.25)
            ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)
            if not rows:
                ax.text(0.5, 0.5, "press Generate", transform=ax.transAxes, ha="center", color=COLORS["muted"])
        return self
