"""Keras losses for deep metric learning.

Every loss mined from labels comes as a class (`BatchHardTriplet`) and as
the pure function it wraps (`batch_hard_triplet`), which also mines queries
against a separate reference set. `tfm.losses.base` states the contract a
new loss follows; `tfm.losses.registry.LOSSES` lists them all.

The losses that learn a vector per class (ArcFace, Proxy Anchor, ...) share
`tfm.losses.proxy.ProxyLoss`; their pure functions take the class vectors
(`arcface(labels, embeddings, proxies)`), and
`tfm.losses.registry.PROXY_LOSSES` lists them.
"""

from tfmetric.losses import registry
from tfmetric.losses.base import DistanceLoss, InBatchLoss, SimilarityLoss, per_query, reduce_anchor_terms
from tfmetric.losses.center import CenterLoss, center_terms
from tfmetric.losses.contrastive_loss import Contrastive, contrastive, contrastive_terms
from tfmetric.losses.lifted import LiftedStructure, lifted_structure, lifted_structure_terms
from tfmetric.losses.margin import MarginLoss, margin_loss, margin_terms
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
from tfmetric.losses.memory import CrossBatchMemory
from tfmetric.losses.multiple import MultipleLosses
from tfmetric.losses.n_pairs import (
    NPairs,
    NPairsMultilabel,
    npairs,
    npairs_loss,
    npairs_multilabel_loss,
    npairs_terms,
)
from tfmetric.losses.neighbours import NCA, SoftNearestNeighbor, nca, soft_nearest_neighbor, soft_nearest_neighbor_terms
from tfmetric.losses.offline import (
    MulticlassHinge,
    PairContrastive,
    TripletLoss,
    multiclass_hinge,
    offline_triplet,
    pair_contrastive,
)
from tfmetric.losses.proxy import ProxyLoss
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
from tfmetric.losses.similarity import (
    BinomialDeviance,
    Circle,
    MultiSimilarity,
    binomial_deviance,
    binomial_deviance_terms,
    circle,
    circle_terms,
    multi_similarity,
    multi_similarity_terms,
)
from tfmetric.losses.state import attach_state
from tfmetric.losses.triplet import (
    BatchAllTriplet,
    BatchHardTriplet,
    SemiHardTriplet,
    all_triplet_terms,
    batch_all_triplet,
    batch_all_triplet_terms,
    batch_hard_triplet,
    batch_hard_triplet_terms,
    semi_hard_triplet,
    semi_hard_triplet_terms,
)

__all__ = [
    "ArcFace",
    "BatchAllTriplet",
    "BatchHardTriplet",
    "BinomialDeviance",
    "CenterLoss",
    "Circle",
    "Contrastive",
    "CosFace",
    "CrossBatchMemory",
    "DistanceLoss",
    "InBatchLoss",
    "LargeMarginSoftmax",
    "LiftedStructure",
    "MarginLoss",
    "MultiSimilarity",
    "MulticlassHinge",
    "MultipleLosses",
    "NCA",
    "NPairs",
    "NPairsMultilabel",
    "NormalizedSoftmax",
    "P2SGrad",
    "PairContrastive",
    "ProxyAnchor",
    "ProxyLoss",
    "ProxyNCA",
    "SemiHardTriplet",
    "SimilarityLoss",
    "SoftNearestNeighbor",
    "SoftTriple",
    "SphereFace",
    "SubCenterArcFace",
    "TripletLoss",
    "all_triplet_terms",
    "arcface",
    "attach_state",
    "batch_all_triplet",
    "batch_all_triplet_terms",
    "batch_hard_triplet",
    "batch_hard_triplet_terms",
    "binomial_deviance",
    "binomial_deviance_terms",
    "center_terms",
    "circle",
    "circle_terms",
    "contrastive",
    "contrastive_terms",
    "cosface",
    "large_margin_softmax",
    "lifted_structure",
    "lifted_structure_terms",
    "margin_loss",
    "margin_terms",
    "multi_similarity",
    "multi_similarity_terms",
    "multiclass_hinge",
    "nca",
    "normalized_softmax",
    "npairs",
    "npairs_loss",
    "npairs_multilabel_loss",
    "npairs_terms",
    "offline_triplet",
    "p2sgrad",
    "pair_contrastive",
    "per_query",
    "proxy_anchor",
    "proxy_nca",
    "reduce_anchor_terms",
    "registry",
    "semi_hard_triplet",
    "semi_hard_triplet_terms",
    "soft_nearest_neighbor",
    "soft_nearest_neighbor_terms",
    "soft_triple",
    "sphereface",
    "subcenter_arcface",
]
