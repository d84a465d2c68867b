"""The mixed-precision explorer: a budget slider that re-solves the plan on cached sensitivities.

The sensitivities (``qlearn.sensitivity.sensitivities``: measured once, cached on disk) are handed in;
a budget change only re-runs ``qlearn.mixed.solve`` on the (layers x formats) tables and redraws the
dots and the marker, so it takes milliseconds, not a model run.
"""

from __future__ import annotations

import ipywidgets as widgets
import torch

from .. import mixed
from ..plots.mixed import MixedPlanView
from ._base import _WIDE, Explorer, ResultCache, slider_layout

__all__ = ["MixedPrecisionExplorer", "mixed_precision_explorer"]

COLOURS = {"predicted KL": "predicted KL (nats/position)", "weighted error": "energy-weighted squared weight error"}


class MixedPrecisionExplorer(Explorer):
    """Controls: budget (bits per weight over the linear layers), colour. After each update: ``plan``
    (a ``qlearn.mixed.Plan``) and ``predicted_mb`` (MB of the linear weights in that plan)."""

    name = "mixed_precision_explorer"

    def __init__(self, sens, budget: float = 4.127, formats=mixed.PLAN_FORMATS, max_bits: float = 8.0,
                 curve_points: int = 24, canvas: str = "png"):
        self.tables = mixed.tables(sens, formats)
        t = self.tables
        self.least = float(t.bits.amin(dim=1).sum() / t.numel.sum())
        self.colour_values = {"predicted KL": t.cost,
                      "weighted error": torch.tensor([[sens.error[n][f] for f in t.formats] for n in t.layers])}
        self.labels = [n.replace("model.layers.", "").replace("self_attn.", "").replace("mlp.", "") for n in t.layers]
        budgets = torch.linspace(self.least, max_bits, curve_points).tolist()
        curve = [mixed.solve(t, b) for b in budgets]
        self.curve = ([p.bits_per_weight for p in curve], [max(p.cost, 1e-9) for p in curve])
        self.uniform = [(f, p.bits_per_weight, p.cost) for f in t.formats if f.startswith(("nf4+dq", "int8"))
                        for p in [mixed.uniform(t, f)]]
        controls = {
            "budget": widgets.FloatSlider(value=budget, min=round(self.least + 0.0005, 3), max=max_bits, step=0.001,
                                          readout_format=".3f", description="bits/weight", continuous_update=True,
                                          style=_WIDE, layout=slider_layout("340px")),
            "colour": widgets.Dropdown(options=list(COLOURS), value="predicted KL", description="colour",
                                       style=_WIDE, layout=slider_layout("220px")),
        }
        self.plan = self.predicted_mb = None
        self._plans = ResultCache(256)
        super().__init__(controls, MixedPlanView(), title="One format per layer under a byte budget",
                         canvas=canvas)
        self.update()

    def _draw(self, v: dict) -> None:
        t = self.tables
        self.plan = self._plans.get_or(v["budget"], lambda: mixed.solve(t, v["budget"]))   # dragged back: kept
        self.predicted_mb = self.plan.bits_per_weight * float(t.numel.sum()) / 8e6
        chosen = torch.tensor([t.formats.index(f) for f in self.plan.formats])
        counts = ", ".join(f"{n} {f}" for f, n in list(self.plan.counts().items())[:4])
        title = (f"{self.plan.bits_per_weight:.4f} bits/weight = {self.predicted_mb:.1f} MB of linear weights; "
                 f"predicted KL {self.plan.cost:.3f}\n{counts}")
        if self.view.image is not None and self.view.image.get_label() != v["colour"]:
            self.view.image.set_data(self.colour_values[v["colour"]].numpy())
            self.view.image.set_norm(_norm(self.colour_values[v["colour"]]))
            self.view.image.colorbar.set_label(COLOURS[v["colour"]])
        self.view.update(self.colour_values[v["colour"]], self.labels, t.formats, chosen, self.plan.bits_per_weight,
                         self.plan.cost, *self.curve, self.uniform, title, COLOURS[v["colour"]])
        self.view.image.set_label(v["colour"])


def _norm(values: torch.Tensor):
    from matplotlib.colors import LogNorm

    positive = values[values > 0]
    return LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))


def mixed_precision_explorer(sens, **kwargs) -> MixedPrecisionExplorer:
    """Explore mixed-precision plans on cached sensitivities; kwargs: budget=4.127, formats, max_bits=8.

    >>> w = mixed_precision_explorer(sens, budget=4.127)   # doctest: +SKIP
    >>> w.update(budget=4.33).plan.bits_per_weight <= 4.33  # doctest: +SKIP
    True
    """
    return MixedPrecisionExplorer(sens, **kwargs)
