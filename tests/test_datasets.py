"""tfm.datasets.load: IDX files from a directory, a system copy, or a download."""

import gzip
import os

import numpy as np
import pytest

from tfmetric import datasets
from tfmetric.datasets import images

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    with (gzip.open if compress else open)(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def write_dataset(directory, rng, train=12, test=5, compress=False):
    """Four tiny IDX files as MNIST publishes them; returns the arrays written."""
    suffix = ".gz" if compress else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, test),
    }
    os.makedirs(directory, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(os.path.join(directory, stem + suffix), array, compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files_from_a_directory(tmp_path, compress):
    arrays = write_dataset(tmp_path, np.random.default_rng(0), compress=compress)
    (x, y), (x_test, y_test), shape = datasets.load("fashion_mnist", data_dir=str(tmp_path))
    assert shape == (28, 28) and x.shape == (12, 784) and x_test.shape == (5, 784)
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x * 255, arrays["train-images-idx3-ubyte"].reshape(12, -1))
    np.testing.assert_array_equal(x_test[3].reshape(28, 28) * 255, arrays["t10k-images-idx3-ubyte"][3])
    np.testing.assert_array_equal(y, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])
    assert datasets.available_offline("mnist", data_dir=str(tmp_path))
    assert not datasets.available_offline("mnist", data_dir=str(tmp_path / "elsewhere"))
    (x, y), (x_test, _), _ = datasets.load("mnist", data_dir=str(tmp_path), limit=4)
    assert len(x) == len(y) == len(x_test) == 4


def test_a_system_copy_comes_before_a_download(tmp_path, monkeypatch):
    arrays = write_dataset(tmp_path / "fashion-mnist", np.random.default_rng(1), compress=True)
    monkeypatch.setitem(
        images.SYSTEM_DIRECTORIES, "fashion_mnist", (str(tmp_path / "absent"), str(tmp_path / "fashion-mnist"))
    )

    def no_download(name):
        raise AssertionError("downloaded although a system copy exists")

    monkeypatch.setattr(images, "_download", no_download)
    assert datasets.available_offline("fashion_mnist")
    (_, y), _, _ = datasets.load("fashion_mnist")
    np.testing.assert_array_equal(y, arrays["train-labels-idx1-ubyte"])


def test_offline_without_files_says_where_it_looked(tmp_path, monkeypatch):
    import keras

    def offline():
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setitem(images.SYSTEM_DIRECTORIES, "fashion_mnist", (str(tmp_path),))
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist.*data_dir=.*--dataset digits"):
        datasets.load("fashion_mnist")


def test_bad_files_and_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not hold the four IDX files"):
        datasets.load("mnist", data_dir=str(tmp_path))
    write_idx(tmp_path / "ok", np.zeros((3, 2)))
    assert images.read_idx(tmp_path / "ok").shape == (3, 2)
    (tmp_path / "truncated").write_bytes((tmp_path / "ok").read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        images.read_idx(tmp_path / "truncated")
    (tmp_path / "floats").write_bytes(bytes([0, 0, 0x0D, 1]) + np.asarray([1], ">i4").tobytes() + bytes(4))
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        images.read_idx(tmp_path / "floats")
    with pytest.raises(ValueError, match="data_dir is for mnist"):
        datasets.load("digits", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Unknown dataset 'cifar'"):
        datasets.load("cifar")


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST), reason="apt-get install dataset-fashion-mnist")
def test_the_real_fashion_mnist():
    (x, y), (x_test, y_test), shape = datasets.load("fashion_mnist")
    assert x.shape == (60000, 784) and x_test.shape == (10000, 784) and shape == (28, 28)
    # Fashion-MNIST is balanced: 6,000 and 1,000 of each of the 10 classes.
    np.testing.assert_array_equal(np.bincount(y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)
    assert 0.0 == x.min() < x.max() == 1.0
    # The first training image is an ankle boot (class 9), as in Zalando's README.
    assert y[0] == 9
