"""Stochastic-neighbour losses: soft nearest neighbour and NCA.

Every anchor picks a neighbour at random, with probability decreasing with
the distance; the loss is the negative log-probability that it picks one of
its own class. Notation: `d` is the `(N, N)` distance matrix, `T` the
temperature, `P(a)` the positives of anchor `a`.
"""

import keras
from keras import ops

from tfmetric.losses.base import InBatchLoss, row_logsumexp
from tfmetric.mining import label_masks


def soft_nearest_neighbor_terms(distances, labels, temperature=1.0):
    """Per-anchor losses `−log Σ_{p∈P(a)} p_ap`, `p_aj = softmax_{j≠a}(−d_aj / T)`.

    Returns:
        `(losses, has_positive)`: anchors without a positive have no term.
    """
    positive, negative = label_masks(labels)
    logits = -distances / temperature
    has_positive = ops.any(positive, axis=1)
    losses = row_logsumexp(logits, ops.logical_or(positive, negative)) - row_logsumexp(logits, positive)
    return ops.where(has_positive, losses, ops.zeros_like(losses)), ops.cast(has_positive, distances.dtype)


@keras.saving.register_keras_serializable(package="tfmetric")
class SoftNearestNeighbor(InBatchLoss):
    """Soft nearest neighbour loss (Frosst, Papernot & Hinton 2019, "Analyzing
    and Improving Representations with the Soft Nearest Neighbor Loss").

    ```
    ℓ_a = −log( Σ_{p∈P(a)} exp(−d(a, p)/T) / Σ_{j≠a} exp(−d(a, j)/T) )
    loss = mean of ℓ_a over the anchors with a positive
    ```

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
            anchors against the batches of all replicas (see the README).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.SoftNearestNeighbor()(labels, embeddings)), 4)
    0.3185
    """

    def __init__(
        self,
        temperature=1.0,
        distance="squared_euclidean",
        normalize=False,
        reduction="sum_over_batch_size",
        name="soft_nearest_neighbor",
        cross_replica=False,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive; received {temperature}.")
        self.temperature = float(temperature)

    def anchor_terms(self, distances, labels):
        return soft_nearest_neighbor_terms(distances, labels, self.temperature)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class NCA(InBatchLoss):
    """Neighbourhood components analysis loss (Goldberger et al. 2004), in batch.

    The soft nearest neighbour loss with a scale instead of a temperature,
    on L2-normalised embeddings by default, as PyTorch Metric Learning's
    `NCALoss` (same values):

    ```
    ℓ_a = −log Σ_{p∈P(a)} softmax_{j≠a}(−scale · d(a, j))_p
    loss = mean of ℓ_a over the anchors with a positive
    ```

    Args:
        softmax_scale: The scale of the negative squared distances.
        distance: `"squared_euclidean"` (default), `"euclidean"` or
            `"cosine"`.
        normalize: L2-normalise the embeddings first (default).
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's loss.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the README).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.NCA()(labels, embeddings)), 4)
    0.4302
    """

    def __init__(
        self,
        softmax_scale=1.0,
        distance="squared_euclidean",
        normalize=True,
        reduction="sum_over_batch_size",
        name="nca",
        cross_replica=False,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica)
        if softmax_scale <= 0:
            raise ValueError(f"softmax_scale must be positive; received {softmax_scale}.")
        self.softmax_scale = float(softmax_scale)

    def anchor_terms(self, distances, labels):
        return soft_nearest_neighbor_terms(distances, labels, 1.0 / self.softmax_scale)

    def get_config(self):
        config = super().get_config()
        config["softmax_scale"] = self.softmax_scale
        return config
