"""The running means of a distillation loss's parts, kept by one metric in two vector variables."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_kd")
class TermMeans(keras.metrics.Metric):
    """Running means of named loss terms (`hard_loss`, `soft_loss`, one per pair), one update per batch.

    For each term `i`, over the batches `b` that carried it:

        mean_i = sum_b n_b * v_ib / sum_b n_b        (n_b: examples in batch b)

    which is what one `keras.metrics.Mean` per term with `sample_weight=n_b` computes,
    in a single vector update instead of one per term: the distiller's step logs every
    term at the cost of one metric. A term missing from a batch's `terms` (the hard
    loss of a batch without labels) keeps its mean; a term never seen reads 0.

    Example:

    >>> means = TermMeans(["hard_loss", "soft_loss"])
    >>> means.update_state({"hard_loss": 1.0, "soft_loss": 4.0}, batch_size=2)
    >>> means.update_state({"soft_loss": 1.0}, batch_size=1)
    >>> {name: round(float(value), 3) for name, value in means.result().items()}
    {'hard_loss': 1.0, 'soft_loss': 3.0}
    """

    def __init__(self, names, name="loss_terms", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.names = tuple(names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"TermMeans needs distinct term names, got {list(self.names)}.")
        size = (len(self.names),)
        self.total = self.add_variable(shape=size, initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable(shape=size, initializer="zeros", name="count", dtype="float32")

    def update_state(self, terms, batch_size):
        # Few, cheap ops: on PyTorch this runs eagerly at every step.
        weight = ops.cast(batch_size, "float32")
        if all(name in terms for name in self.names):
            values = ops.stack([ops.cast(terms[name], "float32") for name in self.names])
            weights = ops.broadcast_to(weight, (len(self.names),))
        else:
            zero = ops.zeros((), "float32")
            values = ops.stack([ops.cast(terms[name], "float32") if name in terms else zero for name in self.names])
            weights = ops.stack([weight if name in terms else zero for name in self.names])
        self.total.assign_add(values * weight)
        self.count.assign_add(weights)

    def result(self):
        # A count is 0 or at least 1, so adding 1e-30 (below float32's resolution at 1) only turns 0/0 into 0.
        means = ops.unstack(self.total / (self.count + 1e-30), num=len(self.names))
        return dict(zip(self.names, means))

    def get_config(self):
        return {"names": list(self.names), "name": self.name, "dtype": self.dtype}
