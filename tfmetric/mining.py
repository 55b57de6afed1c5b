"""Mining: which pairs of queries and reference rows a loss looks at.

A loss compares N queries with R reference rows: the batch with itself
(the square case, R = N, where a row is never its own pair), the batch with
a separate reference set (a second tower, a cross-batch memory). Everything
here works on the `(N, R)` distance or similarity rectangle and the masks of
its positive pairs (shared label) and negative pairs (no shared label), and
never builds an `(N, R, R)` tensor: memory is O(N·R).

The per-positive-pair searches (semi-hard negatives, all triplets, sampled
negatives) visit the positives of every query one "slot" at a time: slot s
holds the s-th positive of every query. The work is O(N·R·k), k the largest
number of positives of a query (K − 1 for P×K batches); each slot is a few
elementwise passes and row reductions, which stay fast under XLA, where
sorting does not. The loops run on gradient-free copies of the distances and
return each query's exact loss together with its derivative with respect to
every distance (the losses are piecewise linear in them); `attach_gradient`
joins the two, so no loop is ever differentiated (JAX cannot differentiate a
loop of data-dependent length).
"""

from typing import NamedTuple

import keras
import numpy as np
from keras import backend, ops

from tfmetric.distances import (
    as_embedding_pair,
    compiled_by_xla,
    matmul,
    off_diagonal,
    row_sums,
    runs_op_by_op,
    tensorflow_op_by_op,
)
from tfmetric.labels import standardize_any, standardize_label_pair


def pair_masks(labels, ref_labels=None, *, multi_label=False, remove_diagonal=None, ref_valid=None):
    """The boolean `(positive, negative)` masks of queries against reference rows.

    Args:
        labels: Validated labels of the N queries: class ids `(N,)`, or with
            `multi_label` 0/1 rows `(N, C)`.
        ref_labels: Those of the R reference rows; `None`: the queries
            themselves.
        multi_label: A positive pair shares at least one label, a negative
            pair none; otherwise they have the same or different class ids.
        remove_diagonal: Leave entry `(a, a)` out of both masks, for
            references that start with the queries themselves (so that no
            query is its own positive). `None`: only when `ref_labels` is
            `None`.
        ref_valid: Optional boolean `(R,)`: reference rows that hold an
            example (the filled slots of a memory); others are in no pair.

    Returns:
        `(positive, negative)`, boolean `(N, R)`.
    """
    if remove_diagonal is None:
        remove_diagonal = ref_labels is None
    if ref_labels is None:
        ref_labels = labels
    if multi_label:
        shared = ops.matmul(ops.cast(labels, "float32"), ops.transpose(ops.cast(ref_labels, "float32")))
        same = shared > 0
    else:
        same = ops.equal(labels[:, None], ref_labels[None, :])
    different = ops.logical_not(same)
    keep = off_diagonal(ops.shape(labels)[0], ops.shape(ref_labels)[0]) if remove_diagonal else None
    if ref_valid is not None:
        valid = ops.cast(ref_valid, "bool")[None, :]
        keep = valid if keep is None else ops.logical_and(keep, valid)
    if keep is None:
        return same, different
    return ops.logical_and(same, keep), ops.logical_and(different, keep)


def label_masks(labels):
    """The `(positive, negative)` masks of a batch of class ids `(N,)` against itself."""
    return pair_masks(labels)


class Pairs(NamedTuple):
    """Validated queries, their reference, and the masks of their pairs."""

    embeddings: object
    ref_embeddings: object
    positive: object
    negative: object


def mine_pairs(labels, embeddings, ref_labels=None, ref_embeddings=None, *, multi_label=False, remove_diagonal=None,
               ref_valid=None):
    """Validates queries and reference and returns their `Pairs`.

    Without `ref_labels`/`ref_embeddings` the reference is the batch itself
    and the diagonal is removed (`remove_diagonal=None`). Labels are class
    ids `(N,)` or `(N, 1)` (never cast to float: large ids stay distinct),
    or with `multi_label` 0/1 rows `(N, C)` or a `tf.SparseTensor`.
    """
    if (ref_labels is None) != (ref_embeddings is None):
        raise ValueError("Pass both ref_labels and ref_embeddings, or neither.")
    embeddings, ref_embeddings = as_embedding_pair(embeddings, ref_embeddings)
    if ref_embeddings is None:
        labels = standardize_any(labels, embeddings, multi_label)
        positive, negative = pair_masks(labels, multi_label=multi_label, remove_diagonal=remove_diagonal)
        return Pairs(embeddings, embeddings, positive, negative)
    labels, ref_labels = standardize_label_pair(labels, ref_labels, embeddings, ref_embeddings, multi_label)
    positive, negative = pair_masks(
        labels, ref_labels, multi_label=multi_label, remove_diagonal=bool(remove_diagonal), ref_valid=ref_valid
    )
    return Pairs(embeddings, ref_embeddings, positive, negative)


def hardest_pairs(distances, positive, negative):
    """Per anchor, the index of its farthest positive and of its closest negative.

    Rows without a positive (or negative) get index 0 there; the caller
    masks them out.

    Returns:
        `(positive_index, negative_index)`, int32 vectors of shape `(N,)`.
    """
    distances = ops.stop_gradient(distances)
    inf = ops.full((), float("inf"), distances.dtype)
    _, farthest = row_min(ops.where(positive, -distances, inf))
    _, closest = row_min(ops.where(negative, distances, inf))
    return farthest, closest


def for_each_positive(positive, body, state, table=None, counts=None):
    """Runs `state = body(slot_positive, has_slot, *state)` for every slot.

    Slot s holds, for every query a, its s-th positive column
    `slot_positive[a]` (in column order), until `has_slot[a]` says that a
    has no more; whatever the labels are (class ids, multi-hot rows, rows
    of a memory). `table`, `counts`: those of `positive_table_and_counts`
    where the caller has them already. `body` must leave the rows without
    the slot as they are: the rows with fewer positives than the most go
    through the later slots, and under XLA the first slot runs even where
    no query has a positive.
    """
    positive = ops.cast(positive, "bool")
    if table is None and counts is None:
        table, counts = positive_table_and_counts(positive)
    num_positives = row_counts(positive, counts)
    num_slots = _most(num_positives)
    next_column = _positive_columns(positive, num_slots, table)

    def step(slot, previous, *state):
        slot_positive = next_column(slot, previous)
        has_slot = slot < num_positives
        return (slot + 1, slot_positive, *body(slot_positive, has_slot, *state))

    start = (ops.convert_to_tensor(0, "int32"), -ops.ones_like(num_positives), *state)
    if table is None and compiled_by_xla():
        # The first slot outside the loop: XLA folds the zeros the state starts from into its sums,
        # where the loop would fill them in memory first (a pass over an (N, R) state).
        start = step(*start)
    result = ops.while_loop(lambda slot, *_: slot < num_slots, step, start)
    return tuple(result[2:])


def row_counts(mask, counts=None):
    """Every row's number of True entries, int32: `counts` where the caller has them, else `mask_row_counts`."""
    return mask_row_counts(mask, "int32") if counts is None else counts


def mask_row_counts(mask, dtype):
    """Every row's number of True entries of the boolean `(N, R)` `mask`, as numbers of `dtype`.

    Under XLA, which on a CPU converts a whole boolean matrix at about 1 ns
    an entry (as slowly as it writes one), the sums of sixteen strided
    slices of the mask (every 16th column), then a row sum of R / 16: one
    fused pass that reads the mask and writes a sixteenth of it (a count
    at N = 1024: 0.85 → 0.35 ms beside a row sum of floats). Elsewhere the
    sum of the mask cast to `dtype`.
    """
    if not compiled_by_xla():
        return ops.sum(ops.cast(mask, dtype), axis=1)
    partial_counts = None
    for column_bits in _strided_bits(mask):
        partial_counts = column_bits if partial_counts is None else partial_counts + column_bits
    return ops.cast(ops.sum(partial_counts, axis=1), dtype)


def _strided_bits(mask):
    """The `_WORD_BITS` strided slices of `mask` (every 16th column from each of the first 16) as int32 0/1,
    `(N, ⌈R / 16⌉)` each; the columns past R are False."""
    padding = (-ops.shape(mask)[1]) % _WORD_BITS
    # A number of columns only known when the graph runs: padded by a tensor, perhaps of 0.
    if not isinstance(padding, int) or padding:
        mask = ops.pad(mask, [[0, 0], [0, padding]], constant_values=False)
    return [ops.cast(mask[:, bit::_WORD_BITS], "int32") for bit in range(_WORD_BITS)]


def _most(counts):
    """The largest of the int32 `counts`, 0 when there are none."""
    return ops.max(ops.concatenate([counts, ops.zeros((1,), "int32")]))


def positive_table(positive, num_slots=None):
    """Every query's positive columns in column order, `(N, S)` int32, S the most positives of a query; or `None`.

    `positive_table_and_counts` gives each query's number of positives with it.

    Where every operation is a kernel of its own (TensorFlow without XLA,
    PyTorch), the positives' coordinates in row-major order (`tf.where`,
    one pass over the mask; `top_k` of the mask took 2–5× as long at
    N = 1024), each put at its place among its row's; on PyTorch the
    selection of the mask times keys that fall from column to column (a
    running count of the positives and a binary search in it took 2–4×
    as long on a CPU, PyTorch's `cumsum` being slow there). A query with
    fewer than S positives has other (valid) columns after them. `None`
    under XLA, whose shapes cannot depend on S.
    """
    return positive_table_and_counts(positive, num_slots)[0]


def positive_table_and_counts(positive, num_slots=None):
    """`(positive_table(positive), counts)`, `counts` int32 `(N,)` every query's number of positives.

    The table's own coordinates give the counts where there is a table: the
    row sums of the cast mask cost a millisecond at N = 1,024 without XLA,
    and the slot loops, their slots' masks and the losses' means each need
    them.
    """
    positive = ops.cast(positive, "bool")
    if not runs_op_by_op():
        return None, row_counts(positive)
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        num_rows = tf.shape(positive)[0]
        rows, columns = entry_coordinates(positive)
        counts = count_at(rows, num_rows, "int32")
        if num_slots is None:
            num_slots = _most(counts)
        # Rows come in order: a positive's slot is its place after its row's first.
        slots = tf.range(tf.shape(rows)[0]) - tf.gather(tf.cumsum(counts, exclusive=True), rows)
        # Each cell once: `scatter_sum`'s sums into segments of the flat cells,
        # not `scatter_nd` into zeros (0.36 against 1.06 ms for 15,360 positives at N = 1024).
        return scatter_sum(tf.stack([rows, slots], axis=1), columns, (num_rows, num_slots)), counts
    counts = row_counts(positive)
    if num_slots is None:
        num_slots = _most(counts)
    import torch

    keys = torch.arange(positive.shape[1], 0, -1, dtype=torch.int32, device=positive.device)
    return torch.topk(positive.to(torch.int32) * keys, int(num_slots), dim=1).indices.to(torch.int32), counts


def entry_coordinates(mask):
    """The rows and columns of the True entries of a boolean matrix, int32 `(P,)` each, in row-major order.

    For terms that only some pairs have (those of the positive pairs): on
    these P entries instead of the whole matrix, where every operation is a
    kernel of its own and reads and writes all of it (TensorFlow without
    XLA, PyTorch). `None` elsewhere: under XLA and JAX shapes cannot depend
    on the data, and there the passes over the matrix fuse into one.
    """
    if not runs_op_by_op():
        return None
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        coordinates = tf.cast(tf.where(mask), tf.int32)
    else:
        import torch

        coordinates = torch.nonzero(mask).to(torch.int32)
    return coordinates[:, 0], coordinates[:, 1]


def take_in_range(values, indices, axis=0):
    """`keras.ops.take` with indices known to be in range.

    TensorFlow's form of `take` wraps negative indices first: three more
    passes over the indices (a comparison, an addition, a selection), as
    long as the gather itself for a million of them. From a vector,
    `gather_nd` (1.4 ms for a million numbers on a CPU, `gather` 1.9 ms).
    """
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        if len(values.shape) == 1 and axis == 0:
            return tf.gather_nd(values, indices[..., None])
        return tf.gather(values, indices, axis=axis)
    return ops.take(values, indices, axis=axis)


def add_at(values, indices, size):
    """`size` zeros with every `values[i]` added at `indices[i]`: 1-D, differentiable in float `values`.

    `keras.ops.segment_sum`, except under TensorFlow without XLA, whose
    `unsorted_segment_sum` takes 35 ms on CPU for 10⁶ values into many
    segments (16 ms against 3 ms into a few): its `bincount`, which has no
    gradient, with the gradient of float values written out (a
    `gather_nd`, 1.4 ms for a million values where `gather` takes 1.9 ms);
    and under PyTorch, where Keras' segment sum adds in float32 whatever the
    values' type: `index_add`. Integer values count (the miners' bins).
    """
    if backend.backend() == "torch":
        import torch

        return torch.zeros((size,), dtype=values.dtype, device=values.device).index_add(0, indices.long(), values)
    if tensorflow_op_by_op():
        import tensorflow as tf

        def sums(values):
            return dense_bincount(indices, size, values)

        if not values.dtype.is_floating:
            return sums(values)

        @tf.custom_gradient
        def added(values):
            return sums(values), lambda upstream: tf.gather_nd(upstream, indices[:, None])

        return added(values)
    return ops.segment_sum(values, indices, num_segments=size)


def add_all_at(values, indices, size):
    """`add_at` of several vectors at the same `indices`: a list of their sums.

    A `None` in `values` counts the indices (in the other vectors' float
    type): under TensorFlow without XLA an
    unweighted `bincount`, a fifth faster than one weighted by ones and
    without their vector. Under XLA, which on a CPU scatters one index at a
    time, one scatter of their rows (FastAP's histograms: 2.26 → 2.17× the
    distance matrix); elsewhere one `add_at` each, which needs no stacking
    pass.
    """
    dtype = next(vector for vector in values if vector is not None).dtype
    if runs_op_by_op():
        return [add_at(vector, indices, size) if vector is not None else count_at(indices, size, dtype)
                for vector in values]
    ones = ops.ones(ops.shape(indices), dtype)
    rows = [ones if vector is None else vector for vector in values]
    both = ops.segment_sum(ops.stack(rows, axis=-1), indices, num_segments=size)
    return [both[:, i] for i in range(len(values))]


def dense_bincount(indices, size, weights=None, dtype="int32"):
    """TensorFlow's `bincount` of `indices` into exactly `size` cells (the sums of `weights`, or counts as `dtype`).

    Its `DenseBincount` kernel alone: `tf.math.bincount` first takes the
    largest index for the output's size, a pass over the indices (a
    million at N = 1024) that a given size makes useless.
    """
    import tensorflow as tf

    indices = tf.convert_to_tensor(indices)
    if weights is None:
        weights = tf.zeros((0,), dtype)
    return tf.raw_ops.DenseBincount(
        input=indices, size=tf.cast(size, indices.dtype), weights=weights, binary_output=False
    )


def count_at(indices, size, dtype):
    """How often each of `size` cells is in `indices`, as numbers of `dtype` (operation by operation).

    The rows of `entry_coordinates(mask)` counted are the mask's row counts.
    """
    if backend.backend() == "tensorflow":
        return dense_bincount(indices, size, dtype=dtype)
    import torch

    return torch.bincount(indices.long(), minlength=int(size)).to(getattr(torch, backend.standardize_dtype(dtype)))


def take_entries(matrix, rows, columns):
    """`matrix[rows[i], columns[i]]` for every i (differentiable; `rows`, `columns` from `entry_coordinates`).

    Under TensorFlow the gradient is a sum into segments of the flat
    positions (`scatter_sum`), not `gather_nd`'s own (a scatter into zeros:
    3.3 against 0.9 ms for 30,000 entries of a 1024 × 1024 matrix).
    """
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        coordinates = tf.stack([rows, columns], axis=1)

        @tf.custom_gradient
        def taken(matrix):
            def gradient(upstream):
                return scatter_sum(coordinates, upstream, ops.shape(matrix))

            return tf.gather_nd(matrix, coordinates), gradient

        return taken(matrix)
    return matrix[rows.long(), columns.long()]


def table_slots(positive, table, counts=None):
    """Which entries of `positive_table(positive)` are positives, `(N, S)` bool (`counts`: its row counts, if known).

    A query with fewer than S positives has other columns after its own.
    """
    num_positives = row_counts(positive, counts)
    return ops.arange(ops.shape(table)[1], dtype="int32")[None, :] < num_positives[:, None]


def _positive_columns(positive, num_slots, table=None):
    """`next_column(slot, previous)`: every query's `slot`-th positive column.

    `previous` is the column of slot − 1 (−1 before the first); past a
    query's last positive the column is any valid one. The loops call this
    once per slot, and a pass over the `(N, R)` mask per slot would cost
    more than many a loss's own work: the columns of all slots at once
    (`positive_table`) where every operation is a kernel of its own; under
    XLA, which fuses it into one pass, the smallest positive column after
    `previous`.
    """
    if table is None:
        table = positive_table(positive, num_slots)
    if table is not None:
        return lambda slot, previous: ops.take(table, slot, axis=1)
    return _next_positive_column(positive)


# Columns a word of `_next_positive_column`'s bits holds: int32 words whose
# sign bit stays clear, so that a word's lowest bit compares with the powers
# of two as a positive number.
_WORD_BITS = 16


def _packed_words(positive):
    """Under XLA: the boolean mask packed into int32 words of `_WORD_BITS` columns, `(N, ⌈R / 16⌉)`.

    From sixteen strided slices of the mask (every 16th column), one fused
    pass: a cast and a reshape of the whole mask into integers took a pass
    and an `(N, R)` int32 buffer of their own (the words and the counts:
    1.3 against 0.7 ms at N = 1024 on a CPU). A reduction of rows of 16 is
    the slower; a product on a GPU may round in TF32.
    """
    words = None
    for bit, column_bits in enumerate(_strided_bits(positive)):
        shifted = ops.left_shift(column_bits, bit) if bit else column_bits
        words = shifted if words is None else ops.bitwise_or(words, shifted)
    return words


def _next_positive_column(positive):
    """`_positive_columns`' `next_column` under XLA: the mask packed once into words of `_WORD_BITS` columns.

    The smallest positive column after `previous` is the lowest bit set in
    the first word after it with one: a pass over the `(N, R / 16)` words
    and one over the 16 bits of a word per slot, where a minimum over the
    `(N, R)` mask took 0.5 ms a slot on a CPU (7.8 ms for the 15 slots of
    N = 1024, K = 16: as much as the distance matrix).
    """
    num_columns = ops.shape(positive)[1]
    words = _packed_words(positive)
    powers = ops.convert_to_tensor(np.left_shift(1, np.arange(_WORD_BITS)).astype("int32"))
    num_words = ops.shape(words)[1]
    word_index = ops.arange(num_words, dtype="int32")[None, :]

    def next_column(slot, previous):
        start = previous + 1
        first, offset = start // _WORD_BITS, start % _WORD_BITS
        # The bits from `offset` on of the first word, every bit of the words after it.
        from_offset = ops.left_shift(ops.full_like(offset, -1), offset)[:, None]
        after = ops.where(word_index > first[:, None], words, ops.bitwise_and(words, from_offset))
        after = ops.where(word_index >= first[:, None], after, ops.zeros_like(after))
        word_at = ops.min(ops.where(after != 0, word_index, num_words), axis=1)
        word = take_along_rows(after, ops.minimum(word_at, num_words - 1)[:, None])[:, 0]
        lowest = ops.bitwise_and(word, -word)
        # 2^p is above p of the powers below 2^16.
        position = ops.sum(ops.cast(lowest[:, None] > powers[None, :], "int32"), axis=1)
        return ops.minimum(word_at * _WORD_BITS + position, num_columns - 1)

    return next_column


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
    within = matmul(blocks, _upper_ones(block, matrix.dtype))
    totals = within[:, :, -1]
    num_blocks = ops.shape(totals)[1]
    before = matmul(totals, _upper_ones(num_blocks, matrix.dtype, diagonal=False))
    return ops.reshape(within + before[:, :, None], (rows, -1))[:, :columns]


def row_min(values):
    """Every row's least value and the first column holding it, `(N,)` and int32 `(N,)`.

    Under XLA on CPU an `argmin` (a reduction of value and index pairs)
    takes ~3× a plain minimum: there the minimum, then the least column
    that holds it, two plain reductions. Elsewhere `argmin`, one kernel.
    """
    if runs_op_by_op():
        column = ops.cast(ops.argmin(values, axis=1), "int32")
        return row_pick(values, column), column
    least = ops.min(values, axis=1)
    num_columns = ops.shape(values)[1]
    columns = ops.arange(num_columns, dtype="int32")[None, :]
    first = ops.min(ops.where(ops.equal(values, least[:, None]), columns, num_columns), axis=1)
    # A row of NaNs matches nowhere: any valid column.
    return least, ops.minimum(first, num_columns - 1)


def row_min_above(values, thresholds):
    """Every row's least value strictly above its threshold, the first column holding it, and whether there is one.

    Returns `(least, column, found)`, `(N,)` each; where `found` is False
    the other two are any value and column. `values` `(N, R)` with +inf at
    the entries never to be taken.

    The generic way is three passes over the matrix (a comparison, a
    selection, a minimum); TensorFlow without XLA takes two where every
    threshold is ≥ 0. The bit patterns of non-negative floats order like
    the floats and stay below the sign bit; as unsigned integers, minus the
    threshold's pattern plus one (wrapping around), the values above the
    threshold keep their order and stay below the sign bit, while the
    others (at or below it, negative, NaN with the sign set) wrap above
    them: one subtraction and one `argmin`. Under XLA the three passes are
    one, and with TensorFlow in float32 the wrapped pattern and the column
    make one 64-bit key, whose minimum is the argmin (semi-hard mining at
    N = 1024, K = 16: 36 → 29 ms with the slots' columns of
    `_next_positive_column`).
    """
    inf = ops.full((), float("inf"), values.dtype)
    dtype = backend.standardize_dtype(values.dtype)

    def by_selection():
        least, column = row_min(ops.where(values > thresholds[:, None], values, inf))
        return least, column, least < inf

    if backend.backend() != "tensorflow" or dtype not in ("float32", "float64"):
        return by_selection()
    import tensorflow as tf

    # 64-bit keys under XLA, but not on TPUs, where 64-bit integers are emulated.
    packed = not tensorflow_op_by_op()
    if packed and (dtype != "float32" or tf.config.list_logical_devices("TPU")):
        return by_selection()

    unsigned = tf.uint32 if dtype == "float32" else tf.uint64

    def by_patterns():
        # abs: −0.0's pattern has the sign bit set.
        start = tf.bitcast(tf.abs(thresholds), unsigned) + 1
        shifted = tf.bitcast(values, unsigned) - start[:, None]
        if packed:
            # Under XLA, whose argmin is a reduction of pairs (~3× a minimum): the wrapped pattern in
            # the high half of a 64-bit key, the column in the low, one minimum.
            columns = tf.cast(tf.range(tf.shape(values)[1]), tf.uint64)[None, :]
            keys = tf.bitwise.bitwise_or(tf.bitwise.left_shift(tf.cast(shifted, tf.uint64), tf.constant(32, tf.uint64)),
                                         columns)
            column = tf.cast(tf.bitwise.bitwise_and(tf.reduce_min(keys, axis=1), tf.constant(0xFFFFFFFF, tf.uint64)),
                             tf.int32)
        else:
            column = tf.cast(tf.argmin(shifted, axis=1), tf.int32)
        least = row_pick(values, column)
        return least, column, (least > thresholds) & (least < inf)

    return tf.cond(tf.reduce_min(thresholds) >= 0, by_patterns, by_selection)


def row_pick(matrix, column):
    """`matrix[a, column[a]]` for every row a."""
    return take_along_rows(matrix, column[:, None])[:, 0]


def take_along_rows(matrix, columns):
    """`matrix[a, columns[a, s]]` for every row a: `keras.ops.take_along_axis(matrix, columns, axis=1)`, in range.

    Under TensorFlow one batched gather, whose gradient is one scatter:
    Keras' form broadcasts the matrix and swaps its axes first, and its
    gradient goes back through both (3.8 ms against 1.2 for the gradient of
    15 columns of a 1,024 × 1,024 matrix on a CPU).
    """
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.gather(matrix, columns, batch_dims=1)
    return ops.take_along_axis(matrix, columns, axis=1)


def add_to_rows(matrix, columns_and_values):
    """`matrix` with `value[a]` added at `(a, column[a])`, for each `(column, value)` pair of vectors.

    The slot loops add a few entries per row to an `(N, R)` gradient at
    every slot: added in place (`scatter_add`), not scattered into a new
    matrix of zeros that is then added, two passes over the matrix a slot.
    """
    columns = ops.stack([column for column, _ in columns_and_values], axis=1)
    values = ops.stack([value for _, value in columns_and_values], axis=1)
    return scatter_add(matrix, row_cells(columns), ops.reshape(values, (-1,)))


def row_cells(columns):
    """The `(N·S, 2)` cells `(a, columns[a, s])` of an `(N, S)` int32 table of columns, row by row."""
    rows = ops.zeros_like(columns) + ops.arange(ops.shape(columns)[0], dtype="int32")[:, None]
    return ops.reshape(ops.stack([rows, columns], axis=-1), (-1, 2))


def scatter_sum(indices, values, shape):
    """`keras.ops.scatter`: zeros of `shape` with `values` added at `indices` (repeated indices add up).

    Under TensorFlow without XLA, the sums of segments of the flat
    positions: a scatter into zeros costs some 35 ns more an index (1.0
    against 0.4 ms for 30,000 entries of a 1024 × 1024 matrix). For a few
    entries into many cells, that is; `add_at`'s `bincount` serves the
    other way round (a million values into a few cells).
    """
    values = ops.convert_to_tensor(values)
    indices = ops.convert_to_tensor(indices)
    # Element indices (not slices: rows of a matrix).
    if tensorflow_op_by_op() and indices.shape[-1] == len(shape):
        import tensorflow as tf

        indices = tf.cast(indices, tf.int64)
        flat = indices[:, 0]
        for axis in range(1, len(shape)):
            flat = flat * tf.cast(shape[axis], tf.int64) + indices[:, axis]
        size = tf.reduce_prod(tf.cast(tf.stack(shape), tf.int64))
        return tf.reshape(tf.math.unsorted_segment_sum(values, flat, size), shape)
    return scatter_add(ops.zeros(shape, values.dtype), indices, values)


def scatter_add(tensor, indices, values):
    """`tensor` with `values[i]` added at `indices[i]` (repeated indices add up), differentiable in both.

    Keras has no such operation: `keras.ops.scatter` writes into zeros, and
    on PyTorch it scatters one index at a time in a Python loop (thousands
    of kernel launches a batch: the slot loops took 50–700× the distance
    matrix on a GPU). Each backend's own: JAX's `.at[].add`, PyTorch's
    `index_put` with `accumulate`, TensorFlow's `tensor_scatter_nd_add` under
    XLA (an update in place there) and `ScatterNdNonAliasingAdd` without:
    `tensor_scatter_nd_add` copies the whole tensor on every call (0.1 ms
    for an `(N, N)` gradient at N = 1024, once per slot of the loops), the
    non-aliasing form updates it in place where nothing else reads it.
    """
    name = backend.backend()
    tensor, indices = ops.convert_to_tensor(tensor), ops.convert_to_tensor(indices)
    values = ops.cast(values, tensor.dtype)
    if name == "tensorflow":
        import tensorflow as tf

        if runs_op_by_op():
            return tf.raw_ops.ScatterNdNonAliasingAdd(input=tensor, indices=indices, updates=values)
        return tf.tensor_scatter_nd_add(tensor, indices, values)
    if name == "jax":
        return tensor.at[tuple(indices[..., i] for i in range(indices.shape[-1]))].add(values)
    if name == "torch":
        return tensor.index_put(tuple(indices.long().unbind(-1)), values, accumulate=True)
    return tensor + ops.scatter(indices, values, ops.shape(tensor))


def attach_gradient(value, distances, gradient):
    """`value` in the forward pass, with `gradient` as its gradient w.r.t. `distances`.

    The slot loops compute each anchor's loss exactly and, separately, the
    derivative of that loss with respect to every distance (the loss is
    piecewise linear in them). `surrogate - stop_gradient(surrogate)` is
    exactly 0 in floating point, so the value keeps all its digits.

    Where every operation is a kernel of its own (TensorFlow without XLA,
    PyTorch) the gradient is attached with `keras.ops.custom_gradient`
    instead: the surrogate's product and row sums in the forward pass and
    the broadcast of the upstream gradient in the backward pass are three
    passes over the matrix (two of them into new buffers) that a product
    by `gradient` replaces. Under XLA they fuse into that product, and
    JAX's custom gradients cannot close over `gradient`.
    """
    if runs_op_by_op():
        return _attached(value, distances, ops.stop_gradient(gradient))
    gradient = ops.stop_gradient(gradient)
    # Only the entries with a gradient: an infinite or NaN distance elsewhere (0·∞) would make the value NaN.
    surrogate = ops.sum(ops.where(ops.equal(gradient, 0), ops.zeros_like(gradient), gradient * distances), axis=1)
    return ops.stop_gradient(value) + (surrogate - ops.stop_gradient(surrogate))


def _attached(value, distances, gradient):
    """`attach_gradient` for the backends that run operation by operation (which may close over tensors)."""

    @ops.custom_gradient
    def attached(value, distances):
        def backward(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, gradient.dtype)
            return ops.zeros_like(value), upstream[:, None] * gradient

        return ops.copy(value), backward

    return attached(value, distances)


def with_written_gradient(forward, values, integers):
    """`forward(values, integers)`'s value, differentiable in `values` by the gradient `forward` writes out.

    `forward` returns `(value, gradient)`, `gradient(upstream)` being the
    gradient with respect to `values`. The int32 `integers` (cells, blocks:
    no gradient) are closed over where a custom gradient may do so; under
    JAX, whose custom gradients take no integers and cannot close over
    tracers, they go in as float32 (exact below 2²⁴) and `forward` gets
    them back as int32. Without XLA that saves their passes to floats and
    back.
    """
    if backend.backend() == "jax":

        @ops.custom_gradient
        def with_floats(values, floats):
            value, gradient = forward(values, ops.cast(ops.stop_gradient(floats), "int32"))

            def gradients(*args, upstream=None):
                return gradient(args[0] if upstream is None else upstream), ops.zeros_like(floats)

            return value, gradients

        return with_floats(values, ops.cast(integers, "float32"))

    @ops.custom_gradient
    def closed_over(values):
        value, gradient = forward(values, integers)

        def gradients(*args, upstream=None):
            return gradient(args[0] if upstream is None else upstream)

        return value, gradients

    return closed_over(values)


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


_DIGIT_BITS = 16


def _radix_cut(keys, count, bits):
    """The `count`-th smallest of the non-negative `bits`-bit integer `keys`, for TensorFlow and PyTorch.

    Returns `(cut, rank, ties)`: the key, its rank among the keys equal to it
    (1-based; 0 when `count` is 0) and how many keys equal it. A radix
    selection, 16 bits at a time from the top: the histogram of the keys'
    next digit says which digit the cut has, and only the keys with that
    digit go on to the next level. For 31-bit keys that is two histograms,
    the first over all the keys, the second over the few that share the
    cut's top digit. At N = 1024 (K = 4 to 16) TensorFlow's `top_k`, whose
    heap grows with `count`, takes 1.7–3.7× its time, PyTorch's `kthvalue`
    4–5×.
    """
    if backend.backend() == "torch":
        import torch

        def shifted(keys, shift):
            return keys >> shift

        def masked(keys, mask):
            return keys & mask

        def histogram(digits):
            return torch.bincount(digits, minlength=1 << _DIGIT_BITS)

        def compress(keys, keep):
            return keys[keep]

    else:
        import tensorflow as tf

        def shifted(keys, shift):
            return tf.bitwise.right_shift(keys, ops.cast(shift, keys.dtype))

        def masked(keys, mask):
            return tf.bitwise.bitwise_and(keys, ops.cast(mask, keys.dtype))

        def histogram(digits):
            size = 1 << _DIGIT_BITS
            return dense_bincount(ops.cast(digits, "int32"), size)

        def compress(keys, keep):
            return tf.boolean_mask(keys, keep)

    flat = ops.reshape(keys, (-1,))
    rank = ops.cast(count, "int32")
    cut = ops.zeros((), keys.dtype)
    top_shift = _DIGIT_BITS * ((bits - 1) // _DIGIT_BITS)
    for shift in range(top_shift, -1, -_DIGIT_BITS):
        digits = flat if shift == 0 else shifted(flat, shift)
        if shift != top_shift:
            digits = masked(digits, (1 << _DIGIT_BITS) - 1)
        counts = ops.cast(histogram(digits), "int32")
        ends = ops.cumsum(counts)
        # The first digit whose keys reach the rank.
        digit = ops.minimum(ops.sum(ops.cast(ends < rank, "int32")), (1 << _DIGIT_BITS) - 1)
        rank = rank - (ends[digit] - counts[digit])
        cut = cut * (1 << _DIGIT_BITS) + ops.cast(digit, keys.dtype)
        if shift:
            flat = compress(flat, ops.equal(digits, ops.cast(digit, digits.dtype)))
    return cut, rank, counts[digit]


def _smallest_keys_cut(keys, candidates, count, bits, infinity_key):
    """Where the `count`-th smallest candidate key cuts: `(below, at, share)`.

    `keys` are non-negative integers (the bit patterns of non-negative
    floats) and `count` at most the number of candidates. `below` marks the
    candidates under the cut, `at` those on it, and `share` is the part of
    the count each of those gets: `(count − number below) / number at`.

    Where every operation is a kernel of its own (TensorFlow without XLA,
    PyTorch), a radix selection (`_radix_cut`); under XLA, which fuses each
    counting pass and scatters slowly on CPU, a bisection: `bits` passes.
    """
    key_dtype = backend.standardize_dtype(keys.dtype)
    share_dtype = "float64" if key_dtype == "int64" else "float32"
    if runs_op_by_op():
        # The other entries get the largest key, which no candidate's has
        # (only a NaN whose payload bits are all set would).
        keys = ops.where(candidates, keys, ops.full((), np.iinfo(key_dtype).max, key_dtype))
        cut, rank, ties = _radix_cut(keys, count, bits)
        share = ops.cast(rank, share_dtype) / ops.cast(ops.maximum(ties, 1), share_dtype)
        return keys < cut, ops.equal(keys, cut), share

    infinity = ops.full((), infinity_key, key_dtype)
    # Candidates' NaN keys (above infinity's) count as infinity's (free under
    # XLA); the other entries lie beyond, never on the cut. where, not
    # minimum: Keras' PyTorch minimum returns int64 keys as int32.
    keys = ops.where(candidates, ops.where(keys > infinity, infinity, keys), infinity + 1)
    count_at_most = _counter_at_most(keys, key_dtype)

    def halve(_, bounds):
        low, high = bounds
        middle = low + (high - low) // 2
        enough = count_at_most(middle) >= count
        return ops.where(enough, low, middle + 1), ops.where(enough, middle, high)

    # A loop rather than unrolled steps: XLA compiles it in a fraction.
    cut, _ = ops.fori_loop(
        0,
        bits,
        halve,
        (ops.convert_to_tensor(0, key_dtype), ops.convert_to_tensor(infinity_key + 1, key_dtype)),
    )
    below, at = keys < cut, ops.equal(keys, cut)
    below_count = ops.sum(ops.cast(below, key_dtype))
    ties = ops.sum(ops.cast(at, key_dtype))
    share = ops.cast(count - below_count, share_dtype) / ops.cast(ops.maximum(ties, 1), share_dtype)
    return below, at, share


def _counter_at_most(keys, key_dtype):
    """`count(cut)`: how many of the `(N, R)` `keys` are at most `cut`, in `key_dtype`, for a bisection's steps.

    Under XLA each row's count, in float32 (exact below 2²⁴ columns), is
    `tfm.distances.row_sums`' (on a CPU a product with ones: 31 steps took
    4.8 ms where one sum of the flattened keys a step took 14 at
    N = R = 1,024), then the rows' counts are added. Elsewhere one sum over
    the flattened keys.
    """
    width = keys.shape[-1]
    if compiled_by_xla() and width is not None and width < 2**24:
        return lambda cut: ops.sum(ops.cast(row_sums(ops.cast(keys <= cut, "float32")), key_dtype))
    flat = ops.reshape(keys, (-1,))
    return lambda cut: ops.sum(ops.cast(flat <= cut, key_dtype))


def smallest_entries(values, candidates, count):
    """Weights selecting exactly `count` of the smallest candidate entries.

    Returns a float matrix shaped like `values`: 1 at the candidates below
    the `count`-th smallest candidate value, and at the candidates equal to
    it the share of the remaining count (so ties at the boundary are treated
    alike and the weights always sum to `min(count, number of candidates)`).

    The cut is found among the bit patterns of the non-negative float
    values, which order like the values themselves: by a radix selection
    (two histograms), or under XLA by bisection, a fixed number of counting
    passes over the matrix. Sorting the N·R entries instead is ten times
    slower on CPU, and slower still under XLA.
    """
    values = ops.stop_gradient(values)
    if backend.standardize_dtype(values.dtype) == "float64":
        key_dtype, bits, infinity_key = "int64", 63, 0x7FF0000000000000
    else:
        values = ops.cast(values, "float32")
        key_dtype, bits, infinity_key = "int32", 31, 0x7F800000
    # abs: -0.0 has the sign bit set, which would make it the smallest key.
    keys = _bit_pattern(ops.abs(values), key_dtype)
    count = ops.minimum(
        ops.cast(count, key_dtype), ops.sum(ops.cast(candidates, key_dtype))
    )
    below, at, share = _smallest_keys_cut(keys, candidates, count, bits, infinity_key)
    dtype = values.dtype
    return ops.where(below, ops.ones((), dtype), ops.where(at, ops.cast(share, dtype), ops.zeros((), dtype)))


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
    minus_quarter_square = -0.25 * ops.square(d)
    if nonzero_loss_cutoff > 1.99:
        # Antipodal points may be drawn: 1 − d²/4 kept above 0, the weight
        # finite (only distances below 1.99 are drawn otherwise, and there
        # it cannot round to 0).
        above_minus_one = float(np.finfo(backend.standardize_dtype(d.dtype)).epsneg) - 1.0
        minus_quarter_square = ops.maximum(minus_quarter_square, above_minus_one)
    # −log q, its signs in the constants (no negation over the matrix).
    minus_log_q = (2.0 - dim) * ops.log(d) + ((3.0 - dim) / 2.0) * ops.log1p(minus_quarter_square)
    allowed = ops.logical_and(negative, distances < nonzero_loss_cutoff)
    minus_inf = ops.full((), float("-inf"), d.dtype)
    # Per row, what a negative that is not allowed gets: 0 (uniform) where none is.
    fallback = ops.where(ops.any(allowed, axis=1), minus_inf, ops.zeros((), d.dtype))
    return ops.where(allowed, minus_log_q, ops.where(negative, fallback[:, None], minus_inf))


class InverseCdf(NamedTuple):
    """Every row's categorical distribution `∝ exp(log_weights)`, ready to be drawn from by inverting it.

    In two levels, as a draw inverts it: the running totals of the row's
    blocks of `_BLOCK_WIDTH` columns say which block holds the target, the
    running sums of that block's weights which column. Running sums over
    the whole row cost three passes over the matrix and a product by a
    triangular matrix per block; the block totals are one reduction.
    """

    blocks: object  # (N·B, W): each row's weights (its largest 1) in B blocks of W columns, the last padded with 0
    block_ends: object  # (N, B): running sums of each row's block totals
    last_block: object  # (N,) int32: each row's last block with a positive total
    has_candidate: object  # (N,) bool


_BLOCK_WIDTH = 32
# Independent uniform numbers drawn per anchor for distance-weighted
# sampling: draws beyond reuse them, turned (`draw_columns`); independent
# for P×K batches up to K = 33.
UNIFORMS_PER_ANCHOR = 32
# The fractional part of the golden ratio: k steps of it from a uniform
# number stay uniform and fall far from each other.
_GOLDEN = 0.6180339887498949


def random_numbers(shape, seed, maxval=None):
    """`keras.random.uniform` floats in [0, 1), or with `maxval` `keras.random.randint` int32 in [0, maxval).

    The same numbers, except under XLA with TensorFlow: there the Philox
    generator is named, where the default ("auto_select") is another
    generator, 25× slower on a CPU (5 ms for the 32,768 numbers of a
    batch of 1,024: more than the distance matrix).
    """
    if backend.backend() == "tensorflow" and compiled_by_xla():
        import tensorflow as tf
        from keras.src.random.seed_generator import draw_seed

        seed = draw_seed(seed)
        # int32, as Keras passes it (XLA takes no other).
        if seed.dtype != tf.int32:
            seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
        if maxval is None:
            return tf.random.stateless_uniform(shape, seed, dtype=tf.float32, alg="philox")
        return tf.random.stateless_uniform(shape, seed, minval=0, maxval=maxval, dtype=tf.int32, alg="philox")
    if maxval is None:
        return keras.random.uniform(shape, dtype="float32", seed=seed)
    return keras.random.randint(shape, 0, maxval, dtype="int32", seed=seed)


def inverse_cdf(log_weights):
    """`InverseCdf` of the rows of `log_weights` (`−inf`: never drawn); no gradient."""
    log_weights = ops.stop_gradient(log_weights)
    row_max = ops.max(log_weights, axis=1)
    has_candidate = row_max > float("-inf")
    row_max = ops.where(has_candidate, row_max, ops.zeros_like(row_max))
    # exp(−inf) is 0: the columns never drawn need no mask.
    weights = ops.exp(log_weights - row_max[:, None])
    num_rows, num_columns = ops.shape(weights)[0], ops.shape(weights)[1]
    if not isinstance(num_columns, int) or num_columns % _BLOCK_WIDTH:
        padding = (_BLOCK_WIDTH - num_columns % _BLOCK_WIDTH) % _BLOCK_WIDTH
        weights = ops.concatenate([weights, ops.zeros((num_rows, padding), weights.dtype)], axis=1)
    blocks = ops.reshape(weights, (-1, _BLOCK_WIDTH))
    totals = ops.reshape(ops.sum(blocks, axis=1), (num_rows, -1))
    return InverseCdf(blocks, _row_cumsum(totals), _last_positive(totals), has_candidate)


def _last_positive(weights):
    """The last column of each row with a positive entry (0 where none is), int32."""
    columns = ops.arange(ops.shape(weights)[1], dtype="int32")
    # `initial`: a batch without positives draws from no rows at all.
    return ops.max(ops.where(weights > 0, columns[None, :], ops.zeros_like(columns)[None, :]), axis=1, initial=0)


def draw_columns(distribution, uniforms, rank):
    """The column of each row's draw number `rank` (int32, `(N,)` or `(N, S)`) from an `InverseCdf`.

    Draw r of row a inverts the cumulative weights at `uniforms[a, r mod U]`
    turned by `⌊r / U⌋` golden-ratio steps, U the columns of `uniforms`:
    the first column whose running sum exceeds the target, which has a
    positive weight itself (rounding can push the target to a block's or
    the row's total: then its last column with a positive weight).
    """
    ends = distribution.block_ends
    dtype = ends.dtype
    uniforms = ops.cast(uniforms, dtype)
    num_uniforms = ops.shape(uniforms)[1]
    vector = len(rank.shape) == 1
    rank = rank[:, None] if vector else rank
    uniform = take_along_rows(uniforms, rank % num_uniforms)
    uniform = uniform + ops.cast(rank // num_uniforms, uniform.dtype) * _GOLDEN
    target = (uniform - ops.floor(uniform)) * ends[:, -1:]
    block = ops.minimum(_count_not_above(ends, target), distribution.last_block[:, None])
    before = take_along_rows(ends, ops.maximum(block - 1, 0))
    inside = ops.reshape(target - ops.where(block > 0, before, ops.zeros_like(before)), (-1, 1))
    num_rows, num_blocks = ops.shape(ends)[0], ops.shape(ends)[1]
    rows = ops.arange(num_rows, dtype="int32")[:, None]
    weights = take_in_range(distribution.blocks, ops.reshape(rows * num_blocks + block, (-1,)))
    running = matmul(weights, _upper_ones(_BLOCK_WIDTH, dtype))
    offset = ops.minimum(ops.sum(ops.cast(running <= inside, "int32"), axis=1), _last_positive(weights))
    chosen = block * _BLOCK_WIDTH + ops.reshape(offset, ops.shape(block))
    return chosen[:, 0] if vector else chosen


def _count_not_above(ascending, targets):
    """For every target of row a, how many entries of the ascending row a are at most it (int32)."""
    if runs_op_by_op():
        return places_in_rows(ascending, targets, side="right")
    # XLA has no search in rows: a binary search of ⌈log₂(R + 1)⌉ steps,
    # each a gather of one entry per target (32 where the trace does not
    # know R: a batch of unknown size).
    num_columns = ops.shape(ascending)[1]
    low = ops.zeros_like(targets, "int32")
    high = ops.zeros_like(low) + ops.cast(num_columns, "int32")
    for _ in range(num_columns.bit_length() if isinstance(num_columns, int) else 32):
        middle = (low + high) // 2
        value = take_along_rows(ascending, ops.minimum(middle, num_columns - 1))
        searching = low < high
        right = ops.logical_and(searching, value <= targets)
        low = ops.where(right, middle + 1, low)
        high = ops.where(ops.logical_and(searching, ops.logical_not(right)), middle, high)
    return low


def places_in_rows(ascending, values, side):
    """For every value of row a, how many entries of the ascending row a are before it (int32).

    `side="left"`: the entries below the value; `"right"`: those not above
    it. A search in rows has no `keras.ops` form: for the backends that run
    operation by operation (TensorFlow without XLA, PyTorch).
    """
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.searchsorted(ascending, values, side=side, out_type=tf.int32)
    import torch

    return torch.searchsorted(ascending.contiguous(), values.contiguous(), side=side).to(torch.int32)


def sample_negative_draws(log_weights, positive, uniforms, counts=None):
    """Every positive pair's drawn negative, where every operation is a kernel of its own; `None` elsewhere.

    As `sample_negative_counts`, all the draws at once: `(columns, drawn)`,
    `(N, S)` int32 and bool, S the most positives of a row; draw s of row a
    (its s-th positive pair's) is `columns[a, s]`, where `drawn[a, s]` (s
    below a's number of positives, and a has a candidate). A loss can take
    its terms on these N·S entries instead of a matrix of counts. Under XLA
    and JAX, S is not known when tracing. `counts`: every row's number of
    positives, where the caller has them.
    """
    if not runs_op_by_op():
        return None
    distribution = inverse_cdf(log_weights)
    num_positives = row_counts(positive, counts)
    slots = ops.arange(python_int(_most(num_positives)), dtype="int32")
    ranks = ops.zeros_like(num_positives)[:, None] + slots[None, :]
    drawn = ops.logical_and(ranks < num_positives[:, None], distribution.has_candidate[:, None])
    return draw_columns(distribution, uniforms, ranks), drawn


def sample_negative_counts(log_weights, positive, uniforms):
    """How often each negative is drawn, one draw per positive pair.

    For every positive pair (a, p), one column n is drawn from the
    categorical distribution `∝ exp(log_weights[a])` (`−inf`: never) by
    inverting its cumulative sum at a uniform number (`draw_columns`, the
    draw's number being p's rank among a's positives). Returns an `(N, R)`
    matrix of draw counts; rows without a finite weight draw nothing.
    Inverse-CDF sampling keeps the memory at O(N·R) (Gumbel-max would need an
    N×R×R noise tensor). Where every operation is a kernel of its own, all
    the draws at once (`sample_negative_draws`); under XLA one positive slot
    at a time.

    Args:
        uniforms: `(N, S)` numbers uniform in [0, 1): the draw for the s-th
            positive of anchor a uses `uniforms[a, s mod S]`, turned by
            `⌊s / S⌋` golden-ratio steps when an anchor has more than S
            positives (each draw stays uniform; only those beyond the
            first S are no longer independent of the first S). A few
            columns suffice: XLA's random generator on CPU costs ~0.4 µs per
            number, 400 ms for N × N.
    """
    shape = ops.shape(log_weights)
    dtype = log_weights.dtype
    rows = ops.arange(shape[0], dtype="int32")
    draws = sample_negative_draws(log_weights, positive, uniforms)
    if draws is not None:
        columns, drawn = draws
        indices = ops.stack([ops.zeros_like(columns) + rows[:, None], columns], -1)
        return scatter_sum(ops.reshape(indices, (-1, 2)), ops.reshape(ops.cast(drawn, dtype), (-1,)), shape)
    distribution = inverse_cdf(log_weights)
    # A draw's number is all it needs of its positive, not the positive's column.
    num_positives = row_counts(positive)
    num_slots = _most(num_positives)

    def draw(slot, counts):
        indices = ops.stack([rows, draw_columns(distribution, uniforms, ops.full_like(rows, slot))], axis=1)
        drawn = ops.cast(ops.logical_and(slot < num_positives, distribution.has_candidate), dtype)
        return slot + 1, scatter_add(counts, indices, drawn)

    _, counts = ops.while_loop(
        lambda slot, _: slot < num_slots, draw, (ops.convert_to_tensor(0, "int32"), ops.zeros(shape, dtype))
    )
    return counts


def python_int(value):
    """A scalar tensor as a Python int where shapes must be ints (PyTorch); as it is elsewhere."""
    return int(value) if backend.backend() == "torch" else value


def _ordered_keys(values):
    """Integers that order like the float `values` (negative ones too), and their bounds.

    The bit pattern of a non-negative float orders like the float; a
    negative one is turned into minus its magnitude's pattern (−0.0 and 0.0
    get the same key). float64 takes int64 keys, other floats int32 ones.
    """
    # Constants exactly representable as floats: some backends convert
    # Python ints through a float. `largest` (the start of the NaN
    # patterns) is above every non-NaN key.
    if backend.standardize_dtype(values.dtype) == "float64":
        key_dtype, largest, half = "int64", 0x7FF8000000000000, 1 << 62
    else:
        values = ops.cast(values, "float32")
        key_dtype, largest, half = "int32", 0x7FC00000, 1 << 30
    bits = _bit_pattern(values, key_dtype)
    # bits + 2^(w−1) is the magnitude's pattern of a negative float, added
    # in two halves so that no intermediate overflows.
    half = ops.convert_to_tensor(half, key_dtype)
    magnitude = bits + half + half
    keys = ops.where(bits >= 0, bits, -magnitude)
    return keys, key_dtype, largest


def _midpoint(low, high):
    """`⌊(low + high) / 2⌋` without overflowing the integer type."""
    # The tensors' own `//` and `%` (floor division on every backend):
    # `ops.floor_divide` returns int32 for int64 under PyTorch.
    return low // 2 + high // 2 + (low % 2 + high % 2) // 2


def smallest_mask(values, candidates, count):
    """Boolean mask of exactly `min(count, number of candidates)` smallest candidate entries.

    Like `smallest_entries` (a bisection on the values' bit patterns, no
    sorting), for values of any sign, and with ties at the boundary broken
    by position: the earlier entries in row-major order (row, then column)
    are kept. `count` may be a tensor; `largest=True` selections pass
    `−values`.
    """
    values = ops.stop_gradient(values)
    candidates = ops.cast(candidates, "bool")
    keys, key_dtype, largest = _ordered_keys(values)
    top = ops.convert_to_tensor(largest, key_dtype)
    keys = ops.where(candidates, keys, ops.full_like(keys, largest))
    count = ops.minimum(ops.cast(count, key_dtype), ops.sum(ops.cast(candidates, key_dtype)))
    count = ops.maximum(count, ops.zeros_like(count))

    count_at_most = _counter_at_most(keys, key_dtype)

    def halve(_, bounds):
        low, high = bounds
        middle = _midpoint(low, high)
        enough = count_at_most(middle) >= count
        return ops.where(enough, low, middle + 1), ops.where(enough, middle, high)

    steps = 65 if key_dtype == "int64" else 33
    low, _ = ops.fori_loop(0, steps, halve, (-top, top))
    below = ops.logical_and(keys < low, candidates)
    at = ops.logical_and(ops.equal(keys, low), candidates)
    remaining = ops.cast(count - ops.sum(ops.cast(below, key_dtype)), "float32")
    # Rank of each tied entry among the tied ones, in row-major order.
    at_float = ops.cast(at, "float32")
    row_counts = ops.sum(at_float, axis=1)
    rows_before = _row_cumsum(row_counts[None, :])[0] - row_counts
    rank = rows_before[:, None] + _row_cumsum(at_float) - at_float
    return ops.logical_or(below, ops.logical_and(at, rank < remaining))
