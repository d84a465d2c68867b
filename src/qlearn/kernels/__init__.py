"""What 4-bit weights cost to compute with: a fused int4/int8 CPU ``Linear`` (``fused``), this machine's
memory bandwidth and the floor it puts under each token (``bandwidth``), and where the time of a forward
goes (``timesplit``). Measurements only; the figures are in ``qlearn.plots.kernels``.
"""

from .bandwidth import Floors, copy_bandwidth, floors, matmul_flops
from .fused import (
    GROUPSIZES,
    DequantInt4Linear,
    FusedInt4Linear,
    FusedInt8Linear,
    Int4Weights,
    quantize_int4,
    release_checkpoint,
    swap_linears,
)
from .timesplit import (
    LAYER_TYPES,
    PARTS,
    TimeSplit,
    dequantize_replay,
    hook_overhead,
    layer_type,
    time_forward,
    time_split,
)

__all__ = ["GROUPSIZES", "Int4Weights", "quantize_int4", "FusedInt4Linear", "DequantInt4Linear", "FusedInt8Linear",
           "swap_linears", "release_checkpoint", "copy_bandwidth", "matmul_flops", "Floors", "floors", "LAYER_TYPES",
           "PARTS", "TimeSplit", "layer_type", "dequantize_replay", "time_forward", "time_split", "hook_overhead"]
