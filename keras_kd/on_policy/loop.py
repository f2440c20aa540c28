"""`Distiller.fit` with `on_policy`: per batch, one source writes the completions, then one training step.

Generation cannot run inside a compiled training step (it is its own compiled loop), and a data
pipeline would prepare batches ahead of the step, with weights one or more updates old (Keras's
JAX trainer prefetches, and keeps the trained values apart from the model's variables during an
epoch). So the loop is this one: draw the source, write the batch's completions with the current
weights, then `train_on_batch` (which, on JAX, writes the step's values back into the variables
that the next generation reads). Callbacks, the progress bar and the `History` work as in `fit`.
"""

import math
import time

import keras
import numpy as np

from keras_kd.data import text
from keras_kd.on_policy.sequences import PromptTokenizer, training_batch
from keras_kd.on_policy.writer import CompletionWriter

_NOT_SUPPORTED = {
    "sample_weight": "the weights are the completion's tokens",
    "validation_data": "evaluate the student on held-out prompts after fit instead",
    "validation_split": "evaluate the student on held-out prompts after fit instead",
    "validation_batch_size": "evaluate the student on held-out prompts after fit instead",
    "class_weight": "a language model's classes are its vocabulary",
    "validation_steps": "evaluate the student on held-out prompts after fit instead",
    "validation_freq": "evaluate the student on held-out prompts after fit instead",
}


def fit_on_policy(
    distiller,
    policy,
    x=None,
    y=None,
    batch_size=None,
    epochs=1,
    verbose="auto",
    callbacks=None,
    shuffle=True,
    initial_epoch=0,
    steps_per_epoch=None,
    **unsupported,
):
    """Trains `distiller` on prompts `x` (strings; `y` their completions) under `policy`; returns the `History`."""
    for name, value in unsupported.items():
        if value is None or (name == "validation_split" and not value):
            continue
        fix = _NOT_SUPPORTED.get(name, "leave it out")
        raise ValueError(f"fit({name}=...) is not supported with on_policy: {fix}.")
    batches = PromptBatches(x, y, batch_size, shuffle, policy.seed)
    if policy.needs_completions and not batches.has_completions:
        share = 1 - policy.student_fraction - policy.teacher_fraction
        raise ValueError(
            f"{policy} uses the data's own completions for a share of {share:g} "
            "of the batches, but fit got prompts only. Pass fit(prompts, completions) (or a dataset of (prompt, "
            "completion) pairs), or make student_fraction + teacher_fraction = 1."
        )
    tokenizer = PromptTokenizer(distiller.student, policy.max_new_tokens)
    writers = {
        role: CompletionWriter(model, policy.sampler(), policy.max_new_tokens, tokenizer.stop_token_ids)
        for role, model in (("student", distiller.student), ("teacher", distiller.teacher))
    }
    steps = batches.steps if steps_per_epoch is None else min(steps_per_epoch, batches.steps or math.inf)
    verbose = 1 if verbose == "auto" else verbose
    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=steps,
        model=distiller,
    )
    distiller.stop_training = False
    counts = {"batches": 0, "student": 0}
    callback_list.on_train_begin()
    logs = {}
    with writers["student"].installed(), writers["teacher"].installed():
        for epoch in range(initial_epoch, epochs):
            distiller.reset_metrics()
            callback_list.on_epoch_begin(epoch)
            lengths, generation, training = [], 0.0, 0.0
            for step, (prompts, completions) in enumerate(batches.epoch()):
                if steps is not None and step >= steps:
                    break
                callback_list.on_train_batch_begin(step)
                source = policy.next_source()
                start = time.perf_counter()
                if source == "data":
                    sequences, completion = tokenizer.with_completions(prompts, completions)
                else:
                    sequences, completion = writers[source](tokenizer.prompts(prompts))
                generation += time.perf_counter() - start
                x_batch, y_batch, weights = training_batch(sequences, completion)
                start = time.perf_counter()
                logs = distiller.train_on_batch(x_batch, y_batch, sample_weight=weights, return_dict=True)
                training += time.perf_counter() - start
                counts["batches"] += 1
                counts["student"] += source == "student"
                lengths.extend(completion.sum(axis=1).tolist())
                logs = {key: float(value) for key, value in logs.items()}
                logs.update(
                    on_policy_share=counts["student"] / counts["batches"],
                    completion_length=float(np.mean(lengths)),
                    generation_seconds=generation,
                    training_seconds=training,
                )
                callback_list.on_train_batch_end(step, logs)
                if distiller.stop_training:
                    break
            callback_list.on_epoch_end(epoch, logs)
            if distiller.stop_training:
                break
    callback_list.on_train_end(logs)
    return distiller.history


class PromptBatches:
    """Batches of `(prompts, completions or None)` as Python lists of strings, from arrays, lists or a dataset."""

    def __init__(self, x, y, batch_size, shuffle, seed):
        if text.is_dataset(x):
            if y is not None or batch_size is not None:
                raise ValueError("When x is a tf.data.Dataset of prompts, pass no y or batch_size: it yields batches.")
            self.dataset = x
            self.has_completions = isinstance(x.element_spec, tuple) and len(x.element_spec) == 2
            self.steps = None
        else:
            if not text.holds_strings(x):
                raise ValueError(
                    "fit with on_policy takes prompts as raw strings (a list or array of str, or a tf.data.Dataset "
                    f"of them), got {type(x).__name__}. The student's preprocessor tokenizes them."
                )
            self.dataset = None
            self.prompts = [_string(p) for p in np.asarray(x, dtype=object).reshape(-1)]
            self.completions = None if y is None else [_string(c) for c in np.asarray(y, dtype=object).reshape(-1)]
            if self.completions is not None and len(self.completions) != len(self.prompts):
                raise ValueError(
                    f"fit got {len(self.prompts)} prompts and {len(self.completions)} completions; pass one "
                    "completion per prompt."
                )
            self.has_completions = self.completions is not None
            self.batch_size = batch_size or 32
            self.steps = math.ceil(len(self.prompts) / self.batch_size)
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)

    def epoch(self):
        if self.dataset is not None:
            for batch in self.dataset:
                if isinstance(batch, tuple):
                    yield _strings(batch[0]), _strings(batch[1])
                else:
                    yield _strings(batch), None
            return
        order = self.rng.permutation(len(self.prompts)) if self.shuffle else np.arange(len(self.prompts))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            completions = None if self.completions is None else [self.completions[i] for i in rows]
            yield [self.prompts[i] for i in rows], completions


def _string(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _strings(tensor):
    return [_string(value) for value in np.asarray(tensor).reshape(-1)]
