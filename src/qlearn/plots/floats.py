"""Float formats drawn bit by bit: sign / exponent / mantissa boxes, and the values a format holds.

`float_bits_figure` takes what `qlearn.floats` computed (``fields`` records and ``representable``
value sets) and draws three panels: (a) one value's bit pattern in each format, coloured by field,
with the formula that turns the fields into the value; (b) the positive values of the 8-bit formats
on a log axis (where the steps are and where the range ends); (c) 4-bit sets scaled to a largest
magnitude of 1, as the blockwise quantizers use them (OCP E2M1 / 6, bitsandbytes' FP4, NF4).
No math here: the caller hands in fields and values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ._base import DPI, CachedTextCanvas, style_axes, to_numpy

__all__ = ["float_bits_figure", "FIELD_COLORS"]

FIELD_COLORS = {"sign": "#c44e52", "exponent": "#4c72b0", "mantissa": "#55a868"}


def _bit_rows(ax, rows: Sequence, widths: Mapping[str, tuple[int, int]]) -> None:
    """One row of boxes per FloatFields record; `widths[name]` = (exponent bits, mantissa bits)."""
    for i, f in enumerate(rows):
        e_bits, m_bits = widths[f.format]
        n = 1 + e_bits + m_bits
        pattern = f"{f.bits:0{n}b}"
        scale = 32 / n if n <= 8 else 1.0                     # short formats: wider boxes, same row length
        for j, digit in enumerate(pattern):
            field = "sign" if j == 0 else "exponent" if j <= e_bits else "mantissa"
            ax.add_patch(Rectangle((j * scale, -i), scale * 0.94, 0.8, color=FIELD_COLORS[field], alpha=0.85))
            ax.text(j * scale + scale * 0.47, -i + 0.4, digit, ha="center", va="center", color="white",
                    fontsize=7.5 if n > 16 else 9, fontweight="bold")
        ax.text(-0.6, -i + 0.4, f"{f.format} ({n} bits)", ha="right", va="center", fontsize=9)
        ax.text(33, -i + 0.4, f.formula, ha="left", va="center", fontsize=8)
    ax.set_xlim(-9, 62)
    ax.set_ylim(-len(rows) + 0.85, 1.3)
    ax.axis("off")


def float_bits_figure(value: float, rows: Sequence, widths: Mapping[str, tuple[int, int]],
                      eight_bit: Mapping[str, object], four_bit: Mapping[str, object]) -> Figure:
    """The three-panel picture. rows: FloatFields of ``value`` in each format (top to bottom);
    widths: {format: (exponent bits, mantissa bits)}; eight_bit: {label: values} (tensors or arrays;
    positive ones drawn on a log axis); four_bit: {label: values scaled to max |v| = 1}.

    >>> fig = float_bits_figure(0.3, [], {}, {}, {})  # doctest: +SKIP
    """
    fig = Figure(figsize=(9.6, 6.0), dpi=DPI)
    CachedTextCanvas(fig)
    grid = fig.add_gridspec(2, 2, height_ratios=[1.0, 1], left=0.1, right=0.98, top=0.92, bottom=0.09,
                            hspace=0.3, wspace=0.25)
    top = fig.add_subplot(grid[0, :])
    _bit_rows(top, rows, widths)
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in FIELD_COLORS.values()]
    top.legend(handles, list(FIELD_COLORS), loc="upper center", ncols=3, frameon=False, fontsize=8,
               bbox_to_anchor=(0.42, 1.1))
    top.set_title(f"(a) {value!r} stored in each format: the bits, and what they mean", loc="left", y=1.04)
    b, c = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    for ax in (b, c):
        style_axes(ax)
    for i, vals in enumerate(eight_bit.values()):
        v = np.asarray(to_numpy(vals) if hasattr(vals, "detach") else vals, dtype=float)
        v = v[v > 0]
        b.vlines(v, i - 0.35, i + 0.35, lw=0.6, color=list(FIELD_COLORS.values())[i % 3])
        b.text(v.max() * 1.6, i, f"max {v.max():g}\n{v.size} positive", va="center", fontsize=7.5)
    b.set_xscale("log")
    b.set_yticks(range(len(eight_bit)), list(eight_bit))
    b.set_ylim(-0.6, len(eight_bit) - 0.4)
    b.set_xlim(right=b.get_xlim()[1] * 40)
    b.set_xlabel("positive values (log scale): each tick is one value")
    b.set_title("(b) 8-bit floats: range vs precision", loc="left")
    for i, vals in enumerate(four_bit.values()):
        v = np.asarray(to_numpy(vals) if hasattr(vals, "detach") else vals, dtype=float)
        c.scatter(v, np.full(v.shape, i), s=18, color=list(FIELD_COLORS.values())[i % 3], zorder=3)
        c.hlines(i, -1.02, 1.02, color="#bbbbbb", lw=0.6)
    c.set_yticks(range(len(four_bit)), list(four_bit))
    c.set_ylim(-0.6, len(four_bit) - 0.4)
    c.set_xlim(-1.08, 1.08)
    c.set_xlabel("value / largest value")
    c.set_title("(c) 4-bit sets, scaled to [-1, 1]", loc="left")
    return fig
