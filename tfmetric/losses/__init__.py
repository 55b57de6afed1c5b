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
from tfmetric.losses.base import (
    DistanceLoss,
    InBatchLoss,
    SimilarityLoss,
    compile_losses_with_xla,
    per_query,
    reduce_anchor_terms,
)
from tfmetric.losses.center import CenterLoss, center_terms
from tfmetric.losses.contrastive_loss import (
    Contrastive,
    SignalToNoiseRatioContrastive,
    contrastive,
    contrastive_terms,
    signal_to_noise_ratio,
    signal_to_noise_ratio_contrastive,
)
from tfmetric.losses.histogram_loss import DynamicSoftMargin, Histogram, dynamic_soft_margin, histogram
from tfmetric.losses.info_nce import Instance, NTXent, SupCon, instance, ntxent, supcon
from tfmetric.losses.lifted import (
    GeneralizedLiftedStructure,
    LiftedStructure,
    generalized_lifted_structure,
    lifted_structure,
    lifted_structure_terms,
)
from tfmetric.losses.manifold_loss import Manifold, manifold
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
from tfmetric.losses.ranking import PNP, FastAP, RankedList, SmoothAP, fast_ap, pnp, ranked_list, smooth_ap
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
from tfmetric.losses.vicreg_loss import VICReg, vicreg

__all__ = [
    "Angular",
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
    "DynamicSoftMargin",
    "FastAP",
    "GeneralizedLiftedStructure",
    "Histogram",
    "InBatchLoss",
    "Instance",
    "IntraPairVariance",
    "LargeMarginSoftmax",
    "LiftedStructure",
    "Manifold",
    "MarginLoss",
    "MultiSimilarity",
    "MulticlassHinge",
    "MultipleLosses",
    "NCA",
    "NPairs",
    "NPairsMultilabel",
    "NTXent",
    "NormalizedSoftmax",
    "P2SGrad",
    "PNP",
    "PairContrastive",
    "ProxyAnchor",
    "ProxyLoss",
    "ProxyNCA",
    "RankedList",
    "SemiHardTriplet",
    "SignalToNoiseRatioContrastive",
    "SimilarityLoss",
    "SmoothAP",
    "SoftNearestNeighbor",
    "SoftTriple",
    "SphereFace",
    "SubCenterArcFace",
    "SupCon",
    "ThresholdConsistentMargin",
    "TripletLoss",
    "TupletMargin",
    "VICReg",
    "all_triplet_terms",
    "angular",
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
    "compile_losses_with_xla",
    "contrastive",
    "contrastive_terms",
    "cosface",
    "dynamic_soft_margin",
    "fast_ap",
    "generalized_lifted_structure",
    "histogram",
    "instance",
    "intra_pair_variance",
    "large_margin_softmax",
    "lifted_structure",
    "lifted_structure_terms",
    "manifold",
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
    "ntxent",
    "offline_triplet",
    "p2sgrad",
    "pair_contrastive",
    "per_query",
    "pnp",
    "proxy_anchor",
    "proxy_nca",
    "ranked_list",
    "reduce_anchor_terms",
    "registry",
    "semi_hard_triplet",
    "semi_hard_triplet_terms",
    "signal_to_noise_ratio",
    "signal_to_noise_ratio_contrastive",
    "smooth_ap",
    "soft_nearest_neighbor",
    "soft_nearest_neighbor_terms",
    "soft_triple",
    "sphereface",
    "subcenter_arcface",
    "supcon",
    "threshold_consistent_margin",
    "tuplet_margin",
    "vicreg",
]
