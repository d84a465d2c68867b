"""Pictures of quantization: matplotlib Figures built from tensors and quantization results.

No widget code here (that is `qlearn.widgets`). Every view class builds its figure once and
redraws in place with `update(...)`; the one-shot functions return a Figure or their artists.
Figures use `matplotlib.figure.Figure` with an Agg canvas (never pyplot's registry);
`to_png(fig)` gives the bytes a notebook shows.
"""

from ._base import new_figure, to_png
from .histograms import QuantHistogramView, ZeroPointView, group_values, levels_of, n_groups, quantization_histograms
from .memory import DoubleQuantView, format_params
from .models import GenerationView, OutlierView, block_zoom, distinct_per_block, layer_error_map, model_error_map
from .nf4 import NF4View, entropy_bits, nf4_construction, occupancy

__all__ = ["new_figure", "to_png", "QuantHistogramView", "ZeroPointView", "group_values", "levels_of",
           "n_groups", "quantization_histograms", "NF4View", "entropy_bits", "nf4_construction", "occupancy",
           "DoubleQuantView", "format_params", "GenerationView", "OutlierView", "block_zoom", "distinct_per_block",
           "layer_error_map", "model_error_map"]
