"""Triton kernels (installed as ``fastcifar.kernels``).

Layer 1 of fastcifar: knows nothing of models or training. The depthwise and
dilated convolution kernels land here (see the kernels issue); until then the
package only reports whether Triton is importable.
"""

from __future__ import annotations

import importlib.util

__all__ = ["triton_available"]


def triton_available() -> bool:
    """True when the ``triton`` package can be imported on this machine."""
    return importlib.util.find_spec("triton") is not None
