"""Contrastive loss over the pairs of a batch, mined online from the labels.

Notation: `d` is the `(N, R)` distance matrix of the queries and the
reference (the batch itself by default), `m` the margin.
"""

import keras
from keras import ops

from tfmetric.losses.base import DistanceLoss, check_choice, distance_loss
from tfmetric.mining import smallest_entries

NEGATIVES = ("all", "hard")


def contrastive_terms(distances, positive, negative, margin=1.0, negatives="all"):
    """Per-query sums of contrastive pair losses and the number of pairs used.

    Positive pairs contribute `d²`, negative pairs `relu(m − d)²`. With
    `negatives="hard"` only as many negative pairs are used as there are
    positive pairs, the closest ones of the whole rectangle.

    In the square case every unordered pair {i, j} appears twice, once from
    each side, so the mean over anchors' pairs equals the mean over
    unordered pairs, and an anchor's sample weight applies to the pairs it
    takes part in.

    Returns:
        `(loss_sums, pair_counts)`, both `(N,)`.
    """
    positive = ops.cast(positive, distances.dtype)
    if check_choice("negatives", negatives, NEGATIVES) == "hard":
        negative = smallest_entries(distances, negative, ops.sum(positive))
    else:
        negative = ops.cast(negative, distances.dtype)
    # where, not a product: 0 · d² would be NaN where d² overflows.
    pull = ops.where(positive > 0, ops.square(distances), ops.zeros_like(distances))
    push = ops.square(ops.relu(margin - distances))
    loss_sums = ops.sum(pull + negative * push, axis=1)
    return loss_sums, ops.sum(positive + negative, axis=1)


def contrastive(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    margin=1.0,
    distance="euclidean",
    normalize=False,
    negatives="all",
    multi_label=False,
    remove_diagonal=None,
):
    """Per-query contrastive losses (the math of `Contrastive`).

    Each query's mean of `d²` over its positive pairs and `relu(m − d)²`
    over its negative pairs, the pairs it forms with the reference rows
    (default: the batch itself); with `negatives="hard"`, only as many
    negative pairs as there are positive pairs in all, the closest ones.

    Args:
        labels: Class ids `(N,)` of the queries (or, with `multi_label`,
            0/1 rows `(N, C)`).
        embeddings: Query embeddings `(N, D)`.
        ref_labels, ref_embeddings: Optional reference `(R,)`, `(R, D)`;
            each query is paired with these R rows only: O(N·R) time and
            memory.
        remove_diagonal: Whether reference row a is query a itself (the
            queries come first in the reference) and so not its own
            pair; `None`: only without a reference.
        margin, distance, normalize, negatives, multi_label: As `Contrastive`.

    Returns:
        The `(N,)` per-query losses.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> queries = np.array([[0.0, 0.0]])
    >>> reference = np.array([[0.0, 1.0], [0.5, 0.0]])
    >>> [float(v) for v in tfm.losses.contrastive([0], queries, [0, 1], reference, margin=1.0)]
    [0.625]
    """
    return distance_loss(
        contrastive_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        distance=distance,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        margin=margin,
        negatives=negatives,
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class Contrastive(DistanceLoss):
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
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.

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
        multi_label=False,
        miner=None,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica, multi_label, miner)
        self.margin = float(margin)
        self.negatives = check_choice("negatives", negatives, NEGATIVES)

    def distance_terms(self, distances, positive, negative):
        return contrastive_terms(distances, positive, negative, self.margin, self.negatives)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "negatives": self.negatives})
        return config
