"""Triplet losses with online (in-batch) mining: batch-hard, batch-all, semi-hard.

Notation: `d` is the `(N, R)` distance matrix of the queries (anchors) and
the reference (the batch itself by default), `P(a)` the positives of
anchor `a` (same label, not `a`), `Q(a)` its negatives (different label),
`m` the margin.
"""

import keras
from keras import backend, ops

from tfmetric.distances import check_distance, paired_distance, row_sums
from tfmetric.losses.base import (
    DistanceLoss,
    apply_miner,
    check_choice,
    compiled_piece,
    compiles_pieces,
    distance_loss,
    negatives_below_keys,
    pair_distances,
    per_query,
)
from tfmetric.mining import (
    add_to_rows,
    attach_gradient,
    for_each_positive,
    hardest_pairs,
    mask_row_counts,
    mine_pairs,
    positive_table_and_counts,
    row_cells,
    row_counts,
    row_min_above,
    row_pick,
    scatter_add,
    scatter_sum,
    table_slots,
    take_along_rows,
)

AVERAGES = ("nonzero", "all")


def batch_hard_triplet_terms(distances, positive, negative, margin=1.0, soft=False, chosen_distances=None):
    """Per-anchor batch-hard triplet losses and validity.

    `ℓ_a = relu(max_{p∈P(a)} d_ap − min_{n∈Q(a)} d_an + m)`, or
    `softplus(max d_ap − min d_an)` when `soft`. An anchor is valid when it
    has a positive and a negative; invalid anchors get 0.

    The hardest pairs are chosen on `distances`; their distances are read
    from it too, or given as `chosen_distances`, `(d_ap, d_an)` of the pairs
    `tfm.mining.hardest_pairs` picks, recomputed for them only (see
    `BatchHardTriplet`).

    Returns:
        `(losses, valid)`, both `(N,)`, `valid` as 0/1 floats.
    """
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    if chosen_distances is None:
        positive_index, negative_index = hardest_pairs(distances, positive, negative)
        chosen_distances = row_pick(distances, positive_index), row_pick(distances, negative_index)
    gap = chosen_distances[0] - chosen_distances[1]
    # Invalid rows picked arbitrary pairs: keep them out of the arithmetic.
    gap = ops.where(valid, gap, ops.zeros_like(gap))
    losses = ops.softplus(gap) if soft else ops.relu(gap + margin)
    valid = ops.cast(valid, gap.dtype)
    return losses * valid, valid


def semi_hard_triplet_terms(distances, positive, negative, margin=1.0):
    """Per-anchor sums of semi-hard triplet losses over positive pairs (FaceNet).

    For the positive pair (a, p), the negative is the n with the smallest
    `d[a, n]` such that `d[a, n] > d[a, p]`; when there is none, the n with
    the largest `d[a, n]`, exactly as TF Addons' `TripletSemiHardLoss`
    chooses. `ℓ_ap = relu(d[a, p] − d[a, n] + margin)`. Pairs whose anchor
    has no negative have no term.

    Returns:
        `(loss_sums, pair_counts)`, both `(N,)`; `loss_sums` is
        differentiable with respect to `distances`.
    """
    d = ops.stop_gradient(distances)
    has_negative = ops.any(negative, axis=1)

    def slot_terms_function():
        """`slot_terms` for the slot loops, its passes over the matrix made where a loop runs."""
        inf = ops.full_like(d, float("inf"))
        # +inf at non-negatives takes them out of every minimum below.
        negative_distances = ops.where(negative, d, inf)
        farthest = ops.cast(ops.argmax(ops.where(negative, d, -inf), axis=1), "int32")
        farthest_distance = row_pick(d, farthest)

        def slot_terms(slot_positive, has_slot):
            """Each anchor's loss for the slot's positive, its chosen negative, and 1 where the loss is active."""
            positive_distance = row_pick(d, slot_positive)
            nearest_beyond_distance, nearest_beyond, has_beyond = row_min_above(negative_distances, positive_distance)
            chosen = ops.where(has_beyond, nearest_beyond, farthest)
            chosen_distance = ops.where(has_beyond, nearest_beyond_distance, farthest_distance)
            losses = ops.relu(positive_distance - chosen_distance + margin)
            active = ops.logical_and(ops.logical_and(has_slot, has_negative), losses > 0)
            # d[a, p] enters an active pair's loss with sign +1, d[a, n] with -1.
            return ops.where(active, losses, ops.zeros_like(losses)), chosen, ops.cast(active, d.dtype)

        return slot_terms

    table, counts = positive_table_and_counts(positive)
    pair_counts = ops.cast(counts, d.dtype) * ops.cast(has_negative, d.dtype)
    zeros = ops.zeros(ops.shape(d)[:1], d.dtype)
    if table is None:
        # Under XLA (the number of slots unknown) the gradient's entries are added a slot at a time, in place.
        def by_slot_in_place():
            slot_terms = slot_terms_function()

            def body(slot_positive, has_slot, loss_sums, gradient):
                losses, chosen, weight = slot_terms(slot_positive, has_slot)
                return loss_sums + losses, add_to_rows(gradient, [(slot_positive, weight), (chosen, -weight)])

            return for_each_positive(positive, body, (zeros, ops.zeros_like(d)), counts=counts)

        if backend.backend() == "tensorflow" and backend.standardize_dtype(d.dtype) == "float32":
            fewest, most = _GROUPS_UNDER_XLA

            def by_groups_of_at_most():
                # A table of a fixed width, filled by the slot loop (unrolled, its 16 steps took 5 s more to
                # compile); the columns past a query's positives stay 0, masked.
                slots = ops.arange(most, dtype="int32")[None, :]

                def fill(slot_positive, has_slot, slot, table):
                    return slot + 1, ops.where(ops.equal(slots, slot), slot_positive[:, None], table)

                empty = ops.zeros((ops.shape(d)[0], most), "int32")
                start = (ops.convert_to_tensor(0, "int32"), empty)
                table_of_at_most = for_each_positive(positive, fill, start, counts=counts)[1]
                has_term = ops.logical_and(slots < counts[:, None], has_negative[:, None])
                return _semi_hard_by_groups(d, negative, table_of_at_most, has_term, ops.cast(margin, d.dtype))

            num_slots = ops.max(counts)
            loss_sums, gradient = ops.cond(
                ops.logical_and(num_slots >= fewest, num_slots <= most), by_groups_of_at_most, by_slot_in_place
            )
        else:
            loss_sums, gradient = by_slot_in_place()
        return attach_gradient(loss_sums, distances, gradient), pair_counts

    # The gradient has two entries an anchor a positive: kept in `(N, S)`
    # tables and added at the end in one scatter (a scatter into the matrix
    # a slot copied it every time: 3 ms of 17 at N = 1024, K = 16).
    def by_slot():
        slot_terms = slot_terms_function()
        slots = ops.arange(ops.shape(table)[1], dtype="int32")[None, :]

        def body(slot_positive, has_slot, loss_sums, slot, chosen_columns, weights):
            losses, chosen, weight = slot_terms(slot_positive, has_slot)
            here = ops.equal(slots, slot)
            chosen_columns = ops.where(here, chosen[:, None], chosen_columns)
            return loss_sums + losses, slot + 1, chosen_columns, ops.where(here, weight[:, None], weights)

        start = (zeros, ops.convert_to_tensor(0, "int32"), ops.zeros_like(table), ops.zeros(ops.shape(table), d.dtype))
        loss_sums, _, chosen_columns, weights = for_each_positive(positive, body, start, table, counts)
        cells = row_cells(ops.concatenate([table, chosen_columns], axis=1))
        values = ops.concatenate([weights, -weights], axis=1)
        return loss_sums, scatter_sum(cells, ops.reshape(values, (-1,)), ops.shape(d))

    def by_groups():
        has_term = ops.logical_and(table_slots(positive, table, counts), has_negative[:, None])
        return compiled_piece(_semi_hard_by_groups)(d, negative, table, has_term, ops.cast(margin, d.dtype))

    # By groups wherever XLA compiles pieces (faster at every size measured, N = 128 to 4,096, K = 4 and 16).
    if compiles_pieces() and backend.standardize_dtype(d.dtype) == "float32":
        loss_sums, gradient = by_groups()
    else:
        loss_sums, gradient = by_slot()
    return attach_gradient(loss_sums, distances, gradient), pair_counts


# Under XLA, the numbers of positives a query for which semi-hard's table of
# positives has a fixed width (the most) and it finds the negatives by groups.
_GROUPS_UNDER_XLA = (8, 16)


def _semi_hard_by_groups(d, negative, table, has_term, margin):
    """`semi_hard_triplet_terms`' loss sums and gradient w.r.t. `d` from `_semi_hard_columns` (XLA, TensorFlow).

    `has_term`: the table's entries that are positives of a query with a negative.

    The gradient's ±1 entries of the active triplets are added into the
    matrix here, compiled, where TensorFlow's sums into segments took
    2.4 ms at N = 1,024, K = 16.
    """
    import tensorflow as tf

    positive_distances = tf.gather(d, table, batch_dims=1)
    chosen = _semi_hard_columns(d, negative, table, positive_distances)
    losses = tf.nn.relu(positive_distances - tf.gather(d, chosen, batch_dims=1) + margin)
    active = has_term & (losses > 0)
    weights = tf.cast(active, d.dtype)
    cells = row_cells(tf.concat([table, chosen], axis=1))
    gradient = tf.tensor_scatter_nd_add(tf.zeros_like(d), cells, tf.reshape(tf.concat([weights, -weights], 1), (-1,)))
    return tf.reduce_sum(tf.where(active, losses, tf.zeros_like(losses)), axis=1), gradient


def _semi_hard_columns(d, negative, table, positive_distances):
    """The semi-hard negative's column for every positive of `positive_table`'s `table` `(N, S)` (XLA, TensorFlow),
    given the table's distances `positive_distances`.

    A query's S positive distances, sorted, split its negatives into S + 1
    groups by how many of them lie strictly below (a search in the sorted
    distances); the negative of the positive at sorted place j is the
    least of the groups from j + 1 on (the first column on ties): one
    minimum into the groups over 64-bit keys (the distance's order as an
    unsigned pattern, the column) and a running minimum over the groups;
    a positive beyond every negative takes the farthest. A pass over the
    matrix and a scatter, where one positive at a time is S passes (N =
    1,024, K = 16: 7 against 14 ms of TensorFlow's kernels). A table
    column past a query's positives only splits a group: no choice
    changes.
    """
    import tensorflow as tf

    num_queries, num_columns = tf.shape(d)[0], tf.shape(d)[1]
    num_groups = tf.shape(table)[1] + 1
    # A NaN positive (whose loss is never active) last, where it moves no group.
    positive_distances = tf.where(tf.math.is_nan(positive_distances), float("inf"), positive_distances)
    order = tf.argsort(positive_distances, axis=1, stable=True)
    groups = tf.searchsorted(tf.gather(positive_distances, order, batch_dims=1), d, side="left")
    # Floats' order as unsigned patterns: negatives' bits flipped, the sign bit set on the others.
    patterns = tf.bitcast(d, tf.uint32)
    ordered = tf.where(d < 0, ~patterns, patterns | tf.constant(0x80000000, tf.uint32))
    columns = tf.cast(tf.range(num_columns), tf.uint64)[None, :]
    keys = tf.bitwise.left_shift(tf.cast(ordered, tf.uint64), tf.constant(32, tf.uint64)) | columns
    none = tf.constant(0xFFFFFFFFFFFFFFFF, tf.uint64)
    # A NaN is below no positive (group 0: never beyond one); +inf, where beyond, has no loss.
    keys = tf.where(negative, keys, none)
    cells = tf.range(num_queries)[:, None] * num_groups + groups
    least = tf.tensor_scatter_nd_min(
        tf.fill([num_queries * num_groups], none), tf.reshape(cells, (-1, 1)), tf.reshape(keys, (-1,))
    )
    least = tf.reshape(least, (num_queries, num_groups))
    # The least of the groups from j + 1 on, for every sorted place j: (N, k, k + 1) small (a scan compiles slower).
    places, groups_from = tf.range(num_groups - 1)[:, None], tf.range(num_groups)[None, :]
    from_next = tf.reduce_min(tf.where(groups_from > places, least[:, None, :], none), axis=2)
    beyond = tf.gather(from_next, tf.argsort(order, axis=1), batch_dims=1)
    farthest = tf.cast(tf.argmax(tf.where(negative, d, float("-inf")), axis=1), tf.int32)
    chosen = tf.cast(beyond & tf.constant(0xFFFFFFFF, tf.uint64), tf.int32)
    return tf.where(beyond == none, farthest[:, None], chosen)


def all_triplet_terms(distances, positive, negative, margin=1.0):
    """Sums `relu(d[a, p] − d[a, n] + margin)` over all triplets of each anchor.

    Triplets are every (a, p, n) with p a positive and n a negative of a.
    A pass over the matrix per positive slot; where
    `tfm.mining.positive_table` finds every query's positives and they are
    many (k ≥ `_KEYS_FROM`), one binary search of the negatives among each
    query's keys `d_ap + margin` instead (`_all_triplet_sums_by_keys`);
    under XLA the loop only counts the active triplets, and the losses
    follow from the counts (`_all_triplet_sums_by_slot`'s `from_counts`).

    Returns:
        `(loss_sums, active_counts, valid_counts)`, each of shape `(N,)`: the
        sum of the triplet losses of each anchor (differentiable with respect
        to `distances`), how many of its triplets have a positive loss, and
        how many triplets it has.
    """
    table, counts = positive_table_and_counts(positive)
    from_counts = table is None and _float64_at_hand()
    if table is None:

        def sums(d):
            return _all_triplet_sums_by_slot(d, positive, negative, margin, counts=counts, from_counts=from_counts)

    else:
        # The branches see no differentiable input, so the cond keeps no
        # intermediates for a gradient (TensorFlow's type inference logs a
        # false alarm where the two branches keep values of other types).
        def sums(d):
            return ops.cond(
                ops.shape(table)[1] >= _KEYS_FROM,
                lambda: _all_triplet_sums_by_keys(d, positive, negative, margin, table, counts),
                lambda: _all_triplet_sums_by_slot(d, positive, negative, margin, table, counts),
            )

    return _attached_triplet_terms(distances, positive, negative, margin, sums, counts, from_counts)


def _attached_triplet_terms(distances, positive, negative, margin, sums, counts=None, from_counts=False):
    """`all_triplet_terms` from `sums(d)`, one of the ways below on the gradient-free matrix, its gradient attached."""
    valid_counts = _triplet_counts(positive, negative, counts, distances.dtype)
    loss_sums, active_counts, gradient = sums(ops.stop_gradient(distances))
    if from_counts:
        # Differentiated through the casts, the sum has the gradient G.
        wide = ops.sum(ops.cast(gradient, "float64") * ops.cast(distances, "float64"), axis=1)
        loss_sums = ops.cast(wide + margin * ops.cast(active_counts, "float64"), distances.dtype)
        return loss_sums, active_counts, valid_counts
    return attach_gradient(loss_sums, distances, gradient), active_counts, valid_counts


# The binary search and the sums per interval cost about as much as nine
# slots' passes (TensorFlow on a CPU, N = 1024: 37 ms against 31 at k = 7,
# 40 against 73 at k = 15).
_KEYS_FROM = 10


def _all_triplet_sums_by_slot(d, positive, negative, margin, table=None, counts=None, from_counts=False):
    """`all_triplet_terms`' sums on a gradient-free matrix, a pass over it per positive slot.

    Returns `(loss_sums, active_counts, gradient)`: the `(N, R)` gradient of
    the loss sums with respect to `d` (the losses are piecewise linear in
    the distances), which the caller attaches.

    `from_counts` (under XLA, where float64 is at hand): the loop only
    counts each pair's active triplets (its gradient at `d_ap`) and each
    negative's (minus its gradient at `d_an`), and the sum of the losses
    follows from them after the loop: `Σ_j G_aj·d_aj + m·(the anchor's
    active triplets)`, in float64, where the positive and negative parts
    can nearly cancel. A pass over the matrix a slot less than summing the
    losses in the loop as well (XLA does not fuse two reductions of one
    row: 2.2 → 1.9× the distance matrix at N = 1024, K = 16).
    """
    # +inf at non-negatives takes them out of every comparison below.
    negative_distances = ops.where(negative, d, ops.full_like(d, float("inf")))

    def body(slot_positive, has_slot, loss_sums, active_counts, gradient):
        threshold = row_pick(d, slot_positive) + margin
        threshold = ops.where(has_slot, threshold, ops.full_like(threshold, float("-inf")))
        if from_counts:
            active = ops.cast(threshold[:, None] > negative_distances, d.dtype)
        else:
            gaps = ops.relu(threshold[:, None] - negative_distances)
            active = ops.cast(gaps > 0, d.dtype)
            loss_sums = loss_sums + row_sums(gaps)
        per_pair = row_sums(active)
        # d[a, p] enters each of its active triplets with sign +1, d[a, n]
        # with sign -1 (subtracted first: the scatter then updates a new
        # matrix in place rather than a copy of the loop's).
        gradient = add_to_rows(gradient - active, [(slot_positive, per_pair)])
        return loss_sums, active_counts + per_pair, gradient

    zeros = ops.zeros(ops.shape(d)[:1], d.dtype)
    return for_each_positive(positive, body, (zeros, zeros, ops.zeros_like(d)), table, counts)


def _float64_at_hand():
    """Whether XLA computes in float64 here: not on TPUs, nor under JAX without `jax_enable_x64`."""
    if backend.backend() == "jax":
        import jax

        return bool(jax.config.jax_enable_x64) and jax.default_backend() != "tpu"
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        return not tf.config.list_logical_devices("TPU")
    return True


def _triplet_counts(positive, negative, counts, dtype):
    """Every anchor's number of triplets: its positives (`counts`, if known) times its negatives."""
    return ops.cast(row_counts(positive, counts), dtype) * mask_row_counts(negative, dtype)


def _all_triplet_sums_by_keys(d, positive, negative, margin, table, positive_counts=None):
    """`_all_triplet_sums_by_slot` from every query's keys `d_ap + margin` (`table`: its positive columns).

    A triplet has a positive loss where `d_an < d_ap + margin`; for each
    key, `negatives_below_keys` counts those negatives and sums their gaps
    to it, the losses of the pair: one binary search of the negatives among
    the k keys of their row instead of k passes over the matrix. The
    gradient is as the loop's: each pair's count at its positive, and at
    each negative minus the keys above it. A column of `table` past the
    query's positives gets a key below every distance of its row: it counts
    nothing and is above nothing.
    """
    is_positive = table_slots(positive, table, positive_counts)
    below_all = ops.min(d, axis=1, keepdims=True) - 1.0
    keys = ops.where(is_positive, take_along_rows(d, table) + margin, below_all)
    counts, gaps, keys_not_above = negatives_below_keys(d, negative, keys)
    # Minus the keys above each negative; 0 elsewhere, where the search saw +inf with every key below.
    gradient = ops.cast(keys_not_above, d.dtype) - ops.cast(ops.shape(keys)[1], d.dtype)
    gradient = scatter_add(gradient, row_cells(table), ops.reshape(counts, (-1,)))
    return ops.sum(gaps, axis=1), ops.sum(counts, axis=1), gradient


def mined_triplet_terms(distances, triplets, margin=1.0):
    """`all_triplet_terms` over the triplets of a miner (`tfm.miners.Triplets`) only.

    Sums `relu(d[a, p] − d[a, n] + margin)` over the mined triplets
    (a, p, n) of each anchor, on the loss's `distances` (the miner chose
    them on its own matrix).

    Returns:
        `(loss_sums, active_counts, triplet_counts)`, each `(N,)`, as
        `all_triplet_terms`.
    """
    from tfmetric.miners import for_each_triplet_slot

    d = ops.stop_gradient(distances)

    def body(slot, chosen, loss_sums, active_counts, triplet_counts, gradient):
        threshold = row_pick(d, slot.positive_index) + margin
        gaps = ops.where(chosen, ops.relu(threshold[:, None] - d), ops.zeros_like(d))
        active = ops.cast(gaps > 0, d.dtype)
        per_pair = ops.sum(active, axis=1)
        gradient = add_to_rows(gradient - active, [(slot.positive_index, per_pair)])
        return (
            loss_sums + ops.sum(gaps, axis=1),
            active_counts + per_pair,
            triplet_counts + ops.sum(ops.cast(chosen, d.dtype), axis=1),
            gradient,
        )

    zeros = ops.zeros(ops.shape(d)[:1], d.dtype)
    loss_sums, active_counts, triplet_counts, gradient = for_each_triplet_slot(
        triplets, body, (zeros, zeros, zeros, ops.zeros_like(d))
    )
    loss_sums = attach_gradient(loss_sums, distances, gradient)
    return loss_sums, ops.stop_gradient(active_counts), triplet_counts


def _batch_hard_pair_terms(embeddings, ref_embeddings, positive, negative, margin, soft, distance, normalize):
    # Only 2N distances enter the loss: mine on a gradient-free matrix and
    # differentiate just the chosen pairs, recomputed from the embeddings
    # (O(N·D)), instead of back-propagating through all N·R distances.
    distances = ops.stop_gradient(pair_distances(embeddings, ref_embeddings, distance, normalize))
    num_queries = ops.shape(embeddings)[0]
    positive_index, negative_index = hardest_pairs(distances, positive, negative)
    # Both kinds of pair in one call: at small batches every operation's
    # overhead counts.
    chosen = paired_distance(
        ops.concatenate([embeddings, embeddings]),
        ops.take(ref_embeddings, ops.concatenate([positive_index, negative_index]), axis=0),
        distance,
        normalize,
    )
    return batch_hard_triplet_terms(
        distances, positive, negative, margin, soft, chosen_distances=(chosen[:num_queries], chosen[num_queries:])
    )


def batch_hard_triplet(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    margin=1.0,
    soft=False,
    distance="euclidean",
    normalize=False,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query batch-hard triplet losses (the math of `BatchHardTriplet`).

    `ℓ_a = relu(max_{p∈P(a)} d(a, p) − min_{n∈Q(a)} d(a, n) + m)`, 0 for a
    query without a positive or a negative. Positives and negatives are
    taken among the reference rows (`ref_labels`, `ref_embeddings`), or the
    batch itself when there is no reference.

    Args:
        labels: Class ids `(N,)` of the queries (or, with `multi_label`,
            0/1 rows `(N, C)`).
        embeddings: Query embeddings `(N, D)`.
        ref_labels, ref_embeddings: Optional reference `(R,)`, `(R, D)`;
            each query is mined against these R rows only: O(N·R) time and
            memory.
        remove_diagonal: Whether reference row a is query a itself (the
            queries come first in the reference) and so not its own
            positive; `None`: only without a reference.
        margin, soft, distance, normalize, multi_label: As `BatchHardTriplet`.
        miner: A `tfm.miners` miner: the hardest pairs are taken among the
            pairs it mines; `None`: all pairs.

    Returns:
        The `(N,)` per-query losses.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> queries = np.array([[0.0, 0.0], [2.0, 0.0]])
    >>> reference = np.array([[0.0, 1.0], [0.0, 3.0], [2.0, 2.0]])
    >>> losses = tfm.losses.batch_hard_triplet([0, 1], queries, [0, 0, 1], reference, margin=1.0)
    >>> [round(float(v), 4) for v in losses]
    [1.1716, 0.7639]
    """
    pairs = mine_pairs(
        labels, embeddings, ref_labels, ref_embeddings, multi_label=multi_label, remove_diagonal=remove_diagonal
    )
    pairs = apply_miner(miner, pairs)
    return per_query(_batch_hard_pair_terms(*pairs, margin, soft, check_distance(distance), normalize))


@keras.saving.register_keras_serializable(package="tfmetric")
class BatchHardTriplet(DistanceLoss):
    r"""Batch-hard triplet loss (Hermans et al. 2017, "In Defense of the Triplet
    Loss for Person Re-Identification").

    For every anchor, the hardest positive and the hardest negative of the
    batch:

    $$ \ell_a = \mathrm{relu}\big(\max_{p \in P(a)} d(a, p) - \min_{n \in Q(a)} d(a, n) + m\big) $$

    $$ \ell_a = \mathrm{softplus}\big(\max_{p \in P(a)} d(a, p) - \min_{n \in Q(a)} d(a, n)\big)
        \quad \text{(soft=True)} $$

    $$ \text{loss} = \sum_{a\ \text{valid}} w_a \ell_a \Big/ \sum_{a\ \text{valid}} w_a $$

    An anchor is valid when it has at least one positive and one negative in
    the batch; a batch without valid anchors has loss 0. Same values as TF
    Addons' `TripletHardLoss` (when every anchor is valid; TF Addons also
    averages over anchors without positives) and PyTorch Metric Learning's
    `BatchHardMiner` + `TripletMarginLoss` with a mean reducer. The soft
    margin is computed stably (TF Addons overflows to inf for gaps above ~88).

    Args:
        margin: The margin `m`; unused when `soft=True`.
        soft: Use the soft margin `softplus(·)` instead of `relu(· + m)`.
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        normalize: L2-normalise the embeddings before the distance.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for the per-anchor vector (0 for invalid
            anchors).
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas, so that training
            matches one device on the global batch (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive shares
            at least one label with the anchor, a negative none.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.BatchHardTriplet(margin=1.0)(labels, embeddings)), 4)
    0.441
    """

    faster_under_xla = True

    def __init__(
        self,
        margin=1.0,
        soft=False,
        distance="euclidean",
        normalize=False,
        reduction="sum_over_batch_size",
        name="batch_hard_triplet",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica, multi_label, miner)
        self.margin = float(margin)
        self.soft = bool(soft)

    def distance_terms(self, distances, positive, negative):
        return batch_hard_triplet_terms(distances, positive, negative, self.margin, self.soft)

    def pair_terms(self, embeddings, ref_embeddings, positive, negative):
        return _batch_hard_pair_terms(
            embeddings, ref_embeddings, positive, negative, self.margin, self.soft, self.distance, self.normalize
        )

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "soft": self.soft})
        return config


def batch_all_triplet_terms(distances, positive, negative, margin=1.0, average="nonzero", triplets=None):
    """`(loss_sums, term_counts)` of `all_triplet_terms`, counting the active or all triplets.

    `triplets`: a miner's `tfm.miners.Triplets`, the only triplets then.
    """
    if triplets is None:
        loss_sums, active, valid = all_triplet_terms(distances, positive, negative, margin)
    else:
        loss_sums, active, valid = mined_triplet_terms(distances, triplets, margin)
    return loss_sums, active if check_choice("average", average, AVERAGES) == "nonzero" else valid


def batch_all_triplet(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    margin=1.0,
    distance="euclidean",
    normalize=False,
    average="nonzero",
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query batch-all triplet losses (the math of `BatchAllTriplet`).

    Each query's mean of `relu(d(a, p) − d(a, n) + m)` over its triplets with
    a positive loss (`average="nonzero"`) or all of them (`"all"`), p and n
    among the reference rows (default: the batch); with a `miner`, over the
    triplets it mines. The arguments are those of `batch_hard_triplet` and
    `BatchAllTriplet`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> [round(float(v), 4) for v in tfm.losses.batch_all_triplet([0, 0, 1, 1], embeddings)]
    [0.0, 0.0, 0.882, 0.4678]
    """
    check_distance(distance)
    pairs = mine_pairs(
        labels, embeddings, ref_labels, ref_embeddings, multi_label=multi_label, remove_diagonal=remove_diagonal
    )
    return per_query(_batch_all_pair_terms(*pairs, margin, average, distance, normalize, miner))


def _batch_all_pair_terms(embeddings, ref_embeddings, positive, negative, margin, average, distance, normalize,
                          miner):
    distances = pair_distances(embeddings, ref_embeddings, distance, normalize)
    if miner is None:
        return batch_all_triplet_terms(distances, positive, negative, margin, average)
    # The miner's matrix is the loss's when they measure alike.
    matrix = ops.stop_gradient(distances) if miner.uses(distance, normalize) else None
    triplets = miner.mine_triplets(embeddings, ref_embeddings, positive, negative, matrix=matrix)
    return batch_all_triplet_terms(distances, positive, negative, margin, average, triplets)


@keras.saving.register_keras_serializable(package="tfmetric")
class BatchAllTriplet(DistanceLoss):
    r"""Batch-all triplet loss over every valid triplet of the batch.

    $$ \ell_{apn} = \mathrm{relu}\big(d(a, p) - d(a, n) + m\big) \quad \text{for } p \in P(a),\ n \in Q(a) $$

    $$ \text{loss} = \sum w_a \ell_{apn} \Big/ \sum w_a [\ell_{apn} > 0] \quad \text{(average="nonzero")} $$

    $$ \text{loss} = \sum w_a \ell_{apn} \Big/ \sum w_a \quad \text{(average="all")} $$

    A triplet is weighted by its anchor's sample weight; a batch without
    (positive) triplets has loss 0. `"nonzero"` is Hermans et al.'s
    "BA≠0" and PyTorch Metric Learning's `TripletMarginLoss` default;
    `"all"` is its `MeanReducer`. `ActiveTripletFraction` reports the share
    of triplets with a positive loss as a metric.

    No `(N, N, N)` tensor is built: the work is O(N²·k) for k the largest
    number of positives of an anchor (K − 1 in a P×K batch), the memory O(N²).

    Args:
        margin: The margin `m`.
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        normalize: L2-normalise the embeddings before the distance.
        average: `"nonzero"` or `"all"`, the denominator above.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"` (the weighted sum of triplet losses), or `None` for the
            per-anchor mean over its own triplets.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas, so that training
            matches one device on the global batch (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)` (see `BatchHardTriplet`).
        miner: A `tfm.miners` miner: the loss runs over the triplets it mines
            (a pair miner's: each mined positive pair with every mined
            negative pair of its anchor), as PML's `TripletMarginLoss` with
            a miner; `None`: every triplet. With `average="all"`,
            `BatchHardTriplet()` is `BatchAllTriplet(miner=BatchHardMiner(normalize=False))`
            and `SemiHardTriplet()` is `BatchAllTriplet(miner=SemiHardMiner(normalize=False))`
            (those two are faster).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.BatchAllTriplet(margin=1.0)(labels, embeddings)), 4)
    0.6749
    """

    faster_under_xla = True
    compiles_terms_alone = True
    mines_triplets = True

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        normalize=False,
        average="nonzero",
        reduction="sum_over_batch_size",
        name="batch_all_triplet",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica, multi_label, miner)
        self.margin = float(margin)
        self.average = check_choice("average", average, AVERAGES)

    def distance_terms(self, distances, positive, negative):
        return batch_all_triplet_terms(distances, positive, negative, self.margin, self.average)

    def pair_terms(self, embeddings, ref_embeddings, positive, negative):
        return _batch_all_pair_terms(
            embeddings, ref_embeddings, positive, negative, self.margin, self.average, self.distance,
            self.normalize, self.miner,
        )

    def matrix_terms(self):
        # Without a miner, the distances and `distance_terms`.
        return None if self.miner is not None else (self._distances, self.distance_terms)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "average": self.average})
        return config


def semi_hard_triplet(
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
    """Per-query semi-hard triplet losses (the math of `SemiHardTriplet`).

    Each query's mean over its positive pairs (a, p) of
    `relu(d(a, p) − d(a, n*) + m)`, n* the closest negative farther than p
    (or the farthest negative), p and n among the reference rows (default:
    the batch). The arguments are those of `batch_hard_triplet` and
    `SemiHardTriplet`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> [round(float(v), 4) for v in tfm.losses.semi_hard_triplet([0, 0, 1, 1], embeddings)]
    [0.0, 0.0, 0.7639, 0.7639]
    """
    return distance_loss(
        semi_hard_triplet_terms,
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
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class SemiHardTriplet(DistanceLoss):
    r"""Semi-hard triplet loss (Schroff et al. 2015, "FaceNet").

    For every positive pair (a, p), the negative is the closest one farther
    than the positive, `argmin_{n∈Q(a), d(a,n) > d(a,p)} d(a, n)`, or the
    farthest negative when no negative is farther than the positive:

    $$ \ell_{ap} = \mathrm{relu}\big(d(a, p) - d(a, n^*) + m\big) $$

    $$ \text{loss} = \sum w_a \ell_{ap} \Big/ \sum w_a
        \quad \text{over the positive pairs whose anchor has a negative} $$

    Exactly TF Addons' `TripletSemiHardLoss`, except that a batch without
    such pairs gives 0 where TF Addons returns NaN, and a single-class batch
    gives 0 (no negative to compare with). Memory is O(N²) (TF Addons tiles
    an N²×N tensor).

    Args:
        margin: The margin `m`.
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        normalize: L2-normalise the embeddings before the distance.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for the per-anchor mean over its pairs.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas, so that training
            matches one device on the global batch (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)` (see `BatchHardTriplet`).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    >>> round(float(tfm.SemiHardTriplet(margin=1.0)(labels, embeddings)), 4)
    0.382
    """

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        normalize=False,
        reduction="sum_over_batch_size",
        name="semi_hard_triplet",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica, multi_label, miner)
        self.margin = float(margin)

    def distance_terms(self, distances, positive, negative):
        return semi_hard_triplet_terms(distances, positive, negative, self.margin)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin})
        return config
