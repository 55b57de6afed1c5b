"""Training metrics that show how online mining is doing."""

import keras
from keras import ops

from tfmetric.distances import check_distance
from tfmetric.losses.base import pair_distances
from tfmetric.losses.triplet import all_triplet_terms
from tfmetric.mining import mine_pairs


@keras.saving.register_keras_serializable(package="tfmetric")
class ActiveTripletFraction(keras.metrics.Metric):
    """The fraction of valid triplets whose loss `relu(d_ap − d_an + m)` is positive.

    Near 1 early in training; it falls as the embedding learns. It dropping
    to 0 means mining has dried up (every triplet satisfied); it staying at 1
    while the loss sits at the margin is the sign of collapsed embeddings.
    Accumulated over the epoch: active triplets / valid triplets, each
    triplet weighted by its anchor's sample weight.

    Args:
        margin, distance, normalize: as for the triplet loss being trained.
        name: The metric's name in logs.

    Example:

    ```python
    model.compile(
        optimizer="adam",
        loss=tfm.BatchHardTriplet(margin=0.5),
        metrics=[tfm.metrics.ActiveTripletFraction(margin=0.5)],
    )
    ```
    """

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        normalize=False,
        name="active_triplet_fraction",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.margin = float(margin)
        self.distance = check_distance(distance)
        self.normalize = bool(normalize)
        self.active = self.add_variable((), initializer="zeros", name="active")
        self.valid = self.add_variable((), initializer="zeros", name="valid")

    def update_state(self, y_true, y_pred, sample_weight=None):
        pairs = mine_pairs(y_true, y_pred)
        distances = pair_distances(pairs.embeddings, pairs.ref_embeddings, self.distance, self.normalize)
        _, active, valid = all_triplet_terms(distances, pairs.positive, pairs.negative, self.margin)
        if sample_weight is not None:
            weights = ops.reshape(ops.cast(sample_weight, active.dtype), (-1,))
            active, valid = active * weights, valid * weights
        self.active.assign_add(ops.cast(ops.sum(active), self.dtype))
        self.valid.assign_add(ops.cast(ops.sum(valid), self.dtype))

    def result(self):
        return ops.divide_no_nan(self.active, self.valid)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"margin": self.margin, "distance": self.distance, "normalize": self.normalize}
        )
        return config
