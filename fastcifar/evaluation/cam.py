"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017) through the ``grad-cam`` package, on an eager
float32 copy of the model: grad-cam cannot take bfloat16 and does not see hooks added
after torch.compile, and PyTorch's convolutions replace the Triton ones."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fastcifar.errors import FastCifarError

__all__ = ["eager_float32_copy", "grad_cam", "overlay"]


def eager_float32_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that Grad-CAM can hook: the eager module behind
    torch.compile, float32, contiguous memory, PyTorch's convolutions (not Triton's).

    Args:
        model: the trained model (compiled or not, any dtype and layout); not modified.

    Returns:
        The copy, on the model's device, in the model's train or eval mode.
    """
    import copy

    from fastcifar.nn.fusion import revert_all

    base = getattr(model, "_orig_mod", model)
    clone = copy.deepcopy(base).float().to(memory_format=torch.contiguous_format)
    revert_all(clone)  # every fused module's hooks then see the tensors PyTorch's would
    return clone


def grad_cam(model: nn.Module, images: torch.Tensor, targets, layer: str) -> np.ndarray:
    """Grad-CAM maps (K, H, W) in [0, 1] for ``targets`` (class per image) at ``layer``.

    Runs on an eager float32 copy with gradients on; ``model`` is left as it was.

    Args:
        model: the trained model; not modified.
        images: normalised float (K, 3, H, W) on the model's device.
        targets: the class each map explains, one per image.
        layer: the qualified name of the module whose activations are weighted.

    Returns:
        float32 (K, H, W) maps.

    Raises:
        FastCifarError: ``layer`` is not a module of the model (the message lists some).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    clone = eager_float32_copy(model)
    try:
        target_layer = clone.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in clone.named_children()]
        raise FastCifarError(
            f"--cam-layers {layer!r} is not a layer of the model: try one of {', '.join(names)}"
        ) from None
    device = next(clone.parameters()).device
    with torch.enable_grad(), GradCAM(model=clone, target_layers=[target_layer]) as cam:
        maps = cam(
            input_tensor=images.float().to(device),
            targets=[ClassifierOutputTarget(int(t)) for t in targets],
        )
    return np.asarray(maps, dtype=np.float32)


def overlay(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The Grad-CAM maps laid over their images in the jet colour scale (pytorch-grad-cam's
    ``show_cam_on_image``).

    Args:
        images: uint8 (K, H, W, 3).
        maps: float (K, H, W) in [0, 1].

    Returns:
        uint8 (K, H, W, 3).
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return np.stack(
        [
            show_cam_on_image(img.astype(np.float32) / 255, m, use_rgb=True)
            for img, m in zip(images, maps, strict=True)
        ]
    )
