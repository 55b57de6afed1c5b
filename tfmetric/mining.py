"""In-batch mining: which pairs and triplets of a batch a loss looks at.

Everything works on the `(N, N)` distance matrix of a batch and the masks of
its positive pairs (same label, not the anchor itself) and negative pairs
(different labels), and never builds an `(N, N, N)` tensor: memory is O(N²).

The per-positive-pair searches (semi-hard negatives, all triplets) visit the
positives of every anchor one "slot" at a time: slot s holds the s-th
positive of every anchor. The work is O(N²·k), k the largest number of
positives of an anchor (K − 1 for P×K batches); each slot is a few
elementwise passes and row reductions, which stay fast under XLA, where
sorting does not. The loops run on gradient-free copies of the distances and
return each anchor's exact loss together with its derivative with respect to
every distance (the losses are piecewise linear in them);
`_attach_gradient` joins the two, so no loop is ever differentiated (JAX
cannot differentiate a loop of data-dependent length).
"""

import numpy as np
from keras import backend, ops


def label_masks(labels):
    """Returns the boolean `(positive, negative)` masks of a batch of labels `(N,)`.

    `positive[a, p]`: same label and `p != a`; `negative[a, n]`: different labels.
    A NaN label (a row that holds no example) is in neither mask, of any row.
    """
    row, column = labels[:, None], labels[None, :]
    same = ops.equal(row, column)
    not_self = ops.logical_not(ops.eye(ops.shape(labels)[0], dtype="bool"))
    # Not `not same`: NaN differs from nothing either.
    different = ops.logical_or(ops.less(row, column), ops.greater(row, column))
    return ops.logical_and(same, not_self), different


def first_positions(sorted_values, values):
    """For each of `values`, the first position of an equal entry in `sorted_values` (int32)."""
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        # Keras' searchsorted takes len() of its input before Keras 3.12,
        # which fails in a graph.
        return tf.searchsorted(sorted_values, values, side="left", out_type=tf.int32)
    return ops.cast(ops.searchsorted(sorted_values, values, side="left"), "int32")


def hardest_pairs(distances, positive, negative):
    """Per anchor, the index of its farthest positive and of its closest negative.

    Rows without a positive (or negative) get index 0 there; the caller
    masks them out.

    Returns:
        `(positive_index, negative_index)`, int32 vectors of shape `(N,)`.
    """
    distances = ops.stop_gradient(distances)
    farthest = ops.argmax(ops.where(positive, distances, ops.full_like(distances, float("-inf"))), axis=1)
    closest = ops.argmin(ops.where(negative, distances, ops.full_like(distances, float("inf"))), axis=1)
    return ops.cast(farthest, "int32"), ops.cast(closest, "int32")


def _for_each_positive_slot(labels, positive, num_positives, body, state):
    """Runs `state = body(slot_positive, has_slot, state)` for every slot.

    Slot s holds, for every anchor a, its s-th positive `slot_positive[a]`
    (an index into the batch); `has_slot[a]` says whether a has that many
    positives. Only vectors of length N are built per slot: the positives of
    every class are found once, by sorting the labels.
    """
    size = ops.shape(labels)[0]
    if "float" in backend.standardize_dtype(labels.dtype):
        # NaN labels (rows that hold no example) would break the sorted
        # order the class search relies on: they sort last, as +inf.
        labels = ops.where(ops.equal(labels, labels), labels, ops.full_like(labels, float("inf")))
    order = ops.cast(ops.argsort(labels), "int32")
    sorted_labels = ops.take(labels, order)
    class_start = first_positions(sorted_labels, sorted_labels)
    position = ops.cast(ops.argsort(order), "int32")
    start = ops.take(class_start, position)
    own_rank = position - start
    # `num_positives` comes from the mask rather than the class sizes, so
    # that labels that equal nothing (NaN, unvalidated under XLA) have no
    # positive here either.
    num_positives = ops.cast(num_positives, "int32")
    num_slots = ops.max(ops.concatenate([num_positives, ops.zeros((1,), "int32")]))

    def step(slot, *state):
        rank = slot + ops.cast(slot >= own_rank, "int32")
        slot_positive = ops.take(order, ops.minimum(start + rank, size - 1))
        has_slot = ops.logical_and(slot < num_positives, row_pick(positive, slot_positive))
        return (slot + 1, *body(slot_positive, has_slot, *state))

    result = ops.while_loop(
        lambda slot, *_: slot < num_slots,
        step,
        (ops.convert_to_tensor(0, "int32"), *state),
    )
    return tuple(result[1:])


def _upper_ones(size, dtype, diagonal=True):
    """The upper triangle of a `(size, size)` matrix of ones, with or without the diagonal.

    Not `ops.triu`, whose TensorFlow form fails in a graph before Keras 3.9.
    """
    index = ops.arange(size)
    above = index[:, None] <= index[None, :] if diagonal else index[:, None] < index[None, :]
    return ops.cast(above, dtype)


def _row_cumsum(matrix, block=32):
    """`cumsum(matrix, axis=1)` as two small triangular matrix products.

    XLA lowers a cumulative sum to a reduce-window, quadratic in the row
    length on CPU (300 ms for 1024 × 1024); blocks of 32 columns keep the
    work at O(N²·32) on every backend.
    """
    rows, columns = ops.shape(matrix)[0], ops.shape(matrix)[1]
    padding = (block - columns % block) % block
    padded = ops.concatenate([matrix, ops.zeros((rows, padding), matrix.dtype)], axis=1)
    blocks = ops.reshape(padded, (rows, -1, block))
    within = ops.matmul(blocks, _upper_ones(block, matrix.dtype))
    totals = within[:, :, -1]
    num_blocks = ops.shape(totals)[1]
    before = ops.matmul(totals, _upper_ones(num_blocks, matrix.dtype, diagonal=False))
    return ops.reshape(within + before[:, :, None], (rows, -1))[:, :columns]


def row_pick(matrix, column):
    """`matrix[a, column[a]]` for every row a."""
    return ops.take_along_axis(matrix, column[:, None], axis=1)[:, 0]


def _scatter_rows(columns_and_values, shape):
    """A dense `shape` matrix with `value[a]` added at `(a, column[a])`."""
    rows = ops.arange(shape[0], dtype="int32")
    indices = ops.concatenate(
        [ops.stack([rows, column], axis=1) for column, _ in columns_and_values], axis=0
    )
    values = ops.concatenate([value for _, value in columns_and_values], axis=0)
    return ops.scatter(indices, values, shape)


def _attach_gradient(value, distances, gradient):
    """`value` in the forward pass, with `gradient` as its gradient w.r.t. `distances`.

    The slot loops compute each anchor's loss exactly and, separately, the
    derivative of that loss with respect to every distance (the loss is
    piecewise linear in them). `surrogate - stop_gradient(surrogate)` is
    exactly 0 in floating point, so the value keeps all its digits.
    """
    surrogate = ops.sum(ops.stop_gradient(gradient) * distances, axis=1)
    return ops.stop_gradient(value) + (surrogate - ops.stop_gradient(surrogate))


def semi_hard_triplet_terms(distances, labels, margin=1.0):
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
    positive, negative = label_masks(labels)
    d = ops.stop_gradient(distances)
    inf = ops.full_like(d, float("inf"))
    has_negative = ops.any(negative, axis=1)
    # +inf at non-negatives takes them out of every minimum below.
    negative_distances = ops.where(negative, d, inf)
    farthest_candidates = ops.where(negative, d, -inf)
    farthest = ops.cast(ops.argmax(farthest_candidates, axis=1), "int32")
    farthest_distance = row_pick(d, farthest)

    def body(slot_positive, has_slot, loss_sums, gradient):
        positive_distance = row_pick(d, slot_positive)
        beyond = ops.where(negative_distances > positive_distance[:, None], negative_distances, inf)
        nearest_beyond = ops.cast(ops.argmin(beyond, axis=1), "int32")
        nearest_beyond_distance = row_pick(beyond, nearest_beyond)
        has_beyond = nearest_beyond_distance < float("inf")
        chosen = ops.where(has_beyond, nearest_beyond, farthest)
        chosen_distance = ops.where(has_beyond, nearest_beyond_distance, farthest_distance)
        losses = ops.relu(positive_distance - chosen_distance + margin)
        active = ops.logical_and(ops.logical_and(has_slot, has_negative), losses > 0)
        losses = ops.where(active, losses, ops.zeros_like(losses))
        # d[a, p] enters an active pair's loss with sign +1, d[a, n] with -1.
        weight = ops.cast(active, d.dtype)
        gradient = gradient + _scatter_rows(
            [(slot_positive, weight), (chosen, -weight)], ops.shape(d)
        )
        return loss_sums + losses, gradient

    num_positives = ops.sum(ops.cast(positive, d.dtype), axis=1)
    loss_sums, gradient = _for_each_positive_slot(
        labels, positive, num_positives, body, (ops.zeros(ops.shape(d)[:1], d.dtype), ops.zeros_like(d))
    )
    pair_counts = num_positives * ops.cast(has_negative, d.dtype)
    return _attach_gradient(loss_sums, distances, gradient), pair_counts


def all_triplet_terms(distances, labels, margin):
    """Sums `relu(d[a, p] − d[a, n] + margin)` over all triplets of each anchor.

    Triplets are every (a, p, n) with p a positive and n a negative of a.

    Returns:
        `(loss_sums, active_counts, valid_counts)`, each of shape `(N,)`: the
        sum of the triplet losses of each anchor (differentiable with respect
        to `distances`), how many of its triplets have a positive loss, and
        how many triplets it has.
    """
    positive, negative = label_masks(labels)
    d = ops.stop_gradient(distances)
    # +inf at non-negatives takes them out of every comparison below.
    negative_distances = ops.where(negative, d, ops.full_like(d, float("inf")))

    def body(slot_positive, has_slot, loss_sums, active_counts, gradient):
        threshold = row_pick(d, slot_positive) + margin
        threshold = ops.where(has_slot, threshold, ops.full_like(threshold, float("-inf")))
        gaps = ops.relu(threshold[:, None] - negative_distances)
        active = ops.cast(gaps > 0, d.dtype)
        per_pair = ops.sum(active, axis=1)
        # d[a, p] enters each of its active triplets with sign +1, d[a, n]
        # with sign -1.
        gradient = gradient + _scatter_rows([(slot_positive, per_pair)], ops.shape(d)) - active
        return loss_sums + ops.sum(gaps, axis=1), active_counts + per_pair, gradient

    zeros = ops.zeros(ops.shape(d)[:1], d.dtype)
    num_positives = ops.sum(ops.cast(positive, d.dtype), axis=1)
    loss_sums, active_counts, gradient = _for_each_positive_slot(
        labels, positive, num_positives, body, (zeros, zeros, ops.zeros_like(d))
    )
    valid_counts = num_positives * ops.sum(ops.cast(negative, d.dtype), axis=1)
    loss_sums = _attach_gradient(loss_sums, distances, gradient)
    return loss_sums, ops.stop_gradient(active_counts), valid_counts


def _bit_pattern(values, key_dtype):
    """The bits of `values` as integers of the same width."""
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        # keras.ops.view compares the last dimension with Python `==`, which
        # fails when the batch size is unknown in a graph (a batch without
        # drop_remainder, a gathered global batch).
        return tf.bitcast(values, key_dtype)
    # keras.ops.view arrives in Keras 3.12.
    if backend.backend() == "jax":
        import jax

        return jax.lax.bitcast_convert_type(values, key_dtype)
    if backend.backend() == "torch":
        import torch

        return values.view(getattr(torch, key_dtype))
    return ops.view(values, key_dtype)


def smallest_entries(values, candidates, count):
    """Weights selecting exactly `count` of the smallest candidate entries.

    Returns a float matrix shaped like `values`: 1 at the candidates below
    the `count`-th smallest candidate value, and at the candidates equal to
    it the share of the remaining count (so ties at the boundary are treated
    alike and the weights always sum to `min(count, number of candidates)`).

    The threshold is found by bisection on the bit patterns of the
    non-negative float values, which order like the values themselves: a
    fixed number of counting passes over the matrix. Sorting the N² entries
    instead is ten times slower on CPU, and slower still under XLA.
    """
    values = ops.stop_gradient(values)
    if backend.standardize_dtype(values.dtype) == "float64":
        key_dtype, bits, infinity_key = "int64", 63, 0x7FF0000000000000
    else:
        values = ops.cast(values, "float32")
        key_dtype, bits, infinity_key = "int32", 31, 0x7F800000
    # abs: -0.0 has the sign bit set, which would make it the smallest key.
    keys = _bit_pattern(ops.abs(values), key_dtype)
    keys = ops.where(candidates, keys, ops.full_like(keys, infinity_key))
    count = ops.minimum(
        ops.cast(count, key_dtype), ops.sum(ops.cast(candidates, key_dtype))
    )

    def halve(_, bounds):
        low, high = bounds
        middle = low + (high - low) // 2
        enough = ops.sum(ops.cast(keys <= middle, key_dtype)) >= count
        return ops.where(enough, low, middle + 1), ops.where(enough, middle, high)

    # A loop rather than unrolled steps: XLA compiles it in a fraction.
    low, _ = ops.fori_loop(
        0,
        bits,
        halve,
        (ops.convert_to_tensor(0, key_dtype), ops.convert_to_tensor(infinity_key, key_dtype)),
    )
    below = keys < low
    at = ops.logical_and(keys == low, candidates)
    dtype = values.dtype
    remaining = ops.cast(count - ops.sum(ops.cast(below, key_dtype)), dtype)
    tie_share = remaining / ops.maximum(ops.sum(ops.cast(at, dtype)), 1)
    return ops.cast(below, dtype) + ops.cast(at, dtype) * tie_share


def distance_weighted_log_weights(distances, negative, dim, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """Log sampling weights of negatives, Wu et al. 2017 ("Sampling Matters").

    On the unit sphere in `dim` dimensions, pairwise distances have density
    `q(d) ∝ d^(dim−2) · (1 − d²/4)^((dim−3)/2)`; sampling negatives with
    probability ∝ `1/q(d)` spreads them evenly over distances. Returns
    `−log q(max(d, cutoff))` at the negatives closer than
    `nonzero_loss_cutoff` and `−inf` elsewhere; a row whose negatives are all
    that far falls back to 0 (uniform) at every negative. In log space the
    weights of 512-dimensional embeddings stay finite (their ratios reach
    10^300 and beyond, which underflow as plain floats).
    """
    d = ops.maximum(distances, cutoff)
    tiny = float(np.finfo(backend.standardize_dtype(d.dtype)).tiny)
    log_q = (dim - 2.0) * ops.log(d) + ((dim - 3.0) / 2.0) * ops.log(
        ops.maximum(1.0 - 0.25 * ops.square(d), tiny)
    )
    allowed = ops.logical_and(negative, distances < nonzero_loss_cutoff)
    uniform = ops.logical_not(ops.any(allowed, axis=1, keepdims=True))
    minus_inf = ops.full_like(d, float("-inf"))
    return ops.where(
        allowed,
        -log_q,
        ops.where(ops.logical_and(uniform, negative), ops.zeros_like(d), minus_inf),
    )


def sample_negative_counts(log_weights, labels, positive, uniforms):
    """How often each negative is drawn, one draw per positive pair.

    For every positive pair (a, p), one column n is drawn from the
    categorical distribution `∝ exp(log_weights[a])` (`−inf`: never) by
    inverting its cumulative sum at a uniform number. Returns an `(N, N)`
    matrix of draw counts; rows without a finite weight draw nothing.
    Inverse-CDF sampling keeps the memory at O(N²) (Gumbel-max would need an
    N×N×N noise tensor).

    Args:
        uniforms: `(N, S)` numbers uniform in [0, 1): the draw for the s-th
            positive of anchor a uses `uniforms[a, s mod S]`, turned by
            `⌊s / S⌋` golden-ratio steps when an anchor has more than S
            positives (each draw stays uniform; only those beyond the
            first S are no longer independent of the first S). A few
            columns suffice: XLA's random generator on CPU costs ~0.4 µs per
            number, 400 ms for N × N.
    """
    log_weights = ops.stop_gradient(log_weights)
    finite = log_weights > float("-inf")
    has_candidate = ops.any(finite, axis=1)
    row_max = ops.max(log_weights, axis=1)
    row_max = ops.where(has_candidate, row_max, ops.zeros_like(row_max))
    weights = ops.where(finite, ops.exp(log_weights - row_max[:, None]), ops.zeros_like(log_weights))
    cumulative = _row_cumsum(weights)
    total = cumulative[:, -1]
    size = ops.shape(log_weights)[1]
    columns = ops.arange(size, dtype="int32")
    last_candidate = ops.max(ops.where(finite, columns[None, :], ops.zeros_like(columns)[None, :]), axis=1)
    num_positives = ops.sum(ops.cast(positive, "int32"), axis=1)
    uniforms = ops.cast(uniforms, weights.dtype)
    num_columns = ops.shape(uniforms)[1]
    golden = 0.6180339887498949

    def body(slot_positive, has_slot, counts, slot):
        column = ops.full_like(slot_positive, slot % num_columns)
        turns = ops.cast(slot // num_columns, weights.dtype) * golden
        uniform = row_pick(uniforms, column) + turns
        uniform = uniform - ops.floor(uniform)
        target = uniform * total
        # The first column whose cumulative weight exceeds the target has a
        # positive weight itself; rounding can push the target to the total.
        chosen = ops.sum(ops.cast(cumulative <= target[:, None], "int32"), axis=1)
        chosen = ops.minimum(chosen, last_candidate)
        drawn = ops.cast(ops.logical_and(has_slot, has_candidate), weights.dtype)
        return counts + _scatter_rows([(chosen, drawn)], ops.shape(weights)), slot + 1

    counts, _ = _for_each_positive_slot(
        labels,
        positive,
        num_positives,
        body,
        (ops.zeros_like(weights), ops.convert_to_tensor(0, "int32")),
    )
    return counts
