"""Layer 2: putting the kernels into a model.

- ``modules``: the drop-in ``Conv2d`` and ``swap_convolutions``, and what the fused kinds
  share;
- ``conv_bn``: conv -> [ReLU] -> BatchNorm in one kernel (``FusedConvReLUBN``,
  ``FusedConvBN``);
- ``dwsep``: depthwise 3x3 -> [ReLU] -> 1x1 in one kernel (``FusedDepthwiseSeparable``);
- ``chain``: conv -> BatchNorm -> activation -> conv chains (``FusedConvBNAct``);
  ``pending``: what a chain's producer hands on; ``pool_chain``: the speed run's
  conv-pool-BN-activation blocks; ``traced_chain``: links found in a traced forward;
- ``fusion``: ``FUSIONS``, the one table of the kinds the kernels take;
- ``autotune``: ``--kernels auto``, Triton timed against cuDNN per configuration;
- ``kernel_guard``: a Triton failure sends the layer back to PyTorch.

The names below are README's documented Python API.
"""

from fastcifar.nn.chain import FusedConvBNAct, fuse_conv_bn_act
from fastcifar.nn.conv_bn import FusedConvBN, FusedConvReLUBN, fuse_conv_bn, fuse_conv_relu_bn
from fastcifar.nn.dwsep import FusedDepthwiseSeparable, fuse_depthwise_separable
from fastcifar.nn.modules import Conv2d, config_supported, swap_convolutions

__all__ = [
    "Conv2d",
    "FusedConvBN",
    "FusedConvBNAct",
    "FusedConvReLUBN",
    "FusedDepthwiseSeparable",
    "config_supported",
    "fuse_conv_bn",
    "fuse_conv_bn_act",
    "fuse_conv_relu_bn",
    "fuse_depthwise_separable",
    "swap_convolutions",
]
