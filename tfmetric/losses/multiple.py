"""Several losses on one output, weighted: PML's `MultipleLosses` for `model.compile`.

Keras weighs losses per output (`loss_weights`); metric learning often adds
two losses on the same embeddings (a pair loss and a proxy loss, a loss and
a regulariser). `MultipleLosses` is one Keras loss made of several.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfmetric")
class MultipleLosses(keras.losses.Loss):
    """The weighted sum of several losses on the same labels and embeddings.

    `loss = Σ_i w_i · loss_i(y_true, y_pred, sample_weight)`

    Each loss keeps its own reduction, miner and state: the states of the
    losses inside (learned β, class vectors, a memory) join the model in
    `model.compile` as if each had been compiled alone, and train and save
    with it. Labels reach every loss exactly as given (no cast to float,
    as in tfmetric's losses).

    Args:
        losses: A list of Keras losses, or a dict `{name: loss}`.
        weights: The weight of each loss: a list as long as `losses`, a
            dict with some of its names (the others weigh 1), or `None` (all
            weigh 1).
        name: The loss's name.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> loss = tfm.MultipleLosses(
    ...     [tfm.BatchHardTriplet(margin=0.5), tfm.MultiSimilarity()], weights=[1.0, 0.5])
    >>> labels = np.array([0, 0, 1, 1])
    >>> x = np.array([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, -0.2]])
    >>> total = float(loss(labels, x))
    >>> parts = float(tfm.BatchHardTriplet(margin=0.5)(labels, x)) + 0.5 * float(tfm.MultiSimilarity()(labels, x))
    >>> bool(abs(total - parts) < 1e-6)
    True
    """

    def __init__(self, losses, weights=None, name="multiple_losses"):
        super().__init__(name=name)
        if isinstance(losses, dict):
            self.names = list(losses)
            losses = list(losses.values())
        else:
            losses = list(losses)
            self.names = None
        if not losses:
            raise ValueError("MultipleLosses needs at least one loss.")
        self.losses = [keras.losses.deserialize(loss) if isinstance(loss, dict) else loss for loss in losses]
        for loss in self.losses:
            if not callable(loss):
                raise TypeError(f"Every entry of losses must be a Keras loss; received {loss!r}.")
        self.weights = self._check_weights(weights)

    def _check_weights(self, weights):
        if weights is None:
            return [1.0] * len(self.losses)
        if isinstance(weights, dict):
            if self.names is None:
                raise ValueError("Weights by name need the losses as a dict {name: loss}.")
            unknown = set(weights) - set(self.names)
            if unknown:
                raise ValueError(f"Weights for unknown losses {sorted(unknown)}; the losses are {self.names}.")
            return [float(weights.get(name, 1.0)) for name in self.names]
        weights = [float(weight) for weight in weights]
        if len(weights) != len(self.losses):
            raise ValueError(f"{len(weights)} weights for {len(self.losses)} losses.")
        return weights

    def wrapped_losses(self):
        """The losses inside (their states join the model with this loss)."""
        return list(self.losses)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras' Loss.__call__ would cast y_true to float (merging large
        # labels) and reduce again; each loss inside reduces itself.
        with keras.name_scope(self.name):
            total = None
            for loss, weight in zip(self.losses, self.weights):
                value = loss(y_true, y_pred, sample_weight=sample_weight)
                term = value if weight == 1.0 else ops.multiply(ops.cast(weight, value.dtype), value)
                total = term if total is None else total + ops.cast(term, total.dtype)
            return total

    def call(self, y_true, y_pred):
        return self(y_true, y_pred)

    def get_config(self):
        losses = [keras.losses.serialize(loss) for loss in self.losses]
        if self.names is not None:
            losses = dict(zip(self.names, losses))
            weights = dict(zip(self.names, self.weights))
        else:
            weights = list(self.weights)
        return {"losses": losses, "weights": weights, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
