"""The lifted structured loss of Song et al. 2016, mined online from the labels.

Notation: `d` is the `(N, R)` distance matrix of the queries and the
reference (the batch itself by default), `P(a)` the positives of query `a`,
`Q(a)` its negatives, `m` the margin.
"""

import keras
from keras import ops

from tfmetric.losses.base import DistanceLoss, distance_loss, row_logsumexp


def lifted_structure_terms(distances, positive, negative, margin=1.0):
    """Per-query sums of lifted structured terms and the number of positive pairs.

    For query i and its positive reference row j:
    `J_ij = log(Σ_{k∈Q(i)} exp(m − d_ik) + Σ_{l: j∈Q(l)} exp(m − d_lj)) + d_ij`,
    and query i gets `relu(J_ij)² / 2` for each positive j. The negatives of
    the reference row j are taken among the queries (column j of the
    rectangle): in the square case they are exactly j's own negatives (the
    matrix and masks are symmetric), and the cost stays O(N·R). The two
    log-sum-exps are vectors; pairing them is one `(N, R)` log-add-exp, so
    nothing of size N·R·R is built (TF Addons tiles the matrix N times).
    Pairs with no negative on either side have no finite `J`: their terms
    are 0 (a one-class batch).

    Returns:
        `(loss_sums, pair_counts)`, both `(N,)`.
    """
    exponents = margin - distances
    row_terms = row_logsumexp(exponents, negative)[:, None]
    column_terms = row_logsumexp(ops.transpose(exponents), ops.transpose(negative))[None, :]
    row_has, column_has = ops.any(negative, axis=1)[:, None], ops.any(negative, axis=0)[None, :]
    has_negative = ops.logical_or(row_has, column_has)
    # An empty side is log 0 = -inf, not the 0 row_logsumexp gives it.
    left = ops.where(row_has, row_terms, ops.full_like(row_terms, float("-inf")))
    right = ops.where(column_has, column_terms, ops.full_like(column_terms, float("-inf")))
    shift = ops.stop_gradient(ops.maximum(left, right))
    shift = ops.where(has_negative, shift, ops.zeros_like(shift))
    total = ops.exp(left - shift) + ops.exp(right - shift)
    # log 1 where neither side has a negative: no log 0 for the gradient to meet.
    total = ops.where(has_negative, total, ops.ones_like(total))
    pair_terms = shift + ops.log(total) + distances
    active = ops.logical_and(positive, has_negative)
    pair_terms = ops.where(active, ops.relu(pair_terms), ops.zeros_like(pair_terms))
    loss_sums = 0.5 * ops.sum(ops.square(pair_terms), axis=1)
    return loss_sums, ops.sum(ops.cast(positive, distances.dtype), axis=1)


def lifted_structure(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    margin=1.0,
    distance="euclidean",
    normalize=False,
    multi_label=False,
    remove_diagonal=None,
):
    """Per-query lifted structured losses (the math of `LiftedStructure`).

    Each query i's mean over its positive reference rows j of
    `relu(J_ij)² / 2` (see `lifted_structure_terms`), among the reference
    rows (default: the batch itself). The arguments are those of
    `tfm.losses.batch_hard_triplet` and `LiftedStructure`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> [round(float(v), 4) for v in tfm.losses.lifted_structure([0, 0, 1, 1], embeddings)]
    [0.6094, 0.6094, 2.2134, 2.2134]
    """
    return distance_loss(
        lifted_structure_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        distance=distance,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        margin=margin,
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class LiftedStructure(DistanceLoss):
    """Lifted structured loss (Song et al. 2016, "Deep Metric Learning via
    Lifted Structured Feature Embedding").

    Every positive pair (i, j) is contrasted with every negative of both of
    its examples, through a smooth maximum:

    ```
    J_ij = log(Σ_{k∈Q(i)} exp(m − d(i, k)) + Σ_{l∈Q(j)} exp(m − d(j, l))) + d(i, j)
    loss = 1/(2|P̂|) Σ_{(i,j)∈P̂} relu(J_ij)²
    ```

    `P̂` are the unordered positive pairs of the batch. Same values as TF
    Addons' `LiftedStructLoss` (Euclidean distance), with O(N²) memory
    instead of its O(N³). A batch without positive pairs has loss 0, as
    has a batch of one class (where TF Addons returns NaN). With
    `sample_weight`, anchor i's weight applies to its pairs (i, j).

    Args:
        margin: The margin `m`.
        distance: `"euclidean"` (TF Addons' choice), `"squared_euclidean"`
            or `"cosine"`.
        normalize: L2-normalise the embeddings before the distance.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's mean over its pairs.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the README).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.LiftedStructure(margin=1.0)(labels, embeddings)), 4)
    1.4114
    """

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        normalize=False,
        reduction="sum_over_batch_size",
        name="lifted_structure",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica, multi_label, miner)
        self.margin = float(margin)

    def distance_terms(self, distances, positive, negative):
        return lifted_structure_terms(distances, positive, negative, self.margin)

    def get_config(self):
        config = super().get_config()
        config["margin"] = self.margin
        return config
