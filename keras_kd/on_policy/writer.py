"""Completions written by a KerasHub `CausalLM` with its own compiled `generate` machinery and a policy's sampler."""

import contextlib

import keras
import numpy as np

from keras_kd.on_policy.sequences import completion_marks

LENGTH_STEP = 16


class CompletionWriter:
    """`writer(prompt)`: a model's completions of tokenized prompts, at most `max_new_tokens`, with a KerasHub sampler.

    Generation runs the task's `make_generate_function()` (XLA/`tf.function`/`jax.jit` as KerasHub
    compiles it) on the prompt's token ids, which reads the model's variables as they are now: the
    student that writes is the student being trained. Sampled tokens are data (NumPy), without gradient.
    """

    def __init__(self, model, sampler, max_new_tokens, stop_token_ids):
        self.model = model
        self.sampler = sampler
        self.max_new_tokens = max_new_tokens
        self.stop_token_ids = stop_token_ids or None

    @contextlib.contextmanager
    def installed(self):
        """The writer's sampler on the model while the block runs; the model's own sampler and function after."""
        model = self.model
        saved = (getattr(model, "sampler", None), getattr(model, "generate_function", None))
        model.sampler, model.generate_function = self.sampler, None
        try:
            yield self
        finally:
            model.sampler, model.generate_function = saved

    def _filler(self):
        # KerasHub's samplers stop once every row holds a stop token past its prompt, and GPT-2 style
        # tokenizers pad with their end token: the slots to generate get an id that stops nothing.
        stops = set(self.stop_token_ids or ())
        return next(i for i in range(len(stops) + 1) if i not in stops)

    def __call__(self, prompt):
        """`(sequences, completion)`: prompt + sampled completion per row, and the completion's tokens marked.

        Generation runs over the longest prompt plus `max_new_tokens` slots, rounded up to a multiple of
        `LENGTH_STEP` (a few compiled shapes instead of one per prompt length); each row keeps at most
        `max_new_tokens` generated tokens, and the result is padded back to the prompts' length.
        """
        mask = np.asarray(prompt["padding_mask"]).astype(bool)
        full = mask.shape[1]
        prompt_lengths = mask.sum(axis=1)
        needed = int(prompt_lengths.max()) + self.max_new_tokens
        # The last slot only ever holds padding (a prompt leaves `max_new_tokens` of the first `full - 1`), and a
        # model's position embeddings may end at its preprocessor's sequence_length.
        length = min(full - 1, -(-needed // LENGTH_STEP) * LENGTH_STEP)
        token_ids = np.where(mask, prompt["token_ids"], self._filler())[:, :length]
        inputs = {"token_ids": keras.ops.convert_to_tensor(token_ids), "padding_mask": mask[:, :length]}
        output = self.model.make_generate_function()(inputs, stop_token_ids=self.stop_token_ids)
        generated = keras.ops.convert_to_numpy(output["token_ids"])
        kept = keras.ops.convert_to_numpy(output["padding_mask"]).astype(bool)
        kept &= np.arange(length)[None, :] < (prompt_lengths + self.max_new_tokens)[:, None]
        sequences = {"token_ids": np.zeros_like(np.asarray(prompt["token_ids"])), "padding_mask": np.zeros_like(mask)}
        sequences["token_ids"][:, :length] = np.where(kept, generated, 0)
        sequences["padding_mask"][:, :length] = kept
        return sequences, completion_marks(sequences["padding_mask"], mask)
