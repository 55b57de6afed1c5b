"""The examples in the docstrings run and print what they say."""

import doctest
import importlib
import pkgutil

import keras
import pytest

import tfmetric.datasets.images
import tfmetric.datasets.protocols
import tfmetric.datasets.text
import tfmetric.distances
import tfmetric.evaluation
import tfmetric.losses.center
import tfmetric.losses.contrastive_loss
import tfmetric.losses.histogram_loss
import tfmetric.losses.info_nce
import tfmetric.losses.lifted
import tfmetric.losses.manifold_loss
import tfmetric.losses.margin
import tfmetric.losses.margin_softmax
import tfmetric.losses.memory
import tfmetric.losses.multiple
import tfmetric.losses.n_pairs
import tfmetric.losses.neighbours
import tfmetric.losses.offline
import tfmetric.losses.pair_weighting
import tfmetric.losses.proxy_metric
import tfmetric.losses.ranking
import tfmetric.losses.similarity
import tfmetric.losses.triplet
import tfmetric.losses.vicreg_loss
import tfmetric.miners
import tfmetric.recurrent
import tfmetric.search
import tfmetric.search.calibration
import tfmetric.search.engines
import tfmetric.search.exact
import tfmetric.search.index
import tfmetric.search.serving

from conftest import only_tensorflow, slow_on_jax


@slow_on_jax
@pytest.mark.parametrize(
    "module",
    [
        tfmetric.datasets.images,
        tfmetric.datasets.protocols,
        tfmetric.datasets.text,
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
        tfmetric.losses.multiple,
        tfmetric.losses.histogram_loss,
        tfmetric.losses.info_nce,
        tfmetric.losses.manifold_loss,
        tfmetric.losses.pair_weighting,
        tfmetric.losses.ranking,
        tfmetric.losses.vicreg_loss,
        tfmetric.miners,
        tfmetric.recurrent,
        tfmetric.search,
        tfmetric.search.calibration,
        tfmetric.search.engines,
        tfmetric.search.exact,
        tfmetric.search.index,
    ],
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="a SavedModel is not exported from PyTorch models")
def test_serving_docstring_example():
    test_docstring_examples(tfmetric.search.serving)


# The loss modules whose examples are elsewhere: the contract and plumbing.
WITHOUT_EXAMPLES = {"base", "registry", "proxy", "state", "__init__"}


def test_every_loss_module_has_its_examples_run():
    tested = {module.__name__ for module in test_docstring_examples.pytestmark[0].args[1]}
    for info in pkgutil.iter_modules(tfmetric.losses.__path__):
        if info.name not in WITHOUT_EXAMPLES:
            name = f"tfmetric.losses.{info.name}"
            importlib.import_module(name)
            assert name in tested, f"{name}'s docstring examples are not run (add it to test_docstring_examples)"


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
