"""N-pair losses (Sohn 2016): a softmax over similarities whose target is the positives.

Notation: `s` is the `(N, R)` similarity matrix of the queries and the
reference (the batch itself by default), `P(a)` the positives of query `a`,
`C(a)` its candidates (the columns its softmax runs over).
"""

import keras
from keras import ops

from tfmetric.distances import as_embedding_pair, computation_dtype
from tfmetric.labels import standardize_label_pair, standardize_labels, standardize_multi_hot
from tfmetric.losses.base import SimilarityLoss, divide_or_zero, pair_similarities, row_logsumexp, similarity_loss
from tfmetric.mining import off_diagonal


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


def multilabel_overlaps(y_true, num_examples=None):
    """`L[i, j]`: how many labels examples i and j share, from `(N, C)` 0/1 labels."""
    multi_hot = standardize_multi_hot(y_true, num_examples)
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


def npairs_terms(similarity, positive, negative):
    """Per-query N-pair losses and whether the query has a positive (1/0).

    The softmax of query a runs over its positives and negatives, its
    target spread evenly over its positives.
    """
    losses, has_target = soft_target_cross_entropy(similarity, positive, ops.logical_or(positive, negative))
    return losses, ops.cast(has_target, similarity.dtype)


def npairs(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    normalize=False,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query N-pair losses (the math of `NPairs`), 0 for a query without a positive.

    Args:
        labels: Class ids `(N,)` of the queries (or, with `multi_label`,
            0/1 rows `(N, C)`).
        embeddings: Query embeddings `(N, D)`.
        ref_labels, ref_embeddings: Optional reference `(R,)`, `(R, D)`:
            each query's softmax runs over these R rows (a second tower's
            outputs, say). O(N·R).
        remove_diagonal: Whether reference row a is query a itself (the
            queries come first in the reference); `None`: only without a
            reference.
        normalize, multi_label: As `NPairs`.

    Returns:
        The `(N,)` per-query losses.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> anchors = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> positives = np.array([[2.0, 0.0], [0.0, 1.0]])
    >>> [round(float(v), 4) for v in tfm.losses.npairs([0, 1], anchors, [0, 1], positives)]
    [0.1269, 0.3133]
    """
    return similarity_loss(
        npairs_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class NPairs(SimilarityLoss):
    r"""N-pair loss (Sohn 2016, "Improved Deep Metric Learning with
    Multi-class N-pair Loss Objective"), mined online from the labels.

    Every example a is an anchor; its logits are its dot products with every
    other example of the batch, its target is spread evenly over its
    positives:

    $$ \ell_a = \log \sum_{j \ne a} \exp\big(s(a, j)\big) - \frac{1}{|P(a)|} \sum_{p \in P(a)} s(a, p) $$

    $$ \text{loss} = \text{the mean of } \ell_a \text{ over the anchors with a positive} $$

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
            all replicas as candidates (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: the positives of
            an anchor share at least one label with it, evenly weighted
            (`NPairsMultilabel` weighs them by how many they share).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.2, 1.0]])
    >>> round(float(tfm.NPairs()(labels, embeddings)), 4)
    0.6448
    """

    faster_under_xla = True
    compiles_terms_alone = True

    def __init__(
        self, normalize=False, reduction="sum_over_batch_size", name="npairs", cross_replica=False, multi_label=False,
        miner=None,
    ):
        super().__init__(normalize, reduction, name, cross_replica, multi_label, miner)

    def similarity_terms(self, similarity, positive, negative):
        return npairs_terms(similarity, positive, negative)


@keras.saving.register_keras_serializable(package="tfmetric")
class NPairsMultilabel(SimilarityLoss):
    r"""N-pair loss for multi-label data, mined online from `(N, C)` 0/1 labels.

    As `NPairs`, with the target of anchor a on example j proportional to
    `L(a, j)`, the number of labels they share (TF Addons'
    `NpairsMultilabelLoss` semantics, over one batch):

    $$ \ell_a = \log \sum_{j \ne a} \exp\big(s(a, j)\big)
        - \frac{\sum_{j \ne a} L(a, j)\, s(a, j)}{\sum_{j \ne a} L(a, j)} $$

    $$ \text{loss} = \text{the mean of } \ell_a \text{ over the anchors that share a label with another example} $$

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
        super().__init__(normalize, reduction, name, cross_replica=False, multi_label=True)

    def query_terms(self, labels, embeddings, ref_labels=None, ref_embeddings=None, remove_diagonal=None,
                    ref_valid=None):
        # The targets are label counts, not the masks of the other losses.
        if ref_valid is not None:
            raise ValueError("NPairsMultilabel takes no partly filled reference.")
        if (ref_labels is None) != (ref_embeddings is None):
            raise ValueError("Pass both ref_labels and ref_embeddings, or neither.")
        embeddings, ref_embeddings = as_embedding_pair(embeddings, ref_embeddings)
        if ref_embeddings is None:
            labels = ref_labels = standardize_multi_hot(labels, embeddings.shape[0])
            ref_embeddings = embeddings
            remove_diagonal = True if remove_diagonal is None else remove_diagonal
        else:
            labels, ref_labels = standardize_label_pair(labels, ref_labels, embeddings, ref_embeddings, True)
        similarity = pair_similarities(embeddings, ref_embeddings, self.normalize)
        candidates = ops.ones_like(similarity) > 0
        if remove_diagonal:
            candidates = off_diagonal(ops.shape(similarity)[0], ops.shape(similarity)[1])
        overlaps = ops.cast(ops.matmul(labels, ops.transpose(ref_labels)), similarity.dtype)
        targets = ops.where(candidates, overlaps, ops.zeros_like(overlaps))
        losses, has_target = soft_target_cross_entropy(similarity, targets, candidates)
        return losses, ops.cast(has_target, similarity.dtype)

    def get_config(self):
        config = super().get_config()
        del config["cross_replica"], config["multi_label"]
        return config
