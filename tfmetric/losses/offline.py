"""Losses on pairs, triplets and class scores that the model forms itself.

Unlike the in-batch losses, nothing is mined here: a two-tower (siamese)
model outputs the distance of each pair, a three-tower model the embeddings
of each (anchor, positive, negative) triplet, a classifier its class scores.
They use Keras' standard reduction and `sample_weight` (one weight per
example).
"""

import keras
from keras import ops

from tfmetric.distances import check_distance, paired_distance
from tfmetric.labels import check_class_ids
from tfmetric.losses.base import check_choice

AGGREGATES = ("sum", "max")


def pair_contrastive(y_true, y_pred, margin=1.0):
    """Per-pair contrastive loss `y·d² + (1 − y)·relu(margin − d)²`.

    `y_true` is 1 for similar pairs and 0 for dissimilar ones; `y_pred` the
    pair distances `d`, shape `(N,)` or `(N, 1)`.
    """
    distances = ops.reshape(ops.convert_to_tensor(y_pred), (-1,))
    similar = ops.cast(ops.reshape(y_true, (-1,)), distances.dtype)
    return similar * ops.square(distances) + (1.0 - similar) * ops.square(
        ops.relu(margin - distances)
    )


def offline_triplet(y_pred, margin=1.0, distance="euclidean", soft=False):
    """Per-triplet loss `relu(d(a, p) − d(a, n) + margin)` of `(N, 3, D)` triplets.

    `softplus(d(a, p) − d(a, n))` when `soft`.
    """
    triplets = ops.convert_to_tensor(y_pred)
    if len(triplets.shape) != 3 or triplets.shape[1] != 3:
        raise ValueError(
            "TripletLoss takes y_pred of shape (batch_size, 3, embedding_dim) "
            f"holding (anchor, positive, negative); received {tuple(triplets.shape)}."
        )
    anchor, positive, negative = triplets[:, 0], triplets[:, 1], triplets[:, 2]
    gap = paired_distance(anchor, positive, distance) - paired_distance(anchor, negative, distance)
    return ops.softplus(gap) if soft else ops.relu(gap + margin)


def multiclass_hinge(y_true, y_pred, margin=1.0, aggregate="sum"):
    """Per-example multi-class SVM loss on class scores.

    `Σ_{j≠y} relu(s_j − s_y + margin)`, or the max over `j ≠ y` when
    `aggregate="max"` (Crammer–Singer).
    """
    scores = ops.convert_to_tensor(y_pred)
    num_classes = scores.shape[-1]
    classes = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    is_true = ops.one_hot(classes, num_classes, dtype="bool")
    true_score = ops.sum(ops.where(is_true, scores, ops.zeros_like(scores)), axis=-1)
    violations = ops.relu(scores - true_score[:, None] + margin)
    violations = ops.where(is_true, ops.zeros_like(violations), violations)
    if aggregate == "max":
        return ops.max(violations, axis=-1)
    return ops.sum(violations, axis=-1)


@keras.saving.register_keras_serializable(package="tfmetric")
class PairContrastive(keras.losses.Loss):
    r"""Contrastive loss of two-tower (siamese) models (Hadsell et al. 2006).

    $$ \text{loss} = y\, d^2 + (1 - y)\, \mathrm{relu}(\mathrm{margin} - d)^2 $$

    `y_true` is 1 for a similar pair and 0 for a dissimilar one, `y_pred` the
    distance of each pair (`tfm.layers.PairDistance` computes it from the two
    towers). Exactly TF Addons' `ContrastiveLoss` (no ½ factor).

    Args:
        margin: Dissimilar pairs farther apart than this cost nothing.
        reduction, name, dtype: as for any `keras.losses.Loss`.

    Example:

    >>> import tfmetric as tfm
    >>> round(float(tfm.losses.PairContrastive(margin=1.0)([1, 0], [0.5, 0.25])), 4)
    0.4062
    """

    def __init__(self, margin=1.0, reduction="sum_over_batch_size", name="pair_contrastive", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        return pair_contrastive(y_true, y_pred, self.margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="tfmetric")
class TripletLoss(keras.losses.Loss):
    r"""Triplet loss on triplets formed offline, for three-tower models.

    `y_pred` holds `(anchor, positive, negative)` embeddings, shape
    `(N, 3, D)`; `y_true` is ignored (pass zeros to `fit`).

    $$ \text{loss} = \mathrm{relu}\big(d(a, p) - d(a, n) + \mathrm{margin}\big) \quad \text{(soft=False)} $$

    $$ \text{loss} = \mathrm{softplus}\big(d(a, p) - d(a, n)\big) \quad \text{(soft=True)} $$

    Args:
        margin: The margin; unused when `soft=True`.
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        soft: Use the soft margin.
        reduction, name, dtype: as for any `keras.losses.Loss`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> triplets = np.array([[[0.0, 0.0], [0.0, 1.0], [0.0, 1.5]]])
    >>> round(float(tfm.losses.TripletLoss(margin=1.0)(np.zeros(1), triplets)), 4)
    0.5
    """

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        soft=False,
        reduction="sum_over_batch_size",
        name="triplet",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = float(margin)
        self.distance = check_distance(distance)
        self.soft = bool(soft)

    def call(self, y_true, y_pred):
        return offline_triplet(y_pred, self.margin, self.distance, self.soft)

    def get_config(self):
        return {
            **super().get_config(),
            "margin": self.margin,
            "distance": self.distance,
            "soft": self.soft,
        }


@keras.saving.register_keras_serializable(package="tfmetric")
class MulticlassHinge(keras.losses.Loss):
    r"""Multi-class hinge (SVM) loss on class scores, with any margin.

    $$ \text{loss} = \sum_{j \ne y} \mathrm{relu}(s_j - s_y + \mathrm{margin})
        \quad \text{(aggregate="sum", Weston–Watkins)} $$

    $$ \text{loss} = \max_{j \ne y} \mathrm{relu}(s_j - s_y + \mathrm{margin})
        \quad \text{(aggregate="max", Crammer–Singer)} $$

    `y_true` holds integer classes `(N,)` or `(N, 1)`, `y_pred` scores
    `(N, C)` (any real values, e.g. logits). `keras.losses.Hinge` takes ±1
    targets and fixes the margin at 1.

    Args:
        margin: The required lead of the true class's score.
        aggregate: `"sum"` or `"max"` over the other classes.
        reduction, name, dtype: as for any `keras.losses.Loss`.

    Example:

    >>> import tfmetric as tfm
    >>> scores = [[2.0, 1.5, -1.0]]
    >>> round(float(tfm.losses.MulticlassHinge(margin=1.0)([0], scores)), 4)
    0.5
    """

    def __init__(
        self,
        margin=1.0,
        aggregate="sum",
        reduction="sum_over_batch_size",
        name="multiclass_hinge",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = float(margin)
        self.aggregate = check_choice("aggregate", aggregate, AGGREGATES)

    def call(self, y_true, y_pred):
        scores = ops.convert_to_tensor(y_pred)
        if len(scores.shape) != 2:
            raise ValueError(
                f"MulticlassHinge takes scores of shape (batch_size, num_classes); received {tuple(scores.shape)}."
            )
        check_class_ids(y_true, scores.shape[-1])
        return multiclass_hinge(y_true, scores, self.margin, self.aggregate)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "aggregate": self.aggregate}
