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


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once for this module's tests by `mkdocs build --strict`, as CI builds it."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip(
            "the site is built once per suite, under TensorFlow: mkdocstrings reads the sources statically, "
            "so the backend does not change it"
        )
    site = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site


def test_mkdocs_build_strict(site):
    assert (site / "api" / "losses" / "index.html").is_file()
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        assert (site / "tutorials" / notebook.stem / "index.html").is_file(), f"{notebook.name} is not on the site"


# What is not prose on a page: code (inline, blocks, notebook cells and their copy-to-clipboard text),
# the formulas that MathJax typesets (pymdownx.arithmatex), scripts and styles.
NOT_PROSE = [
    r"<script\b.*?</script>",
    r"<style\b.*?</style>",
    r"<pre\b.*?</pre>",
    r"<code\b.*?</code>",
    r'<div class="clipboard-copy-txt".*?</div>',
    r'<(span|div) class="arithmatex">.*?</\1>',
]


def _prose(html):
    article = re.search(r"<article\b[^>]*>(.*)</article>", html, re.S)
    text = article.group(1) if article else html
    for pattern in NOT_PROSE:
        text = re.sub(pattern, " ", text, flags=re.S)
    return text


def test_formulas_render_as_code_or_latex(site):
    """Markdown reads `**` in `T**2 * KL(...) ... T**2` as bold (issue 17): every formula must be code or
    `$...$` / `$$...$$` LaTeX. On every page: no bold or italics inside typeset math, none opened inside a
    word (`T<strong>2`: a formula's `**` or `*` taken as emphasis), no `**` left in the prose, and no list
    item swallowed into the paragraph above it (`text\n- **Item**`, a missing blank line)."""
    problems = []
    for page in sorted(site.rglob("index.html")):
        name = page.relative_to(site).parent.as_posix() or "home"
        html = page.read_text(encoding="utf-8")
        for math in re.findall(r'<(?:span|div) class="arithmatex">(.*?)</(?:span|div)>', html, re.S):
            if re.search(r"<(strong|em)>", math):
                problems.append(f"{name}: bold/italics inside a formula: {math[:80]!r}")
        prose = _prose(html)
        for match in re.finditer(r".{0,40}[\w)\]]<(?:strong|em)>.{0,40}", prose):
            problems.append(f"{name}: emphasis opened inside a word (a formula's ** or *?): {match.group(0)!r}")
        for match in re.finditer(r".{0,40}\*\*.{0,40}", prose):
            problems.append(f"{name}: ** in prose, outside code and LaTeX: {match.group(0)!r}")
        for paragraph in re.findall(r"<p>((?:(?!</p>).)*)</p>", prose, re.S):
            if re.search(r"\n\s*[-*] \S", paragraph):
                problems.append(f"{name}: a list item inside a paragraph: {paragraph[:100]!r}")
    assert not problems, "\n".join(problems)


def test_tutorials_are_named_one_way(site):
    """Every tutorial is titled `<n>. <Subject>: <detail>` (its notebook's first heading), `<n>` the number
    its file name starts with, in the navigation and in the list of the Tutorials page."""
    notebooks = sorted((ROOT / "tutorials").glob("*.ipynb"))
    home = (site / "index.html").read_text(encoding="utf-8")
    nav = dict(re.findall(r'<a href="tutorials/([^"/]+)/" class="md-nav__link">\s*(?:<[^>]*>\s*)*([^<]+?)\s*<', home))
    listing = (site / "tutorials" / "index.html").read_text(encoding="utf-8")
    listed = dict(re.findall(r'<li><a href="([^"/]+)/">([^<]+)</a></li>', listing))
    assert sorted(nav) == [notebook.stem for notebook in notebooks]
    for notebook in notebooks:
        number = int(re.match(r"(\d+)_", notebook.name).group(1))
        for where, titles in (("navigation", nav), ("Tutorials page", listed)):
            title = titles.get(notebook.stem)
            assert title and re.fullmatch(rf"{number}\. [A-Z][^:]*: \S.*", title), (
                f"{notebook.name} in the {where}: {title!r} is not titled '{number}. <Subject>: <detail>'"
            )
