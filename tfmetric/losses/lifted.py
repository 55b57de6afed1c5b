"""The lifted structured loss of Song et al. 2016, mined online from the labels.

Notation: `d` is the `(N, N)` distance matrix of the batch, `P(a)` the
positives of anchor `a`, `Q(a)` its negatives, `m` the margin.
"""

import keras
from keras import ops

from tfmetric.losses.base import InBatchLoss, row_logsumexp
from tfmetric.mining import label_masks


def lifted_structure_terms(distances, labels, margin=1.0):
    """Per-anchor sums of lifted structured terms and the number of positive pairs.

    For the positive pair (i, j):
    `J_ij = log(Σ_{k∈Q(i)} exp(m − d_ik) + Σ_{l∈Q(j)} exp(m − d_jl)) + d_ij`,
    and anchor i gets `relu(J_ij)² / 2` for each positive j. The log-sum-exp
    over the negatives of one row is a vector; pairing two rows is one
    `(N, N)` log-add-exp, so nothing of size N³ is built (TF Addons tiles
    the matrix N times). A batch with no negative at all (one class) has no
    finite `J`: its terms are 0.

    Returns:
        `(loss_sums, pair_counts)`, both `(N,)`.
    """
    positive, negative = label_masks(labels)
    row_terms = row_logsumexp(margin - distances, negative)
    # A row lacks negatives only in a one-class batch (any other label is a
    # negative of every row): then no pair has a term.
    has_negative = ops.any(negative)
    left, right = row_terms[:, None], row_terms[None, :]
    shift = ops.stop_gradient(ops.maximum(left, right))
    pair_terms = shift + ops.log(ops.exp(left - shift) + ops.exp(right - shift)) + distances
    pair_terms = ops.where(ops.logical_and(positive, has_negative), ops.relu(pair_terms), ops.zeros_like(pair_terms))
    loss_sums = 0.5 * ops.sum(ops.square(pair_terms), axis=1)
    return loss_sums, ops.sum(ops.cast(positive, distances.dtype), axis=1)


@keras.saving.register_keras_serializable(package="tfmetric")
class LiftedStructure(InBatchLoss):
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
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica)
        self.margin = float(margin)

    def anchor_terms(self, distances, labels):
        return lifted_structure_terms(distances, labels, self.margin)

    def get_config(self):
        config = super().get_config()
        config["margin"] = self.margin
        return config
