"""The base class of soft losses: what `keras_kd.Distiller(soft_loss=...)` reads off a loss object."""

from keras_kd.losses.features import _PositionWeightedLoss


def linear_warmup(epoch, epochs):
    """The warm-up weight of epoch `epoch` (from 0): `min((epoch + 1) / epochs, 1)`; 1 when `epochs` is 0.

    >>> [linear_warmup(e, 4) for e in range(5)]
    [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    if not epochs:
        return 1.0
    return min((int(epoch) + 1) / epochs, 1.0)


def check_warmup_epochs(value):
    """`warmup_epochs` of a soft loss: an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"warmup_epochs must be an integer >= 0, got {value!r}. DKD's paper ramps its loss weight linearly "
            "over the first 20 of 240 epochs on CIFAR-100; 0 turns the warm-up off."
        )
    return value


class SoftLoss(_PositionWeightedLoss):
    """A temperature-aware loss between the teacher's and the student's logits.

    Subclasses implement `per_position(teacher_logits, student_logits, temperature, labels=None)`,
    which returns one value per example (or per position of sequence logits), unreduced; the
    distiller reduces it with the batch's sample weights and this loss's `reduction`, at the
    distiller's own (schedulable) temperature. As a plain Keras loss, `y_true` holds the teacher's
    logits and `self.temperature` is used.

    What a distiller reads off a soft loss, and nothing else:

    - `needs_labels` (class attribute, default False): the batch's labels are passed to
      `per_position` as `labels`, and a batch without labels is an error (`DKD`);
    - `temperature`: must equal the distiller's;
    - `warmup_epochs` (default 0): the term is multiplied by `warmup_weight(epoch)` in epoch `epoch`,
      `min((epoch + 1) / warmup_epochs, 1)`; `Distiller.fit` applies it through
      `keras_kd.callbacks.SoftLossWarmup`;
    - `reduction`: `"sum_over_batch_size"` or `"mean_with_sample_weight"`.

    Example (a soft loss of your own, the squared error between tempered probabilities):

    >>> import numpy as np
    >>> from keras import ops
    >>> class SquaredProbabilities(SoftLoss):
    ...     def per_position(self, teacher_logits, student_logits, temperature=None, labels=None):
    ...         t = self.temperature if temperature is None else temperature
    ...         p, q = ops.softmax(teacher_logits / t), ops.softmax(student_logits / t)
    ...         return ops.sum((p - q) ** 2, axis=-1)
    >>> loss = SquaredProbabilities(temperature=2.0)
    >>> float(loss(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]])))
    0.0
    """

    needs_labels = False

    def __init__(self, temperature=1.0, warmup_epochs=0, reduction="sum_over_batch_size", name=None, **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.temperature = temperature
        self.warmup_epochs = check_warmup_epochs(warmup_epochs)

    def warmup_weight(self, epoch):
        """The weight of this term in epoch `epoch` (from 0): `min((epoch + 1) / warmup_epochs, 1)`."""
        return linear_warmup(epoch, self.warmup_epochs)

    def per_position(self, teacher_logits, student_logits, temperature=None, labels=None):
        """Unreduced values between the two logits at `temperature` (`None`: `self.temperature`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement per_position(...).")

    def call(self, y_true, y_pred):
        """Unreduced values at `self.temperature`; `y_true` holds the teacher's logits, `y_pred` the student's."""
        return self.per_position(y_true, y_pred, self.temperature)
