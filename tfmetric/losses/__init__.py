"""Keras losses for deep metric learning."""

from tfmetric.losses.base import InBatchLoss, reduce_anchor_terms
from tfmetric.losses.contrastive import Contrastive, contrastive_terms
from tfmetric.losses.lifted import LiftedStructure, lifted_structure_terms
from tfmetric.losses.margin import MarginLoss, margin_terms
from tfmetric.losses.offline import (
    MulticlassHinge,
    PairContrastive,
    TripletLoss,
    multiclass_hinge,
    offline_triplet,
    pair_contrastive,
)
from tfmetric.losses.triplet import (
    BatchAllTriplet,
    BatchHardTriplet,
    SemiHardTriplet,
    batch_hard_triplet_terms,
)

__all__ = [
    "BatchAllTriplet",
    "BatchHardTriplet",
    "Contrastive",
    "InBatchLoss",
    "LiftedStructure",
    "MarginLoss",
    "MulticlassHinge",
    "PairContrastive",
    "TripletLoss",
    "multiclass_hinge",
    "offline_triplet",
    "pair_contrastive",
    "SemiHardTriplet",
    "batch_hard_triplet_terms",
    "contrastive_terms",
    "lifted_structure_terms",
    "margin_terms",
    "reduce_anchor_terms",
]
