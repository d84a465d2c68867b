"""Pictures for lesson 11 (beyond round-to-nearest): the perplexity-vs-bits frontier, one layer
before / after a method, and the bytes of one GGUF block. Everything drawn is handed in (numbers
computed by qlearn.methods); nothing here quantizes."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ._base import COLORS, LEGEND_ZORDER, new_figure

__all__ = ["FAMILY_COLORS", "frontier_figure", "MethodView", "block_bytes_figure"]

FAMILY_COLORS = {"bf16": "#333333", "int8": "#8c564b", "rtn": COLORS["int4"], "rtn-asym": "#ff9896",
                 "gptq": COLORS["orig"], "gptq-asym": "#aec7e8", "awq": COLORS["err"], "hqq": COLORS["fp4"],
                 "Q4_0": "#bcbd22", "Q4_1": "#e6ab02", "Q4_K": "#17becf", "Q8_0": "#7f7f7f",
                 "nf4": "#2ca02c", "nf4+dq": "#98df8a", "fp4": "#9467bd", "mxfp4": "#8172b3", "nvfp4": "#dd8452",
                 "fp8-e4m3": "#637939", "fp8-e5m2": "#b5cf6b", "rtn-hadamard": "#7b4173"}


def _label(row: dict) -> str:
    """The method and its blocksize as the GPTQ / AWQ papers write it: "gptq g128"."""
    return row["method"] + (f" g{row['blocksize']}" if row.get("blocksize") else "")


def frontier_figure(rows: list[dict], ymax: float | None = None,
                    scope: str = "every linear layer fake-quantized") -> Figure:
    """Perplexity (y) against stored bits per weight (x), one point per row of
    {"method", "blocksize", "bits", "ppl"}; bf16 drawn as a horizontal line, the lower-left the better.
    scope: what was quantized, for the title (a lesson's FAST run quantizes only some layers)."""
    fig, (ax,) = new_figure(1, figsize=(9.6, 4.6))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.9)
    base = [r for r in rows if r["method"] == "bf16"]
    if base:
        ax.axhline(base[0]["ppl"], color=FAMILY_COLORS["bf16"], lw=1, ls="--")
        ax.text(0.01, base[0]["ppl"], f"bf16 {base[0]['ppl']:.2f} (16 bits, off the axis)", va="top", ha="left",
                fontsize=8, transform=ax.get_yaxis_transform())
    shown = list({(r["method"], r.get("blocksize")): r for r in rows if r["method"] != "bf16"}.values())  # once each
    for r in shown:
        color = FAMILY_COLORS.get(r["method"], COLORS["muted"])
        marker = {None: "o", 32: "s", 64: "^", 128: "o"}.get(r.get("blocksize"), "o")
        ax.scatter(r["bits"], r["ppl"], color=color, marker=marker, s=36, zorder=3)
    ax.margins(x=0.12)                       # room for the labels of the right-most points
    ax.set_xlabel("stored bits per weight (codes + scales + zero points, over the linear layers quantized)")
    ax.set_ylabel("perplexity")
    lo, hi = min(r["ppl"] for r in rows), max(r["ppl"] for r in rows)
    heights, label_x = _label_places(shown, gap=0.045 * (hi - lo))
    ax.set_ylim(lo * 0.97, ymax or max([hi] + heights) * 1.04)
    left, right = ax.get_xlim()
    if label_x:                              # the labels' column inside the axes, with room for ~12 characters
        ax.set_xlim(left, max(right, max(label_x) + 0.3 * (max(label_x) - left)))
    for r, y, x in zip(shown, heights, label_x, strict=True):
        moved = abs(y - r["ppl"]) > 1e-9 or x - r["bits"] > 0.07
        ax.annotate(_label(r), (r["bits"], r["ppl"]), xytext=(x, y), fontsize=7, va="center",
                    arrowprops=dict(arrowstyle="-", lw=0.5, color=COLORS["muted"], shrinkA=0, shrinkB=3)
                    if moved else None)
    ax.set_title(f"Perplexity vs true bits per weight (embedded SmolLM2-135M, {scope})")
    return fig


def _label_places(rows: list[dict], gap: float, cluster_bits: float = 0.4) -> tuple[list[float], list[float]]:
    """Where each row's label goes, so labels do not overlap: points whose bits lie within ``cluster_bits`` of
    their neighbour form a cluster; its labels stand in one column just right of its right-most point, each at
    its own perplexity pushed up until it is ``gap`` above the label below (a leader line joins them).

    >>> _label_places([{"bits": 4.5, "ppl": 18.0}, {"bits": 4.3, "ppl": 18.1}, {"bits": 8.0, "ppl": 18.0}], 0.5)
    ([18.0, 18.5, 18.0], [4.56, 4.56, 8.06])
    """
    heights, label_x = [r["ppl"] for r in rows], [0.0] * len(rows)
    by_bits = sorted(range(len(rows)), key=lambda i: rows[i]["bits"])
    clusters: list[list[int]] = []
    for i in by_bits:
        if clusters and rows[i]["bits"] - rows[clusters[-1][-1]]["bits"] <= cluster_bits:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    for members in clusters:
        x = round(max(rows[i]["bits"] for i in members) + 0.06, 6)
        last = None
        for i in sorted(members, key=lambda i: (rows[i]["ppl"], rows[i]["bits"])):
            if last is not None:
                heights[i] = max(heights[i], last + gap)
            last, label_x[i] = heights[i], x
    return heights, label_x


class MethodView:
    """Three panels for one layer and one method: (a) one row's weights before / after (and, for
    GPTQ, the value each weight had when it was rounded), (b) mean |error| per input column,
    (c) the shift error compensation gave each column (GPTQ) or the method's per-column scale (AWQ).
    Built once; `update` swaps the lines' data. Panel (a) keeps one y range per layer (the shown
    columns of every row), so stepping through rows moves the lines, not the axis."""

    def __init__(self, fig: Figure | None = None):
        self.fig, self.axes = (fig, np.array(fig.axes)) if fig is not None else new_figure(3, figsize=(10.5, 3.4))
        self.fig.subplots_adjust(left=0.06, right=0.99, bottom=0.17, top=0.85, wspace=0.3)
        a, b, c = self.axes
        (self.orig,) = a.plot([], [], color=COLORS["orig"], lw=1, label="original")
        (self.moved,) = a.plot([], [], color=COLORS["err"], lw=1, alpha=0.8, label="when rounded (moved)")
        (self.quant,) = a.step([], [], where="mid", color=COLORS["deq"], lw=1, label="quantized")
        a.set_xlabel("input column")
        a.set_ylabel("weight")
        (self.rtn,) = b.plot([], [], color=COLORS["muted"], lw=0.8, label="RTN")
        (self.err,) = b.plot([], [], color=COLORS["level"], lw=0.8, label="this method")
        b.set_xlabel("input column")
        b.set_ylabel("mean |error|")
        b.legend(frameon=False, fontsize=7, loc="upper right").set_zorder(LEGEND_ZORDER)
        b.set_title("error per input column")
        (self.comp,) = c.plot([], [], color=COLORS["err"], lw=0.8)
        self.note = c.text(0.5, 0.5, "no compensation:\neach weight rounded on its own", ha="center", va="center",
                           transform=c.transAxes, fontsize=9, color=COLORS["muted"])
        c.set_xlabel("input column")
        self._legend = None

    def update(self, cols: np.ndarray, w_row: np.ndarray, q_row: np.ndarray, moved_row: np.ndarray | None,
               col_err: np.ndarray, rtn_col_err: np.ndarray, shift: np.ndarray | None, in_scale: np.ndarray | None,
               title: str, w_range: tuple[float, float] | None = None) -> None:
        """cols (k,) column indices shown in (a); w_row / q_row / moved_row (k,) values of one row;
        col_err, rtn_col_err (in,) mean |error| per input column of this method and of RTN;
        shift (in,) mean |moved - w| per column (GPTQ) or None; in_scale (in,) AWQ's s or None;
        title: shown over the first panel (method, bits, output error); w_range: (a)'s y limits
        (default: this row's values)."""
        a, b, c = self.axes
        self.orig.set_data(cols, w_row)
        self.quant.set_data(cols, q_row)
        self.moved.set_data(cols, moved_row if moved_row is not None else [])
        self.moved.set_visible(moved_row is not None)
        shown = [self.orig] + ([self.moved] if moved_row is not None else []) + [self.quant]
        if self._legend != len(shown):           # the legend names what is drawn
            a.legend(shown, [line.get_label() for line in shown], frameon=False, fontsize=7,
                     loc="upper right").set_zorder(LEGEND_ZORDER)
            self._legend = len(shown)
        lo, hi = w_range or (min(np.min(w_row), np.min(q_row)), max(np.max(w_row), np.max(q_row)))
        pad = 0.05 * (hi - lo or 1.0)
        a.set_xlim(cols[0] - 0.05 * (cols[-1] - cols[0] + 1), cols[-1] + 0.05 * (cols[-1] - cols[0] + 1))
        a.set_ylim(lo - pad, hi + pad)
        a.set_title(title, loc="left", fontsize=8)
        x = np.arange(len(col_err))
        self.rtn.set_data(x, rtn_col_err)
        self.err.set_data(x, col_err)
        _fit(b, x, np.concatenate([rtn_col_err, col_err]))
        values = shift if shift is not None else in_scale
        self.comp.set_data(x if values is not None else [], values if values is not None else [])
        self.note.set_visible(values is None)
        if values is not None:
            _fit(c, x, values)
        else:
            c.set_xlim(0, 1)
            c.set_ylim(0, 1)
        c.set_ylabel("mean |moved - original|" if shift is not None else
                     "s (scale of input channel)" if in_scale is not None else "")
        c.set_title("GPTQ: shift from compensation" if shift is not None else
                    "AWQ: W * s is rounded, then / s" if in_scale is not None else "compensation")


def _fit(ax, x: np.ndarray, y: np.ndarray) -> None:
    """Limits around x and y with 5% margins (what autoscaling gives a line), set directly."""
    lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
    ax.set_xlim(x[0] - 0.05 * (x[-1] - x[0]), x[-1] + 0.05 * (x[-1] - x[0]))
    ax.set_ylim(lo - 0.05 * (hi - lo or 1.0), hi + 0.05 * (hi - lo or 1.0))


def block_bytes_figure(blocks: list[tuple[str, np.ndarray, list[tuple[str, int, int]]]]) -> Figure:
    """One row per block: its bytes as cells (hex), coloured by field. blocks: (title, bytes (n,) uint8,
    [(field name, first byte, last byte + 1), ...])."""
    fig, axes = new_figure(1, nrows=len(blocks), figsize=(10.5, 2.1 * len(blocks)))
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.04, top=1 - 0.7 / (2.1 * len(blocks)), hspace=1.0)
    palette = [COLORS["level"], COLORS["deq"], COLORS["fp4"], COLORS["orig"]]
    for ax, (title, data, fields) in zip(axes, blocks, strict=True):
        per_row = 48
        rows = -(-len(data) // per_row)
        for i, byte in enumerate(data):
            k = next(n for n, (_, lo, hi) in enumerate(fields) if lo <= i < hi)
            r, col = divmod(i, per_row)
            ax.add_patch(_cell(col, rows - 1 - r, palette[k % len(palette)]))
            ax.text(col + 0.5, rows - 1 - r + 0.5, f"{int(byte):02x}", ha="center", va="center", fontsize=5.5)
        handles = [_cell(0, 0, palette[k % len(palette)]) for k in range(len(fields))]
        ax.legend(handles, [f"{name} (bytes {lo}-{hi - 1})" for name, lo, hi in fields], ncol=len(fields),
                  frameon=False, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0))
        ax.set_xlim(0, per_row)
        ax.set_ylim(0, rows)
        ax.set_axis_off()
        ax.set_title(title, fontsize=9, loc="left", y=1.25)
    return fig


def _cell(x: float, y: float, color: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), 1, 1, facecolor=color, alpha=0.35, edgecolor="white")
