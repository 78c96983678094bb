"""Readers of the CIFAR-10 sources ``fastcifar.data.sources`` accepts: the official python
batches, an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (PNG or JPEG),
and a ``.tar``/``.tar.gz`` of such a tree, streamed; and the torchvision download.
Each returns ``CifarArrays`` or raises ``FastCifarError`` naming the file and the fix.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcifar.errors import FastCifarError

#: The official CIFAR-10 class names, in label order 0..9.
CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BATCHES_DIR = "cifar-10-batches-py"


@dataclass(frozen=True)
class CifarArrays:
    """CIFAR-10 in memory.

    Attributes:
        train_images: uint8 array (50000, 32, 32, 3), HWC, RGB.
        train_labels: int64 array (50000,), values 0..9 in ``CLASSES`` order.
        test_images: uint8 array (10000, 32, 32, 3).
        test_labels: int64 array (10000,).
        source: the resolved source path the arrays came from.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    @property
    def classes(self) -> tuple[str, ...]:
        """The ten class names, in label order (``CLASSES``)."""
        return CLASSES


def download_cifar10(path: Path) -> None:
    """Download the official CIFAR-10 python batches into ``path`` with torchvision
    (``CIFAR10(download=True)``), printing one line first.

    Args:
        path: the folder to download into; made if missing.

    Raises:
        FastCifarError: the download failed (the message names the error and the fix).
    """
    from torchvision.datasets import CIFAR10

    path.mkdir(parents=True, exist_ok=True)
    print(f"data: downloading the official CIFAR-10 into {path}")
    try:
        CIFAR10(root=str(path), train=True, download=True)
    except Exception as exc:  # network errors come in many types
        raise FastCifarError(
            f"could not download CIFAR-10 into {path} ({type(exc).__name__}: {exc}); "
            f"check the network connection, or pass --data with a local copy"
        ) from None


def read_batches(path: Path) -> CifarArrays:
    """The official python batches: pickled dicts with ``data`` (N, 3072) uint8 rows
    (R, G, B planes of 32x32) and ``labels`` (layout from the CIFAR-10 page).

    torchvision's ``CIFAR10`` downloads them (``download``) but does not read them
    here: it verifies every file against the official MD5 sums and answers any other
    batches directory (a re-pickled or partial copy, the tests' small batches) with
    "Dataset not found or corrupted" without naming the file, where this reader names
    the file and the fix in one line.

    Args:
        path: the folder holding ``data_batch_1`` ... ``test_batch``, or their parent
            (``find_batches_dir``).

    Returns:
        The arrays: uint8 (N, 32, 32, 3) images, int64 (N,) labels, train and test.

    Raises:
        FastCifarError: a batch missing, unreadable, or with labels that do not match its
            images (the message names the file and the fix).
    """
    batches = find_batches_dir(path)
    assert batches is not None
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    out = {}
    for split in SPLITS:
        images, labels = [], []
        for name in names[split]:
            f = batches / name
            if not f.is_file():
                raise FastCifarError(
                    f"{batches} has no {name}: the batches directory is incomplete; delete it "
                    f"and run again with --download"
                )
            try:
                with open(f, "rb") as fh:
                    entry = pickle.load(fh, encoding="latin1")
                data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                lab = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as exc:
                raise FastCifarError(
                    f"{f} is not a CIFAR-10 python batch ({type(exc).__name__}: {exc}): delete "
                    f"{batches} and run again with --download"
                ) from None
            if len(lab) != len(data) or lab.min() < 0 or lab.max() >= len(CLASSES):
                raise FastCifarError(
                    f"{f} has labels that do not match its images: delete {batches} and run "
                    f"again with --download"
                )
            images.append(data.transpose(0, 2, 3, 1))
            labels.append(lab)
        out[split] = (np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))
    return CifarArrays(*out["train"], *out["test"], str(path))


def find_batches_dir(path: Path) -> Path | None:
    """The CIFAR-10 python batches folder at ``path``: ``path`` itself or its ``cifar-10-batches-
    py`` subfolder.

    Args:
        path: any path.

    Returns:
        The folder holding ``data_batch_1``, or None.
    """
    if not path.is_dir():
        return None
    if (path / "data_batch_1").is_file():
        return path
    if (path / BATCHES_DIR / "data_batch_1").is_file():
        return path / BATCHES_DIR
    return None


def find_tree_root(path: Path) -> Path | None:
    """The folder that holds train/ or test/: ``path`` itself or its only subfolder.

    Args:
        path: any path.

    Returns:
        That folder, or None.
    """
    if not path.is_dir():
        return None
    if any((path / s).is_dir() for s in SPLITS):
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and any((subdirs[0] / s).is_dir() for s in SPLITS):
        return subdirs[0]
    return None


def read_tree(path: Path) -> CifarArrays:
    """An image-folder tree: ``train/<class>/*.png|jpg`` and ``test/<class>/...``, classes in sorted
    order.

    Args:
        path: the tree, or a folder whose only subfolder is it (``find_tree_root``).

    Returns:
        The arrays: uint8 (N, 32, 32, 3) images, int64 (N,) labels, train and test.

    Raises:
        FastCifarError: a split or class folder missing or empty, or an image that does not
            decode to 32x32 RGB.
    """
    root = find_tree_root(path)
    assert root is not None
    out = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise FastCifarError(
                f"{root} has no {split}/ folder: an image-folder tree needs both "
                f"train/<class>/ and test/<class>/"
            )
        _check_class_dirs(split_dir.name, [p.name for p in split_dir.iterdir() if p.is_dir()], root)
        items: list[tuple[str, int, bytes]] = []
        for label, cls in enumerate(CLASSES):
            files = sorted(
                p for p in (split_dir / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise FastCifarError(
                    f"{split_dir / cls} holds no .png or .jpg images: every class folder "
                    f"needs its images"
                )
            items.extend((str(f), label, f.read_bytes()) for f in files)
        out[split] = _decode(items)
    return CifarArrays(*out["train"], *out["test"], str(path))


def read_archive(path: Path) -> CifarArrays:
    """A tar archive (any compression tar reads) of an image-folder tree, read without unpacking it.

    Args:
        path: the archive.

    Returns:
        The arrays: uint8 (N, 32, 32, 3) images, int64 (N,) labels, train and test.

    Raises:
        FastCifarError: a split without class folders of images, an image that does not
            decode to 32x32 RGB, or a truncated or corrupt archive.
    """
    members: dict[str, dict[str, list[tuple[str, bytes]]]] = {s: {} for s in SPLITS}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = member.name.split("/")
                if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
                    continue
                split, cls, name = parts[-3], parts[-2], parts[-1]
                if split not in members:
                    continue
                f = tar.extractfile(member)
                assert f is not None
                members[split].setdefault(cls, []).append((name, f.read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise FastCifarError(
            f"archive {path} is truncated or corrupt ({type(exc).__name__}: {exc}): "
            f"download or copy it again"
        ) from None

    out = {}
    for split in SPLITS:
        if not members[split]:
            raise FastCifarError(
                f"archive {path} has no {split}/<class>/ images: a CIFAR-10 archive needs "
                f"train/<class>/ and test/<class>/ folders of PNG or JPEG files"
            )
        _check_class_dirs(split, list(members[split]), path)
        items = [
            (f"{path}:{split}/{cls}/{name}", label, data)
            for label, cls in enumerate(CLASSES)
            for name, data in sorted(members[split][cls])
        ]
        out[split] = _decode(items)
    return CifarArrays(*out["train"], *out["test"], str(path))


def _check_class_dirs(split: str, names: Iterable[str], where: Path) -> None:
    names = set(names)
    missing = [c for c in CLASSES if c not in names]
    unknown = sorted(n for n in names if n not in CLASSES and not n.startswith("."))
    if missing:
        raise FastCifarError(
            f"{where}: {split}/ has no folder for class {', '.join(missing)}: CIFAR-10 needs "
            f"one folder per class ({', '.join(CLASSES)})"
        )
    if unknown:
        raise FastCifarError(
            f"{where}: {split}/ has folders that are no CIFAR-10 class ({', '.join(unknown)}): "
            f"remove them or rename them to one of {', '.join(CLASSES)}"
        )


def _decode(items: list[tuple[str, int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
    """Decode (name, label, encoded bytes) into uint8 (N, 32, 32, 3) and int64 (N,)."""
    images = np.empty((len(items), 32, 32, 3), dtype=np.uint8)
    labels = np.empty(len(items), dtype=np.int64)
    for i, (_name, label, img) in enumerate(_decode_iter(items)):
        images[i] = img
        labels[i] = label
    return images, labels


def _decode_iter(items: list[tuple[str, int, bytes]]) -> Iterator[tuple[str, int, np.ndarray]]:
    from PIL import Image, UnidentifiedImageError

    for name, label, data in items:
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                mode, size = im.mode, im.size
                arr = np.asarray(im)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise FastCifarError(
                f"image {name} does not decode ({exc}): replace or delete the file"
            ) from None
        if mode != "RGB" or size != (32, 32):
            raise FastCifarError(
                f"image {name} is {size[0]}x{size[1]} {mode}, not 32x32 RGB: CIFAR-10 images "
                f"must be 32x32 RGB; convert or remove the file"
            )
        yield name, label, arr


def is_tar(path: Path) -> bool:
    """Whether ``path`` is a tar archive (of any compression).

    Args:
        path: any path.

    Returns:
        True for a readable tar archive.
    """
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False
