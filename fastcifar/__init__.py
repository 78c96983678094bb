"""fastcifar: train CIFAR-10 classifiers as fast as one GPU allows.

Layers, lowest first (each imports only the ones before it):
``fastcifar.kernels`` (Triton kernels), ``fastcifar.nn``, ``fastcifar.data``,
``fastcifar.models``, then ``fastcifar.recipes`` / ``fastcifar.train``.
"""

from fastcifar.errors import FastCifarError

__version__ = "0.1.0"
__all__ = ["FastCifarError", "__version__"]
