"""Mixed precision pictures: the layers x formats map with a plan on it, the budget curve, the frontier.

Everything here draws what it is handed (numbers from ``qlearn.mixed`` / ``qlearn.sensitivity``
converted to numpy); the colour scale is logarithmic through matplotlib's LogNorm.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ._base import COLORS, LEGEND_ZORDER, new_figure, to_numpy

__all__ = ["MixedPlanView", "frontier", "block_profile"]


class MixedPlanView:
    """Left: layers (rows) x formats (columns), colour = a per-layer, per-format value (e.g. predicted
    KL); a dot marks each layer's format in the plan. Right: summed predicted cost against bits per
    weight of the solver's plans, with the current plan and the uniform formats marked."""

    def __init__(self, fig: Figure | None = None):
        if fig is None:
            fig, axes = new_figure(2, figsize=(10.5, 5.2), gridspec_kw={"width_ratios": [1.25, 1]})
            fig.subplots_adjust(left=0.08, right=0.98, bottom=0.2, top=0.88, wspace=0.4)
        self.fig, self.axes = fig, np.array(fig.axes[:2])
        self.image = self.dots = self.curve = self.here = None

    def _build(self, values, layers, formats, curve_bits, curve_cost, uniform, colour_label):
        a, b = self.axes
        shown = np.where(values > 0, values, np.nan)
        self.image = a.imshow(shown, aspect="auto", interpolation="nearest", cmap="viridis",
                              norm=LogNorm(vmin=np.nanmin(shown), vmax=np.nanmax(shown)))
        self.fig.colorbar(self.image, ax=a, label=colour_label, pad=0.02)
        a.set_xticks(range(len(formats)), formats, rotation=70, fontsize=7)
        step = max(1, len(layers) // 15)
        a.set_yticks(range(0, len(layers), step), [layers[i] for i in range(0, len(layers), step)], fontsize=6)
        a.set_title("layers x formats; red dots: the plan", fontsize=9)
        (self.dots,) = a.plot([], [], "o", ms=2.5, color="#ff4040", label="the plan")
        (self.curve,) = b.plot(curve_bits, curve_cost, "-", color=COLORS["orig"], label="solver's plans")
        b.scatter([u[1] for u in uniform], [u[2] for u in uniform], s=14, color="#777777", zorder=3,
                  label="uniform formats")
        for name, bits, cost in uniform:
            b.annotate(name, (bits, cost), fontsize=6, xytext=(3, 2), textcoords="offset points")
        (self.here,) = b.plot([], [], "o", ms=8, color="#ff4040", label="this budget")
        b.set_yscale("log")
        b.set_xlabel("bits per weight (linear layers)")
        b.set_ylabel("summed predicted KL (nats)")
        b.legend(fontsize=7, loc="upper right").set_zorder(LEGEND_ZORDER)

    def update(self, values, layers, formats, chosen, plan_bits, plan_cost, curve_bits, curve_cost, uniform,
               title, colour_label="predicted KL (nats/position)"):
        """values: (layers, formats) array or tensor; chosen: (layers,) format index of the plan;
        uniform: [(format, bits, cost)]; curve_bits / curve_cost: the budget curve."""
        values = to_numpy(values)
        if self.image is None:
            self._build(values, layers, formats, np.asarray(curve_bits), np.asarray(curve_cost), uniform, colour_label)
        chosen = to_numpy(chosen)
        self.dots.set_data(chosen, np.arange(len(chosen)))
        self.here.set_data([plan_bits], [plan_cost])
        self.fig.suptitle(title, fontsize=10)
        return [self.dots, self.here]


def frontier(series: dict, ax=None, reference: dict | None = None):
    """Perplexity against bits per weight: series = {label: (bits list, ppl list, style)} with style a
    matplotlib format string ("o-", "s", ...); reference = {label: ppl} horizontal lines (e.g. bf16).
    Returns the artists."""
    if ax is None:
        fig, axes = new_figure(1, figsize=(7.5, 4.4))
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=0.9)
        ax = axes[0]
    artists = []
    for label, (bits, ppl, style) in series.items():
        artists += ax.plot(bits, ppl, style, label=label, ms=5)
    for label, value in (reference or {}).items():
        artists.append(ax.axhline(value, color="#777777", ls=":", lw=1))
        ax.annotate(label, (ax.get_xlim()[0], value), fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("bits per weight over the linear layers")
    ax.set_ylabel("perplexity (evaluation text)")
    ax.legend(fontsize=7)
    return artists


def block_profile(kinds: dict, blocks, ax=None, block_kl=None):
    """Sensitivity by position: for each layer kind (q_proj, ..., down_proj) its KL against the block
    index (log scale); block_kl: the KL with the whole block quantized, as bars. Returns the artists."""
    if ax is None:
        fig, axes = new_figure(1, figsize=(8.5, 4.0))
        fig.subplots_adjust(left=0.1, right=0.8, bottom=0.13, top=0.9)
        ax = axes[0]
    artists = []
    if block_kl is not None:
        artists.append(ax.bar(blocks, block_kl, color="#dddddd", label="whole block"))
    for kind, values in kinds.items():
        artists += ax.plot(blocks, values, ".-", lw=1, label=kind)
    ax.set_yscale("log")
    if len(blocks) <= 12:
        ax.set_xticks(list(blocks))
    ax.set_xlabel("decoder block")
    ax.set_ylabel("KL to bf16 (nats/position)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return artists
