"""N-pair losses (Sohn 2016): a softmax over similarities whose target is the positives.

Notation: `s` is the `(N, N)` similarity matrix, `P(a)` the positives of
anchor `a`, `C(a)` its candidates (the columns its softmax runs over).
"""

import keras
import numpy as np
from keras import ops

from tfmetric.distances import as_embeddings, computation_dtype, pairwise_similarity
from tfmetric.labels import is_backend_tensor, is_traced, standardize_labels
from tfmetric.losses.base import divide_or_zero, row_logsumexp
from tfmetric.losses.similarity import SimilarityLoss
from tfmetric.mining import label_masks


def soft_target_cross_entropy(logits, targets, candidates):
    """Per row, the cross-entropy of the softmax over `candidates` against `targets`.

    `targets` are non-negative weights, normalised per row to sum to 1 (they
    must lie within `candidates`):
    `ℓ_a = log Σ_{j∈C(a)} exp(s_aj) − Σ_j t_aj s_aj / Σ_j t_aj`.

    Returns:
        `(losses, has_target)`: rows without a target get loss 0.
    """
    targets = ops.cast(targets, logits.dtype)
    target_sum = ops.sum(targets, axis=1)
    has_target = target_sum > 0
    # where, not a product: 0 · logit is NaN for an infinite logit.
    weighted = ops.sum(ops.where(targets > 0, targets * logits, ops.zeros_like(logits)), axis=1)
    losses = row_logsumexp(logits, candidates) - divide_or_zero(weighted, target_sum)
    return ops.where(has_target, losses, ops.zeros_like(losses)), has_target


def _similarity_matrix(similarity):
    similarity = ops.convert_to_tensor(similarity)
    if len(similarity.shape) != 2:
        raise ValueError(f"The similarity matrix must be 2-D; received shape {tuple(similarity.shape)}.")
    return ops.cast(similarity, computation_dtype(similarity.dtype))


def npairs_loss(y_true, y_pred):
    """TF Addons' `npairs_loss`: labels and an anchor × positive similarity matrix.

    `y_pred[i, j]` is the similarity of anchor i and positive j (e.g.
    `anchors @ positives.T`), `y_true[i]` the class of pair i. Row i is a
    softmax over all positives, its target spread evenly over the positives
    of class `y_true[i]`; the loss is the mean over rows. Same values as TF
    Addons; labels are compared exactly (never cast to float).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> similarity = np.array([[2.0, 0.0], [0.0, 1.0]])
    >>> round(float(tfm.losses.npairs_loss(np.array([0, 1]), similarity)), 4)
    0.2201
    """
    similarity = _similarity_matrix(y_pred)
    labels = standardize_labels(y_true, similarity)
    targets = ops.equal(labels[:, None], labels[None, :])
    losses, _ = soft_target_cross_entropy(similarity, targets, ops.ones_like(targets))
    return ops.mean(losses)


def _multi_hot(y_true, num_examples):
    """Validated `(N, C)` 0/1 labels as floats (a `tf.SparseTensor` is densified)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(y_true, tf.SparseTensor):
            y_true = tf.sparse.to_dense(y_true)
    if not is_backend_tensor(y_true):
        y_true = np.asarray(y_true)
    if len(y_true.shape) != 2:
        raise ValueError(
            "Multi-label targets must be a (batch_size, num_classes) 0/1 matrix; "
            f"received shape {tuple(y_true.shape)}."
        )
    if num_examples is not None and y_true.shape[0] is not None and y_true.shape[0] != num_examples:
        raise ValueError(f"{y_true.shape[0]} label rows for {num_examples} examples.")
    if not (is_backend_tensor(y_true) and is_traced(y_true)):
        values = np.asarray(ops.convert_to_numpy(y_true) if is_backend_tensor(y_true) else y_true)
        if not np.all((values == 0) | (values == 1)):
            raise ValueError("Multi-label targets must hold only 0 and 1.")
    return ops.cast(y_true, "float32")


def multilabel_overlaps(y_true, num_examples=None):
    """`L[i, j]`: how many labels examples i and j share, from `(N, C)` 0/1 labels."""
    multi_hot = _multi_hot(y_true, num_examples)
    return ops.matmul(multi_hot, ops.transpose(multi_hot))


def npairs_multilabel_loss(y_true, y_pred):
    """TF Addons' `npairs_multilabel_loss`: `(N, C)` 0/1 labels and a similarity matrix.

    Like `npairs_loss`, with the target of row i proportional to the number
    of labels pair i shares with each pair j. Rows that share no label with
    any pair (no label at all) have no target: they are left out of the
    mean, where TF Addons returns NaN.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([[1, 0], [1, 1]])
    >>> similarity = np.array([[2.0, 0.0], [0.0, 1.0]])
    >>> round(float(tfm.losses.npairs_multilabel_loss(labels, similarity)), 4)
    0.8868
    """
    similarity = _similarity_matrix(y_pred)
    targets = multilabel_overlaps(y_true, similarity.shape[0])
    losses, has_target = soft_target_cross_entropy(similarity, targets, ops.ones_like(similarity) > 0)
    has_target = ops.cast(has_target, losses.dtype)
    return divide_or_zero(ops.sum(losses), ops.sum(has_target))


def npairs_terms(similarity, targets, candidates):
    """Per-anchor N-pair losses and whether the anchor has a target (1/0)."""
    losses, has_target = soft_target_cross_entropy(similarity, targets, candidates)
    return losses, ops.cast(has_target, similarity.dtype)


@keras.saving.register_keras_serializable(package="tfmetric")
class NPairs(SimilarityLoss):
    """N-pair loss (Sohn 2016, "Improved Deep Metric Learning with
    Multi-class N-pair Loss Objective"), mined online from the labels.

    Every example a is an anchor; its logits are its dot products with every
    other example of the batch, its target is spread evenly over its
    positives:

    ```
    ℓ_a = log Σ_{j≠a} exp(s(a, j)) − 1/|P(a)| Σ_{p∈P(a)} s(a, p)
    loss = mean of ℓ_a over the anchors with a positive
    ```

    With one positive per anchor this is the paper's
    `log(1 + Σ_n exp(s(a, n) − s(a, p)))`. TF Addons' `NpairsLoss` takes
    instead a similarity matrix between a batch of anchors and a separate
    batch of positives (so anchors are not compared with one another), with
    the same soft targets for repeated labels; `tfm.losses.npairs_loss`
    computes exactly that. Like TF Addons, without the paper's L2 penalty
    on the embeddings (add `activity_regularizer` to the embedding layer).

    Args:
        normalize: L2-normalise the embeddings first (cosine similarities,
            which then want a temperature: scale the embeddings); the
            paper uses raw dot products (`False`, default).
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's loss (0 without positive).
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, use the batches of
            all replicas as candidates (see the README).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.2, 1.0]])
    >>> round(float(tfm.NPairs()(labels, embeddings)), 4)
    0.6448
    """

    def __init__(self, normalize=False, reduction="sum_over_batch_size", name="npairs", cross_replica=False):
        super().__init__(normalize, reduction, name, cross_replica)

    def similarity_terms(self, similarity, labels):
        positive, negative = label_masks(labels)
        return npairs_terms(similarity, positive, ops.logical_or(positive, negative))


@keras.saving.register_keras_serializable(package="tfmetric")
class NPairsMultilabel(SimilarityLoss):
    """N-pair loss for multi-label data, mined online from `(N, C)` 0/1 labels.

    As `NPairs`, with the target of anchor a on example j proportional to
    `L(a, j)`, the number of labels they share (TF Addons'
    `NpairsMultilabelLoss` semantics, over one batch):

    ```
    ℓ_a = log Σ_{j≠a} exp(s(a, j)) − Σ_{j≠a} L(a, j) s(a, j) / Σ_{j≠a} L(a, j)
    loss = mean of ℓ_a over the anchors sharing a label with another example
    ```

    `y_true` is the `(N, C)` 0/1 matrix (or a `tf.SparseTensor`);
    `tfm.losses.npairs_multilabel_loss` is TF Addons' function on an anchor
    × positive similarity matrix.

    Args:
        normalize: L2-normalise the embeddings first (default: raw dot
            products, as in the paper).
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's loss.
        name: Optional name of the loss.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([[1, 0], [1, 1], [0, 1]])
    >>> embeddings = np.array([[1.0, 0.0], [0.7, 0.7], [0.0, 1.0]])
    >>> round(float(tfm.NPairsMultilabel()(labels, embeddings)), 4)
    0.4998
    """

    def __init__(self, normalize=False, reduction="sum_over_batch_size", name="npairs_multilabel"):
        super().__init__(normalize, reduction, name, cross_replica=False)

    def _terms(self, y_true, y_pred):
        embeddings = as_embeddings(y_pred)
        overlaps = multilabel_overlaps(y_true, embeddings.shape[0])
        others = ops.logical_not(ops.eye(ops.shape(embeddings)[0], dtype="bool"))
        overlaps = ops.cast(overlaps, embeddings.dtype)
        targets = ops.where(others, overlaps, ops.zeros_like(overlaps))
        return npairs_terms(pairwise_similarity(embeddings, self.normalize), targets, others)

    def get_config(self):
        config = super().get_config()
        del config["cross_replica"]
        return config
