"""The runnable examples in the public docstrings run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = [
    "keras_kd.distiller",
    "keras_kd.losses.logits",
    "keras_kd.losses.dkd",
    "keras_kd.losses.features",
    "keras_kd.losses.attention",
    "keras_kd.losses.relational",
    "keras_kd.losses.top_k",
    "keras_kd.callbacks",
    "keras_kd.cache.teacher_cache",
    "keras_kd.cache.store",
    "keras_kd.model_inputs",
    "keras_kd.hub.student",
    "keras_kd.recipes.progressive",
    "keras_kd.recipes.pseudo_label",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
