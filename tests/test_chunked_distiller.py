"""`Distiller(chunk_size=N)`: the token-level terms a chunk of positions at a time equal the dense ones.

Tiny KerasHub Llama 3 models (untied embeddings) and a tied, soft-capped Gemma: one step of plain SGD
with learning rate `LR` moves every student weight by `-LR` times its gradient (`LR` large, so that the
change is far above the weights' float32 resolution), so comparing the weights after a step with
`chunk_size=None` and with a chunk size that does not divide the 11 positions compares the gradients
of every student variable (float32, rtol 1e-5), next to the logged loss, `soft_loss` and `hard_loss`.
"""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.losses import DKD, GeneralizedJSD
from keras_kd.losses._common import weighted_mean

keras_hub = pytest.importorskip("keras_hub")

VOCABULARY, BATCH, POSITIONS = 97, 3, 11
RNG = np.random.default_rng(0)
X = {
    "token_ids": RNG.integers(0, VOCABULARY, (BATCH, POSITIONS)).astype("int32"),
    "padding_mask": np.ones((BATCH, POSITIONS), "int32"),
}
Y = RNG.integers(0, VOCABULARY, (BATCH, POSITIONS)).astype("int32")
MASK = (RNG.random((BATCH, POSITIONS)) > 0.3).astype("float32")
LR = 1e6


def llama(layers, seed, hidden=16):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=VOCABULARY,
        num_layers=layers,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=hidden,
        intermediate_dim=2 * hidden,
    )
    # Logits ten times larger than at initialisation: distributions as far apart as trained models' (a soft loss
    # of near-uniform distributions is a sum of terms that cancel, which float32 holds to ~1e-7 only).
    norm = backbone.get_layer("sequence_output_layernorm")
    norm.set_weights([10.0 * w for w in norm.get_weights()])
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)


def gemma(layers, seed):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCABULARY,
        num_layers=layers,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
        final_logit_soft_cap=3.0,
        attention_logit_soft_cap=5.0,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
    )
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


def weighted_kl(teacher_logits, student_logits, temperature, sample_weight):
    return weighted_mean(keras_kd.losses.soft_target_kl(teacher_logits, student_logits, temperature), sample_weight)


def one_step(teacher, make_student, chunk_size, y=Y, sample_weight=None, loss=None, strategy=None, **kwargs):
    """`(logs, gradients)` of one SGD(LR) step, the gradients read off the weights' changes."""
    student = make_student()
    before = [keras.ops.convert_to_numpy(v) for v in student.trainable_variables]
    distiller = keras_kd.Distiller(teacher, student, chunk_size=chunk_size, **kwargs)
    if strategy is not None:
        distiller._chunk_gradients = strategy
    distiller.compile(optimizer=keras.optimizers.SGD(LR), loss=loss)
    logs = distiller.train_on_batch(X, y, sample_weight=sample_weight, return_dict=True)
    after = [keras.ops.convert_to_numpy(v) for v in student.trainable_variables]
    return {k: float(v) for k, v in logs.items()}, [(b - a) / LR for a, b in zip(after, before)]


def assert_same_step(dense, chunked, rtol=1e-5):
    (dense_logs, dense_steps), (chunked_logs, chunked_steps) = dense, chunked
    assert sorted(dense_logs) == sorted(chunked_logs)
    for key in dense_logs:
        # atol: a soft loss near 0 is a sum of terms that cancel, rounded in another order chunk by chunk.
        np.testing.assert_allclose(chunked_logs[key], dense_logs[key], rtol=rtol, atol=1e-7, err_msg=key)
    largest = max(np.abs(step).max() for step in dense_steps)
    assert largest > 0
    for dense_step, chunked_step in zip(dense_steps, chunked_steps):
        # Elementwise within rtol, and within rtol of the variable's largest gradient where chunks of opposite
        # signs cancel (33 one-position chunks summed in float32); a gradient that is 0 but for rounding (1e-18
        # where others are 1e-2) is compared at 1e-10 of the largest.
        scale = max(np.abs(dense_step).max(), 1e-10 * largest / rtol)
        np.testing.assert_allclose(chunked_step, dense_step, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def teacher():
    return llama(2, seed=1)


def student():
    return llama(1, seed=2, hidden=12)


TERMS = {
    "kl": dict(soft_loss="kl"),
    "reverse_kl": dict(soft_loss="reverse_kl"),
    "jsd": dict(soft_loss=GeneralizedJSD(beta=0.3, temperature=2.0)),
    "jsd_mean_with_sample_weight": dict(
        soft_loss=GeneralizedJSD(beta=0.7, temperature=2.0, reduction="mean_with_sample_weight")
    ),
    "callable": dict(soft_loss=weighted_kl),
    "dkd": dict(soft_loss=DKD(alpha=1.0, beta=2.0, temperature=2.0)),
}


@pytest.mark.parametrize("term", sorted(TERMS))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "masked"])
def test_every_soft_loss_equals_dense(teacher, term, weighted):
    kwargs = dict(temperature=2.0, alpha=0.3, **TERMS[term])
    weight = MASK if weighted else None
    dense = one_step(teacher, student, None, sample_weight=weight, **kwargs)
    chunked = one_step(teacher, student, 4, sample_weight=weight, **kwargs)
    assert_same_step(dense, chunked)


@pytest.mark.parametrize("chunk_size", [1, 3, 10, 11, 64])
def test_chunk_sizes_that_do_not_divide_the_positions(teacher, chunk_size):
    dense = one_step(teacher, student, None, sample_weight=MASK, temperature=3.0)
    assert_same_step(dense, one_step(teacher, student, chunk_size, sample_weight=MASK, temperature=3.0))


def test_per_example_weights_labels_free_batches_and_a_compiled_loss(teacher):
    per_example = np.array([1.0, 0.0, 2.5], "float32")
    dense = one_step(teacher, student, None, sample_weight=per_example)
    assert_same_step(dense, one_step(teacher, student, 5, sample_weight=per_example))
    dense = one_step(teacher, student, None, y=None, alpha=0.0)
    assert_same_step(dense, one_step(teacher, student, 5, y=None, alpha=0.0))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert_same_step(
        one_step(teacher, student, None, sample_weight=MASK, loss=loss, alpha=0.6),
        one_step(teacher, student, 5, sample_weight=MASK, loss=loss, alpha=0.6),
    )


def test_rematerialized_chunks_equal_dense_too(teacher):
    dense = one_step(teacher, student, None, sample_weight=MASK, alpha=0.4)
    assert_same_step(dense, one_step(teacher, student, 3, sample_weight=MASK, alpha=0.4, strategy="remat"))


def test_several_teachers(teacher):
    teachers = [teacher, llama(1, seed=5)]
    kwargs = dict(teacher_weights=[2.0, 1.0], temperature=2.0)
    assert_same_step(one_step(teachers, student, None, **kwargs), one_step(teachers, student, 4, **kwargs))


def test_tied_soft_capped_gemma():
    teacher = gemma(2, seed=3)

    def make_student():
        return gemma(1, seed=4)

    dense = one_step(teacher, make_student, None, sample_weight=MASK)
    assert_same_step(dense, one_step(teacher, make_student, 4, sample_weight=MASK))


@pytest.mark.parametrize("top_k", [None, 5])
def test_teacher_cache(teacher, tmp_path, top_k):
    cache = keras_kd.TeacherCache.build(teacher, (X, Y), tmp_path / "cache", top_k=top_k, dtype="float32", verbose=0)
    data = cache.dataset(batch_size=BATCH, shuffle=False)
    results = []
    for chunk_size in (None, 4):
        model = student()
        before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        distiller = keras_kd.Distiller(cache, model, chunk_size=chunk_size, temperature=2.0)
        distiller.compile(optimizer=keras.optimizers.SGD(LR))
        history = distiller.fit(data, epochs=1, verbose=0)
        after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        logs = {k: v[-1] for k, v in history.history.items()}
        results.append((logs, [(b - a) / LR for a, b in zip(after, before)]))
    assert_same_step(*results)


def test_schedules_evaluate_and_metrics(teacher):
    outcomes = []
    for chunk_size in (None, 4):
        distiller = keras_kd.Distiller(teacher, student(), chunk_size=chunk_size, temperature=2.0)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.5),
            metrics=["sparse_categorical_accuracy"],
            weighted_metrics=[keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="ce")],
        )
        distiller.train_on_batch(X, Y, sample_weight=MASK)
        distiller.temperature, distiller.alpha = 5.0, 0.8
        trained = distiller.train_on_batch(X, Y, sample_weight=MASK, return_dict=True)
        evaluated = distiller.evaluate(X, Y, sample_weight=MASK, batch_size=BATCH, verbose=0, return_dict=True)
        outcomes.append((trained, evaluated))
    for dense, chunked in zip(*outcomes):
        assert sorted(dense) == sorted(chunked)
        for key in dense:
            np.testing.assert_allclose(float(chunked[key]), float(dense[key]), rtol=1e-5, atol=1e-7, err_msg=key)


def test_mixed_bfloat16(teacher):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        dense = one_step(teacher, student, None, sample_weight=MASK)
        chunked = one_step(teacher, student, 4, sample_weight=MASK)
    finally:
        keras.config.set_dtype_policy("float32")
    # bfloat16 keeps 8 bits of mantissa: each chunk's matmuls round as the dense ones do, their sums in float32.
    assert_same_step(dense, chunked, rtol=2e-2)


def test_auto_is_the_default_and_dense_for_small_logits(teacher):
    auto = one_step(teacher, student, "auto", sample_weight=MASK)
    assert_same_step(one_step(teacher, student, None, sample_weight=MASK), auto, rtol=1e-6)
    distiller = keras_kd.Distiller(teacher, student())
    assert distiller.chunk_size == "auto"


def test_chunk_size_is_saved(teacher, tmp_path):
    distiller = keras_kd.Distiller(teacher, student(), chunk_size=7)
    distiller.compile(optimizer="sgd")
    distiller.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras")
    assert loaded.chunk_size == 7
    assert loaded.get_config()["chunk_size"] == 7


def test_a_sequential_language_model_is_chunked_at_its_last_layer():
    def lm(seed):
        keras.utils.set_random_seed(seed)
        return keras.Sequential(
            [
                keras.Input((POSITIONS,), dtype="int32"),
                keras.layers.Embedding(VOCABULARY, 8),
                keras.layers.Dense(16, activation="tanh"),
                keras.layers.Dense(VOCABULARY),
            ]
        )

    teacher = lm(7)
    results = []
    for chunk_size in (None, 4):
        model = lm(8)
        before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        distiller = keras_kd.Distiller(teacher, model, chunk_size=chunk_size, alpha=0.5)
        distiller.compile(optimizer=keras.optimizers.SGD(LR))
        logs = distiller.train_on_batch(X["token_ids"], Y, sample_weight=MASK, return_dict=True)
        after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        results.append(({k: float(v) for k, v in logs.items()}, [(b - a) / LR for a, b in zip(after, before)]))
    assert_same_step(*results)


def test_top_k_cache_build_chunk_by_chunk(teacher, tmp_path):
    stored = []
    for chunk_size in (None, 3):
        directory = tmp_path / f"cache_{chunk_size}"
        cache = keras_kd.TeacherCache.build(
            teacher, (X, Y), directory, top_k=7, dtype="float32", verbose=0, chunk_size=chunk_size
        )
        x, _ = cache.dataset(batch_size=BATCH, shuffle=False)[0]
        stored.append([np.asarray(value) for value in x["teacher_top_k"]])
    (dense_values, dense_indices, dense_tail), (values, indices, tail) = stored
    np.testing.assert_array_equal(indices, dense_indices)
    np.testing.assert_allclose(values, dense_values, rtol=1e-6)
    np.testing.assert_allclose(tail, dense_tail, rtol=1e-6)


def test_a_seq2seq_model_is_chunked_at_its_decoder_output():
    def bart(seed, layers):
        keras.utils.set_random_seed(seed)
        backbone = keras_hub.models.BartBackbone(
            vocabulary_size=VOCABULARY,
            num_layers=layers,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=16,
            max_sequence_length=16,
        )
        return keras_hub.models.BartSeq2SeqLM(backbone=backbone, preprocessor=None)

    x = {
        "encoder_token_ids": RNG.integers(0, VOCABULARY, (BATCH, 7)).astype("int32"),
        "encoder_padding_mask": np.ones((BATCH, 7), "int32"),
        "decoder_token_ids": X["token_ids"],
        "decoder_padding_mask": X["padding_mask"],
    }
    teacher = bart(1, 2)
    results = []
    for chunk_size in (None, 4):
        model = bart(2, 1)
        before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        distiller = keras_kd.Distiller(teacher, model, chunk_size=chunk_size, alpha=0.5, temperature=2.0)
        distiller.compile(optimizer=keras.optimizers.SGD(LR))
        logs = distiller.train_on_batch(x, Y, sample_weight=MASK, return_dict=True)
        after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        results.append(({k: float(v) for k, v in logs.items()}, [(b - a) / LR for a, b in zip(after, before)]))
    assert_same_step(*results)


def test_first_batch_checks_read_the_teacher_chunk_by_chunk():
    teacher = llama(2, seed=1)
    distiller = keras_kd.Distiller(teacher, student(), chunk_size=4).compile(optimizer="sgd")
    with pytest.warns(UserWarning, match=r"predicts \d+ of the first batch's \d+ labels .* about chance for 97"):
        distiller.fit(X, Y, sample_weight=MASK, batch_size=BATCH, epochs=1, verbose=0)
    norm = teacher.backbone.get_layer("sequence_output_layernorm")
    norm.set_weights([np.full_like(w, np.nan) for w in norm.get_weights()])
    distiller = keras_kd.Distiller(teacher, student(), chunk_size=4).compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"The teacher 'llama3_causal_lm.*' .*(NaN|non-finite)"):
        distiller.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0)


def test_auto_stays_dense_where_a_pair_reads_a_layer_of_a_head(teacher):
    assert keras_kd.Distiller(teacher, student())._student_split is not None  # "auto" would chunk large logits
    pair = keras_kd.Hint("backbone/sequence_output_layernorm", "token_embedding")
    assert keras_kd.Distiller(teacher, student(), pairs=[pair])._student_split is None
