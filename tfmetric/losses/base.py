"""The common frame of the losses mined online from the labels of a batch."""

import keras
from keras import ops

from tfmetric.distances import as_embeddings, check_distance, pairwise_distance
from tfmetric.distribute import gather_across_replicas, replica_context, scale_for_replicas
from tfmetric.labels import standardize_labels


def check_choice(argument, value, choices):
    """Returns `value` if it is one of `choices`, else raises a ValueError naming `argument`."""
    if value not in choices:
        raise ValueError(f"{argument} must be one of {choices}; received {value!r}.")
    return value


def divide_or_zero(numerator, denominator):
    """`numerator / denominator`, and 0 (with a zero gradient) where it is 0."""
    nonzero = denominator != 0
    safe = ops.where(nonzero, denominator, ops.ones_like(denominator))
    return ops.where(nonzero, numerator / safe, ops.zeros_like(numerator))


def check_sample_weight(sample_weight, loss_sums):
    """`sample_weight` as a vector like `loss_sums` (ones when None)."""
    if sample_weight is None:
        return ops.ones_like(loss_sums)
    weights = ops.reshape(ops.cast(sample_weight, loss_sums.dtype), (-1,))
    if weights.shape[0] is not None and loss_sums.shape[0] is not None and (
        weights.shape[0] != loss_sums.shape[0]
    ):
        raise ValueError(
            f"sample_weight has {weights.shape[0]} entries for a batch of "
            f"{loss_sums.shape[0]} examples."
        )
    return weights


def reduce_anchor_terms(loss_sums, term_counts, sample_weight=None, reduction="sum_over_batch_size", share=None):
    """Reduces per-anchor loss sums and term counts to the loss.

    An anchor `a` contributes `loss_sums[a]`, the sum of its `term_counts[a]`
    terms (its triplets, pairs, ...), weighted by `sample_weight[a]`.

    - `"sum_over_batch_size"`, `"mean"`, `"mean_with_sample_weight"`: the
      weighted mean over terms, `Σ w·loss_sums / Σ w·term_counts` (0 when
      there is no term). This is the loss of SPEC.md.
    - `"sum"`: `Σ w·loss_sums`.
    - `None` / `"none"`: the per-anchor vector `w·loss_sums / term_counts`,
      0 for anchors without terms.

    `share`, a boolean mask over anchors, keeps only those anchors' loss sums
    in the numerator (and their entries in the vector) while the denominator
    still counts every anchor's terms: the replicas' shares of a global batch
    then add up to its loss.
    """
    weights = check_sample_weight(sample_weight, loss_sums)
    if reduction is None or reduction == "none":
        per_anchor = weights * divide_or_zero(loss_sums, term_counts)
        return per_anchor if share is None else ops.take(per_anchor, ops.where(share)[0])
    numerator = weights * loss_sums
    if share is not None:
        numerator = ops.where(share, numerator, ops.zeros_like(numerator))
    weighted_sum = ops.sum(numerator)
    if reduction == "sum":
        return weighted_sum
    return divide_or_zero(weighted_sum, ops.sum(weights * term_counts))


def labelled_distances(y_true, y_pred, distance="euclidean", normalize=False):
    """Validated labels `(N,)` and the distance matrix `(N, N)` of a batch."""
    embeddings = as_embeddings(y_pred)
    labels = standardize_labels(y_true, embeddings)
    return pairwise_distance(embeddings, distance, normalize), labels


class InBatchLoss(keras.losses.Loss):
    """Base class of the losses mined online from the labels of a batch.

    `y_true` holds class labels `(N,)` or `(N, 1)` and `y_pred` embeddings
    `(N, D)`. Subclasses implement `anchor_terms(distances, labels)`, which
    returns for every anchor the sum of its loss terms and
    how many terms it has; this class takes care of the labels (exact, never
    cast to float), the distances, the dtype (at least float32) and the
    reduction (`reduce_anchor_terms`).
    """

    def __init__(
        self,
        distance="euclidean",
        normalize=False,
        reduction="sum_over_batch_size",
        name=None,
        cross_replica=False,
    ):
        super().__init__(name=name, reduction=reduction)
        self.distance = check_distance(distance)
        self.normalize = bool(normalize)
        self.cross_replica = bool(cross_replica)

    def anchor_terms(self, distances, labels):
        raise NotImplementedError

    def _terms(self, y_true, y_pred):
        distances, labels = labelled_distances(y_true, y_pred, self.distance, self.normalize)
        return self.anchor_terms(distances, labels)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras' Loss.__call__ would cast y_true to float first, merging
        # large labels; this one keeps them exact.
        with keras.name_scope(self.name):
            context = replica_context() if self.cross_replica else None
            if context is not None:
                return self._cross_replica_loss(context, y_true, y_pred, sample_weight)
            loss_sums, term_counts = self._terms(y_true, y_pred)
            loss = reduce_anchor_terms(loss_sums, term_counts, sample_weight, self.reduction)
            return scale_for_replicas(loss, self.reduction)

    def _cross_replica_loss(self, context, y_true, y_pred, sample_weight):
        """This replica's share of the loss of the global batch.

        Every replica mines the whole gathered batch, so selections that
        depend on all of it (the closest negative pairs, distance-weighted
        draws) are the same as on one device; each keeps its own anchors'
        terms, and the shares add up to the global loss, their gradients to
        its gradient.
        """
        embeddings = as_embeddings(y_pred)
        labels = standardize_labels(y_true, embeddings)
        weights = check_sample_weight(sample_weight, ops.ones((ops.shape(embeddings)[0],), embeddings.dtype))
        all_embeddings, all_labels, all_weights, start = gather_across_replicas(context, embeddings, labels, weights)
        loss_sums, term_counts = self._terms(all_labels, all_embeddings)
        positions = ops.arange(ops.shape(all_labels)[0])
        share = (positions >= start) & (positions < start + ops.shape(embeddings)[0])
        return reduce_anchor_terms(loss_sums, term_counts, all_weights, self.reduction, share)

    def call(self, y_true, y_pred):
        """Per-anchor losses: each anchor's mean over its terms (0 if none)."""
        return divide_or_zero(*self._terms(y_true, y_pred))

    def get_config(self):
        config = super().get_config()
        config.update({"distance": self.distance, "normalize": self.normalize, "cross_replica": self.cross_replica})
        return config
