"""Triton kernels: ``fastcifar.kernels`` (the ``fastcifar/kernels/`` folder).

Layer 1 of fastcifar: knows nothing of models or training.

* ``conv2d``: 3x3 dense (dilation 1-3) and grouped or depthwise 3x3, 5x5 and 7x7
  convolutions (up to 16 input channels per group; groups of 8 or more on tensor
  cores) with the
  semantics of ``torch.nn.functional.conv2d``, differentiable, registered as torch
  custom ops (``fastcifar::conv2d`` and its gradients).
* ``depthwise_separable_conv2d``: fused 3x3 depthwise -> (ReLU) -> 1x1 pointwise whose
  forward and backward never write the depthwise output (opt-in).
* ``conv2d_relu_stats``: the convolution with ReLU and BatchNorm-statistics epilogues
  (``fastcifar.nn.FusedConvReLUBN`` builds the seeds' Conv-ReLU-BN block on it; opt-in).
* ``is_supported`` / ``check_supported``: whether a configuration runs in Triton.
* ``fastcifar.kernels.validate``: numerical validation against PyTorch (its command is
  ``python -m fastcifar.validate``, in the layer above).

On a machine without a GPU the kernels run under the Triton interpreter: set
``TRITON_INTERPRET=1`` before the first launch (slow; for tests on tiny shapes).
"""

from __future__ import annotations

import importlib.util

from fastcifar.kernels.conv import (
    SUPPORTED_DTYPES,
    check_supported,
    conv2d,
    is_supported,
    kernels_can_run,
)
from fastcifar.kernels.conv_bn import conv2d_relu_stats
from fastcifar.kernels.dwsep import depthwise_separable_conv2d

__all__ = [
    "SUPPORTED_DTYPES",
    "check_supported",
    "conv2d",
    "conv2d_relu_stats",
    "depthwise_separable_conv2d",
    "is_supported",
    "kernels_can_run",
    "triton_available",
]


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported on this machine (it is not imported).

    Returns:
        True when ``importlib`` finds ``triton``; whether its kernels can run on a device
        is ``kernels_can_run``'s question.
    """
    return importlib.util.find_spec("triton") is not None
