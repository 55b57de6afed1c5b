"""Keras losses for deep metric learning."""

from tfmetric.losses.base import InBatchLoss, reduce_anchor_terms
from tfmetric.losses.center import CenterLoss, center_terms
from tfmetric.losses.contrastive import Contrastive, contrastive_terms
from tfmetric.losses.lifted import LiftedStructure, lifted_structure_terms
from tfmetric.losses.margin import MarginLoss, margin_terms
from tfmetric.losses.memory import CrossBatchMemory
from tfmetric.losses.neighbours import NCA, SoftNearestNeighbor, soft_nearest_neighbor_terms
from tfmetric.losses.npairs import NPairs, NPairsMultilabel, npairs_loss, npairs_multilabel_loss
from tfmetric.losses.offline import (
    MulticlassHinge,
    PairContrastive,
    TripletLoss,
    multiclass_hinge,
    offline_triplet,
    pair_contrastive,
)
from tfmetric.losses.similarity import (
    BinomialDeviance,
    Circle,
    MultiSimilarity,
    binomial_deviance_terms,
    circle_terms,
    multi_similarity_terms,
)
from tfmetric.losses.state import attach_state
from tfmetric.losses.triplet import (
    BatchAllTriplet,
    BatchHardTriplet,
    SemiHardTriplet,
    batch_hard_triplet_terms,
)

__all__ = [
    "BatchAllTriplet",
    "BatchHardTriplet",
    "BinomialDeviance",
    "CenterLoss",
    "Circle",
    "Contrastive",
    "CrossBatchMemory",
    "InBatchLoss",
    "LiftedStructure",
    "MarginLoss",
    "MultiSimilarity",
    "MulticlassHinge",
    "NCA",
    "NPairs",
    "NPairsMultilabel",
    "PairContrastive",
    "SemiHardTriplet",
    "SoftNearestNeighbor",
    "TripletLoss",
    "attach_state",
    "batch_hard_triplet_terms",
    "binomial_deviance_terms",
    "center_terms",
    "circle_terms",
    "contrastive_terms",
    "lifted_structure_terms",
    "margin_terms",
    "multi_similarity_terms",
    "multiclass_hinge",
    "npairs_loss",
    "npairs_multilabel_loss",
    "offline_triplet",
    "pair_contrastive",
    "reduce_anchor_terms",
    "soft_nearest_neighbor_terms",
]
