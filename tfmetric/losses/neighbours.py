"""Stochastic-neighbour losses: soft nearest neighbour and NCA.

Every anchor picks a neighbour at random, with probability decreasing with
the distance; the loss is the negative log-probability that it picks one of
its own class. Notation: `d` is the `(N, R)` distance matrix of the queries
and the reference (the batch itself by default), `T` the temperature,
`P(a)` the positives of query `a`.
"""

import keras
from keras import ops

from tfmetric.losses.base import DistanceLoss, check_positive, distance_loss, row_logsumexp


def soft_nearest_neighbor_terms(distances, positive, negative, temperature=1.0):
    """Per-query losses `−log Σ_{p∈P(a)} p_ap`, `p_aj = softmax_{j∈P(a)∪Q(a)}(−d_aj / T)`.

    Returns:
        `(losses, has_positive)`: queries without a positive have no term.
    """
    check_positive("temperature", temperature)
    logits = -distances / temperature
    has_positive = ops.any(positive, axis=1)
    losses = row_logsumexp(logits, ops.logical_or(positive, negative)) - row_logsumexp(logits, positive)
    return ops.where(has_positive, losses, ops.zeros_like(losses)), ops.cast(has_positive, distances.dtype)


def soft_nearest_neighbor(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    temperature=1.0,
    distance="squared_euclidean",
    normalize=False,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query soft nearest neighbour losses (the math of `SoftNearestNeighbor`).

    Each query's `−log Σ_{p∈P(a)} softmax(−d(a, ·)/T)_p` over the reference
    rows (default: the batch itself, without the query), 0 for a query
    without a positive.

    Args:
        labels: Class ids `(N,)` of the queries (or, with `multi_label`,
            0/1 rows `(N, C)`).
        embeddings: Query embeddings `(N, D)`.
        ref_labels, ref_embeddings: Optional reference `(R,)`, `(R, D)`;
            each query is compared with these R rows only: O(N·R).
        remove_diagonal: Whether reference row a is query a itself (the
            queries come first in the reference); `None`: only without a
            reference.
        temperature, distance, normalize, multi_label: As `SoftNearestNeighbor`.

    Returns:
        The `(N,)` per-query losses.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> [round(float(v), 4) for v in tfm.losses.soft_nearest_neighbor([0, 0, 1, 1], embeddings)]
    [0.0495, 0.036, 0.862, 0.3266]
    """
    return distance_loss(
        soft_nearest_neighbor_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        distance=distance,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        temperature=temperature,
    )


def nca(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    softmax_scale=1.0,
    distance="squared_euclidean",
    normalize=True,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query NCA losses (the math of `NCA`): `soft_nearest_neighbor` with `temperature = 1 / softmax_scale`.

    The arguments are those of `tfm.losses.soft_nearest_neighbor` and `NCA`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.nca([0, 0, 1, 1], embeddings)]
    [0.2333, 0.6271, 0.6271, 0.2333]
    """
    check_positive("softmax_scale", softmax_scale)
    return soft_nearest_neighbor(
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        temperature=1.0 / softmax_scale,
        distance=distance,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class SoftNearestNeighbor(DistanceLoss):
    r"""Soft nearest neighbour loss (Frosst, Papernot & Hinton 2019, "Analyzing
    and Improving Representations with the Soft Nearest Neighbor Loss").

    $$ \ell_a = -\log \frac{\sum_{p \in P(a)} \exp(-d(a, p) / T)}{\sum_{j \ne a} \exp(-d(a, j) / T)} $$

    $$ \text{loss} = \text{the mean of } \ell_a \text{ over the anchors with a positive} $$

    with `d` the squared Euclidean distance, as in the paper. Computed in log
    space: anchors whose positives are all far away keep a finite, large
    loss instead of `−log 0`.

    Args:
        temperature: The temperature `T`.
        distance: `"squared_euclidean"` (default), `"euclidean"` or
            `"cosine"`.
        normalize: L2-normalise the embeddings before the distance.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's loss.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.SoftNearestNeighbor()(labels, embeddings)), 4)
    0.3185
    """

    faster_under_xla = True
    compiles_terms_alone = True
    terms_alone_from = 1024

    def __init__(
        self,
        temperature=1.0,
        distance="squared_euclidean",
        normalize=False,
        reduction="sum_over_batch_size",
        name="soft_nearest_neighbor",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica, multi_label, miner)
        check_positive("temperature", temperature)
        self.temperature = float(temperature)

    def distance_terms(self, distances, positive, negative):
        return soft_nearest_neighbor_terms(distances, positive, negative, self.temperature)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class NCA(DistanceLoss):
    r"""Neighbourhood components analysis loss (Goldberger et al. 2004), in batch.

    The soft nearest neighbour loss with a scale instead of a temperature,
    on L2-normalised embeddings by default, as PyTorch Metric Learning's
    `NCALoss` (same values):

    $$ \ell_a = -\log \sum_{p \in P(a)} \mathrm{softmax}_{j \ne a}\big(-\mathrm{scale} \cdot d(a, j)\big)_p $$

    $$ \text{loss} = \text{the mean of } \ell_a \text{ over the anchors with a positive} $$

    Args:
        softmax_scale: The scale of the negative squared distances.
        distance: `"squared_euclidean"` (default), `"euclidean"` or
            `"cosine"`.
        normalize: L2-normalise the embeddings first (default).
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's loss.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.NCA()(labels, embeddings)), 4)
    0.4302
    """

    faster_under_xla = True

    def __init__(
        self,
        softmax_scale=1.0,
        distance="squared_euclidean",
        normalize=True,
        reduction="sum_over_batch_size",
        name="nca",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica, multi_label, miner)
        check_positive("softmax_scale", softmax_scale)
        self.softmax_scale = float(softmax_scale)

    def distance_terms(self, distances, positive, negative):
        return soft_nearest_neighbor_terms(distances, positive, negative, 1.0 / self.softmax_scale)

    def get_config(self):
        config = super().get_config()
        config["softmax_scale"] = self.softmax_scale
        return config
