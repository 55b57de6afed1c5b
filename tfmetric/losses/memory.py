"""Cross-batch memory (Wang et al. 2020, XBM): mining against the embeddings of recent batches.

The embeddings of a slowly changing model drift little from one step to the
next, so those of the last few batches are nearly as good as fresh ones, and
give every anchor far more positives and negatives than its own batch has.
"""

import keras
import numpy as np
from keras import ops

from tfmetric.distances import as_embeddings
from tfmetric.distribute import replica_context
from tfmetric.labels import is_backend_tensor, standardize_labels
from tfmetric.losses.base import InBatchLoss, per_query, reduce_anchor_terms, replica_share
from tfmetric.losses.center import CenterLoss
from tfmetric.losses.margin import MarginLoss
from tfmetric.losses.n_pairs import NPairsMultilabel
from tfmetric.losses.state import LossState


def _label_dtype():
    # JAX without 64-bit mode has no int64: its labels are int32.
    return "int32" if keras.backend.backend() == "jax" else "int64"


@keras.saving.register_keras_serializable(package="tfmetric")
class CrossBatchMemory(keras.losses.Loss):
    r"""Cross-batch memory (Wang et al. 2020, "Cross-Batch Memory for
    Embedding Learning"): an in-batch loss mined against recent batches too.

    The wrapper keeps the embeddings and labels of the last `memory_size`
    examples it has seen. At every call, the batch's N anchors are mined by
    `loss` against the reference batch ∪ memory, an N × (N + M) rectangle
    (the remembered embeddings are constants: no gradient reaches them; no
    anchor is its own positive), then the batch joins the memory, replacing
    the oldest entries:

    $$ \text{loss} = \text{the loss of the batch's queries against the reference } \text{batch} \cup \text{memory} $$

    The loss's reduction and sample weights apply to the batch's anchors
    as usual. Empty slots (before the memory has filled) take part in no
    pair. Use it in `model.compile(loss=tfm.CrossBatchMemory(tfm.Contrastive(), 4096))`:
    the memory is saved with the model (in a custom training loop, call
    `tfm.losses.attach_state(model, loss)` first). Cost: O(N·(N + M)) time
    and memory, the distance rectangle and a few passes over it; memories
    of 10⁴–10⁵ rows, as in the paper, fit.

    Where the wrapped loss looks beyond each anchor's own row — the closest
    negative pairs of `Contrastive(negatives="hard")`, the negatives of a
    positive in `LiftedStructure` — it sees the rectangle: the batch's rows
    and, for a remembered row, the batch's anchors.

    Under a `tf.distribute` strategy, pass `cross_replica=True`: every
    replica gathers the global batch, mines it against global batch ∪
    memory, keeps its own anchors' share and enqueues the whole global
    batch, so that every replica's memory is the same and training matches
    one device on the global batch.

    Args:
        loss: The in-batch loss to wrap (any of tfmetric's mined from class
            ids, except `CenterLoss`, `NPairsMultilabel`, `MarginLoss` with
            a β per class, and losses with `multi_label=True`).
        memory_size: How many past embeddings to keep; at least the batch
            size (the global batch with `cross_replica`).
        embedding_dim: Size of the embeddings. When `None`, the memory is
            created by `model.compile` from the size of the model's output
            where the model is built (a Sequential or functional model), or
            else at the first call, which must then not be inside a JAX
            trace or a `tf.distribute` replica.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine and remember
            the global batch (see above); the wrapped loss itself must not
            set `cross_replica`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> loss = tfm.CrossBatchMemory(tfm.Contrastive(margin=1.0), memory_size=4)
    >>> first = float(loss(np.array([0, 1]), np.array([[0.0, 0.0], [0.5, 0.0]])))
    >>> # The second batch also meets the first: its anchor 0 has a positive now.
    >>> round(float(loss(np.array([0, 1]), np.array([[0.0, 0.3], [3.0, 0.0]]))), 4)
    1.0856
    """

    def __init__(self, loss, memory_size=1024, embedding_dim=None, name="cross_batch_memory", cross_replica=False):
        if isinstance(loss, dict):
            loss = keras.losses.deserialize(loss)
        _check_wrappable(loss)
        super().__init__(name=name, reduction=loss.reduction)
        if int(memory_size) < 1:
            raise ValueError(f"memory_size must be positive; received {memory_size}.")
        self.loss = loss
        self.memory_size = int(memory_size)
        self.cross_replica = bool(cross_replica)
        self.embedding_dim = None
        self.state = None
        if embedding_dim is not None:
            self.build_state(int(embedding_dim))

    def wrapped_losses(self):
        """The loss this memory feeds (its state joins the model with the memory's)."""
        return [self.loss]

    def build_state(self, embedding_dim):
        """Creates the memory for embeddings of size `embedding_dim`.

        `model.compile` calls it with the size of the model's output, so
        that the memory is part of the model before training starts (and
        `BackupAndRestore` can restore it); otherwise the first call does.
        """
        if self.state is not None:
            if embedding_dim != self.embedding_dim:
                raise ValueError(f"Embeddings of size {embedding_dim} for a memory of size {self.embedding_dim}.")
            return
        state = LossState(name=f"{self.name}_state")
        size = self.memory_size
        # Every replica writes the same global batch: the first one's write stands for all.
        shared = {"trainable": False, "aggregation": "only_first_replica"}
        state.embeddings = state.add_weight(
            shape=(size, embedding_dim), initializer="zeros", name="embeddings", **shared
        )
        state.labels = state.add_weight(
            shape=(size,), initializer="zeros", dtype=_label_dtype(), name="labels", **shared
        )
        state.filled = state.add_weight(shape=(size,), initializer="zeros", name="filled", **shared)
        state.position = state.add_weight(shape=(), initializer="zeros", dtype="int32", name="position", **shared)
        self.state = state
        self.embedding_dim = embedding_dim

    # Where neither the constructor nor `model.compile` could tell the
    # embedding size, the memory only exists after the first batch. Saving
    # the size lets a restore (`BackupAndRestore`, `load_weights`) create the
    # memory before Keras fills it, instead of skipping the saved one.
    def save_own_variables(self, store):
        if self.embedding_dim is not None:
            store["embedding_dim"] = np.array(self.embedding_dim)

    def load_own_variables(self, store):
        if "embedding_dim" in store.keys():
            self.build_state(int(np.asarray(store["embedding_dim"])))

    def _labels(self, y_true, embeddings):
        """The batch's labels in the memory's integer dtype, exact and validated."""
        if is_backend_tensor(y_true):
            return ops.cast(standardize_labels(y_true, embeddings), _label_dtype())
        values = np.asarray(y_true)
        standardize_labels(values, embeddings)
        values = values.reshape(-1)
        limits = np.iinfo(_label_dtype())
        if values.size and (values.min() < limits.min or values.max() > limits.max):
            raise ValueError(
                f"CrossBatchMemory stores labels as {_label_dtype()}; received labels from "
                f"{values.min()} to {values.max()}."
            )
        return ops.convert_to_tensor(values.astype(_label_dtype()))

    def _prepare(self, y_true, y_pred):
        embeddings = as_embeddings(y_pred)
        dim, batch = embeddings.shape[-1], embeddings.shape[0]
        if self.state is None and dim is None:
            raise ValueError("CrossBatchMemory needs a known embedding size: pass embedding_dim.")
        if dim is not None:
            self.build_state(dim)
        if batch is not None and batch > self.memory_size:
            raise ValueError(
                f"A batch of {batch} examples does not fit a memory of {self.memory_size}: "
                "memory_size must be at least the batch size."
            )
        return embeddings, self._labels(y_true, embeddings)

    def _memory_terms(self, embeddings, labels):
        """The wrapped loss's terms of the queries against queries ∪ memory."""
        state = self.state
        remembered = ops.stop_gradient(ops.cast(state.embeddings, embeddings.dtype))
        ref_embeddings = ops.concatenate([embeddings, remembered], axis=0)
        ref_labels = ops.concatenate([labels, ops.cast(state.labels, labels.dtype)], axis=0)
        valid = ops.concatenate([ops.ones_like(labels, "bool"), ops.cast(state.filled, "bool")], axis=0)
        return self.loss.query_terms(
            labels, embeddings, ref_labels, ref_embeddings, remove_diagonal=True, ref_valid=valid
        )

    def _remember(self, embeddings, labels):
        state = self.state
        batch = ops.shape(embeddings)[0]
        slots = ((state.position + ops.arange(batch, dtype="int32")) % self.memory_size)[:, None]
        state.embeddings.assign(
            ops.scatter_update(state.embeddings, slots, ops.stop_gradient(ops.cast(embeddings, "float32")))
        )
        state.labels.assign(ops.scatter_update(state.labels, slots, ops.cast(labels, state.labels.dtype)))
        state.filled.assign(ops.scatter_update(state.filled, slots, ops.ones((batch,), "float32")))
        state.position.assign((state.position + batch) % self.memory_size)

    def __call__(self, y_true, y_pred, sample_weight=None):
        context = replica_context()
        if context is not None and not self.cross_replica:
            raise ValueError(
                "Under a tf.distribute strategy, CrossBatchMemory needs cross_replica=True (every replica "
                "then remembers the global batch)."
            )
        with keras.name_scope(self.name):
            embeddings, labels = self._prepare(y_true, y_pred)
            self.state.attach(self)
            inner_state = getattr(self.loss, "state", None)
            if inner_state is not None:
                inner_state.attach(self)
            if context is None:
                loss_sums, term_counts = self._memory_terms(embeddings, labels)
                loss = reduce_anchor_terms(loss_sums, term_counts, sample_weight, self.reduction)
                self._remember(embeddings, labels)
                return loss
            # Every replica remembers the global batch: the same memory everywhere.
            loss, all_embeddings, all_labels = replica_share(
                context, embeddings, labels, sample_weight, self.reduction, lambda y, x: self._memory_terms(x, y)
            )
            self._remember(all_embeddings, all_labels)
            return loss

    def call(self, y_true, y_pred):
        """Per-anchor losses against the batch and the memory, leaving the memory as it is."""
        embeddings, labels = self._prepare(y_true, y_pred)
        return per_query(self._memory_terms(embeddings, labels))

    def memory(self):
        """`(embeddings, labels)` of the filled slots, as NumPy arrays in slot order."""
        if self.state is None:
            return np.zeros((0, 0), "float32"), np.zeros((0,), _label_dtype())
        filled = keras.ops.convert_to_numpy(self.state.filled) > 0
        return (
            keras.ops.convert_to_numpy(self.state.embeddings)[filled],
            keras.ops.convert_to_numpy(self.state.labels)[filled],
        )

    def get_config(self):
        return {
            "loss": keras.losses.serialize(self.loss),
            "memory_size": self.memory_size,
            "embedding_dim": self.embedding_dim,
            "name": self.name,
            "cross_replica": self.cross_replica,
        }


def _check_wrappable(loss):
    if not isinstance(loss, InBatchLoss) or isinstance(loss, (CenterLoss, NPairsMultilabel)) or loss.multi_label:
        raise ValueError(
            f"CrossBatchMemory wraps a loss mined from class ids, such as tfm.Contrastive(); received {loss!r}."
        )
    if isinstance(loss, MarginLoss) and loss.num_classes is not None:
        raise ValueError("CrossBatchMemory cannot wrap a MarginLoss with a β per class (num_classes).")
    if loss.cross_replica:
        raise ValueError(
            "CrossBatchMemory cannot wrap a loss with cross_replica=True: pass cross_replica=True to "
            "CrossBatchMemory itself."
        )
