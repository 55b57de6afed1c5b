"""Every in-batch loss next to its NumPy reference, for the tests they share."""

import functools

import tfmetric as tfm

import reference
from conftest import check_against

# kind: (loss class, reference, arguments of the loss only, arguments of both)
# The triplet losses, and the lifted structured loss, which takes the same
# arguments (margin, distance, normalize) and shares their tests.
TRIPLET_LOSSES = {
    "batch_hard": (tfm.BatchHardTriplet, reference.batch_hard, {}, {}),
    "batch_hard_soft": (tfm.BatchHardTriplet, reference.batch_hard, {}, {"soft": True}),
    "batch_all_nonzero": (tfm.BatchAllTriplet, reference.batch_all, {}, {"average": "nonzero"}),
    "batch_all_all": (tfm.BatchAllTriplet, reference.batch_all, {}, {"average": "all"}),
    "semi_hard": (tfm.SemiHardTriplet, reference.semi_hard, {}, {}),
    "lifted_structure": (tfm.LiftedStructure, reference.lifted_structure, {}, {}),
}
PAIR_LOSSES = {
    "contrastive_all": (tfm.Contrastive, reference.contrastive, {}, {"negatives": "all"}),
    "contrastive_hard": (tfm.Contrastive, reference.contrastive, {}, {"negatives": "hard"}),
    "margin_all": (tfm.MarginLoss, reference.margin, {"sampling": "all"}, {}),
}
LOSSES = {**TRIPLET_LOSSES, **PAIR_LOSSES}
# The losses on similarities and soft neighbourhoods, with the arguments
# their random tests draw from.
SOFT_LOSSES = {
    "npairs": (tfm.NPairs, reference.npairs, {}, {}),
    "multi_similarity": (tfm.MultiSimilarity, reference.multi_similarity, {}, {}),
    "multi_similarity_mined": (tfm.MultiSimilarity, reference.multi_similarity, {}, {"epsilon": 0.1}),
    "circle": (tfm.Circle, reference.circle, {}, {}),
    "binomial_deviance": (tfm.BinomialDeviance, reference.binomial_deviance, {}, {}),
    "soft_nearest_neighbor": (tfm.SoftNearestNeighbor, reference.soft_nearest_neighbor, {}, {}),
    "nca": (tfm.NCA, reference.nca, {}, {}),
}


ALL_LOSSES = {**LOSSES, **SOFT_LOSSES}


def typical_arguments(kind):
    """Arguments for the tests every loss shares: a margin of 0.5 where there is one."""
    return {"margin": 0.5} if kind in LOSSES else {}


def loss_and_reference(kind, reduction="sum_over_batch_size", name=None, **kwargs):
    cls, ref, loss_only, shared = ALL_LOSSES[kind]
    named = {"name": name} if name else {}
    loss = cls(**loss_only, **shared, **kwargs, reduction=reduction, **named)
    return loss, lambda x, y, **kw: ref(x, y, **shared, **kwargs, **kw)


@functools.lru_cache(maxsize=None)
def loss_function(kind, **kwargs):
    """`(x, labels) -> loss(labels, x)`, one per configuration: compiled once per shape."""
    loss = loss_and_reference(kind, **kwargs)[0]
    return lambda x, labels: loss(labels, x)


def check(kind, x, labels, compiled=False, sample_weight=None, **kwargs):
    loss, ref = loss_and_reference(kind, **kwargs)
    return check_against(loss, ref, x, labels, compiled, sample_weight)
