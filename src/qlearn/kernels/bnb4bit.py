"""bitsandbytes' own 4-bit matmul as an ``nn.Linear`` replacement: the fused int4 path of a GPU that torch's
int4 kernel does not support (compute capability below 8.0, e.g. Colab's T4; ``device.int4_path``).

``bitsandbytes.matmul_4bit(x, packed, quant_state)`` with no gradient runs the op ``bitsandbytes::gemm_4bit``
(bitsandbytes 0.50, ``autograd/_functions.py``). On CUDA that op (``backends/cuda/ops.py``) runs a fused
kernel that reads the packed NF4 codes and their absmax for up to 4 input rows, and above that whichever of
the fused kernel and dequantize_4bit + ``F.linear`` its per-GPU table (``_gemm_4bit_use_custom_cuda``) picks;
on a CPU the default backend dequantizes, then ``F.linear``. Every call goes through `qlearn.bnb_interop`, which
imports bitsandbytes when a layer is built.
"""

from __future__ import annotations

import torch

from .. import bnb_interop

__all__ = ["Bnb4bitLinear"]


class Bnb4bitLinear(torch.nn.Module):
    """NF4 blocks of ``blocksize`` (bitsandbytes' ``quantize_4bit``) multiplied by ``bitsandbytes.matmul_4bit``.

    weight: (N, K) float, on the device the layer will run on (its quantization state is not a buffer, so
    ``.to()`` does not move it); inputs are cast to ``dtype`` (default the weight's) and the output cast back.
    A 1536 x 576 layer at blocksize 64: 442,368 code bytes + 13,824 float32 absmax bytes, 4.125 bits a weight.

    >>> layer = Bnb4bitLinear(torch.randn(32, 64), blocksize=64)
    >>> layer(torch.randn(1, 64)).shape, layer.path
    (torch.Size([1, 32]), 'bitsandbytes')
    """

    path = "bitsandbytes"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, blocksize: int = 64,
                 dtype: torch.dtype | None = None):
        super().__init__()
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise TypeError(f"weight must be a 2-D floating tensor (out_features, in_features); got "
                            f"{getattr(weight, 'shape', type(weight).__name__)}")
        self.dtype = dtype or weight.dtype
        packed, self.state = bnb_interop.quantize_nf4(weight.detach().to(self.dtype), blocksize)   # state: opaque
        self.register_buffer("packed", packed)
        self.register_buffer("bias", None if bias is None else bias.detach().to(self.dtype))
        self.out_features, self.in_features = weight.shape
        self.blocksize = blocksize

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The (N, K) weight as bitsandbytes decodes it, in ``dtype`` (default the compute dtype)."""
        return bnb_interop.dequantize_4bit(self.packed, self.state).to(dtype or self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = bnb_interop.matmul_4bit(x.to(self.dtype), self.packed, self.state, bias=self.bias)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, blocksize={self.blocksize}, "
                f"path={self.path}")
