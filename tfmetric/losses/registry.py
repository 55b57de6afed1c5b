"""The one list of tfmetric's losses mined from labels.

The command line (`tfmetric demo --loss`, `tfmetric compare`), the
benchmarks and the tests take their losses from `LOSSES`: a loss added here
is trained, benchmarked and tested everywhere (the tests fail until it has
a NumPy reference). Each entry is a configuration of a class: its key, its
title in tables and figures (both listed in `tfmetric.choices`, with a
one-line summary, so that the command line needs no Keras to show them), the
class and the arguments it is built with, the pure function it wraps, and
its family:

- `"triplet"`: a margin between positive and negative distances
  (batch-hard, batch-all, semi-hard, lifted structure);
- `"contrastive"`: absolute distances of pairs against a margin;
- `"margin"`: distances against a learned boundary β (Wu et al.);
- `"similarity"`: weighted cosine similarities (n-pairs, multi-similarity,
  circle, binomial deviance);
- `"neighbourhood"`: soft nearest neighbours (SNN, NCA);
- `"softmax"`: a softmax over the batch's similarities, the positives as
  targets (SupCon, NT-Xent, instance loss);
- `"ranking"`: the ranking of the batch by similarity to each query
  (FastAP, Smooth-AP, PNP, ranked list);
- `"histogram"`: the distributions of positive and negative similarities
  (histogram loss, dynamic soft margin);
- `"pairs"`: further weightings of pairs and triplets (angular, tuplet
  margin, intra-pair variance, generalised lifted structure, SNR
  contrastive, threshold-consistent margin).

Variants (the same class with another option) are marked `variant=True`:
the comparison study trains each class once, the tests and benchmarks
cover every configuration.

The losses that learn class vectors are listed apart, in `PROXY_LOSSES`:
they are built for a number of classes and an embedding size
(`entry.build(num_classes, embedding_dim)`), and their pure functions take
the class vectors instead of a reference set. Families:

- `"margin_softmax"`: a softmax over cosines to the class vectors, with a
  margin on the true class (ArcFace, CosFace, SphereFace, L-Softmax,
  sub-centre ArcFace, normalised softmax);
- `"proxy"`: pair and neighbourhood losses with proxies in place of the
  other examples (ProxyNCA, Proxy Anchor, SoftTriple, P2SGrad).
"""

import inspect
from typing import Callable, NamedTuple

from tfmetric import choices
from tfmetric.losses.contrastive_loss import (
    Contrastive,
    SignalToNoiseRatioContrastive,
    contrastive,
    signal_to_noise_ratio_contrastive,
)
from tfmetric.losses.histogram_loss import DynamicSoftMargin, Histogram, dynamic_soft_margin, histogram
from tfmetric.losses.info_nce import Instance, NTXent, SupCon, instance, ntxent, supcon
from tfmetric.losses.lifted import (
    GeneralizedLiftedStructure,
    LiftedStructure,
    generalized_lifted_structure,
    lifted_structure,
)
from tfmetric.losses.manifold_loss import Manifold, manifold
from tfmetric.losses.margin import MarginLoss, margin_loss
from tfmetric.losses.margin_softmax import (
    ArcFace,
    CosFace,
    LargeMarginSoftmax,
    NormalizedSoftmax,
    SphereFace,
    SubCenterArcFace,
    arcface,
    cosface,
    large_margin_softmax,
    normalized_softmax,
    sphereface,
    subcenter_arcface,
)
from tfmetric.losses.n_pairs import NPairs, npairs
from tfmetric.losses.neighbours import NCA, SoftNearestNeighbor, nca, soft_nearest_neighbor
from tfmetric.losses.pair_weighting import (
    Angular,
    IntraPairVariance,
    ThresholdConsistentMargin,
    TupletMargin,
    angular,
    intra_pair_variance,
    threshold_consistent_margin,
    tuplet_margin,
)
from tfmetric.losses.proxy_metric import (
    P2SGrad,
    ProxyAnchor,
    ProxyNCA,
    SoftTriple,
    p2sgrad,
    proxy_anchor,
    proxy_nca,
    soft_triple,
)
from tfmetric.losses.ranking import PNP, FastAP, RankedList, SmoothAP, fast_ap, pnp, ranked_list, smooth_ap
from tfmetric.losses.similarity import (
    BinomialDeviance,
    Circle,
    MultiSimilarity,
    binomial_deviance,
    circle,
    multi_similarity,
)
from tfmetric.losses.triplet import (
    BatchAllTriplet,
    BatchHardTriplet,
    SemiHardTriplet,
    batch_all_triplet,
    batch_hard_triplet,
    semi_hard_triplet,
)

FAMILIES = ("triplet", "contrastive", "margin", "similarity", "neighbourhood", "softmax", "ranking", "histogram",
            "pairs")
PROXY_FAMILIES = ("margin_softmax", "proxy")


class LossEntry(NamedTuple):
    """One configuration of a loss class (see the module docstring)."""

    key: str
    title: str
    loss_class: type
    function: Callable
    family: str
    arguments: dict
    variant: bool = False
    deterministic: bool = True

    def build(self, margin=None, **overrides):
        """The configured loss; `margin` is applied only to the losses whose margin is on distances.

        The demo and the comparison pass the margin that suits their
        embedding space; the margin loss keeps its own (it sits around β).
        """
        arguments = {**self.arguments, **overrides}
        if margin is not None and self.family in ("triplet", "contrastive"):
            arguments["margin"] = margin
        return self.loss_class(**arguments)

    def function_arguments(self):
        """The entry's arguments that its pure function takes (all but the class's state options)."""
        return _accepted(self.function, self.arguments)


def _accepted(function, arguments):
    """The `arguments` that `function` takes."""
    accepted = inspect.signature(function).parameters
    return {name: value for name, value in arguments.items() if name in accepted}


def _entry(key, loss_class, function, family, deterministic=True, **arguments):
    """The entry of `key`, its title and whether it is a variant from `tfmetric.choices`."""
    named = _NAMED[key]
    return LossEntry(key, named.title, loss_class, function, family, arguments, named.variant, deterministic)


# The keys, titles and one-line summaries are `tfmetric.choices`' (plain data,
# so that `tfmetric --help` answers before Keras loads): the classes and
# arguments are here, in the same order (tests/test_cli.py checks it).
_NAMED = {choice.key: choice for choice in (*choices.LOSSES, *choices.PROXY_LOSSES)}

LOSSES = {
    entry.key: entry
    for entry in (
        _entry("batch_hard", BatchHardTriplet, batch_hard_triplet, "triplet"),
        _entry("batch_hard_soft", BatchHardTriplet, batch_hard_triplet, "triplet", soft=True),
        _entry("batch_all_nonzero", BatchAllTriplet, batch_all_triplet, "triplet"),
        _entry("batch_all_all", BatchAllTriplet, batch_all_triplet, "triplet", average="all"),
        _entry("semi_hard", SemiHardTriplet, semi_hard_triplet, "triplet"),
        _entry("lifted_structure", LiftedStructure, lifted_structure, "triplet"),
        _entry("contrastive_hard", Contrastive, contrastive, "contrastive", negatives="hard"),
        _entry("contrastive_all", Contrastive, contrastive, "contrastive"),
        _entry("margin_dw", MarginLoss, margin_loss, "margin", deterministic=False, learn_beta=True),
        _entry("margin_all", MarginLoss, margin_loss, "margin", sampling="all"),
        _entry("npairs", NPairs, npairs, "similarity"),
        _entry("multi_similarity", MultiSimilarity, multi_similarity, "similarity"),
        _entry("multi_similarity_mined", MultiSimilarity, multi_similarity, "similarity", epsilon=0.1),
        _entry("circle", Circle, circle, "similarity"),
        _entry("binomial_deviance", BinomialDeviance, binomial_deviance, "similarity"),
        _entry("soft_nearest_neighbor", SoftNearestNeighbor, soft_nearest_neighbor, "neighbourhood"),
        _entry("nca", NCA, nca, "neighbourhood"),
        # -- softmax (losses/info_nce.py) --
        _entry("supcon", SupCon, supcon, "softmax"),
        _entry("ntxent", NTXent, ntxent, "softmax"),
        _entry("instance", Instance, instance, "softmax"),
        # -- ranking (losses/ranking.py) --
        _entry("fast_ap", FastAP, fast_ap, "ranking"),
        _entry("smooth_ap", SmoothAP, smooth_ap, "ranking"),
        _entry("pnp", PNP, pnp, "ranking"),
        # The paper's best variant.
        _entry("pnp_dq", PNP, pnp, "ranking", variant="Dq"),
        # The paper's margin and negatives' temperature (PML has no defaults).
        _entry("ranked_list", RankedList, ranked_list, "ranking", margin=0.4, Tn=10.0),
        # -- histogram (losses/histogram_loss.py) --
        _entry("histogram", Histogram, histogram, "histogram"),
        # Its value depends on the running histogram of earlier calls, which the
        # shared tests (one call against a reference) cannot know: tests/test_histogram.py.
        _entry("dynamic_soft_margin", DynamicSoftMargin, dynamic_soft_margin, "histogram", deterministic=False),
        # -- pairs (losses/pair_weighting.py) --
        _entry("angular", Angular, angular, "pairs"),
        _entry("tuplet_margin", TupletMargin, tuplet_margin, "pairs"),
        _entry("intra_pair_variance", IntraPairVariance, intra_pair_variance, "pairs"),
        _entry("threshold_consistent_margin", ThresholdConsistentMargin, threshold_consistent_margin, "pairs"),
        # -- pairs (losses/lifted.py, losses/contrastive_loss.py) --
        _entry("generalized_lifted_structure", GeneralizedLiftedStructure, generalized_lifted_structure, "pairs"),
        _entry("snr_contrastive", SignalToNoiseRatioContrastive, signal_to_noise_ratio_contrastive, "pairs"),
    )
}


class ProxyEntry(NamedTuple):
    """One configuration of a loss with class vectors (see the module docstring)."""

    key: str
    title: str
    loss_class: type
    function: Callable
    family: str
    arguments: dict

    def build(self, num_classes, embedding_dim, **overrides):
        """The configured loss for `num_classes` classes and embeddings of size `embedding_dim`."""
        return self.loss_class(num_classes, embedding_dim, **{**self.arguments, **overrides})

    def function_arguments(self):
        """The entry's arguments that its pure function takes (not the class vectors' options)."""
        return _accepted(self.function, self.arguments)


def _proxy_entry(key, loss_class, function, family, **arguments):
    return ProxyEntry(key, _NAMED[key].title, loss_class, function, family, arguments)


PROXY_LOSSES = {
    entry.key: entry
    for entry in (
        _proxy_entry("arcface", ArcFace, arcface, "margin_softmax"),
        _proxy_entry("cosface", CosFace, cosface, "margin_softmax"),
        _proxy_entry("sphereface", SphereFace, sphereface, "margin_softmax"),
        _proxy_entry("large_margin_softmax", LargeMarginSoftmax, large_margin_softmax, "margin_softmax"),
        _proxy_entry("subcenter_arcface", SubCenterArcFace, subcenter_arcface, "margin_softmax"),
        _proxy_entry("normalized_softmax", NormalizedSoftmax, normalized_softmax, "margin_softmax"),
        # ProxyNCA++'s temperature.
        _proxy_entry("proxy_nca", ProxyNCA, proxy_nca, "proxy", temperature=1 / 9),
        # The paper trains the proxies 100 times faster than the network.
        _proxy_entry("proxy_anchor", ProxyAnchor, proxy_anchor, "proxy", proxy_lr_multiplier=100.0),
        _proxy_entry("soft_triple", SoftTriple, soft_triple, "proxy"),
        _proxy_entry("p2sgrad", P2SGrad, p2sgrad, "proxy"),
        # PML's margin (5e-4) is small next to the random walk's differences
        # in batches of tens; its proxies start as standard normals.
        _proxy_entry("manifold", Manifold, manifold, "proxy", margin=0.01, proxy_lr_multiplier=10.0),
    )
}
