"""Contrastive loss over the pairs of a batch, mined online from the labels.

Notation: `d` is the `(N, R)` distance matrix of the queries and the
reference (the batch itself by default), `m` the margin.
"""

import math

import keras
from keras import ops

from tfmetric.distances import as_embedding_pair, l2_normalize, nonnegative_row_sums, pairwise_distance, row_sums
from tfmetric.losses.base import (
    DistanceLoss,
    InBatchLoss,
    apply_miner,
    check_choice,
    distance_loss,
    divide_or_zero,
    per_query,
)
from tfmetric.mining import mine_pairs, smallest_entries

NEGATIVES = ("all", "hard")


def contrastive_terms(distances, positive, negative, margin=1.0, negatives="all"):
    """Per-query sums of contrastive pair losses and the number of pairs used.

    Positive pairs contribute `d²`, negative pairs `relu(m − d)²`. With
    `negatives="hard"` only as many negative pairs are used as there are
    positive pairs, the closest ones of the whole rectangle.

    In the square case every unordered pair {i, j} appears twice, once from
    each side, so the mean over anchors' pairs equals the mean over
    unordered pairs, and an anchor's sample weight applies to the pairs it
    takes part in.

    Returns:
        `(loss_sums, pair_counts)`, both `(N,)`.
    """
    positive = ops.cast(positive, distances.dtype)
    positive_counts = row_sums(positive)
    hard = check_choice("negatives", negatives, NEGATIVES) == "hard"
    if hard:
        # The rows' counts added, not the matrix: a pass over it fewer.
        negative = smallest_entries(distances, negative, ops.sum(positive_counts))
    else:
        negative = ops.cast(negative, distances.dtype)
    sums = _contrastive_sums(distances, positive, negative, margin, binary=not hard)
    return sums, positive_counts + nonnegative_row_sums(negative)


def _contrastive_sums(distances, positive, negative, margin, binary):
    """Each row's `Σ positive·d² + negative·relu(m − d)²`, with its gradient written out.

    The terms are quadratic in the distances, so the gradient is a multiple
    of the factors the forward pass already holds: one pass over the matrix
    where autodiff would take one per forward operation. With `binary`
    (0/1 negative weights: all negatives, not the hard ones whose ties share
    a weight) each term is the square of half its own derivative, which
    saves the forward pass a few more.
    """

    # Every tensor the gradient uses is made inside the function (JAX).
    @ops.custom_gradient
    def sums(distances, positive, negative):
        hinge = ops.relu(margin - distances)
        # where, not a product: 0 · d² would be NaN where d² overflows.
        if binary:
            half_slope = ops.where(positive > 0, distances, -(negative * hinge))
            value = row_sums(ops.square(half_slope))
        else:
            pulled = ops.where(positive > 0, distances, ops.zeros((), distances.dtype))
            pushed = negative * hinge
            value = row_sums(pulled * pulled + pushed * hinge)
            half_slope = None

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, distances.dtype)
            # d/dd of d² is 2d, of relu(m − d)² is −2 relu(m − d); the masks get none.
            slope = half_slope if binary else pulled - pushed
            return (2.0 * upstream)[:, None] * slope, ops.zeros_like(positive), ops.zeros_like(negative)

        return value, gradient

    return sums(distances, positive, negative)


def contrastive(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    margin=1.0,
    distance="euclidean",
    normalize=False,
    negatives="all",
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query contrastive losses (the math of `Contrastive`).

    Each query's mean of `d²` over its positive pairs and `relu(m − d)²`
    over its negative pairs, the pairs it forms with the reference rows
    (default: the batch itself); with `negatives="hard"`, only as many
    negative pairs as there are positive pairs in all, the closest ones.

    Args:
        labels: Class ids `(N,)` of the queries (or, with `multi_label`,
            0/1 rows `(N, C)`).
        embeddings: Query embeddings `(N, D)`.
        ref_labels, ref_embeddings: Optional reference `(R,)`, `(R, D)`;
            each query is paired with these R rows only: O(N·R) time and
            memory.
        remove_diagonal: Whether reference row a is query a itself (the
            queries come first in the reference) and so not its own
            pair; `None`: only without a reference.
        margin, distance, normalize, negatives, multi_label: As `Contrastive`.

    Returns:
        The `(N,)` per-query losses.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> queries = np.array([[0.0, 0.0]])
    >>> reference = np.array([[0.0, 1.0], [0.5, 0.0]])
    >>> [float(v) for v in tfm.losses.contrastive([0], queries, [0, 1], reference, margin=1.0)]
    [0.625]
    """
    return distance_loss(
        contrastive_terms,
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
        negatives=negatives,
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class Contrastive(DistanceLoss):
    r"""Contrastive loss over the pairs of a batch (Hadsell, Chopra & LeCun 2006).

    Pairs are formed online from the labels:

    $$ \ell_{ij} = d(i, j)^2 \quad \text{same label} $$

    $$ \ell_{ij} = \mathrm{relu}\big(m - d(i, j)\big)^2 \quad \text{different labels} $$

    $$ \text{loss} = \text{the mean of } \ell \text{ over the pairs used} $$

    Without the ½ factor of the paper, like TF Addons' `ContrastiveLoss`
    (whose two-tower form is `PairContrastive`). `negatives="all"` uses
    every pair of the batch; `negatives="hard"` keeps every positive pair
    and only as many negative pairs, the closest ones of the batch (ties at
    the cut share its weight). A batch without pairs has loss 0. With
    `sample_weight`, a pair is weighted by the sum of its two examples'
    weights.

    Args:
        margin: Negative pairs closer than `margin` are pushed apart.
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        normalize: L2-normalise the embeddings before the distance.
        negatives: `"all"` or `"hard"`.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each example's mean over its pairs.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas, so that training
            matches one device on the global batch (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.Contrastive(margin=2.5)(labels, embeddings)), 4)
    0.8982
    >>> round(float(tfm.Contrastive(margin=2.5, negatives="hard")(labels, embeddings)), 4)
    1.3299
    """

    faster_under_xla = True
    compiles_terms_alone = True

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        normalize=False,
        negatives="all",
        reduction="sum_over_batch_size",
        name="contrastive",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica, multi_label, miner)
        self.margin = float(margin)
        self.negatives = check_choice("negatives", negatives, NEGATIVES)

    def distance_terms(self, distances, positive, negative):
        return contrastive_terms(distances, positive, negative, self.margin, self.negatives)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "negatives": self.negatives})
        return config


# ---------------------------------------------------------------- signal-to-noise ratio contrastive


def signal_to_noise_ratio(embeddings, ref_embeddings=None, normalize=True):
    """The `(N, R)` signal-to-noise ratio distances of Yuan et al. (2019).

    `d(i, j) = var(x_j − x_i) / var(x_i)`: the variance over the features of
    the "noise" `x_j − x_i` over that of the "signal" `x_i` (the query). Not
    symmetric. With `c_i = x_i − mean(x_i)` the centred rows, it is
    `‖c_j − c_i‖² / ‖c_i‖²`: squared Euclidean distances of the centred rows
    (matrix products, nothing of size N·R·D) divided by the queries' squared
    norms. A query with no variance (a constant row) has none to divide by:
    its `‖c_i‖²` is floored at 1e-12 times the largest entry's square, which
    keeps values and gradients finite (PyTorch Metric Learning's
    `SNRDistance` returns inf or NaN there, and NaN for one feature).

    Args:
        embeddings: Query embeddings `(N, D)`.
        ref_embeddings: Optional reference `(R, D)`; default: the queries
            (the square, with an exactly zero diagonal).
        normalize: L2-normalise the rows first (PML's default).

    Returns:
        The `(N, R)` distances, at least float32.

    Example:

    >>> import tfmetric as tfm
    >>> d = tfm.losses.signal_to_noise_ratio([[1.0, 2.0, 3.0], [1.0, 2.0, 5.0]], normalize=False)
    >>> [[round(float(v), 4) for v in row] for row in d]
    [[0.0, 1.3333], [0.3077, 0.0]]
    """
    x, ref = as_embedding_pair(embeddings, ref_embeddings)
    if normalize:
        x = l2_normalize(x)
        ref = None if ref is None else l2_normalize(ref)
    centred = x - ops.mean(x, axis=1, keepdims=True)
    ref_centred = None if ref is None else ref - ops.mean(ref, axis=1, keepdims=True)
    # The ratio does not change when all rows are scaled together: bring the
    # largest entry to 1, so that neither huge nor tiny inputs over- or underflow.
    magnitude = ops.max(ops.abs(centred))
    if ref_centred is not None:
        magnitude = ops.maximum(magnitude, ops.max(ops.abs(ref_centred)))
    magnitude = ops.stop_gradient(magnitude)
    scale = ops.where(magnitude > 0, magnitude, ops.ones_like(magnitude))
    centred = centred / scale
    ref_centred = None if ref_centred is None else ref_centred / scale
    noise = pairwise_distance(centred, "squared_euclidean", ref_embeddings=ref_centred)
    signal = ops.sum(ops.square(centred), axis=1)
    signal = ops.maximum(signal, ops.full_like(signal, 1e-12))
    # A product with the reciprocals, not a quotient: the gradient of a
    # quotient by a vector takes five passes over the matrix, this one two.
    return noise * (1.0 / signal)[:, None]


def _means_beyond_margins(snr, positive, negative, pos_margin, neg_margin):
    """`mean_{>0} relu(d − m₊)` over `positive` plus `mean_{>0} relu(m₋ − d)` over `negative`, gradient written out.

    Each mean is over the entries whose term is above 0 (0 if none), PML's
    `AvgNonZeroReducer`; the gradient is `1/count₊` at the first kind,
    `−1/count₋` at the second (two selections, where autodiff took a pass
    per forward operation).
    """

    # Every tensor it uses is an argument (the masks as 0/1 floats): JAX's
    # custom gradients cannot close over the tracers of an enclosing trace.
    @ops.custom_gradient
    def means(snr, positive_ones, negative_ones):
        snr = ops.stop_gradient(snr)
        zeros = ops.zeros_like(snr)
        pulled = ops.logical_and(positive_ones > 0.5, snr > pos_margin)
        pushed = ops.logical_and(negative_ones > 0.5, snr < neg_margin)
        pull_count = ops.sum(ops.cast(pulled, snr.dtype))
        push_count = ops.sum(ops.cast(pushed, snr.dtype))
        value = divide_or_zero(ops.sum(ops.where(pulled, snr - pos_margin, zeros)), pull_count) + divide_or_zero(
            ops.sum(ops.where(pushed, neg_margin - snr, zeros)), push_count
        )

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, snr.dtype)
            pull_share = upstream * divide_or_zero(ops.ones_like(pull_count), pull_count)
            push_share = -upstream * divide_or_zero(ops.ones_like(push_count), push_count)
            grad = ops.where(pulled, pull_share, ops.where(pushed, push_share, zeros))
            return grad, ops.zeros_like(positive_ones), ops.zeros_like(negative_ones)

        return value, gradient

    return means(snr, ops.cast(positive, snr.dtype), ops.cast(negative, snr.dtype))


def signal_to_noise_ratio_contrastive_terms(snr, positive, negative, pos_margin=0.0, neg_margin=1.0,
                                            regularization=None):
    """The signal-to-noise ratio contrastive loss, for every query (a global quantity).

    `L = mean_{>0} relu(d − m₊) over the positive entries + mean_{>0} relu(m₋ − d) over the negative entries`,
    each mean over the entries of the rectangle whose term is above 0 (0 if
    none): PyTorch Metric Learning's `AvgNonZeroReducer`, on each kind of
    pair apart. `L` is not a mean of per-query terms, so every query gets
    `L` (plus its `regularization`, an optional `(N,)` vector) as its one
    term: the mean over queries is `L` (plus the regularisation's mean).

    Returns:
        `(losses, ones)`, both `(N,)`.
    """
    value = _means_beyond_margins(snr, positive, negative, pos_margin, neg_margin)
    losses = value * ops.ones((ops.shape(snr)[0],), snr.dtype)
    if regularization is not None:
        losses = losses + regularization
    return losses, ops.ones_like(losses)


def _zero_mean_penalty(embeddings, zero_mean_weight):
    """`λ·|Σ_k x_ak|` per query, the paper's zero-mean regulariser (None when λ = 0)."""
    if not zero_mean_weight:
        return None
    return zero_mean_weight * ops.abs(ops.sum(embeddings, axis=1))


def _check_snr_arguments(pos_margin, neg_margin, zero_mean_weight):
    margins = []
    for name, value in (("pos_margin", pos_margin), ("neg_margin", neg_margin), ("zero_mean_weight", zero_mean_weight)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number; received {value!r}.") from None
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite; received {value}.")
        margins.append(value)
    if margins[2] < 0:
        raise ValueError(f"zero_mean_weight must be >= 0; received {margins[2]}.")
    return tuple(margins)


def signal_to_noise_ratio_contrastive(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    pos_margin=0.0,
    neg_margin=1.0,
    normalize=True,
    zero_mean_weight=0.0,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query signal-to-noise ratio contrastive losses (the math of `SignalToNoiseRatioContrastive`).

    The loss is a quantity of the whole rectangle of queries and reference
    rows (default: the batch itself), not a mean of per-query terms: every
    query's entry is that loss, plus its own zero-mean penalty
    `zero_mean_weight·|Σ_k x_ak|` (see
    `signal_to_noise_ratio_contrastive_terms`). The arguments are those of
    `tfm.losses.contrastive` and `SignalToNoiseRatioContrastive`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 5.0], [3.0, 2.0, 1.0]])
    >>> losses = tfm.losses.signal_to_noise_ratio_contrastive([0, 0, 1], embeddings, normalize=False)
    >>> [round(float(v), 4) for v in losses]
    [0.8205, 0.8205, 0.8205]
    """
    pos_margin, neg_margin, zero_mean_weight = _check_snr_arguments(pos_margin, neg_margin, zero_mean_weight)
    pairs = mine_pairs(
        labels, embeddings, ref_labels, ref_embeddings, multi_label=multi_label, remove_diagonal=remove_diagonal
    )
    pairs = apply_miner(miner, pairs)
    return per_query(
        _snr_terms(pairs.embeddings, pairs.ref_embeddings, pairs.positive, pairs.negative, pos_margin, neg_margin,
                   normalize, zero_mean_weight)
    )


def _snr_terms(embeddings, ref_embeddings, positive, negative, pos_margin, neg_margin, normalize, zero_mean_weight):
    # The batch against itself: None keeps the square's exact zero diagonal.
    reference = None if ref_embeddings is embeddings else ref_embeddings
    snr = signal_to_noise_ratio(embeddings, reference, normalize)
    return signal_to_noise_ratio_contrastive_terms(
        snr, positive, negative, pos_margin, neg_margin, _zero_mean_penalty(embeddings, zero_mean_weight)
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class SignalToNoiseRatioContrastive(InBatchLoss):
    r"""Contrastive loss on signal-to-noise ratio distances (Yuan, Chen, Li &
    Lu 2019, "Signal-to-Noise Ratio: A Robust Distance Metric for Deep
    Metric Learning", [arXiv:1904.02616](https://arxiv.org/abs/1904.02616)).

    The distance from query i to reference row j is the ratio of the
    variance of the noise `x_j − x_i` to that of the signal `x_i`
    (`tfm.losses.signal_to_noise_ratio`; not symmetric, invariant to
    scaling and shifting both rows together), and the pairs of the batch
    give a contrastive loss with PyTorch Metric Learning's reduction:

    $$ d(i, j) = \mathrm{var}(x_j - x_i) \,/\, \mathrm{var}(x_i) $$

    $$ L = \mathrm{mean}_{>0}\, \mathrm{relu}\big(d(a, p) - m_+\big) + \mathrm{mean}_{>0}\, \mathrm{relu}\big(m_-
        - d(a, n)\big) + \lambda \cdot \mathrm{mean}_a \big|\textstyle\sum_k x_{ak}\big| $$

    Each `mean_{>0}` runs over the positive (resp. negative) entries (a, r)
    of the batch's rectangle — both orders of each pair, as the distance is
    not symmetric — whose term is above 0 (0 if none). `λ =
    zero_mean_weight` adds the paper's regulariser, which keeps each
    embedding's features summing to 0 (on the embeddings as given, before
    `normalize`); PyTorch Metric Learning 2.9 adds no regulariser by
    default (`embedding_regularizer=None`; the paper's is its
    `ZeroMeanRegularizer` with `embedding_reg_weight=λ`), so the default is
    `λ = 0`. Same values and gradients as PML's
    `SignalToNoiseRatioContrastiveLoss` with its defaults (`SNRDistance` on
    L2-normalised embeddings, `AvgNonZeroReducer` on the positive and the
    negative pairs), except where PML's distance is not finite (a constant
    embedding, or one feature; see `tfm.losses.signal_to_noise_ratio`).

    The first two terms are a quantity of the whole batch, not a mean over
    anchors: `sample_weight` scales nothing in them (only the regulariser
    is a weighted mean over anchors), `reduction=None` gives every anchor
    `L` with its own regulariser term, and `"sum"` gives N times the mean.

    Args:
        pos_margin: The ratio `m₊` that positive pairs may keep.
        neg_margin: The ratio `m₋` that negative pairs should be beyond.
        normalize: L2-normalise the embeddings before the distance (default,
            as PML).
        zero_mean_weight: `λ`, the weight of the zero-mean regulariser.
        reduction: `"sum_over_batch_size"` (the loss above, default),
            `"sum"`, or `None`.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.
        miner: A `tfm.miners` miner that chooses the pairs; `None`: all.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1])
    >>> embeddings = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 5.0], [3.0, 2.0, 1.0]])
    >>> round(float(tfm.SignalToNoiseRatioContrastive(normalize=False)(labels, embeddings)), 4)
    0.8205
    """

    faster_under_xla = True

    def __init__(
        self,
        pos_margin=0.0,
        neg_margin=1.0,
        normalize=True,
        zero_mean_weight=0.0,
        reduction="sum_over_batch_size",
        name="signal_to_noise_ratio_contrastive",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(reduction, name, cross_replica, multi_label, miner)
        self.pos_margin, self.neg_margin, self.zero_mean_weight = _check_snr_arguments(
            pos_margin, neg_margin, zero_mean_weight
        )
        self.normalize = bool(normalize)

    def pair_terms(self, embeddings, ref_embeddings, positive, negative):
        return _snr_terms(embeddings, ref_embeddings, positive, negative, self.pos_margin, self.neg_margin,
                          self.normalize, self.zero_mean_weight)

    def get_config(self):
        config = super().get_config()
        config.update({
            "pos_margin": self.pos_margin,
            "neg_margin": self.neg_margin,
            "normalize": self.normalize,
            "zero_mean_weight": self.zero_mean_weight,
        })
        return config
