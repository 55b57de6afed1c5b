"""The documentation site: its formulas convert to MathML, and it builds with --strict.

The build executes the notebooks (fast settings), so it is also the test that
they run (tests/test_notebooks.py checks the rest).
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPOSITORY, only_tensorflow

latex2mathml = pytest.importorskip("latex2mathml.converter", reason="the docs extra")

# A formula of a docstring: $$ … $$, over one line or several.
FORMULA = re.compile(r"\$\$(.+?)\$\$", re.S)


def _hook(name):
    spec = importlib.util.spec_from_file_location(name, REPOSITORY / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sources():
    return sorted((REPOSITORY / "tfmetric").rglob("*.py"))


def test_every_docstring_formula_converts_to_mathml():
    formulas = [tex for path in _sources() for tex in FORMULA.findall(path.read_text())]
    assert len(formulas) > 50
    for tex in formulas:
        mathml = latex2mathml.convert(tex.strip(), display="block")
        # An unknown command comes out as its letters, not as an error.
        assert "\\" not in mathml, tex


def test_the_losses_write_their_formulas_as_math():
    # A ``` block in a loss's docstring shows as code on the site, not as math.
    losses = sorted((REPOSITORY / "tfmetric" / "losses").glob("*.py"))
    fenced = [path.name for path in losses if "```" in path.read_text()]
    assert not fenced


def test_doctest_examples_become_code_blocks():
    fence = _hook("doctests").fence_doctests
    text = "Example:\n\n>>> f([1.0,\n...    2.0])\n[1.0, 2.0]\n\nAfter."
    assert fence(text) == "Example:\n\n```pycon\n>>> f([1.0,\n...    2.0])\n[1.0, 2.0]\n```\n\nAfter."
    assert fence("    >>> 1 + 1\n    2") == "    ```pycon\n    >>> 1 + 1\n    2\n    ```"
    assert fence("No example.") == "No example."


@only_tensorflow  # the notebooks are TensorFlow by nature (tf.data, TensorBoard)
@pytest.mark.slow
def test_the_site_builds_strictly_with_the_notebooks_run(tmp_path):
    # A copy, so that the notebooks run (and write their logs) in tmp_path and
    # mkdocs-jupyter's cache starts empty: a failing notebook fails here.
    for name in ("docs", "notebooks", "tfmetric"):
        shutil.copytree(REPOSITORY / name, tmp_path / name, ignore=shutil.ignore_patterns("logs", "__pycache__"))
    shutil.copy(REPOSITORY / "mkdocs.yml", tmp_path)
    environment = dict(os.environ, TFMETRIC_FAST="1", TF_CPP_MIN_LOG_LEVEL="3", NO_MKDOCS_2_WARNING="1")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-5000:]
    site = tmp_path / "site"

    # The formulas are MathML, none left as TeX.
    triplet = (site / "api" / "losses" / "triplet" / "index.html").read_text()
    start = triplet.index('id="tfmetric.losses.triplet.BatchHardTriplet"')
    batch_hard = triplet[start : triplet.index('id="tfmetric.losses.triplet.BatchAllTriplet"', start)]
    assert batch_hard.count("<math") == 3
    for page in site.rglob("*.html"):
        assert 'class="arithmatex"' not in page.read_text(), page

    # The notebooks with their outputs: figures, no errors.
    for name in ("01_quickstart", "02_softmax_siamese_triplet", "03_bilstm_gates"):
        page = (site / "notebooks" / name / "index.html").read_text()
        assert "data:image/png;base64" in page, name
        assert "Traceback" not in page, name

    # The search index holds the pages (Material searches it in the browser).
    index = json.loads((site / "search" / "search_index.json").read_text())
    assert any("semi-hard" in document["text"].lower() for document in index["docs"])
