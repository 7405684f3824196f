"""Linear: torch.nn.Linear whose float32 products on CPU run through oneDNN.

torch's CPU wheels multiply float32 matrices with MKL, and MKL runs its AVX2 kernels on AMD CPUs: on
an AVX-512 EPYC that is half the rate oneDNN reaches on the same core (112 against 230-250 GFLOP/s on
one thread; docs/BENCHMARKS.md, "The matmul peak"). oneDNN is what torch.nn.LSTM and rnnlab's C++
loops use already (`kernels.time_major.product`). A readout over a vocabulary is the largest product of
a translation model: the task trains in 0.69-0.75x the CPU time with it here. On Intel CPUs both
libraries run AVX-512 code, and nothing changes but the order of the sums.

Same parameters, state dict and modules as nn.Linear (`isinstance(m, nn.Linear)` holds; it loads into
one with strict=True). Elsewhere it is nn.Linear itself: calls too small to earn oneDNN's set-up
(`ONEDNN_MACS`), other dtypes, other devices, under autocast (which casts for F.linear), while a tracer
records (the ONNX exporter writes a Gemm), and where the C++ module is not built. Its product and
backward are the fused loops' input product's (`time_major.LinearProduct`): not differentiable again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import compiled
from .kernels.time_major import LinearProduct


class Linear(nn.Linear):
    """y = x W^T + b, as torch.nn.Linear (same arguments); float32 on CPU through oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _through_onednn(x, self.weight):
            return LinearProduct.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


# Multiply-adds of a call (rows x in x out) from which oneDNN's product earns its set-up (about 20 us a call
# more than MKL's, with the autograd Function): one thread, forward+backward, 8 x 256 -> 256 (0.5M) 129 against
# 84 us, 32 x 256 -> 256 (2.1M) 176 against 169, 64 x 256 -> 256 (4.2M) 222 against 283, 64 x 256 -> 6,134
# (100M) 3.2 against 7.2 ms.
ONEDNN_MACS = 1 << 21


def _through_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu" and x.dim() >= 1
            and x.shape[-1] == weight.shape[1] > 0 and x.numel() // x.shape[-1] * weight.numel() >= ONEDNN_MACS
            and not torch.jit.is_tracing() and not torch.is_autocast_enabled("cpu")
            and compiled.extension_for(x) is not None)


__all__ = ["Linear"]
