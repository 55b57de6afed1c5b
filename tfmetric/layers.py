"""Keras layers that two- and three-tower (siamese) models need."""

import keras

from tfmetric.distances import check_distance, paired_distance


@keras.saving.register_keras_serializable(package="tfmetric")
class PairDistance(keras.layers.Layer):
    """The distance between two towers' embeddings, one value per pair.

    Feed its output to `tfm.losses.PairContrastive`.

    Example:

    ```python
    encoder = keras.Sequential([keras.layers.Dense(32)])
    left, right = keras.Input((64,)), keras.Input((64,))
    distance = tfm.layers.PairDistance()([encoder(left), encoder(right)])
    siamese = keras.Model([left, right], distance)
    siamese.compile("adam", loss=tfm.losses.PairContrastive(margin=1.0))
    ```

    Args:
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        normalize: L2-normalise both embeddings first.
    """

    def __init__(self, distance="euclidean", normalize=False, **kwargs):
        super().__init__(**kwargs)
        self.distance = check_distance(distance)
        self.normalize = bool(normalize)

    def call(self, inputs):
        left, right = inputs
        return paired_distance(left, right, self.distance, self.normalize)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0],)

    def get_config(self):
        return {**super().get_config(), "distance": self.distance, "normalize": self.normalize}
