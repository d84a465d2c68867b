"""Pictures for lesson 12 (QLoRA): loss curves, one training step's memory split, and the rounding of a merged
weight onto the NF4 grid. Everything drawn is handed in (runs, byte counts and tensors from qlearn.finetune);
nothing here trains or quantizes."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ._base import COLORS, LEGEND_ZORDER, new_figure, to_numpy

__all__ = ["RUN_COLORS", "PARTS", "loss_curves", "memory_bars", "rounding_figure", "LossView"]

RUN_COLORS = ("#4c72b0", "#55a868", "#c44e52", "#8172b3", "#dd8452", "#937860", "#da8bc3", "#8c8c8c")
PARTS = {"weights": "#9a9a9a", "adapters": "#4c72b0", "optimizer": "#c44e52", "activations": "#55a868",
         "gradients": "#dd8452", "other": "#e5d8bd"}


def loss_curves(runs: dict, ax=None, step=None, faded=()) -> list:
    """Loss against step, one colour per run: the training batches' loss as a thin line, the held-out loss as
    dots joined by a thick line. runs: {label: object with ``train_loss`` (per step), ``eval_steps`` and
    ``heldout``}; ``step``: a vertical marker; labels in ``faded`` drawn pale. Log scale. Returns the artists."""
    if ax is None:
        fig, (ax,) = new_figure(1, figsize=(8.0, 4.0))
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=0.9)
    artists = []
    for i, (label, run) in enumerate(runs.items()):
        color, alpha = RUN_COLORS[i % len(RUN_COLORS)], 0.3 if label in faded else 1.0
        steps = np.arange(1, len(run.train_loss) + 1)   # the loss of step k's batch, before its update
        artists += ax.plot(steps, run.train_loss, "-", lw=0.8, color=color, alpha=0.45 * alpha)
        artists += ax.plot(run.eval_steps, run.heldout, "o-", lw=2, ms=4, color=color, alpha=alpha,
                           label=f"{label}: held-out {run.heldout[0]:.3g} → {run.heldout[-1]:.3g}")
    if step is not None:
        artists.append(ax.axvline(step, color="#333333", lw=1, ls=":"))
    _loss_axes(ax)
    ax.legend(fontsize=7, loc="lower left")
    return artists


def _loss_axes(ax) -> None:
    """The loss plot's axes: log loss with plain tick labels, integer steps, the labels."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
    ax.set_xlabel("training step (thin: the batch's loss; dots: held-out loss)")
    ax.set_ylabel("loss (nats per answer token)")


def memory_bars(splits: dict, ax=None, title: str = "") -> list:
    """One horizontal bar per configuration, stacked by part (`PARTS`), in MB. splits: {label: {part: bytes}};
    a missing or negative part is drawn as 0. The total of the parts is written at each bar's end."""
    if ax is None:
        fig, (ax,) = new_figure(1, figsize=(9.6, 1.3 + 0.45 * len(splits)))
        fig.subplots_adjust(left=0.27, right=0.84, bottom=0.5 / (0.9 + 0.45 * len(splits)) + 0.12, top=0.86)
    artists, labels = [], list(splits)
    left = np.zeros(len(labels))
    for part, color in PARTS.items():
        mb = np.array([max(splits[k].get(part) or 0, 0) / 1e6 for k in labels])
        artists.append(ax.barh(range(len(labels)), mb, left=left, color=color, label=part, height=0.6))
        left += mb
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:,.0f} MB", va="center", fontsize=8)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)                   # the first configuration on top
    ax.set_xlim(0, left.max() * 1.18)
    ax.set_xlabel("MB (each part measured from its tensors; other: short-lived tensors at the step's peak)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        ax.set_title(title)
    return artists


def rounding_figure(step_ratio, delta, applied, title: str = "", points: int = 6000) -> Figure:
    """Left: how large each weight's update is against the half step to its next NF4 level (``step_ratio`` =
    |delta| / half step; right of 1 the code can change). Right: the update each weight gets after re-quantizing
    (``applied``) against the one the adapter applies (``delta``), every n-th weight; on the diagonal = kept."""
    fig, (a, b) = new_figure(2, figsize=(9.6, 3.8))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.8, wspace=0.3)
    ratio = to_numpy(step_ratio).ravel()
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    bins = np.geomspace(max(ratio.min(), 1e-6), max(ratio.max(), 10.0), 60)
    a.hist(ratio, bins=bins, color=COLORS["orig"])
    a.axvline(1.0, color=COLORS["level"], lw=1.2)
    a.text(1.05, 0.95, "code can change →", transform=a.get_xaxis_transform(), fontsize=8, va="top",
           color=COLORS["level"])
    a.set_xscale("log")
    a.set_xlabel("|update| / half the gap to the next level")
    a.set_ylabel("weights")
    d, g = to_numpy(delta).ravel(), to_numpy(applied).ravel()
    every = max(1, d.size // points)
    d, g = d[::every], g[::every]
    lim = float(max(np.abs(d).max(), 1e-12))
    b.scatter(d, g, s=3, alpha=0.35, color=COLORS["deq"], lw=0)
    b.plot([-lim, lim], [-lim, lim], color="#333333", lw=0.8, ls="--")
    b.set_xlim(-1.1 * lim, 1.1 * lim)
    b.set_xlabel("update the adapter applies (B @ A · alpha / r)")
    b.set_ylabel("update left after re-quantizing")
    b.set_title(f"every {every}-th weight; dashed: kept exactly", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


class LossView:
    """The fine-tuning explorer's figure: the held-out and training loss of every run trained so far (each run
    keeps its colour; the current one drawn full and on top, the others pale), a marker at the chosen step and
    the legend right of the axes.

    Built once and updated in place, for a dragged step slider: a step moves the marker (and the title) alone;
    choosing another run changes only which curves are pale; the limits and the legend change only when a run
    is added.

    >>> from types import SimpleNamespace
    >>> run = SimpleNamespace(train_loss=(3.0, 2.0, 1.0, 0.5), eval_steps=(0, 2, 4), heldout=(3.5, 1.2, 0.4))
    >>> view = LossView(); [float(v) for v in view.update({"r=8": run}, "r=8", 2).ax.get_xlim()]
    [0.0, 4.2]
    >>> [float(v) for v in view.update({"r=8": run}, "r=8", 4).ax.get_xlim()], view.marker.get_xdata()
    ([0.0, 4.2], [4, 4])
    """

    def __init__(self, fig: Figure | None = None):
        if fig is None:
            fig, _ = new_figure(1, figsize=(8.6, 3.8))
            fig.subplots_adjust(left=0.09, right=0.66, bottom=0.14, top=0.88)   # the legend right of the axes
        self.fig, self.ax = fig, fig.axes[0]
        ax = self.ax
        _loss_axes(ax)
        self.marker = ax.axvline(0, color="#333333", lw=1, ls=":")
        self.curves: dict = {}          # label -> (run, training-loss line, held-out line)
        self._legend_of = None          # the runs the legend and the limits were made for

    def update(self, runs: dict, current: str, step: int, title: str = "") -> LossView:
        """runs: {label: object with ``train_loss`` (per step), ``eval_steps`` and ``heldout``}; ``current``: the
        label drawn in full colour; ``step``: where the marker stands."""
        ax = self.ax
        for label, run in runs.items():
            if label not in self.curves or self.curves[label][0] is not run:     # a run not drawn yet
                for line in self.curves.get(label, (None,))[1:]:
                    line.remove()
                color = RUN_COLORS[list(runs).index(label) % len(RUN_COLORS)]
                steps = np.arange(1, len(run.train_loss) + 1)   # the loss of step k's batch, before its update
                (train,) = ax.plot(steps, run.train_loss, "-", lw=0.8, color=color)
                (held,) = ax.plot(run.eval_steps, run.heldout, "o-", lw=2, ms=4, color=color,
                                  label=f"{label}: held-out {run.heldout[0]:.3g} → {run.heldout[-1]:.3g}")
                self.curves[label] = (run, train, held)
        for label, (_, train, held) in self.curves.items():
            alpha = 1.0 if label == current else 0.3
            train.set_alpha(0.45 * alpha)
            held.set_alpha(alpha)
            train.set_zorder(2.1 if label == current else 2)       # the current run over the others
            held.set_zorder(2.1 if label == current else 2)
        drawn = tuple((label, id(run)) for label, run in runs.items())
        if drawn != self._legend_of:                # a run was added: new limits and legend entries
            self._legend_of = drawn
            last = max(max(len(r.train_loss), r.eval_steps[-1]) for r in runs.values())
            losses = [v for r in runs.values() for v in (*r.train_loss, *r.heldout) if np.isfinite(v) and v > 0]
            ax.set_xlim(0, last * 1.05)                # fixed while the step moves: the marker moves inside them
            ax.set_ylim(*_log_limits(min(losses, default=0.1), max(losses, default=10.0)))
            # the handles are full colour whichever run is current, so a new choice leaves the legend as it was;
            # outside the axes it covers no curve, under the data it stays in the fast renderer's background
            ax.legend(handles=[self.curves[label][2] for label in runs], fontsize=7, loc="upper left",
                      bbox_to_anchor=(1.02, 1.0), frameon=False).set_zorder(LEGEND_ZORDER)
            for handle in ax.get_legend().legend_handles:
                handle.set_alpha(1.0)
        self.marker.set_xdata([step, step])
        ax.set_title(title, fontsize=9)
        return self


def _log_limits(lo: float, hi: float) -> tuple[float, float]:
    """Limits of a log axis around [lo, hi], out to 1, 2 or 5 x 10^k: the same for runs of similar losses.

    >>> _log_limits(0.066, 3.55)
    (0.05, 5.0)
    """
    def down(v):
        mag = 10.0 ** math.floor(math.log10(v))
        return max(m * mag for m in (1, 2, 5) if m * mag <= v)

    def up(v):
        mag = 10.0 ** math.floor(math.log10(v))
        return min(m * mag for m in (1, 2, 5, 10) if m * mag >= v)

    return down(lo * 0.95), up(hi * 1.05)
