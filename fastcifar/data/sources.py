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
import io
import os
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
_CACHE_VERSION = 1


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
        return CLASSES


def cache_dir() -> Path:
    """The cache directory: ``$FASTCIFAR_CACHE``, else ``$XDG_CACHE_HOME/fastcifar``, else
    ``~/.cache/fastcifar``."""
    if os.environ.get("FASTCIFAR_CACHE"):
        return Path(os.environ["FASTCIFAR_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fastcifar"


def resolve_source(data: str | os.PathLike | None) -> Path:
    """The data source: ``data`` if given, else ``$FASTCIFAR_DATA``, else ``<cache>/data``
    (where ``--download`` puts the official set)."""
    if data:
        return Path(data).expanduser()
    if os.environ.get("FASTCIFAR_DATA"):
        return Path(os.environ["FASTCIFAR_DATA"]).expanduser()
    return cache_dir() / "data"


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

    Raises:
        FastCifarError: the path does not exist, is no known kind of source, misses a
            class or split, holds an image that does not decode or is not 32x32 RGB, or
            is a truncated archive.
    """
    path = resolve_source(data).resolve()
    if not path.exists() and not download:
        raise FastCifarError(
            f"data path {path} does not exist: pass --data with a CIFAR-10 directory or "
            f".tar/.tar.gz archive, or add --download to fetch the official set there"
        )
    if download and _find_batches_dir(path) is None and not _is_image_tree_or_archive(path):
        _download(path)

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
        arrays = _read_batches(path)
    elif kind == "archive":
        arrays = _read_archive(path)
    else:
        arrays = _read_tree(path)
    _write_cache(cached, arrays)
    return arrays


# --------------------------------------------------------------------------- identify


def _find_batches_dir(path: Path) -> Path | None:
    if not path.is_dir():
        return None
    if (path / "data_batch_1").is_file():
        return path
    if (path / BATCHES_DIR / "data_batch_1").is_file():
        return path / BATCHES_DIR
    return None


def _find_tree_root(path: Path) -> Path | None:
    """The folder that holds train/ or test/: ``path`` itself or its only subfolder."""
    if not path.is_dir():
        return None
    if any((path / s).is_dir() for s in SPLITS):
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and any((subdirs[0] / s).is_dir() for s in SPLITS):
        return subdirs[0]
    return None


def _is_image_tree_or_archive(path: Path) -> bool:
    return (path.is_file() and tarfile.is_tarfile(path)) or _find_tree_root(path) is not None


def _identify(path: Path) -> tuple[str, str]:
    """(kind, fingerprint) of a source; the fingerprint changes when its content does."""
    if path.is_file():
        if not _is_tar(path):
            raise FastCifarError(
                f"{path} is not a CIFAR-10 source: pass a cifar-10-batches-py directory, "
                f"an image-folder tree with train/<class>/ and test/<class>/, or a .tar/.tar.gz "
                f"of such a tree"
            )
        st = path.stat()
        return "archive", f"{st.st_size}:{st.st_mtime_ns}"
    batches = _find_batches_dir(path)
    if batches is not None:
        return "batches", _dir_fingerprint(batches)
    root = _find_tree_root(path)
    if root is not None:
        return "tree", _dir_fingerprint(root)
    raise FastCifarError(
        f"{path} is not a CIFAR-10 source: it holds neither cifar-10-batches-py nor "
        f"train/ and test/ folders; pass one of those, a .tar/.tar.gz of the image tree, "
        f"or add --download to fetch the official set"
    )


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


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


def _download(path: Path) -> None:
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


def _read_batches(path: Path) -> CifarArrays:
    """The official python batches: pickled dicts with ``data`` (N, 3072) uint8 rows
    (R, G, B planes of 32x32) and ``labels`` (layout from the CIFAR-10 page)."""
    batches = _find_batches_dir(path)
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


def _read_tree(path: Path) -> CifarArrays:
    root = _find_tree_root(path)
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


def _read_archive(path: Path) -> CifarArrays:
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
