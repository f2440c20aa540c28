import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    # free_memory=False: the full gc.collect() it would run costs ~0.3-0.8 s per test with TensorFlow imported;
    # Python's own collector still runs.
    keras.backend.clear_session(free_memory=False)


def dense_model(inputs, outputs, hidden=None, name=None, activation=None):
    layers = [keras.Input((inputs,))]
    if hidden:
        layers.append(keras.layers.Dense(hidden, activation="relu"))
    layers.append(keras.layers.Dense(outputs, activation=activation))
    return keras.Sequential(layers, name=name)


def toy_data(n=128, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = rng.integers(0, classes, size=n).astype("int64")
    return x, y


# Hypothesis profiles (tests/test_loss_properties.py), chosen by HYPOTHESIS_PROFILE: "ci" (default) runs
# a fixed, bounded set of examples of small fixed shapes; "long" many more, of varied shapes, freshly random.
from hypothesis import HealthCheck, settings  # noqa: E402

HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci", max_examples=8, deadline=None, derandomize=True, database=None, suppress_health_check=_SLOW_DATA
)
settings.register_profile(
    "long", max_examples=300, deadline=None, database=None, print_blob=True, suppress_health_check=_SLOW_DATA
)
settings.load_profile(HYPOTHESIS_PROFILE)
