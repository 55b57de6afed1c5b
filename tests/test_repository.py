"""The tests need nothing but the repository: a clone with no folder beside it passes."""

import re

import pytest

from conftest import REPOSITORY

# Paths that leave the repository: a grandparent of a test file, a `..`
# component, the shared folder of the project's own machines. (Spelled in
# pieces, so that this file does not match itself.)
OUTSIDE = re.compile(
    "|".join([r"parents\[[2-9]\]", re.escape("." + "./"), r"[\"']\.\.[\"']", re.escape("/shared" + "/")])
)


def test_test_sources_point_only_inside_the_repository():
    offending = []
    for path in sorted((REPOSITORY / "tests").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if OUTSIDE.search(line):
                offending.append(f"{path.relative_to(REPOSITORY)}:{number}: {line.strip()}")
    assert not offending, "\n".join(offending)


def test_reading_beside_the_repository_fails():
    # Refused before the file system is asked (the file does not exist).
    with pytest.raises(RuntimeError, match="outside the repository"):
        open(REPOSITORY.parent / "shared" / "fixtures" / "peers.npz")
