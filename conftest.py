"""Shared by tests/ and benchmarks/: items marked ``cuda`` skip where torch sees no GPU."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    import torch

    no_gpu = pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (none found)"
    )
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(no_gpu)
