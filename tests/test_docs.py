"""The examples in the docstrings run and print what they say."""

import doctest

import pytest

import tfmetric.distances
import tfmetric.evaluation
import tfmetric.losses.center
import tfmetric.losses.contrastive_loss
import tfmetric.losses.lifted
import tfmetric.losses.margin
import tfmetric.losses.margin_softmax
import tfmetric.losses.memory
import tfmetric.losses.n_pairs
import tfmetric.losses.neighbours
import tfmetric.losses.offline
import tfmetric.losses.proxy_metric
import tfmetric.losses.similarity
import tfmetric.losses.triplet
import tfmetric.recurrent

from conftest import only_tensorflow


@pytest.mark.parametrize(
    "module",
    [
        tfmetric.distances,
        tfmetric.evaluation,
        tfmetric.losses.triplet,
        tfmetric.losses.offline,
        tfmetric.losses.contrastive_loss,
        tfmetric.losses.lifted,
        tfmetric.losses.margin,
        tfmetric.losses.margin_softmax,
        tfmetric.losses.proxy_metric,
        tfmetric.losses.n_pairs,
        tfmetric.losses.similarity,
        tfmetric.losses.neighbours,
        tfmetric.losses.center,
        tfmetric.losses.memory,
        tfmetric.recurrent,
    ],
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


@only_tensorflow  # P×K batches are tf.data
@pytest.mark.slow
def test_the_proxies_study_runs(capsys):
    # docs/proxies.md's table comes from this script; a tiny run keeps it working.
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "docs" / "proxies_study.py"
    argv = sys.argv
    sys.argv = [str(script), "--seeds", "1", "--epochs", "1", "--losses", "arcface", "semi_hard"]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    output = capsys.readouterr().out
    assert "raw pixels" in output and "ArcFace" in output and "semi-hard triplet" in output
