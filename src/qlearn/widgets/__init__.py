"""Interactive explorers: ipywidgets controls wired to qlearn's math and plots (no math here).

Every explorer is an ipywidgets VBox with `.controls` (name -> control), `.figure` (the
matplotlib Figure, redrawn in place and shown as PNG in a core `ipywidgets.Image`) and
`.update(**params)` (what a control change calls). Errors show in the explorer's message area.
Works with ipywidgets 7.7 (Colab) and 8.x; needs no ipympl. Every explorer takes
`canvas="ipympl"` as an opt-in upgrade where ipympl is installed (pan / zoom in the browser;
it redraws the whole figure each time, so it is slower than the default PNG path).
"""

from ._base import Explorer
from .explorers import (
    HistogramExplorer,
    NF4Explorer,
    ZeroPointExplorer,
    histogram_explorer,
    nf4_explorer,
    zeropoint_explorer,
)
from .finetune import FinetuneExplorer, finetune_explorer  # noqa: F401  (lesson 12)
from .kernels import SpeedExplorer, speed_explorer
from .memory import DoubleQuantExplorer, double_quant_explorer
from .methods import MethodExplorer, method_explorer
from .microscaling import BlockFormatExplorer, block_format_explorer
from .mixed import MixedPrecisionExplorer, mixed_precision_explorer
from .models import GenerationExplorer, OutlierExplorer, generation_explorer, outlier_explorer

__all__ = ["Explorer", "HistogramExplorer", "NF4Explorer", "ZeroPointExplorer", "histogram_explorer",
           "nf4_explorer", "zeropoint_explorer", "DoubleQuantExplorer", "double_quant_explorer",
           "OutlierExplorer", "GenerationExplorer", "outlier_explorer", "generation_explorer",
           "SpeedExplorer", "speed_explorer", "MethodExplorer", "method_explorer", "MixedPrecisionExplorer",
           "mixed_precision_explorer", "BlockFormatExplorer", "block_format_explorer"]
