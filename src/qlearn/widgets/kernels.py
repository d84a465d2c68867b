"""The speed explorer: mode x batch size -> where the time goes and the roofline, from measurements the
lesson made (``qlearn.kernels.time_split`` and the roofline points); it measures nothing itself."""

from __future__ import annotations

import ipywidgets as widgets

from ..plots.kernels import SpeedView
from ._base import _WIDE, Explorer, slider_layout

__all__ = ["SpeedExplorer", "speed_explorer"]


class SpeedExplorer(Explorer):
    """Controls: mode (dropdown), batch (slider over the measured batch sizes). ``splits`` maps
    (mode, batch) -> TimeSplit; ``points`` are the roofline dicts (label, batch, measured_s, memory_s,
    compute_s). After each update ``shown`` is the TimeSplit on screen."""

    name = "speed_explorer"

    def __init__(self, splits: dict, points: list[dict], mode: str | None = None, batch: int | None = None,
                 canvas: str = "png"):
        if not splits:
            raise ValueError("splits is empty: measure at least one (mode, batch) with qlearn.kernels.time_split")
        modes = list(dict.fromkeys(m for m, _ in splits))
        batches = sorted({b for _, b in splits})
        controls = {
            "mode": widgets.Dropdown(options=modes, value=mode or modes[0], description="mode", style=_WIDE),
            "batch": widgets.SelectionSlider(options=batches, value=batch or batches[0], description="batch size",
                                             continuous_update=True, style=_WIDE, layout=slider_layout("280px")),
        }
        self.splits, self.points, self.shown = dict(splits), list(points), None
        super().__init__(controls, SpeedView(), title="Speed: where the time goes, and the floor under it",
                         canvas=canvas)
        self.update()

    def _draw(self, v: dict) -> None:
        key = (v["mode"], v["batch"])
        if key not in self.splits:
            measured = sorted(b for m, b in self.splits if m == v["mode"])
            raise ValueError(f"no time split measured for mode={v['mode']!r} at batch={v['batch']}; "
                             f"measured batches for it: {measured}")
        self.view.update(self.splits, self.points, *key)
        self.shown = self.splits[key]


def speed_explorer(splits: dict, points: list[dict], **kwargs) -> SpeedExplorer:
    """Explore measured speed; kwargs: mode, batch, canvas.

    >>> from qlearn.kernels import TimeSplit
    >>> s = {(m, b): TimeSplit(m, b, 1, 0.01 * b, 0.01 * b, {("mlp", "matmul"): 0.01 * b}) for m in ("bf16", "int4")
    ...      for b in (1, 4)}
    >>> pts = [dict(label=m, batch=b, measured_s=0.01 * b, memory_s=0.01, compute_s=0.001 * b) for m, b in s]
    >>> speed_explorer(s, pts).update(mode="int4", batch=4).shown.label
    'int4'
    """
    return SpeedExplorer(splits, points, **kwargs)
