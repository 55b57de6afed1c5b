"""The README's and the docs' code blocks run, as the docstring examples do.

Each page's ```python blocks run in order in one namespace (like a
notebook), in a temporary directory. Two HTML comments, invisible on the
rendered page, steer them:

- `<!-- skip: why -->` just before a block leaves it out, with its reason
  (a download, a cluster, minutes of training), reported as a skipped test;
- `<!-- setup: code -->` runs `code` before the next block: what a fragment
  assumes (a model, data) without cluttering the page.
"""

import re
import warnings
from pathlib import Path

import pytest

from conftest import only_tensorflow, slow_on_jax

REPOSITORY = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [REPOSITORY / "README.md"]
    + [path for path in (REPOSITORY / "docs").rglob("*.md") if "api" not in path.relative_to(REPOSITORY / "docs").parts]
)
# Pages that use tf.data, TensorBoard, tf.distribute or a SavedModel.
TENSORFLOW_ONLY = {
    "README.md",
    "docs/index.md",
    "docs/guides/quickstart.md",
    "docs/guides/pk-batches.md",
    "docs/guides/devices.md",
    "docs/guides/watching-training.md",
    "docs/serving.md",
}
# Pages that train for more than a few seconds.
SLOW = {"docs/guides/watching-training.md"}

BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
SKIP = re.compile(r"<!--\s*skip:(.*?)-->\s*\Z", re.DOTALL)
SETUP = re.compile(r"<!--\s*setup:\n(.*?)-->\s*\Z", re.DOTALL)


def blocks(page):
    """`(line, code, setup, skip reason)` of each python block of `page`, in order."""
    text = page.read_text(encoding="utf-8")
    found, end = [], 0
    for match in BLOCK.finditer(text):
        before = text[end : match.start()]
        skip, setup = SKIP.search(before), SETUP.search(before)
        line = text.count("\n", 0, match.start()) + 2
        found.append((line, match.group(1), setup and setup.group(1), skip and skip.group(1).strip()))
        end = match.end()
    return found


def name(page):
    return page.relative_to(REPOSITORY).as_posix()


def marked(page):
    marks = []
    if name(page) in TENSORFLOW_ONLY:
        marks.append(only_tensorflow)
    if name(page) in SLOW:
        marks.append(pytest.mark.slow)
    return pytest.param(page, id=name(page), marks=marks)


RUN = [marked(page) for page in PAGES if any(skip is None for *_, skip in blocks(page))]
SKIPPED = [
    pytest.param(reason, id=f"{name(page)}:{line}")
    for page in PAGES
    for line, _, _, reason in blocks(page)
    if reason is not None
]


@slow_on_jax
@pytest.mark.parametrize("page", RUN)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__guide__"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for line, code, setup, skip in blocks(page):
            if skip is not None:
                continue
            if setup:
                exec(compile(setup, f"{name(page)}:{line} (setup)", "exec"), namespace)
            exec(compile(code, f"{name(page)}:{line}", "exec"), namespace)
    # The P×K sampler orders its batches on purpose: the examples pass shuffle=False.
    shuffled = [str(warning.message) for warning in caught if "shuffle=True" in str(warning.message)]
    assert not shuffled, shuffled


@pytest.mark.parametrize("reason", SKIPPED)
def test_skipped_code_blocks_say_why(reason):
    assert len(reason) > 10, "a skipped block needs its reason: <!-- skip: why -->"
    pytest.skip(reason)


def test_pages_are_found_and_steered_right():
    assert len(RUN) >= 10
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        # A marker that is not right before a block steers nothing.
        markers = len(re.findall(r"<!--\s*(skip|setup):", text))
        used = sum((skip is not None) + (setup is not None) for _, _, setup, skip in blocks(page))
        assert markers == used, f"{name(page)}: a skip or setup comment is not just before a python block"
