"""Center loss (Wen et al. 2016): every embedding is pulled towards a learned centre of its class."""

import keras
from keras import ops

from tfmetric.distances import as_embeddings
from tfmetric.labels import class_ids
from tfmetric.losses.base import InBatchLoss
from tfmetric.losses.state import LossState


def center_terms(embeddings, class_ids, centers):
    """`½ ‖x_i − c_{y_i}‖²` for every row, and a count of 1 each."""
    centers = ops.cast(centers, embeddings.dtype)
    own_centers = ops.take(centers, ops.cast(class_ids, "int32"), axis=0)
    losses = 0.5 * ops.sum(ops.square(embeddings - own_centers), axis=1)
    return losses, ops.ones_like(losses)


@keras.saving.register_keras_serializable(package="tfmetric")
class CenterLoss(InBatchLoss):
    r"""Center loss (Wen et al. 2016, "A Discriminative Feature Learning
    Approach for Deep Face Recognition").

    $$ \ell_i = \tfrac{1}{2} \lVert x_i - c_{y_i} \rVert^2 $$

    $$ \text{loss} = \text{the mean of } \ell_i \text{ over the batch} $$

    The class centres `c` are variables of the loss: compile a model with it
    and `model.fit` trains them with the model's own optimizer (the
    gradient pulls each centre towards its class's embeddings, the paper's
    update); they are saved and restored with the model and its optimizer
    state in every Keras path (`model.save` and `load_model`, checkpoints,
    `BackupAndRestore`). In a custom training loop, call
    `tfm.losses.attach_state(model, loss)` first. Read them as
    `loss.centers_value()`. Alone, the loss is
    minimised by collapsing every embedding onto one point; the paper adds
    it, weighted by λ, to a softmax loss on the same embeddings (a model
    with two outputs, `loss_weights`).

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each example's loss.
        name: Optional name of the loss.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> loss = tfm.CenterLoss(num_classes=2, embedding_dim=2)
    >>> float(loss(np.array([0, 1]), np.array([[3.0, 4.0], [0.0, 2.0]])))  # centres start at 0
    7.25
    """

    def __init__(self, num_classes, embedding_dim, reduction="sum_over_batch_size", name="center_loss"):
        super().__init__(reduction, name)
        if int(num_classes) < 1 or int(embedding_dim) < 1:
            raise ValueError(
                f"num_classes and embedding_dim must be positive; received {num_classes} and {embedding_dim}."
            )
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.state = LossState(name=f"{name}_state")
        self.state.centers = self.state.add_weight(
            shape=(self.num_classes, self.embedding_dim), initializer="zeros", name="centers"
        )

    def centers_value(self):
        """The current class centres, a `(num_classes, embedding_dim)` array."""
        return keras.ops.convert_to_numpy(self.state.centers)

    def query_terms(self, y_true, y_pred, ref_labels=None, ref_embeddings=None, remove_diagonal=None,
                    ref_valid=None):
        # Each example meets its class centre, not other examples.
        if ref_labels is not None or ref_embeddings is not None or ref_valid is not None:
            raise ValueError("CenterLoss compares examples with class centres: it takes no reference.")
        embeddings = as_embeddings(y_pred)
        if embeddings.shape[-1] is not None and embeddings.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"Embeddings of size {embeddings.shape[-1]} for centres of size {self.embedding_dim}."
            )
        return center_terms(embeddings, class_ids(y_true, self.num_classes, embeddings), self.state.centers)

    def get_config(self):
        config = super().get_config()
        for key in ("cross_replica", "multi_label"):
            del config[key]
        config.update({"num_classes": self.num_classes, "embedding_dim": self.embedding_dim})
        return config
