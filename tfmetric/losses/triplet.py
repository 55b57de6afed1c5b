"""Triplet losses with online (in-batch) mining: batch-hard, batch-all, semi-hard.

Notation: `d` is the `(N, N)` distance matrix of the batch, `P(a)` the
positives of anchor `a` (same label, not `a`), `Q(a)` its negatives
(different label), `m` the margin.
"""

import keras
from keras import ops

from tfmetric.distances import paired_distance, pairwise_distance
from tfmetric.losses.base import InBatchLoss, check_choice
from tfmetric.mining import all_triplet_terms, hardest_pairs, label_masks, row_pick, semi_hard_triplet_terms

AVERAGES = ("nonzero", "all")


def batch_hard_triplet_terms(distances, labels, margin=1.0, soft=False, pair_distance=None):
    """Per-anchor batch-hard triplet losses and validity.

    `ℓ_a = relu(max_{p∈P(a)} d_ap − min_{n∈Q(a)} d_an + m)`, or
    `softplus(max d_ap − min d_an)` when `soft`. An anchor is valid when it
    has a positive and a negative; invalid anchors get 0.

    The hardest pairs are chosen on `distances`; their distances are read
    from it too, or, with `pair_distance(index)` (the distance from every
    anchor a to example `index[a]`), recomputed for the chosen pairs only
    (see `BatchHardTriplet`).

    Returns:
        `(losses, valid)`, both `(N,)`, `valid` as 0/1 floats.
    """
    positive, negative = label_masks(labels)
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    positive_index, negative_index = hardest_pairs(distances, positive, negative)
    if pair_distance is None:
        gap = row_pick(distances, positive_index) - row_pick(distances, negative_index)
    else:
        gap = pair_distance(positive_index) - pair_distance(negative_index)
    # Invalid rows picked arbitrary pairs: keep them out of the arithmetic.
    gap = ops.where(valid, gap, ops.zeros_like(gap))
    losses = ops.softplus(gap) if soft else ops.relu(gap + margin)
    valid = ops.cast(valid, gap.dtype)
    return losses * valid, valid


@keras.saving.register_keras_serializable(package="tfmetric")
class BatchHardTriplet(InBatchLoss):
    """Batch-hard triplet loss (Hermans et al. 2017, "In Defense of the Triplet
    Loss for Person Re-Identification").

    For every anchor, the hardest positive and the hardest negative of the
    batch:

    ```
    ℓ_a = relu(max_{p∈P(a)} d(a, p) − min_{n∈Q(a)} d(a, n) + margin)
    ℓ_a = softplus(max_{p∈P(a)} d(a, p) − min_{n∈Q(a)} d(a, n))   # soft=True
    loss = Σ_valid w_a ℓ_a / Σ_valid w_a
    ```

    An anchor is valid when it has at least one positive and one negative in
    the batch; a batch without valid anchors has loss 0. Same values as TF
    Addons' `TripletHardLoss` (when every anchor is valid; TF Addons also
    averages over anchors without positives) and PyTorch Metric Learning's
    `BatchHardMiner` + `TripletMarginLoss` with a mean reducer. The soft
    margin is computed stably (TF Addons overflows to inf for gaps above ~88).

    Args:
        margin: The margin `m`; unused when `soft=True`.
        soft: Use the soft margin `softplus(·)` instead of `relu(· + m)`.
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        normalize: L2-normalise the embeddings before the distance.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for the per-anchor vector (0 for invalid
            anchors).
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas, so that training
            matches one device on the global batch (see the README).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.BatchHardTriplet(margin=1.0)(labels, embeddings)), 4)
    0.441
    """

    def __init__(
        self,
        margin=1.0,
        soft=False,
        distance="euclidean",
        normalize=False,
        reduction="sum_over_batch_size",
        name="batch_hard_triplet",
        cross_replica=False,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica)
        self.margin = float(margin)
        self.soft = bool(soft)

    def anchor_terms(self, distances, labels):
        return batch_hard_triplet_terms(distances, labels, self.margin, self.soft)

    def batch_terms(self, labels, embeddings):
        # Only 2N distances enter the loss: mine on a gradient-free matrix and
        # differentiate just the chosen pairs, recomputed from the embeddings
        # (O(N·D)), instead of back-propagating through all N² distances.
        distances = ops.stop_gradient(pairwise_distance(embeddings, self.distance, self.normalize))

        def pair_distance(index):
            return paired_distance(embeddings, ops.take(embeddings, index, axis=0), self.distance, self.normalize)

        return batch_hard_triplet_terms(distances, labels, self.margin, self.soft, pair_distance)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "soft": self.soft})
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class BatchAllTriplet(InBatchLoss):
    """Batch-all triplet loss over every valid triplet of the batch.

    ```
    ℓ_apn = relu(d(a, p) − d(a, n) + margin)   for p ∈ P(a), n ∈ Q(a)
    loss  = Σ w_a ℓ_apn / Σ w_a [ℓ_apn > 0]    # average="nonzero"
    loss  = Σ w_a ℓ_apn / Σ w_a 1              # average="all"
    ```

    A triplet is weighted by its anchor's sample weight; a batch without
    (positive) triplets has loss 0. `"nonzero"` is Hermans et al.'s
    "BA≠0" and PyTorch Metric Learning's `TripletMarginLoss` default;
    `"all"` is its `MeanReducer`. `ActiveTripletFraction` reports the share
    of triplets with a positive loss as a metric.

    No `(N, N, N)` tensor is built: the work is O(N²·k) for k the largest
    number of positives of an anchor (K − 1 in a P×K batch), the memory O(N²).

    Args:
        margin: The margin `m`.
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        normalize: L2-normalise the embeddings before the distance.
        average: `"nonzero"` or `"all"`, the denominator above.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"` (the weighted sum of triplet losses), or `None` for the
            per-anchor mean over its own triplets.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas, so that training
            matches one device on the global batch (see the README).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.BatchAllTriplet(margin=1.0)(labels, embeddings)), 4)
    0.6749
    """

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        normalize=False,
        average="nonzero",
        reduction="sum_over_batch_size",
        name="batch_all_triplet",
        cross_replica=False,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica)
        self.margin = float(margin)
        self.average = check_choice("average", average, AVERAGES)

    def anchor_terms(self, distances, labels):
        loss_sums, active, valid = all_triplet_terms(distances, labels, self.margin)
        return loss_sums, active if self.average == "nonzero" else valid

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "average": self.average})
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class SemiHardTriplet(InBatchLoss):
    """Semi-hard triplet loss (Schroff et al. 2015, "FaceNet").

    For every positive pair (a, p), the negative is the closest one farther
    than the positive, `argmin_{n∈Q(a), d(a,n) > d(a,p)} d(a, n)`, or the
    farthest negative when no negative is farther than the positive:

    ```
    ℓ_ap = relu(d(a, p) − d(a, n*) + margin)
    loss = Σ w_a ℓ_ap / Σ w_a 1      over positive pairs whose anchor has a negative
    ```

    Exactly TF Addons' `TripletSemiHardLoss`, except that a batch without
    such pairs gives 0 where TF Addons returns NaN, and a single-class batch
    gives 0 (no negative to compare with). Memory is O(N²) (TF Addons tiles
    an N²×N tensor).

    Args:
        margin: The margin `m`.
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        normalize: L2-normalise the embeddings before the distance.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for the per-anchor mean over its pairs.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas, so that training
            matches one device on the global batch (see the README).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.SemiHardTriplet(margin=1.0)(labels, embeddings)), 4)
    0.382
    """

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        normalize=False,
        reduction="sum_over_batch_size",
        name="semi_hard_triplet",
        cross_replica=False,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica)
        self.margin = float(margin)

    def anchor_terms(self, distances, labels):
        return semi_hard_triplet_terms(distances, labels, self.margin)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin})
        return config
