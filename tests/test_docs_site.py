"""The documentation site builds with `mkdocs build --strict`, with every tutorial and every public name in it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from test_docstrings import FUNCTIONS_AND_CLASSES

ROOT = Path(__file__).resolve().parent.parent
API_PAGES = sorted((ROOT / "docs" / "api").glob("*.md"))


def documented_objects():
    """`{heading: object path}` of every `::: object` block of the API pages."""
    blocks = {}
    for page in API_PAGES:
        text = page.read_text(encoding="utf-8")
        for path, heading in re.findall(r"^::: (\S+)\n    options:\n(?:      .*\n)*?      heading: (\S+)", text, re.M):
            blocks[heading] = path
    return blocks


def test_every_public_name_is_in_the_api_reference():
    blocks = documented_objects()
    missing = [name for name in FUNCTIONS_AND_CLASSES if name not in blocks]
    assert not missing, f"public names without a `::: ...` block (and `heading: <name>`) in docs/api/: {missing}"
    for name, path in blocks.items():
        obj = FUNCTIONS_AND_CLASSES.get(name)
        if obj is not None:
            assert f"{obj.__module__}.{obj.__qualname__}" == path, f"docs/api: {name} points at {path}"


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the site is built once per suite, under TensorFlow: mkdocstrings reads the sources statically, "
    "so the backend does not change it",
)
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (site / "api" / "losses" / "index.html").is_file()
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        assert (site / "tutorials" / notebook.stem / "index.html").is_file(), f"{notebook.name} is not on the site"
