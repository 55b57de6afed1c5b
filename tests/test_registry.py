"""The one list of losses: everything that names losses derives from `tfm.losses.registry`."""

import inspect

import pytest

import tfmetric as tfm
import tfmetric.losses
from tfmetric.losses.registry import FAMILIES, LOSSES

from conftest import only_tensorflow
from registry import ALL_LOSSES, REFERENCES

MINED_FROM_LABELS = {
    cls
    for cls in vars(tfmetric.losses).values()
    if inspect.isclass(cls) and issubclass(cls, tfm.losses.InBatchLoss) and cls.__module__.startswith("tfmetric")
}
# Mined from something else than pairs of labels: class centres, label counts.
NOT_PAIR_MINED = {tfm.CenterLoss, tfm.NPairsMultilabel}
BASES = {tfm.losses.InBatchLoss, tfm.losses.DistanceLoss, tfm.losses.SimilarityLoss}


def test_every_loss_mined_from_labels_is_registered():
    registered = {entry.loss_class for entry in LOSSES.values()}
    assert MINED_FROM_LABELS - BASES - NOT_PAIR_MINED == registered


def test_every_registered_loss_has_a_reference_and_is_tested():
    assert {entry.function.__name__ for entry in LOSSES.values()} == set(REFERENCES)
    # Every deterministic configuration is in the tests' shared table.
    assert {key for key, entry in LOSSES.items() if entry.deterministic} == set(ALL_LOSSES)


@pytest.mark.parametrize("key", sorted(LOSSES))
def test_entries_are_consistent(key):
    entry = LOSSES[key]
    assert entry.key == key and entry.family in FAMILIES
    loss = entry.build()
    assert isinstance(loss, entry.loss_class)
    # The pure function is the class's math, under the snake-case name, exported.
    assert getattr(tfm.losses, entry.function.__name__) is entry.function
    assert getattr(tfm, entry.loss_class.__name__) is entry.loss_class
    parameters = inspect.signature(entry.function).parameters
    assert list(parameters)[:4] == ["labels", "embeddings", "ref_labels", "ref_embeddings"]
    assert {"multi_label", "remove_diagonal"} <= set(parameters)
    # Every class argument that shapes the math is a keyword of the function.
    class_arguments = set(inspect.signature(entry.loss_class).parameters) - {
        "reduction",
        "name",
        "cross_replica",
        "learn_beta",
        "num_classes",
    }
    assert class_arguments <= set(parameters), class_arguments - set(parameters)
    assert set(entry.function_arguments()) == set(entry.arguments) - {"learn_beta"}


@only_tensorflow  # the command line's modules use tf.data
def test_command_line_and_benchmarks_take_the_registry():
    from tfmetric import compare, demo

    assert demo.LOSSES is LOSSES
    # The comparison trains every class once, under its registry title.
    classes = {entry.loss_class for entry in LOSSES.values()}
    trained = {LOSSES_BY_TITLE[title].loss_class for title in compare.ONLINE if title in LOSSES_BY_TITLE}
    assert trained == classes


LOSSES_BY_TITLE = {entry.title: entry for entry in LOSSES.values()}


def test_margins_go_to_distance_margins_only():
    assert LOSSES["batch_hard"].build(margin=0.3).margin == 0.3
    assert LOSSES["contrastive_hard"].build(margin=0.3).margin == 0.3
    # The margin loss's margin sits around β, not on the embedding's scale.
    assert LOSSES["margin_dw"].build(margin=0.3).margin == tfm.MarginLoss().margin
