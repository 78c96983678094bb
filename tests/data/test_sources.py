import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastcifar.data.sources as sources
from fastcifar import FastCifarError
from fastcifar.data import CLASSES, channel_stats, load_cifar10, resolve_source, stratified_subset
from tests.conftest import make_tar, make_tree


def test_image_tree_decodes_exactly(tmp_path):
    written = make_tree(tmp_path / "tree", per_class=3)
    a = load_cifar10(tmp_path / "tree", cache=tmp_path / "c")
    np.testing.assert_array_equal(a.train_images, written["train"][0])
    np.testing.assert_array_equal(a.train_labels, written["train"][1])
    np.testing.assert_array_equal(a.test_images, written["test"][0])
    assert a.train_images.dtype == np.uint8 and a.train_images.shape == (30, 32, 32, 3)
    assert a.train_labels.dtype == np.int64


def test_tree_one_folder_down_and_jpeg(tmp_path):
    make_tree(tmp_path / "outer" / "cifar10-jpeg", per_class=1, suffix=".jpg")
    a = load_cifar10(tmp_path / "outer", cache=tmp_path / "c")
    assert a.train_images.shape == (10, 32, 32, 3)
    assert list(a.train_labels) == list(range(10))


def test_tar_gz_matches_the_tree(tmp_path):
    written = make_tree(tmp_path / "tree", per_class=2)
    archive = make_tar(tmp_path / "tree", tmp_path / "data.tar.gz")
    a = load_cifar10(archive, cache=tmp_path / "c")
    np.testing.assert_array_equal(a.train_images, written["train"][0])
    np.testing.assert_array_equal(a.test_labels, written["test"][1])


def _write_batches(root, written):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    train_x, train_y = written["train"]
    chunks = np.array_split(np.arange(len(train_y)), 5)
    for i, idx in enumerate(chunks, start=1):
        rows = train_x[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1)
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": rows, "labels": train_y[idx].tolist()}, f)
    test_x, test_y = written["test"]
    with open(d / "test_batch", "wb") as f:
        pickle.dump(
            {
                "data": test_x.transpose(0, 3, 1, 2).reshape(len(test_y), -1),
                "labels": test_y.tolist(),
            },
            f,
        )
    return d


def test_python_batches_directory_and_its_parent(tmp_path):
    written = make_tree(tmp_path / "tree", per_class=1)
    d = _write_batches(tmp_path / "root", written)
    for source in (d, d.parent):
        a = load_cifar10(source, cache=tmp_path / "c")
        np.testing.assert_array_equal(a.train_images, written["train"][0])
        np.testing.assert_array_equal(a.test_labels, written["test"][1])


def test_cache_is_used_and_a_changed_source_decodes_again(tmp_path, monkeypatch):
    make_tree(tmp_path / "tree", per_class=1)
    archive = make_tar(tmp_path / "tree", tmp_path / "a.tar.gz")
    first = load_cifar10(archive, cache=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1

    def boom(path):
        raise AssertionError("decoded again although the cache was valid")

    monkeypatch.setattr(sources, "read_archive", boom)
    second = load_cifar10(archive, cache=tmp_path / "c")
    np.testing.assert_array_equal(first.train_images, second.train_images)

    # rewrite the archive with other pixels: the cache key changes, so it decodes again
    monkeypatch.undo()
    (tmp_path / "tree2").mkdir()
    written = make_tree(tmp_path / "tree2" / "x", per_class=1, seed=5)
    make_tar(tmp_path / "tree2" / "x", archive)
    os.utime(archive, (time.time() + 5, time.time() + 5))
    third = load_cifar10(archive, cache=tmp_path / "c")
    np.testing.assert_array_equal(third.train_images, written["train"][0])


def test_source_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCIFAR_DATA", str(tmp_path / "env"))
    assert resolve_source(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_source(None) == tmp_path / "env"
    monkeypatch.delenv("FASTCIFAR_DATA")
    monkeypatch.setenv("FASTCIFAR_CACHE", str(tmp_path / "cache"))
    assert resolve_source(None) == tmp_path / "cache" / "data"


def test_channel_stats_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    mean, std = channel_stats(x)
    f = x.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, f.std(0), rtol=1e-12)


def test_stratified_subset_is_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    idx = stratified_subset(labels, 205, seed=3)
    counts = np.bincount(labels[idx], minlength=10)
    assert len(idx) == len(set(idx)) == 205
    assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(idx, stratified_subset(labels, 205, seed=3))
    assert not np.array_equal(idx, stratified_subset(labels, 205, seed=4))
    with pytest.raises(FastCifarError, match="out of range"):
        stratified_subset(labels, 0)


# ---------------------------------------------------------------- bad input


def test_missing_path(tmp_path):
    with pytest.raises(FastCifarError, match="does not exist.*--download"):
        load_cifar10(tmp_path / "nope", cache=tmp_path / "c")


def test_a_mistyped_relative_path_is_named_as_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FastCifarError) as err:
        load_cifar10("../shared/data/cifar10.tar.gz", cache=tmp_path / "c")
    typed = "../shared/data/cifar10.tar.gz"
    resolved = (tmp_path / typed).resolve()
    assert str(err.value).startswith(f"data path {typed} (that is {resolved}) does not exist")


def test_file_that_is_no_source(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(FastCifarError, match="is not a CIFAR-10 source"):
        load_cifar10(f, cache=tmp_path / "c")


def test_directory_that_is_no_source(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(FastCifarError, match="is not a CIFAR-10 source"):
        load_cifar10(tmp_path / "empty", cache=tmp_path / "c")


def test_missing_class(tmp_path):
    make_tree(tmp_path / "t", per_class=1)
    for f in (tmp_path / "t" / "test" / "frog").iterdir():
        f.unlink()
    (tmp_path / "t" / "test" / "frog").rmdir()
    with pytest.raises(FastCifarError, match="test/ has no folder for class frog"):
        load_cifar10(tmp_path / "t", cache=tmp_path / "c")


def test_missing_split(tmp_path):
    make_tree(tmp_path / "t", per_class=1)
    import shutil

    shutil.rmtree(tmp_path / "t" / "test")
    with pytest.raises(FastCifarError, match="has no test/ folder"):
        load_cifar10(tmp_path / "t", cache=tmp_path / "c")


def test_missing_split_in_archive(tmp_path):
    make_tree(tmp_path / "t", per_class=1)
    import shutil

    shutil.rmtree(tmp_path / "t" / "train")
    archive = make_tar(tmp_path / "t", tmp_path / "a.tar.gz")
    with pytest.raises(FastCifarError, match="has no train/<class>/ images"):
        load_cifar10(archive, cache=tmp_path / "c")


@pytest.mark.parametrize(
    "size,mode,expect",
    [((32, 32), "L", "32x32 L, not 32x32 RGB"), ((40, 32), "RGB", "40x32 RGB, not 32x32 RGB")],
)
def test_wrong_image_names_the_file(tmp_path, size, mode, expect):
    make_tree(tmp_path / "t", per_class=1)
    bad = tmp_path / "t" / "train" / "cat" / "0000.png"
    Image.new(mode, size).save(bad)
    with pytest.raises(FastCifarError, match=expect) as e:
        load_cifar10(tmp_path / "t", cache=tmp_path / "c")
    assert str(bad) in str(e.value)


def test_undecodable_image_names_the_file(tmp_path):
    make_tree(tmp_path / "t", per_class=1)
    bad = tmp_path / "t" / "test" / "ship" / "0000.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(FastCifarError, match="does not decode") as e:
        load_cifar10(tmp_path / "t", cache=tmp_path / "c")
    assert str(bad) in str(e.value)


def test_truncated_archive(tmp_path):
    make_tree(tmp_path / "t", per_class=3)
    archive = make_tar(tmp_path / "t", tmp_path / "a.tar.gz")
    data = archive.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(FastCifarError, match="truncated or corrupt"):
        load_cifar10(cut, cache=tmp_path / "c")


def test_broken_batch_file(tmp_path):
    written = make_tree(tmp_path / "tree", per_class=1)
    d = _write_batches(tmp_path / "root", written)
    (d / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(FastCifarError, match="data_batch_3 is not a CIFAR-10 python batch"):
        load_cifar10(d, cache=tmp_path / "c")


# ---------------------------------------------------------------- the real data


@pytest.mark.slow
def test_real_archive(real_archive):
    a = load_cifar10(real_archive)
    assert a.train_images.shape == (50000, 32, 32, 3)
    assert a.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(a.train_labels).tolist() == [5000] * 10
    assert np.bincount(a.test_labels).tolist() == [1000] * 10
    assert a.classes == CLASSES
    mean, std = channel_stats(a.train_images)
    # the official set's statistics, to within what JPEG re-encoding moves them
    np.testing.assert_allclose(mean, (0.4914, 0.4822, 0.4465), atol=3e-3)
    np.testing.assert_allclose(std, (0.2470, 0.2435, 0.2616), atol=3e-3)
    again = load_cifar10(real_archive)  # from the cache
    np.testing.assert_array_equal(again.test_images[:50], a.test_images[:50])


def test_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets

    class Offline:
        def __init__(self, root, train=True, download=False):
            assert download and root == str(tmp_path / "dl")
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(FastCifarError, match="could not download CIFAR-10 .*--data"):
        load_cifar10(tmp_path / "dl", download=True, cache=tmp_path / "c")


def test_download_then_load_the_batches(tmp_path, monkeypatch):
    import torchvision.datasets

    written = make_tree(tmp_path / "tree", per_class=1)

    class FakeDownload:  # stands in for the network: leaves what torchvision leaves
        def __init__(self, root, train=True, download=False):
            _write_batches(Path(root), written)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeDownload)
    a = load_cifar10(tmp_path / "dl", download=True, cache=tmp_path / "c")
    np.testing.assert_array_equal(a.train_images, written["train"][0])
