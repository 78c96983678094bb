"""The ``dali`` loader backend: each recipe's augmentation as an NVIDIA DALI pipeline.

The pipeline reads the uint8 arrays through an external source (no files), augments on
the GPU (``device_id`` set) or on the CPU (``device_id=None``, which is how the tests run
it) and hands back normalised float32 tensors (N, 3, 32, 32), channels_last when asked,
on the training device.

Each recipe's transforms, as in ``fastcifar.data.augment`` (albumentations):

* flip: ``fn.flip`` with a per-sample coin;
* shift-scale-rotate and rotation: one ``fn.warp_affine`` whose matrix is composed from
  ``fn.transforms`` (rotation and scale about the centre, translation); a coin picks the
  identity when the transform is not applied. DALI has no reflect border: the warp
  clamps (repeats the edge pixel) where albumentations reflects;
* pad and random crop: reflect-101 padding built from mirrored slices, then a random
  ``fn.slice``; constant padding through ``out_of_bounds_policy="pad"``;
* cutout and coarse dropout: ``fn.erase`` with a random anchor (a 16x16 hole inside the
  image, or clipped at the border for the 1.x Cutout), an empty shape when not applied;
* to-gray: ``fn.hsv`` with saturation 0; colour jitter: ``fn.hsv`` and
  ``fn.brightness_contrast`` (contrast about mid-grey, where albumentations uses the
  image mean);
* normalise: ``fn.crop_mirror_normalize`` to CHW float.

Every epoch builds its pipeline with a seed made from (seed, epoch) and its own order,
so a seed reproduces the same batches and a resumed run the same epoch. DALI cannot
reseed a built pipeline, and one pipeline per run would make epoch k's augmentation
depend on the epochs run before it in the same process (a resumed run would differ);
the rebuild costs 20-30 ms an epoch on the CPU (measured, 2 cores, DALI 2.4).

Batches reach torch through DALI's PyTorch plugin (``feed_ndarray`` into a tensor
allocated on the training device, on PyTorch's current CUDA stream): on a GPU the images
never pass through host memory.

Raises ``FastCifarError`` when DALI is not installed (``pip install fastcifar[dali]``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from fastcifar.data.loaders import EpochLoader, LoaderConfig
from fastcifar.errors import FastCifarError

#: augmentations the DALI backend implements (every recipe's)
DALI_AUGMENTATIONS = (
    "s7",
    "attention",
    "c1c2c3c40",
    "resnet18",
    "resnet18_ln",
    "flip_translate",
    "none",
)


def dali_available() -> bool:
    """Whether NVIDIA DALI (``nvidia.dali``) can be imported here.

    Returns:
        True when it can.
    """
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _require_dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise FastCifarError(
            "--loader dali needs NVIDIA DALI: pip install 'fastcifar[dali]' (or "
            "nvidia-dali-cuda130), or use --loader albumentations"
        ) from None


# ------------------------------------------------------------------------ graph pieces


def _coin(p: float):
    from nvidia.dali import fn, types

    return fn.cast(fn.random.coin_flip(probability=p), dtype=types.FLOAT)


def _affine(x, coin, rotate: float, scale: float = 0.0, shift: float = 0.0):
    """Rotation +-rotate degrees, scale 1 +- scale, shift +- shift * 32 pixels, about the
    image centre; identity where ``coin`` is 0. Linear interpolation, edge clamped."""
    from nvidia.dali import fn, types

    centre = (16.0, 16.0)
    angle = fn.random.uniform(range=(-rotate, rotate)) * coin
    m = fn.transforms.rotation(angle=angle, center=centre)
    if scale:
        s = 1.0 + (fn.random.uniform(range=(-scale, scale)) * coin)
        m = fn.transforms.scale(m, scale=fn.stack(s, s), center=centre)
    if shift:
        off = fn.random.uniform(range=(-shift * 32, shift * 32), shape=(2,)) * coin
        m = fn.transforms.translation(m, offset=off)
    return fn.warp_affine(x, matrix=m, inverse_map=False, interp_type=types.INTERP_LINEAR)


def _reflect_pad(x, pad: int):
    """Reflect-101 padding of an HWC 32x32 image by ``pad`` pixels (mirrored slices)."""
    from nvidia.dali import fn

    def strip(img, axis: str, start: int, size: int, length: int):
        anchor = (start, 0) if axis == "H" else (0, start)
        shape = (size, length) if axis == "H" else (length, size)
        return fn.slice(
            img, anchor, shape, axis_names="HW", normalized_anchor=False, normalized_shape=False
        )

    left = fn.flip(strip(x, "W", 1, pad, 32), horizontal=1)
    right = fn.flip(strip(x, "W", 31 - pad, pad, 32), horizontal=1)
    x = fn.cat(left, x, right, axis_name="W")
    w = 32 + 2 * pad
    top = fn.flip(strip(x, "H", 1, pad, w), vertical=1, horizontal=0)
    bottom = fn.flip(strip(x, "H", 31 - pad, pad, w), vertical=1, horizontal=0)
    return fn.cat(top, x, bottom, axis_name="H")


def _random_crop(x, pad: int, fill=None):
    """A random 32x32 window of an image padded by ``pad`` (already padded when ``fill`` is
    None; else padded with the constant ``fill`` on the fly)."""
    from nvidia.dali import fn

    # a discrete uniform offset 0..2 pad (``values=``: a float range cast to int is not one)
    off = fn.random.uniform(values=[float(v) for v in range(2 * pad + 1)], shape=(2,))
    anchor = off if fill is None else off - float(pad)
    kw = {} if fill is None else dict(out_of_bounds_policy="pad", fill_values=list(fill))
    return fn.slice(
        x,
        anchor,
        (32.0, 32.0),
        axis_names="HW",
        normalized_anchor=False,
        normalized_shape=False,
        **kw,
    )


def _hole(x, coin, fill, clipped: bool, canvas: int = 48):
    """One 16x16 erase where ``coin`` is 1. ``clipped``: the hole's top-left is uniform
    over a ``canvas``-sized square centred on the image, so the hole may leave the image
    (48: the 1.x Cutout, centre uniform over the image; 64: seed 003's pad-to-64); else
    the hole lies wholly inside the image (CoarseDropout)."""
    from nvidia.dali import fn

    margin = (canvas - 32) // 2 if clipped else 0
    positions = 32 + 2 * margin - 16 + 1  # top-left positions per axis
    pos = fn.random.uniform(values=[float(v) for v in range(positions)], shape=(2,))
    anchor = pos - float(margin)
    size = coin * 16.0
    return fn.erase(
        x,
        anchor=anchor,
        shape=fn.stack(size, size),
        axis_names="HW",
        fill_value=list(fill),
        normalized_anchor=False,
        normalized_shape=False,
    )


def _to_gray(x, coin):
    from nvidia.dali import fn

    return fn.hsv(x, saturation=1.0 - coin)


def build_graph(name: str, images, mean: Sequence[float], std: Sequence[float]):
    """The DALI operators of augmentation ``name`` on uint8 HWC ``images``; returns float
    CHW normalised output.

    Args:
        name: a name of ``DALI_AUGMENTATIONS``.
        images: the DALI data node of uint8 (32, 32, 3) images.
        mean: per-channel mean, [0, 1] units.
        std: per-channel standard deviation, [0, 1] units.

    Returns:
        The DALI node of float (3, 32, 32) normalised images.
    """
    from nvidia.dali import fn, types

    m255 = [255.0 * v for v in mean]
    s255 = [255.0 * v for v in std]
    x = images
    mean_fill = [float(v) for v in mean]  # the channel means as raw numbers
    if name in ("s7", "c1c2c3c40"):
        x = fn.flip(x, horizontal=fn.random.coin_flip(probability=0.5))
        x = _affine(x, _coin(0.5), rotate=45.0, scale=0.1, shift=0.0625)
        if name == "s7":
            x = _to_gray(x, _coin(0.5))
        else:  # black hole on the uint8 image, before Normalize
            x = _hole(x, _coin(0.5), (0, 0, 0), clipped=False)
    elif name == "attention":
        x = _affine(x, _coin(0.5), rotate=5.0)
    elif name == "resnet18":
        jitter = _coin(0.5)
        x = fn.hsv(
            x,
            saturation=1.0 + fn.random.uniform(range=(-0.2, 0.2)) * jitter,
            hue=fn.random.uniform(range=(-36.0, 36.0)) * jitter,
        )
        x = fn.brightness_contrast(x, contrast=1.0 + fn.random.uniform(range=(-0.1, 0.1)) * jitter)
        x = _to_gray(x, _coin(0.2))
        x = _random_crop(_reflect_pad(x, 4), 4)
        x = fn.flip(x, horizontal=fn.random.coin_flip(probability=0.5))
    elif name == "resnet18_ln":
        x = _random_crop(_reflect_pad(x, 4), 4)
        x = _affine(x, _coin(0.5), rotate=5.0)
        x = _hole(x, _coin(0.5), [round(v) for v in m255], clipped=False)
    elif name == "flip_translate":
        x = fn.flip(x, horizontal=fn.random.coin_flip(probability=0.5))
        x = _random_crop(_reflect_pad(x, 2), 2)
    x = fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="HWC", mean=m255, std=s255)
    # transforms that follow Normalize in the seeds' pipelines work in normalised units
    if name == "s7":
        x = _hole(x, _coin(0.5), mean_fill, clipped=False)
    elif name == "attention":
        x = _random_crop(x, 4, fill=mean_fill)
        x = _hole(x, _coin(0.5), (0.0, 0.0, 0.0), clipped=True)
    elif name == "resnet18":
        x = _hole(x, _coin(1.0), (0.0, 0.0, 0.0), clipped=True, canvas=64)
    return fn.transpose(x, perm=[2, 0, 1])


# ------------------------------------------------------------------------ the loader


class _EpochSource:
    """External source: one epoch's batches (index arrays, this rank's share of every
    step), then StopIteration."""

    def __init__(self, images, labels, batches):
        self.images, self.labels, self.batches, self.i = images, labels, batches, 0

    def __call__(self):
        if self.i >= len(self.batches):
            raise StopIteration
        idx = self.batches[self.i]
        self.i += 1
        return [self.images[j] for j in idx], [self.labels[j : j + 1] for j in idx]


class DaliLoader(EpochLoader):
    """NVIDIA DALI loader over uint8 (N, 32, 32, 3) images and int64 (N,) labels, configured
    by ``LoaderConfig`` (``config.workers`` DALI threads, at least 1; ``augmentation`` a
    name in ``DALI_AUGMENTATIONS``).

    Runs on the GPU when the device is CUDA, else CPU-only (``device_id=None``).

    Args:
        images: uint8 (N, 32, 32, 3), host memory.
        labels: int64 (N,).
        config: the batch size, device, dtype, layout, workers, augmentation and seed.

    Raises:
        FastCifarError: DALI is not installed, or it lacks the augmentation.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: LoaderConfig):
        _require_dali()
        super().__init__(config)
        if config.augmentation not in DALI_AUGMENTATIONS:
            raise FastCifarError(
                f"--loader dali does not implement augmentation {config.augmentation!r}: use "
                f"--loader albumentations"
            )
        self.images = np.ascontiguousarray(images)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.dataset = self.images
        self.augmentation = config.augmentation
        self.mean, self.std = tuple(config.mean), tuple(config.std)
        self.threads = max(config.workers, 1)

    def _pipeline(self):
        from nvidia.dali import fn, pipeline_def

        epoch_seed = self.epoch_seed(31)
        rng = np.random.default_rng(epoch_seed)  # the same order on every rank
        n = len(self.images)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        batches = [g[part] for g, part in self.global_batches(order)]
        source = _EpochSource(self.images, self.labels, batches)
        gpu = self.device.type == "cuda"

        @pipeline_def(
            batch_size=self.batch_size,
            num_threads=self.threads,
            seed=epoch_seed + 1_000 * self.rank,  # each rank its own augmentation stream
            device_id=(self.device.index or 0) if gpu else None,
        )
        def pipe():
            images, labels = fn.external_source(
                source=source, num_outputs=2, batch=True, layout=["HWC", ""]
            )
            if gpu:
                images = images.gpu()
            return build_graph(self.augmentation, images, self.mean, self.std), labels

        p = pipe()
        p.build()
        return p

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        p = self._pipeline()
        for _ in range(len(self)):
            images, labels = p.run()
            x = _to_torch(images, self.device).to(self.dtype)
            y = _to_torch(labels, torch.device("cpu")).reshape(-1).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
        del p


def _to_torch(batch, device: torch.device) -> torch.Tensor:
    """A DALI batch (TensorListCPU or TensorListGPU of equal-shaped samples) as a new torch
    tensor (N, *sample shape) on ``device``, copied by DALI's PyTorch plugin
    (``feed_ndarray``): device to device on the GPU, on PyTorch's current stream, with no
    round trip through the host."""
    from nvidia.dali.plugin.pytorch import feed_ndarray
    from nvidia.dali.plugin.pytorch.torch_utils import to_torch_type

    dense = batch.as_tensor()
    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(dense, out, cuda_stream=stream)
    return out
