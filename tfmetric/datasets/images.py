"""Images: the bundled digits, and MNIST / Fashion-MNIST from their IDX files.

- `load("digits")`: scikit-learn's bundled 8×8 digits, no download.
- `load("mnist")`, `load("fashion_mnist")`: the four original IDX files
  (`train-images-idx3-ubyte[.gz]`, ...), read from the first place that has
  them — `data_dir=`, then a system copy (Debian's `dataset-fashion-mnist`
  installs Fashion-MNIST under `/usr/share/datasets/fashion-mnist/`) — and
  otherwise downloaded once by `keras.datasets`; offline, a clear error.
"""

import gzip
import os

import numpy as np

from tfmetric.choices import DATASETS
from tfmetric.optional import optional_import

__all__ = ["DATASETS", "SYSTEM_DIRECTORIES", "available_offline", "load", "read_idx"]


# Where system packages put the IDX files (Debian: apt-get install dataset-fashion-mnist).
SYSTEM_DIRECTORIES = {
    "mnist": ("/usr/share/datasets/mnist",),
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
}
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# The IDX type byte: only unsigned bytes are used by these datasets.
_IDX_UINT8 = 0x08


def load(name="digits", seed=0, test_fraction=0.2, limit=None, data_dir=None):
    """`((x_train, y_train), (x_test, y_test), image_shape)`, pixels scaled to [0, 1].

    `x` is flattened to `(n, pixels)` float32 and `y` is int64; `image_shape`
    gives the pictures back (for sprites, plots and convolutions). The digits
    are split at random (`seed`, `test_fraction`); MNIST and Fashion-MNIST
    keep their own split (60,000 / 10,000). `limit` keeps the first examples
    of each split (for quick runs).

    Args:
        name: `"digits"`, `"mnist"` or `"fashion_mnist"`.
        seed: Shuffles the digits before their split.
        test_fraction: The digits' held-out share.
        limit: Keep at most this many examples of each split.
        data_dir: A directory holding the four IDX files of MNIST or
            Fashion-MNIST, gzipped or not (as published). Without it, a
            system copy (`SYSTEM_DIRECTORIES`) is used where there is one,
            else `keras.datasets` downloads them (cached in ~/.keras/datasets).

    Example:

    >>> import tfmetric as tfm
    >>> (x, y), (x_test, y_test), shape = tfm.datasets.load("digits")
    >>> x.shape, x_test.shape, shape
    ((1438, 64), (359, 64), (8, 8))
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    if name == "digits":
        if data_dir is not None:
            raise ValueError("The digits come with scikit-learn: data_dir is for mnist and fashion_mnist.")
        splits, image_shape = _digits(seed, test_fraction), (8, 8)
    else:
        splits, image_shape = _idx_dataset(name, data_dir), (28, 28)
    if limit is not None:
        splits = [(x[:limit], y[:limit]) for x, y in splits]
    (x_train, y_train), (x_test, y_test) = splits
    return (x_train, y_train), (x_test, y_test), image_shape


def available_offline(name, data_dir=None):
    """Whether `load(name, data_dir=data_dir)` needs no download.

    True for the bundled digits, and for MNIST / Fashion-MNIST when their IDX
    files are in `data_dir` or a system copy (`SYSTEM_DIRECTORIES`); a copy
    Keras cached in ~/.keras/datasets is not looked for.

    >>> import tfmetric as tfm
    >>> tfm.datasets.available_offline("digits")
    True
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    if name == "digits":
        return True
    directories = (data_dir,) if data_dir is not None else SYSTEM_DIRECTORIES[name]
    return any(_idx_paths(directory) is not None for directory in directories)


def read_idx(path):
    """The array in an IDX file (the format of MNIST), gzipped or not.

    The header is two zero bytes, a type byte (0x08: unsigned bytes), the
    number of dimensions, then each dimension as a big-endian int32.
    """
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _IDX_UINT8:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (header {data[:4].hex()}).")
    dimensions = data[3]
    start = 4 + 4 * dimensions
    shape = tuple(int(size) for size in np.frombuffer(data[4:start], ">i4"))
    if len(data) - start != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated or too long: the header says {shape}, {len(data) - start} bytes follow.")
    return np.frombuffer(data, np.uint8, offset=start).reshape(shape)


def _digits(seed, test_fraction):
    datasets = optional_import("sklearn.datasets", "The bundled digits")
    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(y))
    split = int(round((1 - test_fraction) * len(y)))
    train, test = order[:split], order[split:]
    return [(x[train], y[train]), (x[test], y[test])]


def _idx_dataset(name, data_dir):
    if data_dir is not None:
        paths = _idx_paths(data_dir)
        if paths is None:
            raise FileNotFoundError(
                f"{data_dir} does not hold the four IDX files of {name} "
                f"({', '.join(_IDX_FILES.values())}, optionally .gz)."
            )
    else:
        paths = next(filter(None, map(_idx_paths, SYSTEM_DIRECTORIES[name])), None)
    if paths is not None:
        arrays = {key: read_idx(path) for key, path in paths.items()}
        images = (arrays["x_train"], arrays["x_test"])
        labels = (arrays["y_train"], arrays["y_test"])
    else:
        images, labels = _download(name)
    return [(_flat(x), y.astype("int64")) for x, y in zip(images, labels)]


def _idx_paths(directory):
    """The four files' paths in `directory` (plain or .gz), or None if one is missing."""
    paths = {}
    for key, stem in _IDX_FILES.items():
        found = [os.path.join(directory, stem + suffix) for suffix in ("", ".gz")]
        found = [path for path in found if os.path.isfile(path)]
        if not found:
            return None
        paths[key] = found[0]
    return paths


def _download(name):
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as error:  # urllib, SSL and socket errors all mean the same here
        system = " or ".join(SYSTEM_DIRECTORIES[name])
        hint = " (Debian: apt-get install dataset-fashion-mnist)" if name == "fashion_mnist" else ""
        raise RuntimeError(
            f"Could not load {name}: no IDX files in {system}{hint}, and keras.datasets downloads it on "
            f"first use, which failed ({type(error).__name__}: {error}). Connect to the internet once "
            "(Keras caches it in ~/.keras/datasets), pass data_dir= (--data-dir) to a directory with the "
            "four IDX files, or use the bundled digits: --dataset digits."
        ) from error
    return (x_train, x_test), (y_train, y_test)


def _flat(images):
    return (images.reshape(len(images), -1) / 255.0).astype("float32")
