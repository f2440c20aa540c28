"""Griffe extension: the `>>>` examples of keras_kd's docstrings render as Python code blocks.

The docstrings write their examples as plain doctest blocks after an `Example:` line (the form
`doctest` runs), not indented under it as a Google-style section, so Markdown would read `>>>`
as nested quotes and an output such as `[0.25, 0.73]` as a link. This extension wraps every
doctest block (a `>>>` line, its `...` continuations and its output, up to a blank line) in a
fenced `pycon` code block, and drops `# doctest: ...` directives, before mkdocstrings renders it.
Blocks already inside a fence are left alone.
"""

import re

from griffe import Extension

_DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def fence_doctests(text):
    """`text` with each doctest block wrapped in a fenced `pycon` block."""
    lines, out = text.splitlines(), []
    in_fence, index = False, 0
    while index < len(lines):
        line = lines[index]
        if _FENCE.match(line):
            in_fence = not in_fence
        if in_fence or not line.lstrip().startswith(">>>"):
            out.append(line)
            index += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out.append(f"{indent}```pycon")
        while index < len(lines) and lines[index].strip():
            block_line = lines[index]
            if block_line.lstrip().startswith((">>>", "...")):
                block_line = _DIRECTIVE.sub("", block_line)
            out.append(block_line)
            index += 1
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestBlocks(Extension):
    """Fences the doctest blocks of every docstring once the object tree is loaded."""

    def on_object(self, *, obj, **kwargs):
        docstring = obj.docstring
        if docstring is not None and ">>>" in docstring.value:
            docstring.value = fence_doctests(docstring.value)
