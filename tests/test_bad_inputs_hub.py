"""The bad-input catalogue, KerasHub models: tiny tasks built from config with in-memory vocabularies, and
hostile GGUF files for `keras_kd.hub.load_gguf` (a 4 KB file written here, its metadata or bytes changed).

See `tests/test_bad_inputs.py` for the rules every test follows and `docs/bad_inputs.md` for the table.
"""

import sys
import time

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("tensorflow")

from test_hub_text import (  # noqa: E402
    LABELS,
    TEXTS,
    WORDS,
    bert_classifier,
    bert_vocabulary,
    gpt2_causal_lm,
    gpt2_vocabulary,
)

import keras_kd  # noqa: E402
from keras_kd.hub import student_from_teacher  # noqa: E402


def test_a_causal_lm_student_with_another_vocabulary_size():
    teacher = gpt2_causal_lm(gpt2_vocabulary())
    student = gpt2_causal_lm(gpt2_vocabulary(WORDS[:5]), words=WORDS[:5])
    sizes = (len(gpt2_vocabulary()), len(gpt2_vocabulary(WORDS[:5])))
    with pytest.raises(
        ValueError,
        match=rf"The teacher '.*' has a vocabulary of {sizes[0]} tokens and the student '.*' one of {sizes[1]}.*build "
        "the student with the teacher's tokenizer and vocabulary_size",
    ):
        keras_kd.Distiller(teacher, student)


def test_a_causal_lm_student_whose_tokenizer_maps_ids_to_other_tokens():
    vocabulary = gpt2_vocabulary()
    tokens = list(vocabulary)
    shuffled = {token: i for i, token in enumerate([tokens[0], *reversed(tokens[1:])])}
    with pytest.raises(
        ValueError,
        match=r"map ids to different tokens \(first difference at id 1\).*give the student the teacher's preprocessor",
    ):
        keras_kd.Distiller(gpt2_causal_lm(vocabulary), gpt2_causal_lm(shuffled))


def test_raw_strings_for_a_student_task_without_a_preprocessor():
    teacher = bert_classifier(bert_vocabulary(), sequence_length=12)
    student = keras_hub.models.BertTextClassifier(
        student_from_teacher(teacher.backbone, 1), num_classes=3, preprocessor=None
    )
    distiller = keras_kd.Distiller(teacher, student).compile(optimizer="adam")
    with pytest.raises(
        ValueError, match=r"The student BertTextClassifier .* has no preprocessor.*Give the student task a preprocessor"
    ):
        distiller.fit(TEXTS, LABELS, epochs=1, verbose=0)


def test_raw_strings_for_a_teacher_classifier_without_a_preprocessor():
    student = bert_classifier(bert_vocabulary(), sequence_length=12)
    teacher = keras_hub.models.BertTextClassifier(
        student_from_teacher(student.backbone, 2), num_classes=3, preprocessor=None
    )
    distiller = keras_kd.Distiller(teacher, student).compile(optimizer="adam")
    with pytest.raises(
        ValueError, match=r"The teacher BertTextClassifier .* has no preprocessor.*Give the teacher task its"
    ):
        distiller.evaluate(TEXTS, LABELS, verbose=0)


def test_an_unknown_backbone_layer_lists_the_backbone_layers():
    teacher = bert_classifier(bert_vocabulary(), sequence_length=12)
    student = student_from_teacher(teacher, 1)
    with pytest.raises(ValueError) as error:
        keras_kd.Distiller(
            teacher,
            student,
            pairs=[keras_kd.CosineEmbedding("backbone/transformer_layer_7", "backbone/transformer_layer_0")],
        )
    message = str(error.value)
    assert "has no layer 'backbone/transformer_layer_7'" in message and "Name nested layers by their path" in message
    for name in ("transformer_layer_0", "transformer_layer_1", "token_embedding"):
        assert name in message


# --- GGUF files: hostile metadata and offsets fail before anything of the declared sizes is allocated

GGUF_TOKENS = ["<s>", "</s>", "a", "b", "ab"]
GGUF_SHAPES = {  # numpy order: (out, in)
    "token_embd.weight": (5, 8),
    "output_norm.weight": (8,),
    "blk.0.attn_norm.weight": (8,),
    "blk.0.ffn_norm.weight": (8,),
    **{f"blk.0.attn_{part}.weight": (8, 8) for part in ("q", "k", "v", "output")},
    "blk.0.ffn_gate.weight": (16, 8),
    "blk.0.ffn_up.weight": (16, 8),
    "blk.0.ffn_down.weight": (8, 16),
}


def tiny_gguf(path, tensors=True, **metadata):
    """A valid one-block Llama GGUF (width 8, five tokens, about 4 KB) whose `metadata` overrides the defaults."""
    gguf = pytest.importorskip("gguf")
    fields = dict(
        block_count=1,
        embedding_length=8,
        feed_forward_length=16,
        head_count=2,
        context_length=32,
        vocab_size=len(GGUF_TOKENS),
        layer_norm_rms_eps=1e-5,
        rope_freq_base=10000.0,
        tokenizer_model="gpt2",
        token_list=GGUF_TOKENS,
        token_merges=["a b"],
        bos_token_id=0,
        eos_token_id=1,
    )
    fields.update(metadata)
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, value in fields.items():
        getattr(writer, f"add_{name}")(value)
    if tensors:
        for name, shape in GGUF_SHAPES.items():
            writer.add_tensor(name, np.full(shape, 0.5, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def load_gguf_error(path):
    """The message of `load_gguf(path)`'s ValueError, which must come within seconds and allocate nothing large."""
    from keras_kd.hub import load_gguf

    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        resource = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if resource else 0
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        load_gguf(path, verbose=0)
    assert time.perf_counter() - start < 5.0
    if resource:  # the sizes the metadata declares would take gigabytes
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
        assert grown * (1 if sys.platform == "darwin" else 1024) < 200e6
    return str(error.value)


def test_a_gguf_block_count_beyond_the_blocks_it_holds(tmp_path):
    message = load_gguf_error(tiny_gguf(tmp_path / "blocks.gguf", block_count=2_000_000_000))
    assert "llama.block_count is 2000000000 but the file holds tensors (blk.N.*) for 1 blocks" in message
    assert "gguf-set-metadata" in message and "llama.block_count VALUE" in message


def test_a_gguf_vocab_size_beyond_its_token_embedding(tmp_path):
    message = load_gguf_error(tiny_gguf(tmp_path / "vocabulary.gguf", vocab_size=200_000_000))
    assert "llama.vocab_size is 200000000 but token_embd.weight holds 5 token rows" in message
    assert "gguf-set-metadata" in message and "llama.vocab_size VALUE" in message


def test_a_gguf_tensor_offset_that_wraps_around(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tiny_gguf(tmp_path / "offset.gguf")
    reader = gguf.GGUFReader(path)
    offset_field = next(t for t in reader.tensors if t.name == "token_embd.weight").field.parts[-1]
    position = offset_field.ctypes.data - reader.data.ctypes.data  # where the tensor's uint64 offset is stored
    del reader, offset_field
    with open(path, "r+b") as file:  # the reader adds it to the data section's start in uint64: 32 bytes before it
        file.seek(position)
        file.write((2**64 - 32).to_bytes(8, "little"))
    message = load_gguf_error(path)
    assert "tensor 'token_embd.weight' (shape [8, 5]) claims 160 bytes at data offset 18446744073709551584" in message
    assert "but the data section holds" in message and "Download or convert it again" in message


def test_a_gguf_header_declaring_more_tensors_than_the_file_can_hold(tmp_path):
    path = tiny_gguf(tmp_path / "count.gguf")
    with open(path, "r+b") as file:  # GGUF.tensor_count: the uint64 after the magic and the version
        file.seek(8)
        file.write((2_000_000_000).to_bytes(8, "little"))
    message = load_gguf_error(path)
    assert "its header declares 2000000000 tensors (GGUF.tensor_count)" in message
    assert "cannot fit in its" in message and "Download or convert it again" in message


def test_a_gguf_padding_token_id_outside_the_vocabulary(tmp_path):
    message = load_gguf_error(tiny_gguf(tmp_path / "padding.gguf", pad_token_id=5))
    assert "tokenizer.ggml.padding_token_id = 5 is outside the vocabulary of 5 tokens (ids 0 to 4)" in message
    assert "gguf-set-metadata" in message and "tokenizer.ggml.padding_token_id VALUE" in message


@pytest.mark.parametrize("epsilon", [0.0, -1e-5])
def test_a_gguf_layer_norm_epsilon_that_is_not_positive(tmp_path, epsilon):
    message = load_gguf_error(tiny_gguf(tmp_path / "epsilon.gguf", layer_norm_rms_eps=epsilon))
    stored = np.float32(epsilon).item()  # as the file holds it
    assert f"llama.attention.layer_norm_rms_epsilon is {stored}; it must be a finite number greater than 0" in message
    assert "gguf-set-metadata" in message and "llama.attention.layer_norm_rms_epsilon VALUE" in message


def test_a_gguf_rope_freq_base_that_is_nan(tmp_path):
    message = load_gguf_error(tiny_gguf(tmp_path / "rope.gguf", rope_freq_base=float("nan")))
    assert "llama.rope.freq_base is nan; it must be a finite number greater than 0" in message
    assert "gguf-set-metadata" in message and "llama.rope.freq_base VALUE" in message


def test_a_gguf_head_count_of_zero(tmp_path):
    message = load_gguf_error(tiny_gguf(tmp_path / "heads.gguf", head_count=0))
    assert "llama.attention.head_count is 0; it must be an integer of at least 1" in message
    assert "gguf-set-metadata" in message and "llama.attention.head_count VALUE" in message


def test_a_gguf_file_without_tensors(tmp_path):
    message = load_gguf_error(tiny_gguf(tmp_path / "empty.gguf", tensors=False))
    assert "holds no tensors (GGUF.tensor_count = 0)" in message
    assert "needs a model file with its weights" in message
