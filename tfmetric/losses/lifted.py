"""The lifted structured loss of Song et al. 2016, mined online from the labels.

Notation: `d` is the `(N, R)` distance matrix of the queries and the
reference (the batch itself by default), `P(a)` the positives of query `a`,
`Q(a)` its negatives, `m` the margin.
"""

import math

import keras
from keras import ops

from tfmetric.losses.base import DistanceLoss, add_at, distance_loss, pair_distances, row_logsumexp
from tfmetric.mining import entry_coordinates, mask_row_counts, take_entries


def lifted_structure_terms(distances, positive, negative, margin=1.0, symmetric=False):
    """Per-query sums of lifted structured terms and the number of positive pairs.

    For query i and its positive reference row j:
    `J_ij = log(Σ_{k∈Q(i)} exp(m − d_ik) + Σ_{l: j∈Q(l)} exp(m − d_lj)) + d_ij`,
    and query i gets `relu(J_ij)² / 2` for each positive j. The negatives of
    the reference row j are taken among the queries (column j of the
    rectangle): in the square case they are exactly j's own negatives (the
    matrix and masks are symmetric), and the cost stays O(N·R). The two
    log-sum-exps are vectors; pairing them is one `(N, R)` log-add-exp, so
    nothing of size N·R·R is built (TF Addons tiles the matrix N times).
    Pairs with no negative on either side have no finite `J`: their terms
    are 0 (a one-class batch).

    `symmetric`: the matrix and both masks are symmetric (the batch against
    itself, no miner). Column j's log-sum-exp is then row j's, and the
    gradient of the pairs' terms is written out (`_symmetric_pair_sums`):
    autodiff would sum it over the columns, which XLA on a CPU does slowly
    when the sum is fused with the pairs' work (4× the distance matrix's
    time instead of 1.6×). Where every operation is a kernel of its own,
    the pairs' terms are computed on the positive pairs alone
    (`tfm.mining.entry_coordinates`), a vector, not on the whole matrix.

    Returns:
        `(loss_sums, pair_counts)`, both `(N,)`.
    """
    exponents = margin - distances
    row_has = ops.any(negative, axis=1)
    rows = _log_sum_or_minus_infinity(exponents, negative, row_has)
    pair_counts = mask_row_counts(positive, distances.dtype)
    coordinates = entry_coordinates(positive)
    if coordinates is not None:
        pair_rows, pair_columns = coordinates
        if symmetric:
            columns, column_has = rows, row_has
        else:
            column_has = ops.any(negative, axis=0)
            columns = _log_sum_or_minus_infinity(ops.transpose(exponents), ops.transpose(negative), column_has)
        active = ops.logical_or(ops.take(row_has, pair_rows), ops.take(column_has, pair_columns))
        terms, _, _ = _pair_terms(
            ops.take(rows, pair_rows),
            ops.take(columns, pair_columns),
            take_entries(distances, pair_rows, pair_columns),
            active,
        )
        loss_sums = 0.5 * add_at(ops.square(terms), pair_rows, ops.shape(distances)[0])
        return loss_sums, pair_counts
    if symmetric:
        active = ops.logical_and(positive, ops.logical_or(row_has[:, None], row_has[None, :]))
        loss_sums = _symmetric_pair_sums(rows, distances, ops.cast(active, distances.dtype))
    else:
        column_has = ops.any(negative, axis=0)
        columns = _log_sum_or_minus_infinity(ops.transpose(exponents), ops.transpose(negative), column_has)
        active = ops.logical_and(positive, ops.logical_or(row_has[:, None], column_has[None, :]))
        terms, _, _ = _pair_terms(rows[:, None], columns[None, :], distances, active)
        loss_sums = 0.5 * ops.sum(ops.square(terms), axis=1)
    return loss_sums, pair_counts


def _log_sum_or_minus_infinity(exponents, mask, has_terms):
    """Row-wise `log Σ_{mask} exp`, −∞ (log 0) for a row without terms, not the 0 `row_logsumexp` gives it."""
    return ops.where(has_terms, row_logsumexp(exponents, mask), ops.full((), float("-inf"), exponents.dtype))


def _pair_terms(left, right, distances, active):
    """`(relu(J), e_left, total)`: `J = log(exp(left) + exp(right)) + d` on the active pairs (0 elsewhere).

    `exp(left) + exp(right) = exp(high) · total` with `high` the larger side,
    so that `e_left / total` is `∂J/∂left`. Pairs with no negative on either
    side take log 1: no log 0 for the gradient to meet.
    """
    high = ops.stop_gradient(ops.maximum(left, right))
    high = ops.where(active, high, ops.zeros_like(high))
    e_left, e_right = ops.exp(left - high), ops.exp(right - high)
    total = ops.where(active, e_left + e_right, ops.ones_like(high))
    terms = ops.where(active, ops.relu(high + ops.log(total) + distances), ops.zeros_like(high))
    return terms, e_left, total


def _symmetric_pair_sums(sides, distances, active_ones):
    """Each row's `Σ_j relu(J_ij)² / 2`, `J_ij` from `sides[i]`, `sides[j]` and a symmetric matrix.

    With incoming gradients `u`, side k gets `u_k Σ_j J_kj σ_kj` as the row
    of its pairs and `Σ_i u_i J_ik σ'_ik` as their column (`σ`, `σ'` the
    shares `∂J/∂left`, `∂J/∂right`). `J_ik = J_ki` and `σ'_ik = σ_ki`, so the
    column's part is `Σ_j u_j J_kj σ_kj`: together one row sum weighted by
    `u_k + u_j`, where autodiff sums a gradient matrix over its columns.
    Every tensor is an argument, as JAX's custom gradients need.
    """

    @ops.custom_gradient
    def loss_sums(sides, distances, active_ones):
        sides, distances = ops.stop_gradient(sides), ops.stop_gradient(distances)
        terms, e_left, total = _pair_terms(sides[:, None], sides[None, :], distances, active_ones > 0.5)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, distances.dtype)
            both_rows = upstream[:, None] + upstream[None, :]
            grad_sides = ops.sum(terms * both_rows * e_left / total, axis=1)
            return grad_sides, terms * upstream[:, None], ops.zeros_like(active_ones)

        return 0.5 * ops.sum(ops.square(terms), axis=1), gradient

    return loss_sums(sides, distances, active_ones)


def lifted_structure(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    margin=1.0,
    distance="euclidean",
    normalize=False,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query lifted structured losses (the math of `LiftedStructure`).

    Each query i's mean over its positive reference rows j of
    `relu(J_ij)² / 2` (see `lifted_structure_terms`), among the reference
    rows (default: the batch itself). The arguments are those of
    `tfm.losses.batch_hard_triplet` and `LiftedStructure`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> [round(float(v), 4) for v in tfm.losses.lifted_structure([0, 0, 1, 1], embeddings)]
    [0.6094, 0.6094, 2.2134, 2.2134]
    """
    return distance_loss(
        lifted_structure_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        distance=distance,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        margin=margin,
        # The batch against itself without a miner: a symmetric matrix and masks.
        symmetric=ref_labels is None and ref_embeddings is None and miner is None,
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class LiftedStructure(DistanceLoss):
    r"""Lifted structured loss (Song et al. 2016, "Deep Metric Learning via
    Lifted Structured Feature Embedding").

    Every positive pair (i, j) is contrasted with every negative of both of
    its examples, through a smooth maximum:

    $$ J_{ij} = \log\Big(\sum_{k \in Q(i)} \exp\big(m - d(i, k)\big) + \sum_{l \in Q(j)} \exp\big(m
        - d(j, l)\big)\Big) + d(i, j) $$

    $$ \text{loss} = \frac{1}{2|\hat P|} \sum_{(i, j) \in \hat P} \mathrm{relu}(J_{ij})^2 $$

    `P̂` are the unordered positive pairs of the batch. Same values as TF
    Addons' `LiftedStructLoss` (Euclidean distance), with O(N²) memory
    instead of its O(N³). A batch without positive pairs has loss 0, as
    has a batch of one class (where TF Addons returns NaN). With
    `sample_weight`, anchor i's weight applies to its pairs (i, j).

    Args:
        margin: The margin `m`.
        distance: `"euclidean"` (TF Addons' choice), `"squared_euclidean"`
            or `"cosine"`.
        normalize: L2-normalise the embeddings before the distance.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's mean over its pairs.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.LiftedStructure(margin=1.0)(labels, embeddings)), 4)
    1.4114
    """

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        normalize=False,
        reduction="sum_over_batch_size",
        name="lifted_structure",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica, multi_label, miner)
        self.margin = float(margin)

    def pair_terms(self, embeddings, ref_embeddings, positive, negative):
        distances = pair_distances(embeddings, ref_embeddings, self.distance, self.normalize)
        symmetric = ref_embeddings is embeddings and self.miner is None
        return lifted_structure_terms(distances, positive, negative, self.margin, symmetric)

    def distance_terms(self, distances, positive, negative):
        return lifted_structure_terms(distances, positive, negative, self.margin)

    def get_config(self):
        config = super().get_config()
        config["margin"] = self.margin
        return config


# ---------------------------------------------------------------- generalised lifted structure


def _check_margins(neg_margin, pos_margin):
    """`(neg_margin, pos_margin)` as floats; a ValueError unless both are finite numbers."""
    margins = []
    for name, value in (("neg_margin", neg_margin), ("pos_margin", pos_margin)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number; received {value!r}.") from None
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite; received {value}.")
        margins.append(value)
    return tuple(margins)


def generalized_lifted_structure_terms(distances, positive, negative, neg_margin=1.0, pos_margin=0.0):
    """Per-query generalised lifted structured losses; every query counts once.

    `ℓ_a = relu(log Σ_{p∈P(a)} exp(d_ap − m₊) + log Σ_{n∈Q(a)} exp(m₋ − d_an))`,
    `m₊ = pos_margin`, `m₋ = neg_margin`. As in PyTorch Metric Learning, a
    side without a pair contributes 0 (not log 0 = −∞): a query without a
    positive still pushes its negatives within the margin away, one without a
    negative still pulls its positives in, one without either has loss 0.

    Returns:
        `(losses, ones)`, both `(N,)`.
    """
    pull = row_logsumexp(distances - pos_margin, positive)
    push = row_logsumexp(neg_margin - distances, negative)
    losses = ops.relu(pull + push)
    return losses, ops.ones_like(losses)


def generalized_lifted_structure(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    neg_margin=1.0,
    pos_margin=0.0,
    distance="euclidean",
    normalize=True,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query generalised lifted structured losses (the math of `GeneralizedLiftedStructure`).

    Query a's loss `relu(log Σ_p exp(d_ap − pos_margin) + log Σ_n exp(neg_margin − d_an))`
    over its positive and negative reference rows (default: the batch
    itself); see `generalized_lifted_structure_terms`. The arguments are
    those of `tfm.losses.lifted_structure` and `GeneralizedLiftedStructure`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> losses = tfm.losses.generalized_lifted_structure([0, 0, 1, 1], embeddings, normalize=False)
    >>> [round(float(v), 4) for v in losses]
    [0.3624, 0.4571, 1.5821, 1.2041]
    """
    neg_margin, pos_margin = _check_margins(neg_margin, pos_margin)
    return distance_loss(
        generalized_lifted_structure_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        distance=distance,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        neg_margin=neg_margin,
        pos_margin=pos_margin,
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class GeneralizedLiftedStructure(DistanceLoss):
    r"""Generalised lifted structured loss (Hermans, Beyer & Leibe 2017, "In
    Defense of the Triplet Loss for Person Re-Identification",
    [arXiv:1703.07737](https://arxiv.org/abs/1703.07737), section 2).

    Each anchor's positives and negatives are summarised by smooth maxima:
    a soft hardest positive against a soft hardest negative,

    $$ \ell_a = \mathrm{relu}\Big(\log \sum_{p \in P(a)} \exp\big(d(a, p) - m_+\big)
        + \log \sum_{n \in Q(a)} \exp\big(m_- - d(a, n)\big)\Big) $$

    $$ \text{loss} = \text{the mean over the anchors } a \text{ of } \ell_a $$

    with `m₊ = pos_margin` and `m₋ = neg_margin`. Compared with
    `LiftedStructure` (Oh Song et al. 2016), whose terms are the positive
    pairs (i, j), each with the negatives of both i and j and a squared
    hinge, this loss has one term per anchor, a plain hinge, and a smooth
    maximum over the positives as well: it is a soft batch-hard triplet
    loss (`BatchHardTriplet`), whereas `LiftedStructure` is a soft
    batch-all one.

    Same values and gradients as PyTorch Metric Learning's
    `GeneralizedLiftedStructureLoss` with its defaults (Euclidean distance
    of L2-normalised embeddings, hence `normalize=True` here; PML's
    `MeanReducer` over all anchors): as in PML, an anchor without
    positives (or without negatives) keeps the other side of its term, an
    anchor with neither counts with loss 0. With `sample_weight`, anchor a's
    term is weighted by its weight. PML's cosine similarity with margins
    `(m₊, m₋)` is `distance="cosine"` here with `pos_margin=1 − m₊` and
    `neg_margin=1 − m₋`.

    Args:
        neg_margin: The margin `m₋` that negatives should be beyond.
        pos_margin: The distance `m₊` that positives may keep.
        distance: `"euclidean"` (default), `"squared_euclidean"` or `"cosine"`.
        normalize: L2-normalise the embeddings before the distance (default,
            as PML).
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's `ℓ_a`.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.
        miner: A `tfm.miners` miner that chooses the pairs; `None`: all.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.GeneralizedLiftedStructure(normalize=False)(labels, embeddings)), 4)
    0.9014
    """

    faster_under_xla = True

    def __init__(
        self,
        neg_margin=1.0,
        pos_margin=0.0,
        distance="euclidean",
        normalize=True,
        reduction="sum_over_batch_size",
        name="generalized_lifted_structure",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica, multi_label, miner)
        self.neg_margin, self.pos_margin = _check_margins(neg_margin, pos_margin)

    def distance_terms(self, distances, positive, negative):
        return generalized_lifted_structure_terms(distances, positive, negative, self.neg_margin, self.pos_margin)

    def get_config(self):
        config = super().get_config()
        config.update({"neg_margin": self.neg_margin, "pos_margin": self.pos_margin})
        return config
