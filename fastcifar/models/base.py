"""What the training engine may ask of every model: ``CifarNet``, the base class of every
model ``create_model`` builds. The engine calls these hooks on any model; the defaults
do nothing, and a network that needs them (the speed-run network's whitening layer)
overrides them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class CifarNet(nn.Module):
    """An ``nn.Module`` taking float (N, 3, H, W) images (H = W = 32, or the speed run's
    progressive resolutions) and returning (N, 10) logits or log-probabilities
    (``ModelInfo.outputs`` says which), with the engine's two hooks.

    Args:
        *args: the subclass's own constructor arguments (``nn.Module`` takes none).
        **kwargs: the same, by name.
    """

    def init_from_data(
        self, images, n: int, seed: int, mean: Sequence[float], std: Sequence[float]
    ) -> bool:
        """Data-dependent initialisation before the first step, from a seeded sample of
        ``n`` of the training ``images`` (uint8 (N, 32, 32, 3) in host memory, or uint8
        (N, 3, 32, 32) on the device); ``mean``, ``std`` per channel in [0, 1] units.
        Returns whether there was anything to initialise (the engine times it then).
        Default: nothing.

        Args:
            images: the training images.
            n: images to sample.
            seed: the sample's seed.
            mean: per-channel mean, [0, 1] units.
            std: per-channel standard deviation, [0, 1] units.

        Returns:
            True when something was initialised.
        """
        return False

    def set_whiten_bias_trainable(self, trains: bool) -> None:
        """Let the whitening layer's bias train or freeze it (no gradient at all). Default:
        there is no whitening layer.

        Args:
            trains: True to train the bias, False to freeze it.
        """
