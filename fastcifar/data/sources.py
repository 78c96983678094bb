"""CIFAR-10 sources: decode once into uint8 arrays, cache them, load them fast.

Three kinds of source are understood:

* the official python batches directory ``cifar-10-batches-py`` (or a folder
  holding it), downloaded there by ``torchvision.datasets.CIFAR10(download=True)``
  (which checks the archive's MD5 sum) when ``download=True``;
* an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` of PNG or
  JPEG files (the tree may also sit one folder down, as in the JPEG archive);
* a ``.tar`` or ``.tar.gz`` of such a tree, read as a stream without unpacking.

Every image must be 32x32 RGB. Files inside a class folder are taken in sorted
name order, so the JPEG copy keeps the official order within each class.

Decoded arrays are cached as an uncompressed ``.npz`` under the cache directory,
keyed by the source's resolved path, size and modification time: a changed
source is decoded again, an unchanged one loads in well under a second.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from fastcifar._io import cache_dir
from fastcifar.data.readers import (
    CifarArrays,
    download_cifar10,
    find_batches_dir,
    find_tree_root,
    is_tar,
    read_archive,
    read_batches,
    read_tree,
)
from fastcifar.errors import FastCifarError

_CACHE_VERSION = 1


def resolve_source(data: str | os.PathLike | None) -> Path:
    """The data source, not yet checked for existence (``load_cifar10`` does).

    Args:
        data: a path as ``--data`` takes it, or None.

    Returns:
        ``data`` if given, else ``$FASTCIFAR_DATA``, else ``<cache>/data`` (where
        ``--download`` puts the official set), with ``~`` expanded.
    """
    if data:
        return Path(data).expanduser()
    if os.environ.get("FASTCIFAR_DATA"):
        return Path(os.environ["FASTCIFAR_DATA"]).expanduser()
    return cache_dir() / "data"


def _existing(given: Path, download: bool) -> Path:
    """``given`` resolved; it must exist unless it is to be downloaded.

    Raises:
        FastCifarError: it does not exist, named as typed and as resolved.
    """
    path = given.resolve()
    if not path.exists() and not download:
        where = f"{given}" if str(given) == str(path) else f"{given} (that is {path})"
        raise FastCifarError(
            f"data path {where} does not exist: pass --data with a CIFAR-10 directory or "
            f".tar/.tar.gz archive, or add --download to fetch the official set there"
        )
    return path


def load_cifar10(
    data: str | os.PathLike | None = None,
    download: bool = False,
    cache: Path | None = None,
    verbose: bool = False,
) -> CifarArrays:
    """Load CIFAR-10 from a source (see the module docstring), using the array cache.

    Args:
        data: a batches directory, an image-folder tree or a tar archive; ``None`` falls
            back to ``$FASTCIFAR_DATA``, then ``<cache>/data``.
        download: fetch the official set with torchvision into ``data`` when it holds none.
        cache: directory for the decoded arrays (default: ``cache_dir()``).
        verbose: print one line when decoding (it takes seconds) or loading the cache.

    Returns:
        The arrays: uint8 (N, 32, 32, 3) images, int64 (N,) labels, train and test, and the
        source's path.

    Raises:
        FastCifarError: the path does not exist, is no known kind of source, misses a
            class or split, holds an image that does not decode or is not 32x32 RGB, or
            is a truncated archive.
    """
    path = _existing(resolve_source(data), download)
    if download and find_batches_dir(path) is None and not _is_image_tree_or_archive(path):
        download_cifar10(path)

    kind, fingerprint = _identify(path)
    cache = Path(cache) if cache is not None else cache_dir()
    key = hashlib.sha256(f"{_CACHE_VERSION}|{kind}|{path}|{fingerprint}".encode()).hexdigest()
    cached = cache / f"cifar10-{key[:20]}.npz"
    if cached.exists():
        try:
            with np.load(cached) as z:
                arrays = CifarArrays(
                    z["train_images"],
                    z["train_labels"],
                    z["test_images"],
                    z["test_labels"],
                    str(path),
                )
            if verbose:
                print(f"data: {path} (cached arrays {cached})")
            return arrays
        except (OSError, KeyError, ValueError, zlib.error):
            cached.unlink(missing_ok=True)  # a broken cache file is decoded again

    if verbose:
        print(f"data: decoding {path} ({kind}) once; later starts load the cached arrays")
    if kind == "batches":
        arrays = read_batches(path)
    elif kind == "archive":
        arrays = read_archive(path)
    else:
        arrays = read_tree(path)
    _write_cache(cached, arrays)
    return arrays


# --------------------------------------------------------------------------- identify


def _is_image_tree_or_archive(path: Path) -> bool:
    return (path.is_file() and tarfile.is_tarfile(path)) or find_tree_root(path) is not None


def _identify(path: Path) -> tuple[str, str]:
    """(kind, fingerprint) of a source; the fingerprint changes when its content does."""
    if path.is_file():
        if not is_tar(path):
            raise FastCifarError(
                f"{path} is not a CIFAR-10 source: pass a cifar-10-batches-py directory, "
                f"an image-folder tree with train/<class>/ and test/<class>/, or a .tar/.tar.gz "
                f"of such a tree"
            )
        st = path.stat()
        return "archive", f"{st.st_size}:{st.st_mtime_ns}"
    batches = find_batches_dir(path)
    if batches is not None:
        return "batches", _dir_fingerprint(batches)
    root = find_tree_root(path)
    if root is not None:
        return "tree", _dir_fingerprint(root)
    raise FastCifarError(
        f"{path} is not a CIFAR-10 source: it holds neither cifar-10-batches-py nor "
        f"train/ and test/ folders; pass one of those, a .tar/.tar.gz of the image tree, "
        f"or add --download to fetch the official set"
    )


def _dir_fingerprint(root: Path) -> str:
    count, size, newest = 0, 0, 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            count += 1
            size += st.st_size
            newest = max(newest, st.st_mtime_ns)
    return f"{count}:{size}:{newest}"


# --------------------------------------------------------------------------- readers


def _write_cache(target: Path, arrays: CifarArrays) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            train_images=arrays.train_images,
            train_labels=arrays.train_labels,
            test_images=arrays.test_images,
            test_labels=arrays.test_labels,
        )
        os.replace(tmp, target)
    except OSError as exc:  # a read-only cache only costs the next start a decode
        print(f"data: could not cache the decoded arrays in {target.parent} ({exc})")


# --------------------------------------------------------------------------- statistics


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images (N, H, W, C), in [0, 1] units.

    Computed exactly from per-channel 256-bin histograms, so it needs no float copy of
    the data set. For the official training set this gives the familiar
    (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616).

    Args:
        images: uint8 (N, H, W, C).

    Returns:
        (means, stds): C floats each, in [0, 1] units.

    Raises:
        ValueError: ``images`` not uint8 or not four-dimensional.
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 (N, H, W, C) images, got {images.dtype} {images.shape}")
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[-1]):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        n = hist.sum()
        mean = float((hist * values).sum() / n)
        var = float((hist * (values - mean) ** 2).sum() / n)
        means.append(mean)
        stds.append(var**0.5)
    return tuple(means), tuple(stds)


def stratified_subset(
    labels: np.ndarray, n: int, seed: int = 0, flag: str = "--train-subset"
) -> np.ndarray:
    """Indices of ``n`` samples with the classes as balanced as ``n`` allows, sorted.

    Each class gets ``n // K`` samples (``K`` classes) and the first ``n % K`` classes one
    more; within a class the samples are drawn at random with ``seed``.

    Args:
        labels: int64 (N,) labels.
        n: samples to take.
        seed: the draw's seed.
        flag: the flag the message names.

    Returns:
        int64 (n,) indices, sorted.

    Raises:
        FastCifarError: ``n`` is below 1 or above the number of samples.
    """
    classes = np.unique(labels)
    if not 1 <= n <= len(labels):
        raise FastCifarError(f"{flag} {n} is out of range: pass a number from 1 to {len(labels)}")
    rng = np.random.default_rng(seed)
    base, extra = divmod(n, len(classes))
    picked = []
    for i, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        take = min(len(idx), base + (1 if i < extra else 0))
        picked.append(rng.choice(idx, size=take, replace=False))
    out = np.sort(np.concatenate(picked))
    if len(out) < n:  # a class ran short: fill from the rest at random
        rest = np.setdiff1d(np.arange(len(labels)), out)
        out = np.sort(np.concatenate([out, rng.choice(rest, size=n - len(out), replace=False)]))
    return out


def eval_split(arrays, test_subset: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation images (N, 32, 32, 3) uint8 and labels (N,) of ``arrays``
    (``CifarArrays``): all of them, or ``test_subset`` of them, class-balanced with seed 0
    (the same subset for training's per-epoch evaluation and for ``fastcifar.evaluate``).

    Args:
        arrays: the data set.
        test_subset: images to keep, or None for all.

    Returns:
        (images, labels).

    Raises:
        FastCifarError: ``test_subset`` out of range (named as ``--test-subset``).
    """
    x, y = arrays.test_images, arrays.test_labels
    if test_subset:
        idx = stratified_subset(y, test_subset, seed=0, flag="--test-subset")
        x, y = x[idx], y[idx]
    return x, y
