"""The examples in the docstrings run and print what they say."""

import doctest

import pytest

import tfmetric.distances
import tfmetric.evaluation
import tfmetric.losses.center
import tfmetric.losses.contrastive_loss
import tfmetric.losses.lifted
import tfmetric.losses.margin
import tfmetric.losses.memory
import tfmetric.losses.n_pairs
import tfmetric.losses.neighbours
import tfmetric.losses.offline
import tfmetric.losses.similarity
import tfmetric.losses.triplet
import tfmetric.recurrent


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
