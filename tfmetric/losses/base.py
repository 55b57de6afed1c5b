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


def row_logsumexp(values, mask, add_one=False):
    """Row-wise `log Σ_{mask} exp(values)`, or `log(1 + Σ_{mask} exp(values))`.

    Without `add_one`, rows with an empty mask give 0 (the caller leaves
    them out); with it they give log 1 = 0, which is their value. Stable for
    large values, and NaN-free in value and gradient for empty rows.
    """
    minus_inf = ops.full_like(values, float("-inf"))
    has_terms = ops.any(mask, axis=1)
    shift = ops.stop_gradient(ops.max(ops.where(mask, values, minus_inf), axis=1))
    shift = ops.where(has_terms, shift, ops.zeros_like(shift))
    if add_one:
        # The 1 is exp(0): a term of every row, so the shift must cover it.
        shift = ops.maximum(shift, ops.zeros_like(shift))
    # The shifted exponents are <= 0 in the mask and -inf outside, so that
    # no inf reaches exp (or its gradient); the largest term is exp(0), so
    # the sum is >= 1 wherever the row has terms.
    total = ops.sum(ops.exp(ops.where(mask, values - shift[:, None], minus_inf)), axis=1)
    if add_one:
        return shift + ops.log(total + ops.exp(-shift))
    return shift + ops.log(ops.where(has_terms, total, ops.ones_like(total)))


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
    reduction (`reduce_anchor_terms`). Losses that need more than the
    distance matrix override `batch_terms(labels, embeddings)` instead.

    The labels reaching `batch_terms` may be floats with NaN for rows that
    are no example (empty slots of `CrossBatchMemory`): NaN equals nothing
    and differs from nothing, so such rows are neither positives nor
    negatives of any anchor (`tfm.mining.label_masks`).
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

    def batch_terms(self, labels, embeddings):
        """`(loss_sums, term_counts)` of every row, from validated labels `(N,)`."""
        return self.anchor_terms(pairwise_distance(embeddings, self.distance, self.normalize), labels)

    def _terms(self, y_true, y_pred):
        embeddings = as_embeddings(y_pred)
        return self.batch_terms(standardize_labels(y_true, embeddings), embeddings)

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
