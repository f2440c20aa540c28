"""keras-kd: knowledge distillation for Keras 3 on TensorFlow, JAX and PyTorch.

`import keras_kd` registers every serializable class of keras-kd with Keras (the distiller, the
layer pairs, the losses, the logged-terms metric, the teacher cache, and KerasHub's GGUF tokenizer
once KerasHub is imported), so that `keras.saving.load_model("distiller.keras")` works after a
plain `import keras_kd`. It does so without importing Keras itself, so that the backend can still
be chosen after it (`keras-kd --backend`): when Keras is already imported the classes are
registered at once, otherwise as soon as Keras has been imported (see `_Registration`). The public
names load on first use.
"""

import importlib
import importlib.abc
import sys
import threading
import warnings

__version__ = "0.1.0"

_PUBLIC = {
    "Distiller": "keras_kd.distiller",
    "LayerPair": "keras_kd.features.pairs",
    "Hint": "keras_kd.features.pairs",
    "AttentionTransfer": "keras_kd.features.pairs",
    "Relational": "keras_kd.features.pairs",
    "CosineEmbedding": "keras_kd.features.pairs",
    "TeacherCache": "keras_kd.cache.teacher_cache",
    "OnPolicy": "keras_kd.on_policy.config",
    "paired_inputs": "keras_kd.data.batch_keys",
    "callbacks": "keras_kd.callbacks",
    "losses": "keras_kd.losses",
    "recipes": "keras_kd.recipes",
    "hub": "keras_kd.hub",
    "on_policy": "keras_kd.on_policy",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'keras_kd' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if module.__name__.endswith(name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)


# The modules whose import registers keras-kd's serializable classes, by the package they need.
_REGISTERING = {
    "keras": (
        "keras_kd.losses",
        "keras_kd.metrics",
        "keras_kd.features.pairs",
        "keras_kd.callbacks",
        "keras_kd.cache.teacher_cache",
        "keras_kd.distiller",
    ),
    "keras_hub": ("keras_kd.hub.gguf",),
}
# Packages that import Keras while they initialize, and that the registering modules import.
_IMPORTERS_OF_KERAS = ("tensorflow",)


class _Registration(importlib.abc.MetaPathFinder):
    """Imports the modules of `_REGISTERING[package]` once `package` has been imported, then steps aside.

    It finds nothing itself: for the packages of `_REGISTERING` and `_IMPORTERS_OF_KERAS` and
    keras-kd's own submodules, it takes the other finders' spec and wraps its loader so that it
    hears when the module has executed. A package imported while one of those is still executing
    (`keras` from `keras_kd.losses`, from `keras_hub`, or from `tensorflow`'s own initialization)
    is registered once the outermost of them has finished, never half-way through it: the
    registering modules import each other, and TensorFlow. It leaves `sys.meta_path` once every
    package of `_REGISTERING` is registered.
    """

    def __init__(self, packages):
        self.pending = list(packages)  # not imported yet
        self.ready = []  # imported, to register
        self.local = threading.local()  # .depth: watched modules executing (or registering) in this thread

    def find_spec(self, name, path=None, target=None):
        if not (name in self.pending or name in _IMPORTERS_OF_KERAS or name.startswith("keras_kd.")):
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenRegister(spec.loader, self)
        return spec

    def executed(self, name):
        """After module `name` has executed: registers the packages imported by now, unless a watched one runs."""
        if name in self.pending:
            self.pending.remove(name)
            self.ready.append(name)
        if getattr(self.local, "depth", 0) or not self.ready:
            return  # after the outermost watched module, or the registration under way
        self.local.depth = 1
        try:
            while self.ready:
                _register(self.ready.pop(0))
        finally:
            self.local.depth = 0
        if not self.pending and self in sys.meta_path:
            sys.meta_path.remove(self)


class _ThenRegister(importlib.abc.Loader):
    """A module's own loader, followed by `_Registration.executed`; the module keeps its own loader."""

    def __init__(self, loader, registration):
        self.loader, self.registration = loader, registration

    def __getattr__(self, name):  # get_code, get_source, is_package, ... (runpy's `python -m` reads them)
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def create_module(self, spec):
        create = getattr(self.loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader
        local = self.registration.local
        local.depth = getattr(local, "depth", 0) + 1
        try:
            self.loader.exec_module(module)
        finally:
            local.depth -= 1
        self.registration.executed(module.__name__)


def _register(package):
    try:
        for module in _REGISTERING[package]:
            importlib.import_module(module)
    except Exception as error:  # an unsupported backend, a missing extra: `import keras` must still work
        warnings.warn(
            f"keras_kd could not register its serializable classes with {package} ({type(error).__name__}: "
            f"{error}), so keras.saving.load_model cannot load keras-kd objects in this process.",
            UserWarning,
            stacklevel=2,
        )


def _register_or_wait():
    waiting = []
    for package in _REGISTERING:
        if package in sys.modules:
            _register(package)
        else:
            waiting.append(package)
    if waiting and not any(isinstance(finder, _Registration) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Registration(waiting))


_register_or_wait()
