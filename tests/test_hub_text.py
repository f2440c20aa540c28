"""KerasHub tasks as teacher and student, fitted on raw strings (tiny models, in-memory vocabularies)."""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("tensorflow")

import keras_kd  # noqa: E402
from keras_kd.hub import student_from_teacher  # noqa: E402
from keras_kd.losses import soft_target_loss  # noqa: E402

WORDS = ["the", "match", "ended", "in", "a", "draw", "shares", "fell", "after", "results", "film", "won", "prize"]
TEXTS = [
    "the match ended in a draw",
    "shares fell after results",
    "the film won a prize",
    "a draw after the match",
    "results fell",
    "the prize film",
]
LABELS = np.array([0, 1, 2, 0, 1, 2])


def bert_classifier(vocabulary, sequence_length, num_layers=2, hidden_dim=16, seed=0):
    keras.utils.set_random_seed(seed)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=sequence_length)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=sequence_length,
    )
    return keras_hub.models.BertTextClassifier(backbone, num_classes=3, preprocessor=preprocessor)


def bert_vocabulary(words=WORDS):
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]


def gpt2_vocabulary(words=WORDS):
    """Every prefix of every word and of its space-prefixed form, so that `gpt2_merges` can build them."""
    vocabulary = {"<|endoftext|>": 0}
    for word in words:
        for symbols in (word, "Ġ" + word):
            for end in range(1, len(symbols) + 1):
                vocabulary.setdefault(symbols[:end], len(vocabulary))
    for char in sorted({c for word in words for c in word}):
        vocabulary.setdefault(char, len(vocabulary))
    return vocabulary


def gpt2_merges(words=WORDS):
    """Byte-pair merges that rebuild every word (and its space-prefixed form) letter by letter."""
    merges = []
    for word in words:
        for symbols in (list(word), ["Ġ", *word]):
            for i in range(1, len(symbols)):
                merge = f"{''.join(symbols[:i])} {symbols[i]}"
                if merge not in merges:
                    merges.append(merge)
    return merges


def gpt2_causal_lm(vocabulary, sequence_length=10, num_layers=2, seed=0, words=WORDS, dropout=0.1):
    keras.utils.set_random_seed(seed)
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=gpt2_merges(words))
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=sequence_length)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocabulary),
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        dropout=dropout,
        max_sequence_length=16,
    )
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor=preprocessor)


# --- classifiers -------------------------------------------------------------------------------


def test_classifier_student_from_teacher_fits_evaluates_and_predicts_raw_strings():
    teacher = bert_classifier(bert_vocabulary(), sequence_length=12)
    student = student_from_teacher(teacher, 1)
    distiller = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    history = distiller.fit(TEXTS, LABELS, batch_size=3, epochs=2, validation_data=(TEXTS[:3], LABELS[:3]), verbose=0)
    for key in ("loss", "hard_loss", "soft_loss", "accuracy", "val_loss", "val_soft_loss"):
        assert np.all(np.isfinite(history.history[key])), key
    logs = distiller.evaluate(TEXTS, LABELS, batch_size=4, return_dict=True, verbose=0)
    assert set(logs) >= {"loss", "hard_loss", "soft_loss", "accuracy"}
    predictions = distiller.predict(TEXTS, batch_size=4, verbose=0)
    expected = student.predict(TEXTS, batch_size=4, verbose=0)
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-5)


def test_on_batch_methods_take_raw_strings():
    teacher = bert_classifier(bert_vocabulary(), sequence_length=12)
    student = bert_classifier(bert_vocabulary(list(reversed(WORDS))), sequence_length=8, num_layers=1, seed=1)
    distiller = keras_kd.Distiller(teacher, student).compile(optimizer="adam")
    logs = distiller.train_on_batch(TEXTS, LABELS, return_dict=True)
    assert np.isfinite(logs["loss"]) and np.isfinite(logs["soft_loss"])
    logs = distiller.test_on_batch(TEXTS, LABELS, return_dict=True)
    assert np.isfinite(logs["loss"])
    predictions = keras.ops.convert_to_numpy(distiller.predict_on_batch(TEXTS))
    expected = keras.ops.convert_to_numpy(student(student.preprocessor(TEXTS)))
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-5)


def test_classifiers_with_different_tokenizers_each_read_their_own_tokens():
    teacher = bert_classifier(bert_vocabulary(), sequence_length=12, num_layers=2, seed=0)
    # Another vocabulary (other ids, fewer words), a shorter sequence, a narrower model.
    student = bert_classifier(bert_vocabulary(list(reversed(WORDS[:9]))), sequence_length=8, num_layers=1, seed=1)
    distiller = keras_kd.Distiller(teacher, student, temperature=3.0, alpha=0.0).compile(optimizer="adam")

    logs = distiller.evaluate(TEXTS, LABELS, batch_size=len(TEXTS), return_dict=True, verbose=0)

    teacher_logits = teacher(teacher.preprocessor(TEXTS), training=False)
    student_logits = student(student.preprocessor(TEXTS), training=False)
    expected = soft_target_loss(teacher_logits, student_logits, temperature=3.0)
    np.testing.assert_allclose(logs["soft_loss"], keras.ops.convert_to_numpy(expected), rtol=1e-4)
    history = distiller.fit(TEXTS, LABELS, batch_size=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_tf_dataset_of_strings_and_validation_split():
    import tensorflow as tf

    teacher = bert_classifier(bert_vocabulary(), sequence_length=12)
    distiller = keras_kd.Distiller(teacher, student_from_teacher(teacher, 1)).compile(optimizer="adam")
    dataset = tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(2)
    history = distiller.fit(dataset, epochs=1, validation_data=dataset, verbose=0)
    assert "val_soft_loss" in history.history
    history = distiller.fit(np.array(TEXTS), LABELS, batch_size=2, validation_split=0.34, epochs=1, verbose=0)
    assert np.isfinite(history.history["val_loss"][0])


def test_padding_mask_keeps_padded_positions_out_of_the_cosine_term():
    teacher = bert_classifier(bert_vocabulary(), sequence_length=12)
    student = bert_classifier(bert_vocabulary(), sequence_length=12, num_layers=1, seed=5)
    pair = keras_kd.CosineEmbedding("backbone/transformer_layer_1", "backbone/transformer_layer_0")
    distiller = keras_kd.Distiller(teacher, student, pairs=[pair]).compile(optimizer="adam")
    tokens = keras.tree.map_structure(lambda t: keras.ops.convert_to_numpy(t).copy(), teacher.preprocessor(TEXTS))
    padded = ~tokens["padding_mask"].astype(bool)
    assert padded.any()
    noisy = dict(tokens, token_ids=np.where(padded, 7, tokens["token_ids"]).astype(tokens["token_ids"].dtype))

    def cosine(x):
        return distiller.evaluate(x, LABELS, batch_size=len(TEXTS), return_dict=True, verbose=0)["cosine_loss"]

    reference = cosine(tokens)
    assert reference > 1e-3
    np.testing.assert_allclose(cosine(noisy), reference, rtol=1e-5)
    # Without the mask, what the padding holds moves the term: the test can fail.
    pair.position_weighted = False
    distiller.make_test_function(force=True)
    assert abs(cosine(noisy) - cosine(tokens)) > 1e-3 * reference


def test_pre_tokenized_dicts_need_no_preprocessing():
    teacher = bert_classifier(bert_vocabulary(), sequence_length=12)
    student = student_from_teacher(teacher, 1)
    tokens = keras.tree.map_structure(keras.ops.convert_to_numpy, teacher.preprocessor(TEXTS))
    distiller = keras_kd.Distiller(teacher, student).compile(optimizer="adam")
    history = distiller.fit(tokens, LABELS, batch_size=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_paired_inputs_feed_each_model_its_own_input():
    rng = np.random.default_rng(0)
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    x_teacher, x_student = rng.normal(size=(16, 8)).astype("float32"), rng.normal(size=(16, 4)).astype("float32")
    distiller = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.0).compile(optimizer="adam")
    logs = distiller.evaluate(keras_kd.paired_inputs(x_teacher, x_student), batch_size=16, return_dict=True, verbose=0)
    expected = soft_target_loss(teacher(x_teacher), student(x_student), temperature=2.0)
    np.testing.assert_allclose(logs["soft_loss"], keras.ops.convert_to_numpy(expected), rtol=1e-5)
    distiller.fit(keras_kd.paired_inputs(x_teacher, x_student), rng.integers(0, 3, 16), epochs=1, verbose=0)
    assert distiller.predict(keras_kd.paired_inputs(x_teacher, x_student), verbose=0).shape == (16, 3)


# --- causal LMs --------------------------------------------------------------------------------


def test_causal_lm_distils_token_by_token_on_raw_strings():
    teacher = gpt2_causal_lm(gpt2_vocabulary())
    # Its own preprocessor over the same vocabulary: the teacher reads the student's tokens.
    student = gpt2_causal_lm(gpt2_vocabulary(), num_layers=1, seed=3)
    distiller = keras_kd.Distiller(teacher, student, temperature=1.0, alpha=0.0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = distiller.evaluate(TEXTS, batch_size=6, return_dict=True, verbose=0)["soft_loss"]
    distiller.fit(TEXTS, batch_size=3, epochs=8, verbose=0)
    after = distiller.evaluate(TEXTS, batch_size=6, return_dict=True, verbose=0)["soft_loss"]
    assert after < before


def test_masked_lm_teacher_and_student_predict_the_same_masked_positions():
    keras.utils.set_random_seed(0)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=bert_vocabulary())
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(
        tokenizer, sequence_length=12, mask_selection_rate=0.3, mask_selection_length=3
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(bert_vocabulary()),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=12,
    )
    teacher = keras_hub.models.BertMaskedLM(backbone, preprocessor=preprocessor)
    student = student_from_teacher(teacher, 1)
    distiller = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.5).compile(optimizer="adam")
    assert distiller._text_pipeline.token_level
    history = distiller.fit(TEXTS, batch_size=3, epochs=1, verbose=0)
    for key in ("loss", "hard_loss", "soft_loss"):
        assert np.isfinite(history.history[key][0]), key
    # One preprocessed batch (one random masking) feeds both models.
    x, y, sample_weight = distiller._text_pipeline.preprocess_samples(TEXTS)
    assert set(x) == {"token_ids", "padding_mask", "segment_ids", "mask_positions"}


def _tokenized(preprocessor, texts):
    x, y, sample_weight = preprocessor(texts)
    return (
        {key: keras.ops.convert_to_numpy(value).copy() for key, value in x.items()},
        keras.ops.convert_to_numpy(y).copy(),
        keras.ops.convert_to_numpy(sample_weight).copy(),
    )


def test_causal_lm_padding_does_not_move_the_loss():
    teacher = gpt2_causal_lm(gpt2_vocabulary(), sequence_length=10)
    student = gpt2_causal_lm(gpt2_vocabulary(), sequence_length=10, num_layers=1, seed=3)
    distiller = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.3).compile(optimizer="adam")
    x, y, sample_weight = _tokenized(teacher.preprocessor, ["the match", "shares fell after results"])
    padded = x["padding_mask"] == 0
    assert padded.any() and (sample_weight == 0).any()

    def loss(x, y, sample_weight):
        return distiller.evaluate(x, y, sample_weight=sample_weight, batch_size=2, return_dict=True, verbose=0)

    reference = loss(x, y, sample_weight)
    rng = np.random.default_rng(0)
    noisy_x = dict(x, token_ids=np.where(padded, rng.integers(1, 20, x["token_ids"].shape), x["token_ids"]))
    noisy_y = np.where(sample_weight == 0, rng.integers(1, 20, y.shape), y).astype(y.dtype)
    changed = loss(noisy_x, noisy_y, sample_weight)
    for key in ("loss", "soft_loss", "hard_loss"):
        np.testing.assert_allclose(changed[key], reference[key], rtol=1e-5, err_msg=key)
    # Without the mask the same change does move the loss: the test can fail.
    unmasked = loss(noisy_x, noisy_y, np.ones_like(sample_weight))
    assert abs(unmasked["loss"] - loss(x, y, np.ones_like(sample_weight))["loss"]) > 1e-4
