"""The complete toy run on the getting-started page works as pasted, without a warning, on every backend."""

import os
import re
import subprocess
import sys

import keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_pasteable_toy_run_prints_what_the_page_says():
    with open(os.path.join(ROOT, "docs", "getting-started.md")) as file:
        page = file.read()
    (snippet,) = [block for block in re.findall(r"```python\n(.*?)```", page, re.S) if "np.random.rand" in block]
    expected = re.search(r"print\(sorted\(history.history\)\)\s+# (\[.*\])", snippet).group(1)
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    run = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", snippet],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == expected
