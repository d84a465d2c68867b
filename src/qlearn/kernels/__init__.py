"""What 4-bit weights cost to compute with: a fused int4/int8 ``Linear`` on a CPU or a CUDA GPU (``fused``;
``device.int4_path`` says which kernel), this machine's memory bandwidth and the floor it puts under each
token (``bandwidth``), and where the time of a forward goes (``timesplit``). Measurements only, synchronized
on CUDA devices; the figures are in ``qlearn.plots.kernels``.
"""

from .bandwidth import Floors, copy_bandwidth, floors, matmul_flops
from .bnb4bit import Bnb4bitLinear
from .device import INT4_PATHS, describe_int4_path, elapsed, int4_path, module_device, synchronize, wrote_weight
from .fused import (
    BLOCKSIZES_INT4,
    KERNEL_KINDS,
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
    decode_probe,
    dequantize_replay,
    hook_overhead,
    layer_type,
    time_forward,
    time_split,
)

__all__ = ["BLOCKSIZES_INT4", "KERNEL_KINDS", "Int4Weights", "quantize_int4", "FusedInt4Linear", "DequantInt4Linear",
           "FusedInt8Linear", "Bnb4bitLinear", "swap_linears", "release_checkpoint", "INT4_PATHS", "int4_path",
           "describe_int4_path", "module_device", "synchronize", "elapsed", "wrote_weight", "copy_bandwidth",
           "matmul_flops", "Floors", "floors", "LAYER_TYPES", "PARTS", "TimeSplit", "layer_type", "dequantize_replay",
           "decode_probe", "time_forward", "time_split", "hook_overhead"]
