"""MkDocs hook: every notebook in the repository's `tutorials/` directory becomes a page of the site.

The notebooks live outside `docs/` (the test suite runs them there), so this hook adds each
`tutorials/*.ipynb` to the site's files as `tutorials/<name>.ipynb`, which the mkdocs-jupyter
plugin then renders (without executing it). The nav section titled "Tutorials" in `mkdocs.yml`
gets one entry per notebook, in file-name order, after the pages it already lists, and the marker
`<!-- tutorial list -->` in a page is replaced by a list of links to them, each titled by the
notebook's first Markdown heading. Adding a notebook needs no change to `mkdocs.yml`.

Every notebook's first heading reads `# <n>. <Subject>: <detail>`, `<n>` the number its file name
starts with (`05_capacity_gap.ipynb`: `# 5. The capacity gap: ...`), so the navigation numbers the
tutorials one way; `tests/test_docs_site.py` checks it.
"""

import json
import logging
import os
import pathlib

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

SECTION = "Tutorials"
MARKER = "<!-- tutorial list -->"
log = logging.getLogger("mkdocs.hooks.tutorials")


def _tutorials_dir(config):
    return pathlib.Path(config.config_file_path).resolve().parent / "tutorials"


def _notebooks(config):
    directory = _tutorials_dir(config)
    return sorted(directory.glob("*.ipynb")) if directory.is_dir() else []


def _title(path):
    """The notebook's first Markdown heading, else its file name."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError) as error:
        log.warning("tutorials: cannot read %s: %s", path, error)
        return path.stem
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        for line in "".join(source).splitlines() if isinstance(source, list) else source.splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip()
    return path.stem.replace("_", " ")


def on_config(config):
    """Appends every notebook to the nav section titled "Tutorials"."""
    uris = [f"tutorials/{path.name}" for path in _notebooks(config)]
    for entry in config.nav or []:
        if isinstance(entry, dict) and SECTION in entry:
            section = entry[SECTION]
            if not isinstance(section, list):
                section = entry[SECTION] = [section]
            listed = {item if isinstance(item, str) else next(iter(item.values())) for item in section}
            section.extend(uri for uri in uris if uri not in listed)
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files, config):
    """Adds `tutorials/*.ipynb` (from the repository root) to the site's files."""
    for path in _notebooks(config):
        uri = f"tutorials/{path.name}"
        if files.get_file_from_path(uri) is None:
            files.append(File(uri, str(path.parent.parent), config.site_dir, config.use_directory_urls))
    return files


def on_page_markdown(markdown, page, config, files):
    """Replaces the tutorial-list marker with links to every notebook."""
    if MARKER not in markdown:
        return markdown
    notebooks = _notebooks(config)
    if not notebooks:
        items = "No notebook is in `tutorials/` yet."
    else:
        here = os.path.dirname(page.file.src_uri)
        items = "\n".join(
            # a bullet list: the titles carry the tutorials' numbers
            f"- [{_title(path)}]({os.path.relpath(f'tutorials/{path.name}', here or '.')})" for path in notebooks
        )
    return markdown.replace(MARKER, items)
