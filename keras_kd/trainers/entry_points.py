"""Keras's entry points that run a step, each preceded by a backend's check of where it runs."""

import keras


def refuse_keras_distribution(method, backend, advice):
    """Raises when a `keras.distribution` is set on a backend whose Keras trainer would ignore it."""
    distribution = keras.distribution.distribution()
    if distribution is not None:
        raise ValueError(
            f"{method}() was called under keras.distribution.{type(distribution).__name__}, which Keras's "
            f"{backend} backend does not apply: the run would silently stay on one device. {advice} Or drop the "
            "distribution (leave its scope, or keras.distribution.set_distribution(None)) to train on one device."
        )


class CheckedEntryPoints:
    """Calls `self.check_entry(method_name)` before `fit`, `evaluate`, `predict` and the `*_on_batch` methods."""

    def check_entry(self, method):
        """Raises when `method` cannot run here; the backend's trainer overrides it."""

    def fit(self, *args, **kwargs):
        self.check_entry("fit")
        return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self.check_entry("evaluate")
        return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        self.check_entry("predict")
        return super().predict(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self.check_entry("train_on_batch")
        return super().train_on_batch(*args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        self.check_entry("test_on_batch")
        return super().test_on_batch(*args, **kwargs)

    def predict_on_batch(self, *args, **kwargs):
        self.check_entry("predict_on_batch")
        return super().predict_on_batch(*args, **kwargs)
