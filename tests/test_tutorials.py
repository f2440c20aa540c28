"""Executes every tutorial notebook (`tutorials/*.ipynb`) top to bottom, in its fast mode.

Each notebook is copied to a temporary directory and run there by nbclient in a fresh kernel:
the committed file, with its full-run outputs, is never rewritten. A cell that raises fails the
test, the notebook's closing assertions included. The kernel is this interpreter
(`sys.executable`, through a kernel spec of its own written for the test, so a `python3` kernel
installed elsewhere cannot stand in for it) with `KERAS_KD_TUTORIAL_FAST=1` and the suite's
`KERAS_BACKEND` in its environment, and this checkout first on its `PYTHONPATH`.

The tutorials run once per suite, under the JAX backend. A notebook that needs other backends
says so in its metadata, `{"keras_kd": {"backends": ["tensorflow", "torch"]}}`, and then runs
under each backend it lists. Each notebook has 300 seconds in all.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import keras
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))
DEFAULT_BACKENDS = ("jax",)
NOTEBOOK_SECONDS = 300
KERNEL_NAME = "keras-kd-test-python"


def declared_backends(notebook):
    """The backends a notebook runs under: its `keras_kd.backends` metadata, or JAX alone."""
    backends = notebook.metadata.get("keras_kd", {}).get("backends", DEFAULT_BACKENDS)
    unknown = set(backends) - {"tensorflow", "jax", "torch"}
    if isinstance(backends, str) or not backends or unknown:
        raise ValueError(f"metadata keras_kd.backends must list tensorflow, jax or torch; got {backends!r}")
    return tuple(backends)


def install_kernel_spec(jupyter_dir):
    """Writes a kernel spec that runs `sys.executable`; JUPYTER_PATH=jupyter_dir makes it findable."""
    spec_dir = jupyter_dir / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({sys.executable})",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def kernel_environment(backend):
    env = dict(os.environ, KERAS_KD_TUTORIAL_FAST="1", KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.pop("MPLBACKEND", None)  # the kernel's inline backend draws the figures
    return env


@pytest.mark.timeout(NOTEBOOK_SECONDS + 60)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, tmp_path, monkeypatch):
    backend = keras.backend.backend()
    backends = declared_backends(nbformat.read(path, as_version=4))
    if backend not in backends:
        if backends == DEFAULT_BACKENDS:
            pytest.skip("tutorials run once, under the jax backend")
        pytest.skip(f"{path.name} declares the backends {list(backends)} (metadata keras_kd.backends)")

    workdir = tmp_path / "run"
    workdir.mkdir()
    copy = workdir / path.name
    shutil.copyfile(path, copy)
    notebook = nbformat.read(copy, as_version=4)
    install_kernel_spec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    deadline = time.monotonic() + NOTEBOOK_SECONDS
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=kernel_environment(backend))
    assert client.code_cells_executed == sum(cell.cell_type == "code" for cell in notebook.cells)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_is_committed_with_outputs(path):
    """The committed file opens with a markdown cell and holds the outputs of a run without errors."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    declared_backends(notebook)
    assert notebook.cells and notebook.cells[0].cell_type == "markdown", f"{path.name}: first cell is not markdown"
    code = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    unexecuted = [i for i, cell in enumerate(code) if cell.execution_count is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} (counting code cells from 0) have no outputs"
    errors = [output.ename for cell in code for output in cell.outputs if output.output_type == "error"]
    assert not errors, f"{path.name}: the stored outputs contain errors {errors}"
