"""Prompts in, training batches out: token ids of prompt + completion, with the completion's weights.

A CausalLM predicts token `t + 1` at position `t`, so a sequence `s` of `L + 1` tokens (prompt, then
completion, then padding; `L` the preprocessor's `sequence_length`) becomes the batch KerasHub's
`CausalLMPreprocessor` makes for training, `L` positions:
`x = {"token_ids": s[:, :-1], "padding_mask": m[:, :-1]}`, `y = s[:, 1:]`, and the weights
`c[:, 1:]`, where `c` marks the completion's tokens (its end-of-sequence token included) so that
only the predictions of completion tokens count.
"""

import numpy as np


class PromptTokenizer:
    """Tokenizes prompts (and completions) with a CausalLM's preprocessor: `sequence_length + 1` token slots per
    sequence, as its training batches take, of which a prompt may fill `sequence_length - max_new_tokens`."""

    def __init__(self, model, max_new_tokens):
        preprocessor = getattr(model, "preprocessor", None)
        self.preprocessor = preprocessor
        self.tokenizer = preprocessor.tokenizer
        self.max_new_tokens = max_new_tokens
        self.sequence_length = preprocessor.sequence_length
        self.length = self.sequence_length + 1
        self.stop_token_ids = tuple(
            int(i)
            for i in (getattr(self.tokenizer, "end_token_id", None), getattr(self.tokenizer, "end_token2_id", None))
            if i is not None
        )

    def prompts(self, prompts):
        """`{"token_ids", "padding_mask"}` (NumPy, `(batch, length)`) of the prompts, with room for the completion.

        Raises when a prompt leaves fewer than `max_new_tokens` slots.
        """
        tokens = self.preprocessor.generate_preprocess(list(prompts), sequence_length=self.length)
        token_ids = np.asarray(tokens["token_ids"])
        mask = np.asarray(tokens["padding_mask"]).astype(bool)
        longest = int(mask.sum(axis=1).max())
        room = self.sequence_length - self.max_new_tokens
        if longest > room:
            raise ValueError(
                f"A prompt takes {longest} tokens (its start token included), but the student's preprocessor has "
                f"sequence_length={self.sequence_length} and max_new_tokens={self.max_new_tokens} leaves {room} for "
                "the prompt. "
                "Shorten the prompts, lower max_new_tokens, or raise the preprocessor's sequence_length "
                f"(student.preprocessor.sequence_length = {longest + self.max_new_tokens})."
            )
        return {"token_ids": token_ids, "padding_mask": mask}

    def with_completions(self, prompts, completions):
        """The token ids and masks of `prompt + completion + end token` per row, and the completion's marks."""
        prompt = self.prompts(prompts)
        pieces = self.tokenizer(list(completions))
        rows = _as_rows(pieces)
        end = self.stop_token_ids[:1]
        token_ids = np.zeros_like(prompt["token_ids"])
        mask = np.zeros(token_ids.shape, bool)
        completion = np.zeros(token_ids.shape, bool)
        for row, ids in enumerate(rows):
            start = int(prompt["padding_mask"][row].sum())
            ids = (list(ids) + list(end))[: self.max_new_tokens]
            token_ids[row, :start] = prompt["token_ids"][row, :start]
            token_ids[row, start : start + len(ids)] = ids
            mask[row, : start + len(ids)] = True
            completion[row, start : start + len(ids)] = True
        return {"token_ids": token_ids, "padding_mask": mask}, completion


def training_batch(sequences, completion):
    """`(x, y, sample_weight)` of sequences `{"token_ids", "padding_mask"}` whose tokens `completion` marks."""
    token_ids = np.asarray(sequences["token_ids"])
    mask = np.asarray(sequences["padding_mask"]).astype(bool)
    x = {"token_ids": token_ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, token_ids[:, 1:], np.asarray(completion, "float32")[:, 1:]


def completion_marks(generated_mask, prompt_mask):
    """The generated tokens: in the output's mask (which ends at the end token) and not in the prompt."""
    return np.asarray(generated_mask).astype(bool) & ~np.asarray(prompt_mask).astype(bool)


def _as_rows(pieces):
    if hasattr(pieces, "to_list"):  # a tf.RaggedTensor
        return pieces.to_list()
    return [np.asarray(row).tolist() for row in pieces]
