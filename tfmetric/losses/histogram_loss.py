"""Losses on the distributions of pair similarities and triplet margins: histogram loss, dynamic soft margin.

Notation: `s` is the `(N, R)` cosine-similarity matrix of the queries and
the reference (the batch itself by default), `d` the Euclidean distances of
the L2-normalised embeddings, `P(a)` the positives of query `a`, `Q(a)` its
negatives. Both losses turn a set of values into a histogram whose entries
are linear in the values (each value shares its unit of mass between the
two nodes around it), so that the histogram, and the loss, have gradients.
"""

import math

import keras
from keras import ops

from tfmetric.distances import cumsum, row_sums
from tfmetric.losses.base import (
    InBatchLoss,
    SimilarityLoss,
    apply_miner,
    compiled_piece,
    divide_or_zero,
    pair_distances,
    per_query,
    similarity_loss,
    sums_from,
)
from tfmetric.losses.state import LossState
from tfmetric.mining import (
    add_all_at,
    add_to_rows,
    for_each_positive,
    mine_pairs,
    positive_table_and_counts,
    python_int,
    row_pick,
    runs_op_by_op,
    table_slots,
    take_along_rows,
    take_in_range,
    with_written_gradient,
)

# ---------------------------------------------------------------- histogram loss


def histogram_delta(num_bins=None, delta=None):
    """The node spacing Δ of `Histogram` from `num_bins` or `delta` (100 bins when neither is given)."""
    if num_bins is not None and (isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 1):
        raise ValueError(f"num_bins must be a positive integer; received {num_bins!r}.")
    if delta is not None and not 0 < delta <= 2:
        raise ValueError(f"delta must be in (0, 2]; received {delta!r}.")
    if num_bins is not None and delta is not None and not math.isclose(delta, 2 / num_bins, rel_tol=1e-9):
        raise ValueError(f"delta must be 2 / num_bins; received delta={delta} and num_bins={num_bins}.")
    if delta is None:
        delta = 2 / (100 if num_bins is None else int(num_bins))
    return float(delta)


def _num_nodes(delta):
    # Nodes −1, −1 + Δ, ... up to the first at or beyond 1.
    return math.ceil(2 / delta - 1e-9) + 1


def histogram_terms(similarity, positive, negative, delta=0.02):
    """Per-query sums of the histogram loss over the query's negative pairs, and their counts.

    The positive similarities make a histogram on the nodes `t_r = −1 + rΔ`
    (each similarity splits its mass between the two nodes around it),
    `Φ` its cumulative sum; each negative pair contributes `Φ` interpolated
    at its similarity: the share of positive pairs less similar than it.
    The mean of these over the negative pairs is the histogram loss.

    A pair (a, j) counts when query a or reference row j is the anchor of a
    triplet (has a positive and a negative: column j's for the reference
    row), as in PyTorch Metric Learning, which takes the pairs of its
    triplets. Similarities are clipped to [−1, 1].

    A negative pair's term `(1 − f)Φ_l + fΦ_{l+1}` is its own mass split the
    same way, so query a's sum is its row's histogram of negatives times
    `Φ`: one scatter of the pairs into per-query histograms (and the one of
    the positives) instead of a lookup of `Φ` at every pair, and a written
    gradient with one lookup (`_histogram_sums`).

    Returns:
        `(loss_sums, negative_counts)`, both `(N,)`.
    """
    num_nodes = _num_nodes(delta)
    dtype = similarity.dtype
    # Counts of up to N·R pairs: float16 would round them from 2048 on.
    work = "float64" if dtype == "float64" else "float32"
    num_queries = ops.shape(similarity)[0]
    row_active = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    # Where each pair's mass goes: query a's row of negative histograms, the
    # one histogram of the positives, or a row nothing reads.
    queries = ops.arange(num_queries, dtype="int32")[:, None]

    def blocks_of(kept_negative, kept_positive):
        return ops.where(kept_negative, queries, ops.where(kept_positive, num_queries, num_queries + 1))

    def blocks_of_kept_pairs():
        column_active = ops.logical_and(ops.any(positive, axis=0), ops.any(negative, axis=0))
        kept = ops.logical_or(row_active[:, None], column_active[None, :])
        return blocks_of(ops.logical_and(negative, kept), ops.logical_and(positive, kept))

    if runs_op_by_op():
        # Every row an anchor (any P×K batch): every pair counts, and the
        # columns' reductions and the masks' passes are skipped.
        blocks = ops.cond(ops.all(row_active), lambda: blocks_of(negative, positive), blocks_of_kept_pairs)
    else:
        blocks = blocks_of_kept_pairs()
    loss_sums, negative_counts = _histogram_sums(
        ops.cast(similarity, work), delta, ops.cast(blocks, "int32"), num_queries, num_nodes
    )
    return ops.cast(loss_sums, dtype), ops.cast(negative_counts, dtype)


def _histogram_sums(similarity, delta, blocks, num_queries, num_nodes):
    """`histogram_terms`' sums from the similarities and each pair's row of histograms (int32 `blocks`).

    The similarities are clipped to [−1, 1] and put in node units,
    `(s + 1)/Δ`; their gradient is written out through both, with the
    division by Δ in the table looked up (the same floats) and the clipped
    entries' zeros from one comparison in the forward pass (`clip`'s
    gradient took four passes over the matrix without XLA).

    The gradient of a negative pair's term with respect to its share `f`
    is `Φ_{l+1} − Φ_l`, the positives' density at node l + 1, times its
    query's upstream; a positive pair's `f` moves mass from node l to
    l + 1, which changes `Φ` at node l only: `−w_l / P` with `w_l = Σ_a
    upstream_a · (a's negative mass at node l)` and P the positive pairs.
    One table, looked up at the cells the forward pass filled.
    """
    size = (num_queries + 2) * num_nodes
    shape = (num_queries + 2, num_nodes)

    def sums_and_gradient(similarity, blocks):
        similarity = ops.stop_gradient(similarity)
        clipped = ops.clip(similarity, -1.0, 1.0)
        unclipped = ops.equal(clipped, similarity)
        scaled = (clipped + 1.0) / delta
        lower = ops.minimum(ops.floor(scaled), num_nodes - 2)
        upper_share = scaled - lower
        cells = ops.reshape(blocks * num_nodes + ops.cast(lower, "int32"), (-1,))
        sums = add_all_at([None, ops.reshape(upper_share, (-1,))], cells, size)
        counts, upper = (ops.reshape(values, shape) for values in sums)
        # 1 − f at node l, f at node l + 1.
        masses = counts - upper + ops.pad(upper[:, :-1], [[0, 0], [1, 0]])
        negative_masses = masses[:num_queries]
        num_positive = ops.sum(counts[num_queries])
        density = divide_or_zero(masses[num_queries], num_positive)
        cumulative = cumsum(density, axis=0)
        loss_sums = ops.sum(negative_masses * cumulative[None, :], axis=1)
        negative_counts = ops.sum(counts[:num_queries], axis=1)

        def gradient(upstream):
            upstream = ops.cast(upstream[:num_queries], scaled.dtype)
            next_density = ops.pad(density[1:], [[0, 1]])
            weights = ops.sum(upstream[:, None] * negative_masses, axis=0)
            table = ops.concatenate(
                [
                    upstream[:, None] * next_density[None, :],
                    -divide_or_zero(weights, num_positive)[None, :],
                    ops.zeros((1, num_nodes), scaled.dtype),
                ]
            ) / delta
            looked_up = ops.reshape(take_in_range(ops.reshape(table, (-1,)), cells), ops.shape(scaled))
            return ops.where(unclipped, looked_up, ops.zeros((), scaled.dtype))

        return ops.concatenate([loss_sums, negative_counts]), gradient

    both = with_written_gradient(sums_and_gradient, similarity, blocks)
    return both[:num_queries], ops.stop_gradient(both[num_queries:])


def histogram(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    num_bins=None,
    delta=None,
    normalize=True,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query histogram losses (the math of `Histogram`).

    Query a's value is the mean, over its negative pairs, of the share of
    positive pairs (of the whole batch) that are less similar (interpolated
    between the histogram's nodes); the mean of these over all negative
    pairs is the loss, 0 for a query without a negative pair.

    Args:
        labels: Class ids `(N,)` of the queries (or, with `multi_label`,
            0/1 rows `(N, C)`).
        embeddings: Query embeddings `(N, D)`.
        ref_labels, ref_embeddings: Optional reference `(R,)`, `(R, D)`;
            each query is compared with these R rows only: O(N·R).
        remove_diagonal: Whether reference row a is query a itself (the
            queries come first in the reference); `None`: only without a
            reference.
        num_bins, delta, normalize, multi_label, miner: As `Histogram`.

    Returns:
        The `(N,)` per-query losses.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.histogram([0, 1, 0, 1], embeddings, num_bins=10)]
    [0.5, 1.0, 1.0, 0.5]
    """
    return similarity_loss(
        histogram_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        delta=histogram_delta(num_bins, delta),
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class Histogram(SimilarityLoss):
    r"""Histogram loss (Ustinova & Lempitsky 2016, "Learning Deep Embeddings
    with Histogram Loss", https://arxiv.org/abs/1611.00822).

    The estimated probability that a random negative pair is more similar
    than a random positive pair. The cosine similarities of the positive
    pairs and of the negative pairs make two histograms `h⁺`, `h⁻` on the
    nodes `t_r = −1 + rΔ`, each similarity sharing its unit of mass
    linearly between the two nodes around it (so that the histograms have
    gradients):

    $$ h^+_r = \text{the mean over the positive pairs of } \max\big(0, 1 - |s - t_r| / \Delta\big)
        \quad (h^- \text{ alike}) $$

    $$ \text{loss} = \sum_r h^-_r \sum_{q \le r} h^+_q $$

    The loss is one number for the whole batch, not a mean of
    independent per-query terms: it is computed as the mean over the
    negative pairs of `Φ(s)`, the cumulative positive histogram
    interpolated at the pair's similarity, so `reduction=None` gives each
    query's mean over its negative pairs and a sample weight weighs a
    query's negative pairs (the positive histogram is the batch's, never
    weighted). Memory O(N·R).

    Same values and gradients as PyTorch Metric Learning's `HistogramLoss`
    (its default `CosineSimilarity`), whose pairs are those of its
    triplets: a pair counts when either side has a positive and a negative
    (the paper takes all pairs: the same under P×K batches). Where
    PyTorch Metric Learning fails with an index error (a similarity of
    exactly 1, or beyond its last node when `2/delta` is not an integer),
    tfmetric clips the similarities to [−1, 1] and puts the last node at or
    beyond 1.

    Args:
        num_bins: Number of bins `2/Δ` (default 100, PyTorch Metric
            Learning's `n_bins`).
        delta: The node spacing `Δ` instead (`delta = 2 / num_bins` when
            both are given).
        normalize: Cosine similarities (default), or raw dot products
            (clipped to [−1, 1]).
        reduction: `"sum_over_batch_size"` (the loss above, default),
            `"sum"`, or `None` for each query's mean over its negative pairs.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, compute the
            histograms of the global batch (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.
        miner: A `tfm.miners` miner choosing the pairs; `None`: all of them.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 1, 0, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.Histogram(num_bins=10)(labels, embeddings)), 4)
    0.75
    """

    faster_under_xla = True
    compiles_terms_alone = True
    terms_alone_from = 1024
    compiles_below = 1536

    def __init__(
        self,
        num_bins=None,
        delta=None,
        normalize=True,
        reduction="sum_over_batch_size",
        name="histogram",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(normalize, reduction, name, cross_replica, multi_label, miner)
        self.delta = histogram_delta(num_bins, delta)
        ratio = 2 / self.delta
        self.num_bins = round(ratio) if math.isclose(ratio, round(ratio), rel_tol=1e-9) else None

    def similarity_terms(self, similarity, positive, negative):
        return histogram_terms(similarity, positive, negative, self.delta)

    def get_config(self):
        config = super().get_config()
        config.update({"num_bins": self.num_bins, "delta": self.delta})
        return config


# ---------------------------------------------------------------- dynamic soft margin


def _check_dynamic_soft_margin(min_val, num_bins, momentum):
    if not min_val < 0:
        raise ValueError(f"min_val must be negative; received {min_val!r}.")
    if isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 2:
        raise ValueError(f"num_bins must be an integer of at least 2; received {num_bins!r}.")
    if not 0 < momentum <= 1:
        raise ValueError(f"momentum must be in (0, 1]; received {momentum!r}.")


def triplet_margin_sums(distances, positive, negative, min_val, delta, num_thresholds):
    """For every query a and threshold `e_b = min_val + bΔ` (b < B): the triplets with a margin below it, their sum.

    Triplet (a, p, n) has the margin `d_ap − d_an`; it is below `e_b` when
    `v_n > u_p − b` for `u_p = (d_ap − min_val)·(1/Δ)` and `v_n = d_an·(1/Δ)`
    (computed in the distances' float type, then compared exactly, from
    their whole and fractional parts): a margin on an edge falls on the same
    side on every path and backend. Never the `(N, R, R)` triplets.

    The thresholds of one positive are `Δ` apart, so whether `v_n` is beyond
    `u_p − b` is a matter of whole parts (`V_n` against `U_p − b`) except in
    one unit, where it is the fractions' (`f_n > g_p`). Where
    `tfm.mining.positive_table` finds every query's positives (every
    operation a kernel of its own), each negative gets a cell: its whole
    part, and within it its fraction's place among the query's k positives'
    fractions (k comparisons); each key `(p, b)` is a cell too, and the
    negatives beyond it are those of the cells from its own on: one
    `bincount` of the negatives and suffix sums, time and memory
    O(N·(R + L·k)), L the whole parts up to the largest distance (6 for
    unit vectors and the default Δ = 0.4), with neither a sort nor a search
    (TensorFlow's search in rows took 5–17 ms at N = 1,024). Under XLA,
    whose shapes cannot depend on k, one positive slot at a time compares
    the negatives with the thresholds in a window of every row's (`_triplet_margin_sums_by_slot`).

    Returns:
        `(counts, sums)`, both `(N, B + 1)`: the last column counts and
        sums every triplet (the threshold +∞).
    """
    table, counts = positive_table_and_counts(positive)
    if table is None:
        return _triplet_margin_sums_by_slot(distances, positive, negative, min_val, delta, num_thresholds)
    dtype = distances.dtype
    num_queries = ops.shape(distances)[0]
    num_slots = ops.shape(table)[1]
    positive_distances = take_along_rows(distances, table)
    has_slot = table_slots(positive, table, counts)
    key_whole, key_fraction = _whole_and_fraction(ops.stop_gradient(positive_distances), min_val, delta)
    # A missing slot's fraction is above every negative's: it moves no cell.
    key_fraction = ops.where(has_slot, key_fraction, ops.full((), 2.0, dtype))
    # Each negative's cell (the others' one past the rows'), and the whole parts' span.
    inverse_delta = ops.convert_to_tensor(1.0 / delta, dtype)
    cells, span = compiled_piece(_negative_cells)(ops.stop_gradient(distances), negative, key_fraction, inverse_delta)
    span = python_int(span)
    stride = num_slots + 1
    width = span * stride + 1
    size = num_queries * width
    in_cells, sums_in_cells = add_all_at([None, ops.reshape(distances, (-1,))], cells, size + 1)
    in_cells, sums_in_cells = in_cells[:size], sums_in_cells[:size]
    # A key's place: the negatives whose fraction is above it have a place of at least this.
    key_places = ops.sum(ops.cast(key_fraction[:, None, :] <= key_fraction[:, :, None], "int32"), axis=2)
    counts_beyond = sums_from(ops.reshape(in_cells, (num_queries, -1)))
    sums_beyond = sums_from(ops.reshape(sums_in_cells, (num_queries, -1)))
    # Key (p, b) is the cell of whole part U_p − b at place ρ_p; keys below every negative take them all.
    offsets = ops.arange(num_thresholds, dtype="int32")
    key_cells = (key_whole[:, :, None] - offsets[None, None, :]) * stride + key_places[:, :, None]
    key_cells = ops.clip(key_cells, 0, width - 1)
    # +∞'s key: the first cell, every negative.
    key_cells = ops.concatenate([key_cells, ops.zeros_like(key_cells[:, :, :1])], axis=2)
    key_cells = ops.reshape(key_cells, (num_queries, -1))
    shape = (num_queries, num_slots, num_thresholds + 1)
    counts = ops.reshape(take_along_rows(counts_beyond, key_cells), shape)
    sums = ops.reshape(take_along_rows(sums_beyond, key_cells), shape)
    slots = ops.cast(has_slot, dtype)[:, :, None]
    triplet_counts = ops.sum(slots * counts, axis=1)
    triplet_sums = ops.sum(slots * (positive_distances[:, :, None] * counts - sums), axis=1)
    return ops.stop_gradient(triplet_counts), triplet_sums


def _negative_cells(distances, negative, key_fraction, inverse_delta):
    """`triplet_margin_sums`' cells of the negatives, flat, and the span of the distances' whole parts.

    A negative's cell is its whole part's, then its place among its
    query's key fractions: `row·width + whole·(k + 1) + place`, `width =
    span·(k + 1) + 1` a row's cells and one more never filled (where the
    keys beyond every negative point). Every other entry goes to one cell
    past the rows', dropped after the sums. No gradient; a pass over the
    matrix per key.
    """
    whole, fraction = _whole_and_fraction_of(distances * inverse_delta)
    # Distances are not negative: whole parts from 0 up to the largest.
    span = ops.max(ops.concatenate([ops.reshape(whole, (-1,)), ops.zeros((1,), "int32")])) + 1
    num_queries, num_keys = ops.shape(distances)[0], ops.shape(key_fraction)[1]
    stride = num_keys + 1
    width = span * stride + 1
    size = num_queries * width
    rows = ops.arange(num_queries, dtype="int32")[:, None]
    cells = whole * stride + rows * width
    if not (isinstance(num_keys, int) and num_keys == 0):
        # A key above every fraction, where a graph does not know whether there are keys: a slice of a
        # column of none would not compile.
        keys = ops.pad(key_fraction, [[0, 0], [0, 1]], constant_values=2.0)

        def count_below(key, cells):
            # A selection, not a cast of the comparison: TensorFlow's cast from bool is the slower kernel.
            return key + 1, ops.where(keys[:, key][:, None] < fraction, cells + 1, cells)

        start = (ops.convert_to_tensor(0, "int32"), cells)
        cells = ops.while_loop(lambda key, _: key < num_keys, count_below, start)[1]
    # A NaN distance's whole part is any int: clipped, it stays in range.
    return ops.reshape(ops.clip(ops.where(negative, cells, size), 0, size), (-1,)), span


def _whole_and_fraction(distances, offset, delta):
    """`(d − offset)·(1/Δ)` in the distances' float type as its whole part, int32, and its exact fraction in [0, 1)."""
    return _whole_and_fraction_of((distances - offset) * (1.0 / delta))


def _whole_and_fraction_of(scaled):
    whole = ops.floor(scaled)
    return ops.cast(whole, "int32"), scaled - whole


def _triplet_margin_sums_by_slot(distances, positive, negative, min_val, delta, num_thresholds):
    """`triplet_margin_sums` one positive slot at a time, comparisons that XLA fuses into sums.

    Triplet (a, p, n) is below threshold b when `W_n > U_p − b`, for `W_n
    = V_n + [f_n > g_p]` (whole and fractional parts of `u_p`, `v_n`, as in
    `triplet_margin_sums`): every triplet with `U_p − b < 0` is, none with
    `U_p − b` beyond the largest `W_n`. Distances of L2-normalised
    embeddings are at most 2, so `V_n < ⌊2/Δ⌋ + 2 = L` (clipped there),
    and of a slot's B thresholds at most `J = min(B, L)` (a window of each
    row's) need counting: `(N, J, R)` comparisons a slot, where comparing
    with all B took half as long again at the defaults (J = 7 of B = 10).
    The loop runs without gradient; the gradient of the sums (the counts
    have none) is a second loop over the slots, attached with
    `keras.ops.custom_gradient` as in the angular loss: `∂/∂d_an` is minus
    the incoming gradient's sum over the thresholds from n's first (`U_p −
    W_n + 1`) on, picked from each row's running sums by a selection per
    value of `W_n` (L + 1 of them; a gather took a third longer at K = 16),
    and `∂/∂d_ap` that summed over a's negatives. Non-negatives get a whole
    part below every one compared, which takes them out of both loops.
    At N = 1,024 under XLA on a CPU: 28.3 → 20.2 ms at K = 4, 83 → 33 ms
    at K = 16 (against all B thresholds, gathered, masked). Memory
    O(N·R + N·B).
    """
    thresholds = ops.arange(num_thresholds, dtype="int32")
    num_wholes = math.floor(2.0 / delta) + 2
    num_counted = min(num_thresholds, num_wholes)
    counted = ops.arange(num_counted, dtype="int32")

    def key(d, slot_positive):
        return _whole_and_fraction(row_pick(d, slot_positive), min_val, delta)

    # Every tensor but the constants is an argument (the masks as 0/1
    # floats): JAX's custom gradients cannot close over the tracers of an
    # enclosing trace.
    @ops.custom_gradient
    def counts_and_sums(d, positive_ones, negative_ones, every_count, every_sum):
        d = ops.stop_gradient(d)
        is_negative = negative_ones > 0.5
        zero = ops.zeros_like(d)
        whole, fraction = _whole_and_fraction(d, 0.0, delta)
        # Below every threshold's and every selection's whole part, the non-negatives drop out of both loops.
        whole = ops.where(is_negative, ops.minimum(whole, num_wholes - 1), -2)
        # Each row's negatives and their distances' sum, which the caller has too: a threshold below 0's.
        every_count, every_sum = ops.stop_gradient(every_count)[:, None], ops.stop_gradient(every_sum)[:, None]

        def shifted_wholes(key_fraction):
            return whole + ops.cast(fraction > key_fraction[:, None], "int32")

        def forward(slot_positive, has_slot, counts, sums):
            key_whole, key_fraction = key(d, slot_positive)
            # The window's first threshold whole part: J of them from there hold every one in [0, L).
            low = ops.clip(key_whole - (num_thresholds - 1), 0, num_wholes - num_counted)
            beyond = shifted_wholes(key_fraction)[:, None, :] > (low[:, None] + counted[None, :])[:, :, None]
            window_counts = row_sums(ops.cast(beyond, d.dtype))
            window_sums = row_sums(ops.where(beyond, d[:, None, :], zero[:, None, :]))
            key_wholes = key_whole[:, None] - thresholds[None, :]
            places = ops.clip(key_wholes - low[:, None], 0, num_counted - 1)
            below_all, above_all = key_wholes < 0, key_wholes >= num_wholes
            slot_counts = ops.where(below_all, every_count, take_along_rows(window_counts, places))
            slot_sums = ops.where(below_all, every_sum, take_along_rows(window_sums, places))
            slot_counts = ops.where(above_all, 0.0, slot_counts)
            slot_sums = ops.where(above_all, 0.0, slot_sums)
            margins = row_pick(d, slot_positive)[:, None] * slot_counts - slot_sums
            keep = has_slot[:, None]
            return counts + ops.where(keep, slot_counts, 0.0), sums + ops.where(keep, margins, 0.0)

        empty = ops.zeros((ops.shape(d)[0], num_thresholds), d.dtype)
        counts, sums = for_each_positive(positive_ones > 0.5, forward, (empty, empty))

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, d.dtype)[:, num_thresholds:]
            # Past the last threshold: none.
            upstream_from = ops.concatenate([sums_from(upstream), ops.zeros_like(upstream[:, :1])], axis=1)
            shifts = ops.arange(num_wholes + 1, dtype="int32")

            def backward(slot_positive, has_slot, grad):
                key_whole, key_fraction = key(d, slot_positive)
                # Σ_b upstream(a, b)·[n beyond the key b], the upstream from n's first threshold `U_p + 1 − W_n`
                # on, one of L + 1 values a row: minus the gradient of d_an, and summed over n, that of d_ap.
                firsts = ops.clip(key_whole[:, None] + 1 - shifts[None, :], 0, num_thresholds)
                values = ops.where(has_slot[:, None], take_along_rows(upstream_from, firsts), 0.0)
                shifted = shifted_wholes(key_fraction)
                weights = zero
                for shift in range(num_wholes + 1):
                    weights = ops.where(shifted == shift, values[:, shift:shift + 1], weights)
                return (add_to_rows(grad - weights, [(slot_positive, row_sums(weights))]),)

            (grad,) = for_each_positive(positive_ones > 0.5, backward, (ops.zeros_like(d),))
            unused = (ops.zeros_like(positive_ones), ops.zeros_like(negative_ones))
            return grad, *unused, ops.zeros_like(every_count[:, 0]), ops.zeros_like(every_sum[:, 0])

        return ops.concatenate([counts, sums], axis=1), gradient

    dtype = distances.dtype
    positives, negatives = ops.cast(positive, dtype), ops.cast(negative, dtype)
    num_positives, num_negatives = ops.sum(positives, axis=1), ops.sum(negatives, axis=1)
    negative_sums = ops.sum(negatives * distances, axis=1)
    both = counts_and_sums(distances, positives, negatives, num_negatives, negative_sums)
    every_sum = num_negatives * ops.sum(positives * distances, axis=1) - num_positives * negative_sums
    counts = ops.concatenate([both[:, :num_thresholds], (num_positives * num_negatives)[:, None]], axis=1)
    sums = ops.concatenate([both[:, num_thresholds:], every_sum[:, None]], axis=1)
    return ops.stop_gradient(counts), sums


def _differences(columns):
    stacked = ops.stack(columns, axis=-1)
    return stacked[..., 1:] - stacked[..., :-1]


def dynamic_soft_margin_terms(distances, positive, negative, histogram=None, min_val=-2.0, num_bins=10,
                              momentum=0.01):
    """Per-query sums of the dynamic soft margin loss over its triplets, their counts, and the new histogram.

    Every triplet (a, p, n) has the margin `x = d_ap − d_an`. The margins
    of the batch update the running histogram `h` on the `num_bins` nodes
    `e_k = min_val + kΔ`, `Δ = 2|min_val| / num_bins` (a margin between
    `e_k` and `e_{k+1}` gives `1 − α` to node k and `α = (x − e_k)/Δ` to
    node k + 1; margins beyond the nodes are clipped to them):
    `h ← normalise((1 − m)·h + m·Σ_triplets contributions)` (`m = 1` while
    `h` is all zero, i.e. at the first call); then each triplet weighs its
    margin by the cumulative `CDF(k(x))` of its bin `k(x) =
    ⌊(x − min_val)/Δ⌋` (clipped to the bins; on a bin's edge as
    `triplet_margin_sums` decides, from `(d_ap − min_val)/Δ` and `d_an/Δ`).
    The batch's contributions carry gradients, the previous histogram does
    not.

    Args:
        histogram: The running histogram `(num_bins,)` before this batch;
            `None`: all zero (the first call).

    Returns:
        `(loss_sums, triplet_counts, new_histogram)`; the histogram is left
        as it was when the batch has no triplet.
    """
    _check_dynamic_soft_margin(min_val, num_bins, momentum)
    dtype = distances.dtype
    delta = 2 * abs(min_val) / num_bins
    edges = [min_val + k * delta for k in range(num_bins)]
    below_counts, below_sums = triplet_margin_sums(distances, positive, negative, min_val, delta, num_bins)
    # The last column: every triplet (a margin below +∞).
    triplets, total = below_counts[:, num_bins], below_sums[:, num_bins]
    zeros = ops.zeros_like(total)
    G = [below_counts[:, k] for k in range(num_bins)]
    H = [below_sums[:, k] for k in range(num_bins)]
    # The weights' bins: x < e_1, [e_1, e_2), ..., x >= e_{B-1}; their sums of x.
    weighted_sums = _differences([zeros] + H[1:] + [total])
    # The histogram's intervals: [e_k, e_{k+1}) for k < B − 1, margins clipped to [e_0, e_{B-1}].
    low_clipped = edges[0] * G[0] - H[0]
    clipped_total = H[-1] + low_clipped + edges[-1] * (triplets - G[-1])
    interval_counts = ops.sum(_differences([zeros] + G[1:-1] + [triplets]), axis=0)
    interval_sums = ops.sum(_differences([zeros] + [h + low_clipped for h in H[1:-1]] + [clipped_total]), axis=0)
    lower_edges = ops.convert_to_tensor(edges[:-1], dtype)
    upper_shares = (interval_sums - lower_edges * interval_counts) / delta
    pad = ops.zeros((1,), dtype)
    contributions = ops.concatenate([interval_counts - upper_shares, pad]) + ops.concatenate([pad, upper_shares])
    previous = ops.zeros((num_bins,), dtype) if histogram is None else ops.cast(
        ops.stop_gradient(ops.convert_to_tensor(histogram)), dtype
    )
    rate = ops.where(ops.not_equal(ops.sum(previous), 0), ops.cast(momentum, dtype), ops.cast(1.0, dtype))
    mixed = (1.0 - rate) * previous + rate * contributions
    has_triplets = ops.sum(triplets) > 0
    new_histogram = ops.where(has_triplets, divide_or_zero(mixed, ops.sum(mixed)), previous)
    cdf = cumsum(new_histogram, axis=0)
    loss_sums = ops.sum(weighted_sums * cdf[None, :], axis=1)
    return loss_sums, triplets, new_histogram


def dynamic_soft_margin(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    histogram=None,
    min_val=-2.0,
    num_bins=10,
    momentum=0.01,
    return_histogram=False,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query dynamic soft margin losses (the math of `DynamicSoftMargin`).

    Each query's mean over its triplets of `CDF(d_ap − d_an)·(d_ap − d_an)`,
    the CDF of the running histogram updated with this batch's margins
    (`dynamic_soft_margin_terms`); 0 for a query without a triplet.

    Args:
        labels: Class ids `(N,)` of the queries (or, with `multi_label`,
            0/1 rows `(N, C)`).
        embeddings: Query embeddings `(N, D)`, L2-normalised here.
        ref_labels, ref_embeddings: Optional reference `(R,)`, `(R, D)`.
        histogram: The running histogram `(num_bins,)` before this batch
            (`DynamicSoftMargin`'s `histogram_value()`); `None`: the first
            call, whose histogram is this batch's own.
        return_histogram: Also return the updated histogram.
        remove_diagonal: Whether reference row a is query a itself; `None`:
            only without a reference.
        min_val, num_bins, momentum, multi_label, miner: As `DynamicSoftMargin`.

    Returns:
        The `(N,)` per-query losses, or `(losses, new_histogram)`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> losses, new = tfm.losses.dynamic_soft_margin([0, 0, 1, 1], embeddings, return_histogram=True)
    >>> [round(float(v), 4) for v in losses]
    [-0.413, -0.4039, -0.4039, -0.413]
    >>> [round(float(v), 2) for v in new]
    [0.0, 0.0, 0.22, 0.5, 0.19, 0.09, 0.0, 0.0, 0.0, 0.0]
    """
    pairs = mine_pairs(
        labels, embeddings, ref_labels, ref_embeddings, multi_label=multi_label, remove_diagonal=remove_diagonal
    )
    pairs = apply_miner(miner, pairs)
    distances = pair_distances(pairs.embeddings, pairs.ref_embeddings, "euclidean", True)
    loss_sums, counts, new_histogram = dynamic_soft_margin_terms(
        distances, pairs.positive, pairs.negative, histogram, min_val, num_bins, momentum
    )
    losses = per_query((loss_sums, counts))
    return (losses, new_histogram) if return_histogram else losses


@keras.saving.register_keras_serializable(package="tfmetric")
class DynamicSoftMargin(InBatchLoss):
    r"""Dynamic soft margin loss (Zhang & Rusinkiewicz 2019, "Learning Local
    Descriptors with a CDF-Based Dynamic Soft Margin", ICCV).

    A triplet loss without a margin to tune: each triplet's margin
    `x = d(a, p) − d(a, n)` (Euclidean distances of L2-normalised
    embeddings, in [−2, 2]) is weighted by where it stands among the
    margins seen so far, the CDF of a running histogram of them:

    $$ h \leftarrow \mathrm{normalise}\big((1 - m)\, h + m \cdot \text{the histogram of this batch's margins}\big) $$

    $$ \ell = \text{the mean over the triplets } (a, p, n) \text{ of } \mathrm{CDF}_h(x) \cdot x $$

    so the hardest triplets (largest x) get the largest weights, and the
    weights follow the distribution as training improves it. The histogram
    has `num_bins` nodes from `min_val` on, `Δ = 2|min_val| / num_bins`;
    each margin shares its unit of mass between the two nodes around it.
    As in PyTorch Metric Learning's `DynamicSoftMarginLoss` (same values
    and gradients): the batch's histogram is its triplet count (not a
    normalised histogram) when mixed with momentum `m`, so a batch of T
    triplets weighs `m·T` against `1 − m` for the history; the first call
    takes the batch's histogram alone; the weight is the CDF at the
    margin's bin, and the gradient also flows through this batch's share of
    the histogram. tfmetric differs where PyTorch Metric Learning fails with
    an index error: margins beyond the nodes (e.g. x ≥ 1.6 with the
    defaults) are clipped to the last node; it also keeps only the
    histogram's values between calls (PyTorch Metric Learning keeps its
    autograd graph, so a second `backward` fails). Its label-free mode
    (row i of the batch matches row i of the reference, hardest negatives)
    is not here.

    The histogram is the loss's state, a non-trainable variable
    (`histogram_value()`): `model.compile` makes it part of the model, so
    it is updated in `fit` (on every backend, in `tf.function`, XLA and
    JAX's compiled steps) and saved and restored with the model. Every call
    updates it, as PyTorch Metric Learning's does, evaluation included.
    Inside a bare `jax.jit`, call the loss in a `keras.StatelessScope` and
    assign the scope's new value, or use the pure function
    `tfm.losses.dynamic_soft_margin(..., histogram=..., return_histogram=True)`.
    Memory O(N·(R + L·k)) (each negative in a cell of its whole number of
    Δ and its place among the positives' fractions of Δ, k the most
    positives of a query, L ≈ 2/Δ; under XLA, whose shapes cannot depend on
    k, one positive at a time: O(N·R·k·min(B, L)) comparisons, B =
    `num_bins`), never the N·R·R triplets.

    Args:
        min_val: The smallest margin of the histogram (its first node).
        num_bins: Number of nodes of the histogram (at least 2).
        momentum: The weight `m` of the batch's histogram.
        reduction: `"sum_over_batch_size"` (the mean over triplets,
            default), `"sum"`, or `None` for each anchor's mean.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.
        miner: A `tfm.miners` miner choosing the pairs; `None`: all of them.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> loss = tfm.DynamicSoftMargin()
    >>> round(float(loss(labels, embeddings)), 4)
    -0.4085
    >>> round(float(loss.histogram_value().sum()), 4)
    1.0
    """

    def __init__(
        self,
        min_val=-2.0,
        num_bins=10,
        momentum=0.01,
        reduction="sum_over_batch_size",
        name="dynamic_soft_margin",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(reduction, name, cross_replica, multi_label, miner)
        _check_dynamic_soft_margin(min_val, num_bins, momentum)
        self.min_val = float(min_val)
        self.num_bins = int(num_bins)
        self.momentum = float(momentum)
        self.state = LossState(name=f"{name}_state")
        self.state.histogram = self.state.add_weight(
            shape=(self.num_bins,), initializer="zeros", name="histogram", trainable=False, aggregation="mean"
        )

    def histogram_value(self):
        """The running histogram, a NumPy array of `num_bins` entries (all zero before the first call)."""
        return keras.ops.convert_to_numpy(self.state.histogram)

    def pair_terms(self, embeddings, ref_embeddings, positive, negative):
        distances = pair_distances(embeddings, ref_embeddings, "euclidean", True)
        loss_sums, counts, new_histogram = dynamic_soft_margin_terms(
            distances, positive, negative, self.state.histogram, self.min_val, self.num_bins, self.momentum
        )
        self.state.histogram.assign(ops.cast(ops.stop_gradient(new_histogram), self.state.histogram.dtype))
        return loss_sums, counts

    def get_config(self):
        config = super().get_config()
        config.update({"min_val": self.min_val, "num_bins": self.num_bins, "momentum": self.momentum})
        return config
