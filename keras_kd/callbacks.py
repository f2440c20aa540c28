"""Every schedule and warm-up of a distiller, applied between epochs, and the student-vs-teacher report.

Temperature, alpha and the warm-up weights are variables of the `Distiller`, so a change
reaches the compiled (jit/XLA) train step without recompiling.
"""

import inspect
import math

import keras
import numpy as np


class _DistillerScheduler(keras.callbacks.Callback):
    attribute = None

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                f"{type(self).__name__} needs a function epoch -> {self.attribute} (or "
                f"(epoch, current_{self.attribute}) -> value), got {schedule!r}."
            )
        self.schedule = schedule
        self.verbose = verbose
        parameters = inspect.signature(schedule).parameters.values()
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self._passes_current = len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)

    def _distiller(self):
        from keras_kd.distiller import Distiller

        if not isinstance(self.model, Distiller):
            raise TypeError(
                f"{type(self).__name__} schedules a keras_kd.Distiller's {self.attribute}; it "
                f"was given to the fit() of {type(self.model).__name__} {self.model.name!r}. Pass it to the fit() of "
                "the keras_kd.Distiller that trains the student."
            )
        return self.model

    def on_epoch_begin(self, epoch, logs=None):
        distiller = self._distiller()
        current = getattr(distiller, self.attribute)
        value = self.schedule(epoch, current) if self._passes_current else self.schedule(epoch)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(
                f"The {self.attribute} schedule returned {value!r} for epoch {epoch}; it must "
                "return a finite Python number."
            )
        try:
            setattr(distiller, self.attribute, value)
        except ValueError as error:
            raise ValueError(f"The {self.attribute} schedule at epoch {epoch}: {error}") from None
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: {type(self).__name__} sets {self.attribute} to {value}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.attribute] = getattr(self._distiller(), self.attribute)


class TemperatureScheduler(_DistillerScheduler):
    """Sets the distiller's temperature `T` at the start of each epoch.

    Args:
        schedule: `epoch -> T` or `(epoch, current_T) -> T`, epochs counted from 0;
            each value must be a finite number > 0.
        verbose: print each change.

    The value is logged as `temperature` at the end of every epoch.

    Example:

    >>> import keras_kd
    >>> anneal = keras_kd.callbacks.TemperatureScheduler(lambda epoch: max(1.0, 8.0 / 2**epoch))
    """

    attribute = "temperature"


class AlphaScheduler(_DistillerScheduler):
    """Sets the distiller's hard-loss weight `alpha` at the start of each epoch.

    Args:
        schedule: `epoch -> alpha` or `(epoch, current_alpha) -> alpha`, epochs
            counted from 0; each value must lie in `[0, 1]`.
        verbose: print each change.

    The value is logged as `alpha` at the end of every epoch.

    Example:

    >>> import keras_kd
    >>> more_labels_later = keras_kd.callbacks.AlphaScheduler(lambda epoch: min(0.5, 0.1 * epoch))
    """

    attribute = "alpha"


class HintWarmup(_DistillerScheduler):
    """FitNets' stage-wise training: the first `epochs` epochs train only on the hint terms.

    While the warm-up runs, the loss is the sum of the distiller's `keras_kd.Hint`
    terms, and the gradients of every student variable that the hinted layers do
    not depend on are masked to zero, so only the student up to the hinted layers
    and the hint regressors learn. From epoch `epochs` on, the full objective
    trains every variable. Masking (instead of toggling `trainable`) keeps the
    variable lists of compiled steps fixed. Models along the hinted path must be
    Functional or Sequential, so that the graph tells which variables come first.

    Logged as `hint_warmup` (1 during the warm-up, 0 after) at the end of every epoch.

    Args:
        epochs: number of warm-up epochs, an integer >= 0.
        verbose: print each change.

    Example:

    >>> import keras_kd
    >>> warmup = keras_kd.callbacks.HintWarmup(epochs=2)
    """

    attribute = "hint_warmup"

    def __init__(self, epochs, verbose=0):
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"HintWarmup: epochs must be an integer >= 0, got {epochs!r}.")
        self.epochs = epochs
        super().__init__(lambda epoch: 1.0 if epoch < self.epochs else 0.0, verbose=verbose)

    def on_train_begin(self, logs=None):
        self._distiller()._enable_hint_warmup_masks()

    def on_train_end(self, logs=None):
        self._distiller().hint_warmup = 0.0


class SoftLossWarmup(_DistillerScheduler):
    """Ramps the soft term of a soft loss with `warmup_epochs = N > 0` (e.g. `keras_kd.losses.DKD`).

    At the start of epoch `e` (from 0, counting `initial_epoch`) it sets the distiller's
    `soft_loss_warmup` to `soft_loss.warmup_weight(e)`, `min((e + 1) / N, 1)` for the built-in
    losses, and logs it as `soft_loss_warmup` at the end of every epoch. `Distiller.fit` adds one
    itself when the soft loss has a warm-up and `callbacks` hold none, so the warm-up applies
    without it being passed; pass one with `schedule` to ramp another way.

    Args:
        schedule: `epoch -> weight in [0, 1]` (or `(epoch, current) -> weight`); by default
            the soft loss's own `warmup_weight`.
        verbose: print each change.

    Example:

    >>> import keras_kd
    >>> slower = keras_kd.callbacks.SoftLossWarmup(lambda epoch: min(epoch / 10, 1.0))
    """

    attribute = "soft_loss_warmup"

    def __init__(self, schedule=None, verbose=0):
        super().__init__(schedule if schedule is not None else self._soft_loss_weight, verbose=verbose)

    def _soft_loss_weight(self, epoch):
        return self._distiller().soft_loss.warmup_weight(epoch)


class TeacherComparison(keras.callbacks.Callback):
    """Logs, after every epoch, the student's accuracy on labelled data next to the teacher's.

    On `validation_data` (`(x, y)` with class-id labels, or a dataset of such batches) it logs
    `val_student_accuracy`, `val_teacher_accuracy` (computed once: the teacher never trains) and
    `val_agreement`, the share of examples where the student's top class is the teacher's. A
    student that matches its teacher (function matching) shows agreement near 1 and the two
    accuracies meeting; History records all three, and `verbose=1` prints them each epoch.

    Example:

    >>> import numpy as np, keras, keras_kd
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x, y = np.random.rand(32, 4), np.random.randint(0, 3, 32)
    >>> comparison = keras_kd.callbacks.TeacherComparison((x, y))
    >>> history = keras_kd.Distiller(teacher, student, alpha=0.0).compile("adam").fit(
    ...     x, epochs=2, verbose=0, callbacks=[comparison])
    >>> sorted(k for k in history.history if k.startswith("val_"))
    ['val_agreement', 'val_student_accuracy', 'val_teacher_accuracy']
    """

    def __init__(self, validation_data, batch_size=256, verbose=0):
        super().__init__()
        if isinstance(validation_data, (list, tuple)) and len(validation_data) == 2:
            self._x, self._y = validation_data
            self._dataset = None
        elif hasattr(validation_data, "element_spec"):
            self._x = self._y = None
            self._dataset = validation_data
        else:
            raise ValueError(
                "TeacherComparison needs labelled data: validation_data=(x, y) with class-id labels, or a "
                f"tf.data.Dataset of (x, y) batches; got {type(validation_data).__name__}."
            )
        self.batch_size = batch_size
        self.verbose = verbose
        self._teacher_top = None
        self._labels = None

    def _distiller(self):
        from keras_kd.distiller import Distiller

        if not isinstance(self.model, Distiller):
            raise TypeError(
                "TeacherComparison compares a keras_kd.Distiller's student with its teacher model; it was given to "
                f"the fit() of {type(self.model).__name__} {self.model.name!r}."
            )
        if not self.model.teachers:
            raise TypeError(
                "TeacherComparison compares a keras_kd.Distiller's student with its teacher model, but this distiller "
                "reads a TeacherCache and has no teacher model to run."
            )
        return self.model

    def _inputs_and_labels(self):
        """The validation inputs and labels as arrays; a dataset is read once, on the first epoch."""
        if self._x is None:
            xs, ys = [], []
            for x, y in self._dataset.as_numpy_iterator():
                xs.append(x)
                ys.append(y)
            self._x, self._y = keras.tree.map_structure(lambda *parts: np.concatenate(parts), *xs), np.concatenate(ys)
        return self._x, np.asarray(self._y).reshape(-1)

    def on_epoch_end(self, epoch, logs=None):
        distiller = self._distiller()
        x, labels = self._inputs_and_labels()
        if self._teacher_top is None:
            teacher_logits = distiller.teachers[0].predict(x, batch_size=self.batch_size, verbose=0)
            self._teacher_top = np.argmax(teacher_logits, axis=-1).reshape(-1)
        student_top = np.argmax(distiller.predict(x, batch_size=self.batch_size, verbose=0), axis=-1).reshape(-1)
        values = {
            "val_student_accuracy": float(np.mean(student_top == labels)),
            "val_teacher_accuracy": float(np.mean(self._teacher_top == labels)),
            "val_agreement": float(np.mean(student_top == self._teacher_top)),
        }
        if logs is not None:
            logs.update(values)
        if self.verbose:
            print(
                f"\nEpoch {epoch + 1}: student accuracy {values['val_student_accuracy']:.4f}, teacher "
                f"{values['val_teacher_accuracy']:.4f}, agreement {values['val_agreement']:.4f}"
            )
