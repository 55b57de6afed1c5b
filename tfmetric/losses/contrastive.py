"""Contrastive loss over the pairs of a batch, mined online from the labels.

Notation: `d` is the `(N, N)` distance matrix of the batch, `m` the margin.
"""

import keras
from keras import ops

from tfmetric.losses.base import InBatchLoss, check_choice
from tfmetric.mining import label_masks, smallest_entries

NEGATIVES = ("all", "hard")


def contrastive_terms(distances, labels, margin=1.0, negatives="all"):
    """Per-anchor sums of contrastive pair losses and the number of pairs used.

    Positive pairs contribute `d²`, negative pairs `relu(m − d)²`. With
    `negatives="hard"` only as many negative pairs are used as there are
    positive pairs, the closest ones of the whole batch.

    Every unordered pair {i, j} appears twice, once from each side, so the
    mean over anchors' pairs equals the mean over unordered pairs, and an
    anchor's sample weight applies to the pairs it takes part in.

    Returns:
        `(loss_sums, pair_counts)`, both `(N,)`.
    """
    positive, negative = label_masks(labels)
    positive = ops.cast(positive, distances.dtype)
    if negatives == "hard":
        negative = smallest_entries(distances, negative, ops.sum(positive))
    else:
        negative = ops.cast(negative, distances.dtype)
    # where, not a product: 0 · d² would be NaN where d² overflows.
    pull = ops.where(positive > 0, ops.square(distances), ops.zeros_like(distances))
    push = ops.square(ops.relu(margin - distances))
    loss_sums = ops.sum(pull + negative * push, axis=1)
    return loss_sums, ops.sum(positive + negative, axis=1)


@keras.saving.register_keras_serializable(package="tfmetric")
class Contrastive(InBatchLoss):
    """Contrastive loss over the pairs of a batch (Hadsell, Chopra & LeCun 2006).

    Pairs are formed online from the labels:

    ```
    ℓ_ij = d(i, j)²                  same label
    ℓ_ij = relu(margin − d(i, j))²   different labels
    loss = mean of ℓ over the pairs used
    ```

    Without the ½ factor of the paper, like TF Addons' `ContrastiveLoss`
    (whose two-tower form is `PairContrastive`). `negatives="all"` uses
    every pair of the batch; `negatives="hard"` keeps every positive pair
    and only as many negative pairs, the closest ones of the batch (ties at
    the cut share its weight). A batch without pairs has loss 0. With
    `sample_weight`, a pair is weighted by the sum of its two examples'
    weights.

    Args:
        margin: Negative pairs closer than `margin` are pushed apart.
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        normalize: L2-normalise the embeddings before the distance.
        negatives: `"all"` or `"hard"`.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each example's mean over its pairs.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas, so that training
            matches one device on the global batch (see the README).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.Contrastive(margin=2.5)(labels, embeddings)), 4)
    0.8982
    >>> round(float(tfm.Contrastive(margin=2.5, negatives="hard")(labels, embeddings)), 4)
    1.3299
    """

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        normalize=False,
        negatives="all",
        reduction="sum_over_batch_size",
        name="contrastive",
        cross_replica=False,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica)
        self.margin = float(margin)
        self.negatives = check_choice("negatives", negatives, NEGATIVES)

    def anchor_terms(self, distances, labels):
        return contrastive_terms(distances, labels, self.margin, self.negatives)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "negatives": self.negatives})
        return config
