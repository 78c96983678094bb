"""fastcifar: train CIFAR-10 classifiers fast, on fused Triton kernels.

Layers, lowest first (each imports only the ones before it):
``fastcifar.kernels`` (Triton kernels), ``fastcifar.nn.modules``, ``fastcifar.data``,
``fastcifar.models``, then ``fastcifar.recipes`` / ``fastcifar.train``.
"""

import logging

from fastcifar.errors import FastCifarError

# torch.utils.cpp_extension warns at import on every machine without a CUDA runtime that has
# a CUDA_HOME ("No CUDA runtime is found, using CUDA_HOME=..."); inductor imports it on
# every CPU compile. It says nothing about the run: errors from it still show.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

__version__ = "0.1.0"
__all__ = ["FastCifarError", "__version__"]
