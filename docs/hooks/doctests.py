"""A Griffe extension: the doctest examples of the docstrings as code blocks.

The docstrings keep plain doctest examples (`help()` shows them as they are,
tests/test_docs.py runs them); on the site each run of `>>>` lines and their
output becomes a fenced `pycon` block instead of Markdown text, where `>`
would start a quote and `[1.0, 2.0]` a link.
"""

import griffe


def fence_doctests(text):
    lines, out, inside = text.splitlines(), [], None
    for line in lines:
        stripped = line.lstrip()
        if inside is None and stripped.startswith(">>>"):
            inside = line[: len(line) - len(stripped)]
            out.append(f"{inside}```pycon")
        elif inside is not None and not stripped:
            out.append(f"{inside}```")
            inside = None
        out.append(line)
    if inside is not None:
        out.append(f"{inside}```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
