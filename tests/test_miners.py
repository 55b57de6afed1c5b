"""tfm.miners: masks vs NumPy loops, PML 2.9 parity, losses with miners, compiled, Keras paths."""

import json

import keras
import numpy as np
import pytest
import reference_miners as ref
from hypothesis import given, settings, strategies as st

import tfmetric as tfm
import tfmetric.miners as miners
from tfmetric.mining import (
    add_all_at,
    add_to_rows,
    entry_coordinates,
    for_each_positive,
    mask_row_counts,
    pair_masks,
    positive_table,
    positive_table_and_counts,
    row_min,
    row_min_above,
    scatter_add,
    scatter_sum,
    smallest_mask,
    take_along_rows,
    take_entries,
)

import recorded
from conftest import BACKEND, COMPILE_MODES, FIT_JIT_COMPILE, slow_on_jax, tensor, value_and_grad

FLOAT64 = BACKEND != "jax"  # JAX runs without x64 here: float64 inputs become float32
ON_TF = BACKEND == "tensorflow"
# Hypothesis examples per test: fewer off TensorFlow, where eager calls cost more.
EXAMPLES = 6 if ON_TF else 4
# JAX compiles every eager loop (bisections, slots) anew: fewer cases there.
ON_JAX = BACKEND == "jax"


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _pairs(mask):
    return {(int(a), int(r)) for a, r in zip(*np.nonzero(_np(mask)))}


def _triplet_set(triplets):
    """The set {(a, p, n)} of a `Triplets`, enumerated slot by slot."""
    rows, columns = keras.ops.shape(triplets.matrix)

    def body(slot, chosen, found):
        one_hot = keras.ops.arange(columns)[None, :] == slot.positive_index[:, None]
        return (keras.ops.logical_or(found, keras.ops.logical_and(one_hot[:, :, None], chosen[:, None, :])),)

    (found,) = miners.for_each_triplet_slot(triplets, body, (keras.ops.zeros((rows, columns, columns), "bool"),))
    return {(int(a), int(p), int(n)) for a, p, n in zip(*np.nonzero(_np(found)))}


def _candidates(labels, ref_labels=None):
    labels = tensor(np.asarray(labels), "int32")
    if ref_labels is None:
        return pair_masks(labels)
    return pair_masks(labels, tensor(np.asarray(ref_labels), "int32"))


# ---------------------------------------------------------------- primitives


def _slot_masks(num_columns=13):
    """A positive mask with a query without positives, one with every column, one with the first and last
    columns and those around the words' edges (16 columns a word under XLA), and the rest random."""
    positive = np.random.default_rng(11 + num_columns).random((9, num_columns)) < 0.35
    positive[2] = False
    positive[5] = True
    positive[7] = False
    positive[7, [0, num_columns - 1]] = True
    positive[7, [c for c in (15, 16, 31, 32) if c < num_columns]] = True
    return positive


def _visit_order(positive):
    """`order[a, c] = s + 1` where slot s of `for_each_positive` visits column c of query a."""

    def body(slot_positive, has_slot, order, slot):
        value = keras.ops.where(has_slot, keras.ops.cast(slot + 1, "float32"), 0.0)
        return add_to_rows(order, [(slot_positive, value)]), slot + 1

    start = (keras.ops.zeros(keras.ops.shape(positive), "float32"), keras.ops.convert_to_tensor(0, "int32"))
    return for_each_positive(positive, body, start)[0]


@pytest.mark.parametrize("num_columns", [13, 16, 17, 40])
@pytest.mark.parametrize("compiled", COMPILE_MODES)
def test_slots_visit_every_positive_once_in_column_order(compiled, num_columns):
    positive = _slot_masks(num_columns)
    want = np.zeros(positive.shape)
    for a, row in enumerate(positive):
        want[a, np.flatnonzero(row)] = np.arange(1, row.sum() + 1)
    visit = _visit_order
    if compiled:  # XLA, where the columns come from the mask packed into words
        import tensorflow as tf

        visit = tf.function(_visit_order, jit_compile=True)
    np.testing.assert_array_equal(_np(visit(tensor(positive, "bool"))), want)
    # No positive at all: no slot changes the state (under XLA the first runs, for no query).
    np.testing.assert_array_equal(_np(visit(tensor(np.zeros_like(positive), "bool"))), np.zeros(positive.shape))


def test_scatter_add_adds_repeated_indices_with_a_gradient():
    # Each backend's own operation against the loop.
    indices = np.array([[0, 1], [2, 0], [0, 1], [1, 1], [0, 1]])
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0], "float32")
    base = np.arange(10, 16, dtype="float32").reshape(3, 2)
    want = np.zeros((3, 2), "float32")
    for (row, column), value in zip(indices, values):
        want[row, column] += value
    np.testing.assert_array_equal(_np(scatter_sum(tensor(indices, "int32"), tensor(values), (3, 2))), want)
    np.testing.assert_array_equal(_np(scatter_add(tensor(base), tensor(indices, "int32"), tensor(values))), base + want)
    # Rows: index (N, 1) into the first axis.
    rows = np.array([[1], [1], [0]])
    blocks = np.arange(6, dtype="float32").reshape(3, 2)
    want_rows = np.array([[4.0, 5.0], [2.0, 4.0]], "float32")
    np.testing.assert_array_equal(_np(scatter_sum(tensor(rows, "int32"), tensor(blocks), (2, 2))), want_rows)
    weights = np.arange(6, dtype="float32").reshape(3, 2)

    def objective(v):
        return keras.ops.sum(scatter_sum(tensor(indices, "int32"), v, (3, 2)) * tensor(weights))

    _, grad = value_and_grad(objective, values)
    np.testing.assert_allclose(_np(grad), [weights[r, c] for r, c in indices])
    # Through the tensor added to: the identity.
    _, grad = value_and_grad(
        lambda b: keras.ops.sum(scatter_add(b, tensor(indices, "int32"), tensor(values)) * tensor(weights)), base
    )
    np.testing.assert_allclose(_np(grad), weights)


@pytest.mark.parametrize("compiled", COMPILE_MODES)
def test_add_all_at_counts_for_none_and_sums_the_rest(compiled):
    # Each backend's path (bincounts one by one, one scatter of pairs under XLA) against the loop.
    indices = np.array([3, 0, 3, 3, 1, 0], "int32")
    values = np.array([0.5, 2.0, 1.0, 4.0, 8.0, 16.0], "float32")
    counts, sums = np.zeros(5, "float32"), np.zeros(5, "float32")
    for index, value in zip(indices, values):
        counts[index] += 1
        sums[index] += value
    def added(i, v):
        return add_all_at([None, v, None], i, 5)

    if compiled:  # XLA: one scatter of the stacked rows
        import tensorflow as tf

        added = tf.function(added, jit_compile=True)
    results = [_np(result) for result in added(tensor(indices, "int32"), tensor(values))]
    for got, want in zip(results, [counts, sums, counts]):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("compiled", COMPILE_MODES)
def test_row_min_takes_the_first_of_tied_minima(compiled):
    inf = np.inf
    values = np.array(
        [[3.0, 1.0, 2.0, 1.0], [inf, inf, inf, inf], [5.0, -2.0, -2.0, 0.0], [np.nan, np.nan, np.nan, np.nan]],
        "float32",
    )

    def least(values):
        return row_min(values)

    if compiled:  # XLA: a minimum, then the least column holding it
        import tensorflow as tf

        least = tf.function(least, jit_compile=True)
    minima, columns = (_np(v) for v in least(tensor(values)))
    np.testing.assert_array_equal(minima[:3], [1.0, inf, -2.0])
    np.testing.assert_array_equal(columns[:3], [1, 0, 1])
    assert 0 <= columns[3] < 4


@pytest.mark.parametrize("compiled", COMPILE_MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_min_above_takes_the_first_least_value_strictly_above(compiled, dtype):
    inf = np.inf
    values = np.array(
        [
            [3.0, 1.0, 2.0, 2.0, inf],  # above 1: the first 2
            [inf, inf, 5.0, 0.5, 0.5],  # above 5: only inf, none found
            [-0.0, 0.0, 7.0, np.nan, 0.25],  # above -0.0: 0.25
            [4.0, -3.0, 0.0, 1e-30, 4.0],  # above 0.0: 1e-30, not the negative value
            [-2.0, -1.0, -1.5, 3.0, -0.5],  # above -1.25 (the generic way): -1
        ]
    )
    thresholds = np.array([1.0, 5.0, -0.0, 0.0, -1.25])

    def above(values, thresholds):
        return row_min_above(values, thresholds)

    if compiled:
        import tensorflow as tf

        above = tf.function(above, jit_compile=True)
    for rows in (slice(0, 4), slice(0, 5)):  # all thresholds ≥ 0, then one below
        least, column, found = (_np(v) for v in above(tensor(values[rows], dtype), tensor(thresholds[rows], dtype)))
        want_found = [True, False, True, True, True][rows]
        np.testing.assert_array_equal(found, want_found)
        np.testing.assert_array_equal(column[np.array(want_found)], [2, 4, 3, 1][: sum(want_found)])
        np.testing.assert_allclose(least[np.array(want_found)], [2.0, 0.25, 1e-30, -1.0][: sum(want_found)], rtol=1e-7)


def test_entry_coordinates_in_row_major_order_and_take_entries_with_a_gradient():
    mask = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 1]], bool)
    coordinates = entry_coordinates(tensor(mask))
    if coordinates is None:  # JAX: shapes cannot depend on the data
        assert BACKEND == "jax"
        return
    rows, columns = (_np(v) for v in coordinates)
    np.testing.assert_array_equal(rows, [0, 0, 2, 2])
    np.testing.assert_array_equal(columns, [1, 2, 0, 2])
    matrix = np.arange(9, dtype="float32").reshape(3, 3)
    weights = np.array([1.0, 2.0, 3.0, 4.0], "float32")
    # An entry twice: its gradient adds up.
    rows, columns = (keras.ops.concatenate([v, v[-1:]]) for v in coordinates)
    value, grad = value_and_grad(
        lambda m: keras.ops.sum(take_entries(m, rows, columns) * tensor([*weights, 5.0])), matrix
    )
    assert float(value) == 1 * 1 + 2 * 2 + 3 * 6 + 4 * 8 + 5 * 8
    np.testing.assert_array_equal(_np(grad), [[0, 1, 2], [0, 0, 0], [3, 0, 9]])
    # A rectangle (queries against a longer reference), in float64.
    wide = np.arange(10, dtype="float64").reshape(2, 5)
    rows, columns = tensor(np.array([1, 0, 1], "int32")), tensor(np.array([4, 3, 4], "int32"))
    weights = tensor(np.array([1.0, 2.0, 3.0]))
    value, grad = value_and_grad(lambda m: keras.ops.sum(take_entries(m, rows, columns) * weights), wide)
    assert float(value) == 9 + 2 * 3 + 3 * 9
    np.testing.assert_array_equal(_np(grad), [[0, 0, 0, 2, 0], [0, 0, 0, 0, 4]])


def test_take_along_rows_picks_each_rows_columns_with_a_gradient():
    matrix = np.arange(12, dtype="float32").reshape(3, 4)
    # A column twice in a row: its gradient adds up.
    columns = np.array([[3, 0], [1, 1], [2, 0]], "int32")
    weights = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "float32")
    np.testing.assert_array_equal(_np(take_along_rows(tensor(matrix), tensor(columns))),
                                  np.take_along_axis(matrix, columns, axis=1))
    for compiled in COMPILE_MODES:
        value, grad = value_and_grad(
            lambda m, c, w: keras.ops.sum(take_along_rows(m, c) * w), matrix, tensor(columns), tensor(weights),
            compiled=compiled,
        )
        assert float(value) == float(np.sum(np.take_along_axis(matrix, columns, axis=1) * weights))
        np.testing.assert_array_equal(_np(grad), [[2, 0, 0, 1], [0, 7, 0, 0], [6, 0, 5, 0]])


def test_add_to_rows_adds_one_entry_per_row_and_pair():
    matrix = np.arange(12, dtype="float32").reshape(3, 4)
    columns, values = np.array([1, 3, 1]), np.array([1.0, 2.0, 3.0], "float32")
    more = np.array([1, 0, 2])
    want = matrix.copy()
    for row in range(3):
        want[row, columns[row]] += values[row]
        want[row, more[row]] -= values[row]
    pairs = [(tensor(columns, "int32"), tensor(values)), (tensor(more, "int32"), -tensor(values))]
    got = add_to_rows(tensor(matrix), pairs)
    np.testing.assert_array_equal(_np(got), want)


def test_positive_table_lists_the_positive_columns_first():
    positive = _slot_masks()
    table = positive_table(tensor(positive, "bool"))
    if BACKEND == "jax":  # compiled by XLA: shapes cannot depend on the labels
        assert table is None
        return
    table = _np(table)
    assert table.shape == (9, 13)
    for a, row in enumerate(positive):
        columns = np.flatnonzero(row)
        np.testing.assert_array_equal(table[a, : len(columns)], columns)
        assert np.all((table[a] >= 0) & (table[a] < 13))


@pytest.mark.parametrize("num_columns", [13, 16, 40])
@pytest.mark.parametrize("compiled", COMPILE_MODES)
def test_positive_table_counts_every_querys_positives(compiled, num_columns):
    positive = _slot_masks(num_columns)
    def counts_of(mask):
        return positive_table_and_counts(mask)[1]

    def float_counts_of(mask):
        return mask_row_counts(mask, "float32")

    if compiled:  # XLA, where the counts are sums of strided slices of the mask
        import tensorflow as tf

        counts_of = tf.function(counts_of, jit_compile=True)
        float_counts_of = tf.function(float_counts_of, jit_compile=True)
    np.testing.assert_array_equal(_np(counts_of(tensor(positive, "bool"))), positive.sum(axis=1))
    np.testing.assert_array_equal(_np(float_counts_of(tensor(~positive, "bool"))), (~positive).sum(axis=1))
    table, counts = positive_table_and_counts(tensor(positive, "bool"))
    np.testing.assert_array_equal(_np(counts), positive.sum(axis=1))
    assert (table is None) == (BACKEND == "jax")
    # A batch without positives: a table of width 0, counts of 0.
    table, counts = positive_table_and_counts(tensor(np.zeros((3, 4), bool)))
    np.testing.assert_array_equal(_np(counts), [0, 0, 0])
    if table is not None:
        assert tuple(table.shape) == (3, 0)



@slow_on_jax
@settings(max_examples=20, deadline=None)
@given(st.data())
def test_smallest_mask_keeps_exactly_count_ties_by_position(data):
    shape = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 6)))
    values = np.array(data.draw(st.lists(st.sampled_from([-2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0]),
                                         min_size=shape[0] * shape[1], max_size=shape[0] * shape[1])),
                      "float32").reshape(shape)
    candidates = np.array(data.draw(st.lists(st.booleans(), min_size=values.size, max_size=values.size))).reshape(shape)
    count = data.draw(st.integers(0, values.size + 2))
    got = _np(smallest_mask(tensor(values), tensor(candidates), count))
    order = sorted((float(values.flat[i]), i) for i in range(values.size) if candidates.flat[i])
    want = np.zeros(values.size, bool)
    want[[i for _, i in order[:count]]] = True
    np.testing.assert_array_equal(got.ravel(), want)


# ---------------------------------------------------------------- masks vs the NumPy loops

# (miner, reference of its natural form, "pairs" or "triplets", reference arguments)
DETERMINISTIC = [
    (miners.PairMarginMiner(), ref.pair_margin, "pairs", {}),
    (miners.PairMarginMiner(0.1, 0.5, distance="similarity"), ref.pair_margin, "pairs",
     {"pos_margin": 0.1, "neg_margin": 0.5, "inverted": True}),
    (miners.MultiSimilarityMiner(), ref.multi_similarity, "pairs", {}),
    (miners.MultiSimilarityMiner(0.2, distance="euclidean"), ref.multi_similarity, "pairs",
     {"epsilon": 0.2, "inverted": False}),
    (miners.BatchHardMiner(), ref.batch_easy_hard, "pairs", {"pos_strategy": "hard", "neg_strategy": "hard"}),
    (miners.BatchEasyHardMiner(), ref.batch_easy_hard, "pairs", {}),
    (miners.BatchEasyHardMiner("semihard", "easy", allowed_neg_range=(0.3, 1.5)), ref.batch_easy_hard, "pairs",
     {"pos_strategy": "semihard", "neg_strategy": "easy", "allowed_neg_range": (0.3, 1.5)}),
    (miners.BatchEasyHardMiner("all", "hard"), ref.batch_easy_hard, "pairs",
     {"pos_strategy": "all", "neg_strategy": "hard"}),
    (miners.BatchEasyHardMiner("hard", "all", allowed_pos_range=(0.0, 1.0)), ref.batch_easy_hard, "pairs",
     {"pos_strategy": "hard", "neg_strategy": "all", "allowed_pos_range": (0.0, 1.0)}),
    (miners.BatchEasyHardMiner("easy", "semihard", distance="similarity"), ref.batch_easy_hard, "pairs",
     {"inverted": True}),
    (miners.HDCMiner(), ref.hdc, "pairs", {}),
    (miners.HDCMiner(0.3, distance="similarity"), ref.hdc, "pairs", {"filter_percentage": 0.3, "inverted": True}),
    (miners.TripletMarginMiner(), ref.triplet_margin, "triplets", {}),
    (miners.TripletMarginMiner(0.5, "hard"), ref.triplet_margin, "triplets",
     {"margin": 0.5, "type_of_triplets": "hard"}),
    (miners.TripletMarginMiner(0.5, "semihard"), ref.triplet_margin, "triplets",
     {"margin": 0.5, "type_of_triplets": "semihard"}),
    (miners.TripletMarginMiner(0.1, "easy"), ref.triplet_margin, "triplets",
     {"margin": 0.1, "type_of_triplets": "easy"}),
    (miners.TripletMarginMiner(0.3, "semihard", distance="similarity"), ref.triplet_margin, "triplets",
     {"margin": 0.3, "type_of_triplets": "semihard", "inverted": True}),
    (miners.SemiHardMiner(), ref.semi_hard, "triplets", {}),
    (miners.SemiHardMiner(distance="squared_euclidean", normalize=False), ref.semi_hard, "triplets", {}),
]
IDS = [f"{i}-{type(m).__name__}" for i, (m, *_) in enumerate(DETERMINISTIC)]
# On JAX, the first configuration of every miner class.
LOOP_CASES = [i for i, (m, *_) in enumerate(DETERMINISTIC)
              if not ON_JAX or i == next(j for j, (n, *_) in enumerate(DETERMINISTIC) if type(n) is type(m))]


@st.composite
def batches(draw, with_reference=None):
    n = draw(st.integers(1, 9))
    classes = draw(st.integers(1, 4))
    dim = draw(st.integers(1, 3))
    labels = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
    # Small integers: many ties and exact coincidences.
    x = np.array(draw(st.lists(st.integers(-2, 2), min_size=n * dim, max_size=n * dim)), "float32").reshape(n, dim)
    use_reference = draw(st.booleans()) if with_reference is None else with_reference
    if not use_reference:
        return x, labels, None, None
    r = draw(st.integers(1, 6))
    ref_labels = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=r, max_size=r)))
    ref_x = np.array(draw(st.lists(st.integers(-2, 2), min_size=r * dim, max_size=r * dim)), "float32").reshape(r, dim)
    return x, labels, ref_x, ref_labels


def _mine(miner, x, labels, ref_x, ref_labels):
    positive, negative = _candidates(labels, ref_labels)
    embeddings = tensor(x)
    reference = embeddings if ref_x is None else tensor(ref_x)
    matrix = miner.matrix(embeddings, reference)
    return matrix, positive, negative, embeddings, reference


@pytest.mark.parametrize("case", LOOP_CASES, ids=[IDS[i] for i in LOOP_CASES])
@settings(max_examples=2 if ON_JAX else EXAMPLES, deadline=None)
@given(batch=batches())
def test_masks_match_the_loops(case, batch):
    miner, reference, form, arguments = DETERMINISTIC[case]
    matrix, positive, negative, embeddings, reference_rows = _mine(miner, *batch)
    m, pos, neg = _np(matrix), _np(positive), _np(negative)
    got_pairs = miner.pairs(matrix, positive, negative, embeddings, reference_rows)
    got_triplets = _triplet_set(miner.triplets(matrix, positive, negative, embeddings, reference_rows))
    if form == "pairs":
        want_pairs = reference(m, pos, neg, **arguments)
        want_triplets = ref.pairs_to_triplets(*want_pairs)
    else:
        want_triplets = reference(m, pos, neg, **arguments)
        want_pairs = ref.triplets_to_pairs(want_triplets)
    assert (_pairs(got_pairs[0]), _pairs(got_pairs[1])) == want_pairs
    assert got_triplets == want_triplets
    # Masks only narrow.
    assert _pairs(got_pairs[0]) <= _pairs(pos) and _pairs(got_pairs[1]) <= _pairs(neg)


@settings(max_examples=EXAMPLES, deadline=None)
@given(batch=batches(), angle=st.sampled_from([10.0, 20.0, 45.0]))
def test_angular_miner_matches_the_loop(batch, angle):
    x, labels, ref_x, ref_labels = batch
    x = x + np.float32(0.1) * np.arange(x.size, dtype="float32").reshape(x.shape) % 0.3
    if ref_x is not None:
        ref_x = ref_x + np.float32(0.05)
    miner = miners.AngularMiner(angle)
    matrix, positive, negative, embeddings, reference_rows = _mine(miner, x, labels, ref_x, ref_labels)
    got = _triplet_set(miner.mine_triplets(embeddings, reference_rows, positive, negative))
    want, closeness = ref.angular(x, ref_x, _np(positive), _np(negative), angle)
    # float32 against float64: only triplets on the threshold may differ.
    assert all(closeness[t] < 1e-4 for t in got ^ want)


def test_miner_matrix_is_the_reference_distance_and_gradient_free():
    import reference

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)).astype("float32")
    for distance in ("euclidean", "squared_euclidean", "cosine"):
        got = _np(miners.Miner(distance, normalize=True).matrix(tensor(x)))
        np.testing.assert_allclose(got, reference.distance_matrix(x, distance, True), atol=2e-6)
    similarity = _np(miners.Miner("similarity", normalize=False).matrix(tensor(x)))
    np.testing.assert_allclose(similarity, x @ x.T, rtol=1e-5, atol=1e-6)
    _, grad = value_and_grad(lambda e: keras.ops.sum(miners.Miner().matrix(e)) + 0 * keras.ops.sum(e), x)
    assert not np.any(grad)


# ---------------------------------------------------------------- PML 2.9 parity

def _subsample(cases):
    """Every configuration on one of its 6 recorded batches (8 to 32 examples).

    The kept batch rotates with the configuration, so every batch size is
    still checked, and the file stays fast on every backend.
    """
    seen, kept = {}, []
    for case in cases:
        cfg = json.dumps(case.values[2]["cfg"], sort_keys=True)
        order = list(seen).index(cfg) if cfg in seen else len(seen)
        batch = seen[cfg] = seen.get(cfg, -1) + 1
        if (batch - order) % 6 == 0 and (not ON_JAX or order % 2 == 0 or "loss" in cfg):
            kept.append(case)
    return kept


MASKS = _subsample(recorded.cases("pml_miners", {"mask"}))
LOSS_CASES = _subsample(recorded.cases("pml_miners", {"loss"}))
HISTOGRAMS = _subsample(recorded.cases("pml_miners", {"histogram"}))


def _miner_from(cfg):
    arguments = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["arguments"].items()}
    return getattr(miners, cfg["miner"])(**arguments)


@pytest.mark.parametrize("peer, index, case", MASKS)
def test_masks_match_pml(peer, index, case):
    x, labels, _ = recorded.arrays(peer, index)
    pos, neg, trip = (recorded.extra(peer, index, name) for name in ("pos", "neg", "trip"))
    dtype = "float64" if FLOAT64 else "float32"
    miner = _miner_from(case["cfg"])
    if case["cfg"]["ref"]:
        half = len(x) // 2
        got = miner(labels[:half], tensor(x[:half], dtype), labels[half:], tensor(x[half:], dtype))
        positive, negative = _candidates(labels[:half], labels[half:])
        embeddings, reference_rows = tensor(x[:half], dtype), tensor(x[half:], dtype)
    else:
        got = miner(labels, tensor(x, dtype))
        positive, negative = _candidates(labels)
        embeddings = reference_rows = tensor(x, dtype)
    triplets = _triplet_set(miner.mine_triplets(embeddings, reference_rows, positive, negative))
    want_triplets = {tuple(t) for t in trip.tolist()}
    if case["cfg"]["miner"] == "AngularMiner":
        # PML adds 1e-6 to each difference: triplets on the threshold may differ.
        query = x[: len(x) // 2] if case["cfg"]["ref"] else x
        rows = x[len(x) // 2 :] if case["cfg"]["ref"] else None
        _, closeness = ref.angular(query, rows, _np(positive), _np(negative), miner.angle)
        assert all(closeness[t] < 1e-4 for t in triplets ^ want_triplets)
        assert len(want_triplets) > 0 or len(triplets) == 0
        return
    if case["cfg"]["miner"] == "HDCMiner" and not case["cfg"]["ref"]:
        # The square matrix is symmetric: (a, r) and (r, a) tie, and PML's
        # topk keeps either at the boundary. The same number, mirrored.
        for mined, want in ((got[0], pos), (got[1], neg)):
            mined = _np(mined)
            assert mined.sum() == want.sum()
            np.testing.assert_array_equal((mined & ~want), (want & ~mined).T)
        return
    if FLOAT64:
        np.testing.assert_array_equal(_np(got[0]), pos)
        np.testing.assert_array_equal(_np(got[1]), neg)
        assert triplets == want_triplets
    else:
        # float32: a pair on a threshold may flip.
        assert np.mean(_np(got[0]) != pos) <= 0.02 and np.mean(_np(got[1]) != neg) <= 0.02
        assert len(triplets ^ want_triplets) <= max(2, 0.02 * len(want_triplets))


def _loss_from(cfg):
    return getattr(tfm, cfg["loss"])(**cfg["loss_arguments"], miner=_miner_from(cfg))


@slow_on_jax
@pytest.mark.parametrize("peer, index, case", LOSS_CASES)
def test_mined_losses_match_pml(peer, index, case):
    x, labels, grad = recorded.arrays(peer, index)
    loss = _loss_from(case["cfg"])
    value, got = value_and_grad(lambda e: loss(labels, e), x.astype("float32"))
    assert float(value) == pytest.approx(case["loss"], rel=1e-4, abs=1e-5)
    scale = max(np.abs(grad).max(), 1e-6)
    np.testing.assert_allclose(got / scale, grad / scale, atol=1e-3)


# ---------------------------------------------------------------- losses with miners


def _batch(seed, n=16, classes=4, dim=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype("float32"), rng.integers(0, classes, n)


def _fast_and_mined(kind):
    if kind == "batch_hard":
        return (tfm.BatchHardTriplet(margin=0.5),
                tfm.BatchAllTriplet(margin=0.5, average="all", miner=miners.BatchHardMiner(normalize=False)))
    if kind == "semi_hard":
        return (tfm.SemiHardTriplet(margin=0.5),
                tfm.BatchAllTriplet(margin=0.5, average="all", miner=miners.SemiHardMiner(normalize=False)))
    return (tfm.SemiHardTriplet(margin=0.2, distance="cosine"),
            tfm.BatchAllTriplet(margin=0.2, distance="cosine", average="all",
                                miner=miners.SemiHardMiner(distance="cosine", normalize=False)))


@slow_on_jax
@pytest.mark.parametrize("kind", ["batch_hard", "semi_hard", "semi_hard_cosine"])
def test_batch_hard_and_semi_hard_are_batch_all_with_a_miner(kind):
    fast, mined = _fast_and_mined(kind)
    for seed in range(3):
        x, labels = _batch(seed)
        # Compiled once (XLA / jit) for the first batch of one kind, eagerly otherwise.
        compiled = seed == 0 and kind == "semi_hard" and BACKEND != "torch"
        want, want_grad = value_and_grad(lambda e: fast(labels, e), x, compiled=compiled)
        got, got_grad = value_and_grad(lambda e: mined(labels, e), x, compiled=compiled)
        assert float(got) == pytest.approx(float(want), rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-6)


def test_batch_all_with_the_all_miner_is_batch_all():
    x, labels = _batch(3)
    for average in ("nonzero", "all"):
        plain = tfm.BatchAllTriplet(margin=0.5, average=average)
        mined = tfm.BatchAllTriplet(margin=0.5, average=average,
                                    miner=miners.TripletMarginMiner(margin=100.0, normalize=False))
        np.testing.assert_allclose(float(mined(labels, x)), float(plain(labels, x)), rtol=1e-6)


@settings(max_examples=EXAMPLES, deadline=None)
@given(batch=batches(with_reference=False), margin=st.sampled_from([0.1, 0.5]))
def test_mined_batch_all_matches_the_loop(batch, margin):
    x, labels, _, _ = batch
    x = x + np.float32(0.37) * np.arange(x.size, dtype="float32").reshape(x.shape) % 0.5
    miner = miners.TripletMarginMiner(0.3, "all", normalize=False)
    matrix, positive, negative, _, _ = _mine(miner, x, labels, None, None)
    triplets = ref.triplet_margin(_np(matrix), _np(positive), _np(negative), 0.3)
    for average in ("all", "nonzero"):
        loss = tfm.BatchAllTriplet(margin=margin, average=average, miner=miner)
        want = ref.triplet_loss(x, triplets, margin, average=average)
        assert float(loss(labels, x)) == pytest.approx(want, rel=1e-4, abs=1e-5)


MINED_LOSSES = [
    tfm.Contrastive(miner=miners.PairMarginMiner()),
    tfm.MultiSimilarity(miner=miners.MultiSimilarityMiner()),
    tfm.Circle(miner=miners.HDCMiner()),
    tfm.NCA(miner=miners.BatchEasyHardMiner("hard", "all")),
    tfm.BatchHardTriplet(margin=0.3, miner=miners.PairMarginMiner(0.0, 1.5)),
    tfm.BatchAllTriplet(margin=0.2, miner=miners.TripletMarginMiner(0.2, "semihard")),
    tfm.BatchAllTriplet(margin=0.2, miner=miners.AngularMiner()),
    tfm.LiftedStructure(margin=0.5, miner=miners.MultiSimilarityMiner()),
    tfm.MarginLoss(sampling="all", miner=miners.PairMarginMiner()),
    tfm.BatchAllTriplet(margin=0.2, miner=miners.DistanceWeightedMiner(seed=1)),
    tfm.Contrastive(miner=miners.UniformHistogramMiner(num_bins=5, pos_per_bin=3, neg_per_bin=3, seed=2)),
]


# The other miners run compiled in the equality, fit and parity tests.
COMPILED_LOSSES = [MINED_LOSSES[i] for i in (0, 1, 2, 6)]


def _random(miner):
    return isinstance(miner, miners._RandomMiner)
MINED_IDS = [f"{loss.name}-{type(loss.miner).__name__}" for loss in MINED_LOSSES]


@slow_on_jax
@pytest.mark.parametrize("loss", MINED_LOSSES, ids=MINED_IDS)
def test_mined_loss_compiled_is_eager_and_pure_function_agrees(loss):
    x, labels = _batch(5)
    # A random miner's generator changes state: JAX runs it un-jitted (the fit test jits it).
    value, grad = value_and_grad(lambda e: loss(labels, e), x, stateful=_random(loss.miner))
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # Compiled (XLA / jit) for one loss of each deterministic miner.
    if not _random(loss.miner) and loss in COMPILED_LOSSES:
        compiled, compiled_grad = value_and_grad(
            lambda e: loss(labels, e), x, compiled=True
        )
        assert float(compiled) == pytest.approx(float(value), rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(compiled_grad, grad, rtol=1e-4, atol=1e-6)
        # The pure function with the same miner: the same per-query losses.
        from tfmetric.losses.registry import LOSSES

        entry = next(e for e in LOSSES.values() if e.loss_class is type(loss))
        config = loss.get_config()
        import inspect

        accepted = inspect.signature(entry.function).parameters
        arguments = {k: v for k, v in config.items() if k in accepted and k not in ("miner", "seed")}
        per_query = _np(entry.function(labels, x, **arguments, miner=loss.miner))
        np.testing.assert_allclose(per_query, _np(loss.call(labels, x)), rtol=1e-5, atol=1e-6)


def test_a_miner_changes_the_loss():
    x, labels = _batch(6)
    for plain, mined in [
        (tfm.Contrastive(), tfm.Contrastive(miner=miners.PairMarginMiner())),
        (tfm.MultiSimilarity(), tfm.MultiSimilarity(miner=miners.HDCMiner(0.3))),
    ]:
        assert float(mined(labels, x)) != pytest.approx(float(plain(labels, x)))


def test_multi_similarity_miner_is_the_epsilon_option():
    x, labels = _batch(7)
    a = tfm.MultiSimilarity(epsilon=0.1)(labels, x)
    b = tfm.MultiSimilarity(miner=miners.MultiSimilarityMiner(0.1))(labels, x)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_reference_set_and_memory_with_a_miner():
    x, labels = _batch(8, n=12)
    queries, query_labels, reference_x, reference_labels = x[:6], labels[:6], x[6:], labels[6:]
    miner = miners.HDCMiner(0.5)
    positive, negative = miner(query_labels, queries, reference_labels, reference_x)
    candidates = _candidates(query_labels, reference_labels)
    assert _pairs(positive) <= _pairs(candidates[0]) and _pairs(negative) <= _pairs(candidates[1])
    # The pure functions narrow the same way.
    got = _np(tfm.losses.contrastive(query_labels, queries, reference_labels, reference_x, miner=miner))
    mined_pairs = tfm.mining.Pairs(tensor(queries), tensor(reference_x), positive, negative)
    want = _np(tfm.losses.base.per_query(tfm.Contrastive(miner=None).pair_terms(*mined_pairs)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # Under a cross-batch memory: finite, and the memory's rows only enter through the miner's masks.
    memory = tfm.CrossBatchMemory(tfm.BatchAllTriplet(margin=0.2, miner=miners.BatchHardMiner()), memory_size=10)
    for step in range(3):
        x, labels = _batch(10 + step, n=6)
        value, grad = value_and_grad(lambda e: memory(labels, e), x, stateful=True)
        assert np.isfinite(value) and np.all(np.isfinite(grad))


DEGENERATE = {
    "one example": (np.ones((1, 3), "float32"), np.array([0])),
    "one class": (np.random.default_rng(0).normal(size=(5, 3)).astype("float32"), np.zeros(5, int)),
    "all distinct": (np.random.default_rng(1).normal(size=(5, 3)).astype("float32"), np.arange(5)),
    "identical": (np.ones((6, 3), "float32"), np.array([0, 0, 1, 1, 2, 2])),
    "zeros": (np.zeros((4, 3), "float32"), np.array([0, 0, 1, 1])),
}
ALL_MINERS = [m for m, *_ in DETERMINISTIC] + [
    miners.AngularMiner(),
    miners.DistanceWeightedMiner(seed=0),
    miners.UniformHistogramMiner(num_bins=7, pos_per_bin=2, neg_per_bin=3, seed=0),
]


@slow_on_jax
@pytest.mark.parametrize("name", sorted(DEGENERATE))
def test_degenerate_batches(name):
    x, labels = DEGENERATE[name]
    for index, miner in enumerate(ALL_MINERS):
        positive, negative = miner(labels, x)
        if name in ("one example", "one class", "all distinct"):
            # No triplet: the triplet miners and the miners of one pair per
            # anchor give nothing at all.
            assert _triplet_set(miner.mine_triplets(tensor(x), tensor(x), *_candidates(labels))) == set()
        turn = index + sorted(DEGENERATE).index(name)
        if turn % 5 not in ((0,) if ON_JAX else (0, 2)):
            continue  # each miner's losses on 2 of the 5 degenerate batches, in turn
        losses = (tfm.BatchAllTriplet(margin=0.2, miner=miner), tfm.Contrastive(miner=miner))
        for loss in losses[turn % 2 :][:1]:
            value, grad = value_and_grad(lambda e, loss=loss: loss(labels, e), x, stateful=_random(miner))
            assert np.isfinite(value) and np.all(np.isfinite(grad)), (name, miner)
            if name in ("one example", "one class", "all distinct") and loss.name == "batch_all_triplet":
                assert float(value) == 0.0


def test_low_precision_inputs():
    x, labels = _batch(9)
    for dtype in ("float16", "bfloat16"):
        for loss in (tfm.BatchAllTriplet(margin=0.2, miner=miners.TripletMarginMiner()),
                     tfm.MultiSimilarity(miner=miners.HDCMiner())):
            value = loss(labels, tensor(x, dtype))
            assert np.isfinite(float(value))
            assert float(value) == pytest.approx(float(loss(labels, x)), rel=0.05, abs=0.02)


def test_distance_weighted_miner_draws_one_negative_per_positive_pair():
    x, labels = _batch(11, n=24, classes=4, dim=8)
    miner = miners.DistanceWeightedMiner(seed=3)
    positive, negative = _candidates(labels)
    embeddings = tensor(x)
    triplets = miner.mine_triplets(embeddings, embeddings, positive, negative)
    found = _triplet_set(triplets)
    heads = _pairs(triplets.positive)
    assert heads == _pairs(positive)
    assert {(a, p) for a, p, _ in found} == heads
    assert len(found) == len(heads)  # one negative each
    assert all(labels[a] != labels[n] for a, _, n in found)
    # Draws are reproducible from the seed, and new at every call.
    again = _triplet_set(miners.DistanceWeightedMiner(seed=3).mine_triplets(embeddings, embeddings, positive, negative))
    assert again == found
    assert _triplet_set(miner.mine_triplets(embeddings, embeddings, positive, negative)) != found


def test_distance_weighted_miner_follows_the_weights():
    # The mean weight of the drawn negatives is Σ w² when they are drawn with
    # probability w (and the mean of w when drawn evenly).
    from tfmetric.mining import distance_weighted_log_weights

    rng = np.random.default_rng(12)
    x = rng.normal(size=(40, 5)).astype("float32")
    labels = np.repeat(np.arange(10), 4)
    miner = miners.DistanceWeightedMiner(seed=0)
    positive, negative = _candidates(labels)
    embeddings = tensor(x)
    weights = np.exp(_np(distance_weighted_log_weights(miner.matrix(embeddings), negative, 5)).astype("float64"))
    weights = weights / weights.sum(axis=1, keepdims=True)
    drawn = []
    for _ in range(10):
        drawn += [weights[a, n] for a, _, n in _triplet_set(miner.mine_triplets(embeddings, embeddings, positive,
                                                                                  negative))]
    expected = (weights**2).sum(axis=1).mean()
    evenly = (weights.sum(axis=1) / (weights > 0).sum(axis=1)).mean()
    assert np.mean(drawn) == pytest.approx(expected, rel=0.08)
    assert abs(np.mean(drawn) - evenly) > 0.3 * evenly


# ---------------------------------------------------------------- configuration and Keras


CONFIGURED = ALL_MINERS + [
    miners.UniformHistogramMiner(),
    miners.BatchEasyHardMiner("hard", "semihard", (0.1, 1.0), None, "cosine", False),
]


@pytest.mark.parametrize("miner", CONFIGURED, ids=[repr(m) for m in CONFIGURED])
def test_config_round_trip(miner):
    config = miner.get_config()
    json.dumps(config)
    assert type(miner).from_config(config).get_config() == config
    loss = tfm.BatchAllTriplet(margin=0.3, miner=miner)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored.miner) is type(miner)
    assert restored.miner.get_config() == config
    assert restored.get_config() == loss.get_config()


def test_bad_arguments():
    with pytest.raises(ValueError, match="distance"):
        miners.PairMarginMiner(distance="manhattan")
    with pytest.raises(ValueError, match="pos_strategy"):
        miners.BatchEasyHardMiner(pos_strategy="hardest")
    with pytest.raises(ValueError, match="both"):
        miners.BatchEasyHardMiner("semihard", "semihard")
    with pytest.raises(ValueError, match="all"):
        miners.BatchEasyHardMiner("all", "semihard")
    with pytest.raises(ValueError, match="allowed_pos_range"):
        miners.BatchEasyHardMiner(allowed_pos_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="type_of_triplets"):
        miners.TripletMarginMiner(type_of_triplets="medium")
    with pytest.raises(ValueError, match="filter_percentage"):
        miners.HDCMiner(1.5)
    with pytest.raises(ValueError, match="angle"):
        miners.AngularMiner(-5)
    with pytest.raises(ValueError, match="seed"):
        miners.DistanceWeightedMiner(seed="abc")
    with pytest.raises(ValueError, match="num_bins"):
        miners.UniformHistogramMiner(num_bins=0)
    with pytest.raises(ValueError, match="pos_per_bin"):
        miners.UniformHistogramMiner(pos_per_bin=2.5)
    with pytest.raises(ValueError, match="both"):
        miners.HDCMiner()([0, 1], np.ones((2, 2)), ref_labels=[0])


def _data():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 16)
    centres = rng.normal(size=(6, 10)) * 2
    x = (centres[labels] + rng.normal(size=(96, 10))).astype("float32")
    return x, labels


FIT_LOSSES = [
    tfm.BatchAllTriplet(margin=0.2, miner=miners.TripletMarginMiner(0.2, "semihard")),
    tfm.Contrastive(margin=0.5, miner=miners.HDCMiner()),
]


@pytest.mark.parametrize("loss", FIT_LOSSES, ids=[type(loss.miner).__name__ for loss in FIT_LOSSES])
def test_fit_with_a_mined_loss(loss):
    # TensorFlow: XLA for the first loss, a graph for the others.
    jit_compile = FIT_JIT_COMPILE[-1] if loss is FIT_LOSSES[0] else FIT_JIT_COMPILE[0]
    keras.utils.set_random_seed(0)
    x, y = _data()
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=24, epochs=4, shuffle=False, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]


def test_save_and_load_a_model_compiled_with_a_miner(tmp_path):
    x, y = _data()
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(4)])
    loss = tfm.BatchAllTriplet(margin=0.2, miner=miners.BatchEasyHardMiner("hard", "semihard", (0.0, 2.0)))
    model.compile(optimizer="adam", loss=loss)
    model.fit(x, y, batch_size=24, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.loss.miner, miners.BatchEasyHardMiner)
    assert restored.loss.get_config() == model.loss.get_config()
    assert float(restored.loss(y[:24], x[:24])) == pytest.approx(float(loss(y[:24], x[:24])))


# ---------------------------------------------------------------- the uniform histogram miner


def _bin_counts(mask, bins, num_bins):
    counts = np.zeros(num_bins + 1, int)
    for pair in _pairs(mask):
        counts[bins[pair]] += 1
    return counts[:num_bins]


@slow_on_jax
@settings(max_examples=EXAMPLES + 4, deadline=None)
@given(batch=batches(), num_bins=st.sampled_from([1, 3, 7]), per_bin=st.sampled_from([(1, 2), (3, 1), (2, 50)]),
       distance=st.sampled_from(["euclidean", "similarity"]))
def test_uniform_histogram_miner_keeps_min_of_count_and_bin_size_per_bin(batch, num_bins, per_bin, distance):
    x, labels, ref_x, ref_labels = batch
    x = x + np.float32(0.37) * np.arange(x.size, dtype="float32").reshape(x.shape) % 0.5
    miner = miners.UniformHistogramMiner(num_bins, *per_bin, distance=distance, seed=len(x))
    matrix, positive, negative, _, _ = _mine(miner, x, labels, ref_x, ref_labels)
    got = miner.pairs(matrix, positive, negative)
    for mined, candidates, count in zip(got, (positive, negative), per_bin):
        bins, closeness = ref.histogram_bins(_np(matrix).astype("float64"), _np(candidates), num_bins)
        if any(c < 1e-4 for c in closeness.values()):
            continue  # a pair on a bin edge: float32 may put it on either side
        assert _pairs(mined) <= _pairs(candidates)  # masks only narrow
        sizes = _bin_counts(_np(candidates), bins, num_bins)
        np.testing.assert_array_equal(_bin_counts(_np(mined), bins, num_bins), np.minimum(sizes, count))


def test_uniform_histogram_miner_draws_anew_and_reproducibly():
    x, labels = _batch(13, n=24, classes=3, dim=8)
    positive, negative = _candidates(labels)
    embeddings = tensor(x)

    def draw(miner):
        mined = miner.mine_pairs(embeddings, embeddings, positive, negative)
        return _pairs(mined[0]), _pairs(mined[1])

    miner = miners.UniformHistogramMiner(num_bins=4, pos_per_bin=3, neg_per_bin=5, seed=4)
    first = draw(miner)
    assert draw(miners.UniformHistogramMiner(num_bins=4, pos_per_bin=3, neg_per_bin=5, seed=4)) == first
    second = draw(miner)
    assert second != first
    assert [len(p) for p in second] == [len(p) for p in first]  # the same counts: min(k, bin size)
    # Identical embeddings: one value, everything in one bin.
    same = miners.UniformHistogramMiner(num_bins=10, pos_per_bin=2, neg_per_bin=3, seed=0)
    mined = same(labels, np.ones_like(x))
    assert (_np(mined[0]).sum(), _np(mined[1]).sum()) == (2, 3)


def test_uniform_per_bin_draws_uniform_subsets():
    # 3 bins of 5, 12 and 40 entries, kept 4 at a time; ties of keys by position.
    from tfmetric.miners import uniform_per_bin

    bins = np.repeat([0, 1, 2, 3], [5, 12, 40, 7]).astype("int32")  # 3: no bin
    rng = np.random.default_rng(0)
    bins = bins[rng.permutation(len(bins))]
    select = lambda b, k: uniform_per_bin(b, k, 4, 3)  # noqa: E731
    if ON_TF:
        import tensorflow as tf

        select = tf.function(select, jit_compile=True)
    elif BACKEND == "jax":
        import jax

        select = jax.jit(select)
    draws = 60 if BACKEND == "torch" else 300  # PyTorch runs eagerly: ~0.2 s a draw
    kept = np.zeros(len(bins))
    for _ in range(draws):
        keys = rng.integers(0, 2**31 - 1, len(bins)).astype("int32")
        mask = _np(select(tensor(bins, "int32"), tensor(keys, "int32")))
        np.testing.assert_array_equal(np.bincount(bins[mask], minlength=4), [4, 4, 4, 0])
        kept += mask
    from scipy import stats

    for b, size in ((0, 5), (1, 12), (2, 40)):
        observed = kept[bins == b]
        # Each entry is kept with probability 4 / size: a χ² test of the frequencies.
        assert stats.chisquare(observed).pvalue > 1e-3, observed
    # Tied keys: the earlier entries.
    tied = _np(uniform_per_bin(tensor(np.zeros(6, "int32"), "int32"), tensor(np.zeros(6, "int32"), "int32"), 2, 1))
    np.testing.assert_array_equal(tied, [True, True, False, False, False, False])


@pytest.mark.parametrize("peer, index, case", HISTOGRAMS)
def test_uniform_histogram_miner_bins_match_pml(peer, index, case):
    # With one pair per bin, PML and tfmetric keep one pair of every non-empty bin.
    x, labels, _ = recorded.arrays(peer, index)
    want = int(recorded.extra(peer, index, "pos")), int(recorded.extra(peer, index, "neg"))
    miner = _miner_from(case["cfg"])
    dtype = "float64" if FLOAT64 else "float32"
    if case["cfg"]["ref"]:
        half = len(x) // 2
        got = miner(labels[:half], tensor(x[:half], dtype), labels[half:], tensor(x[half:], dtype))
    else:
        got = miner(labels, tensor(x, dtype))
    got = int(_np(got[0]).sum()), int(_np(got[1]).sum())
    if FLOAT64:
        assert got == want
    else:  # float32: a pair on a bin edge may move
        assert abs(got[0] - want[0]) <= 1 and abs(got[1] - want[1]) <= 1


# ---------------------------------------------------------------- a random miner's state in a model


@pytest.mark.parametrize("miner", ["distance_weighted", "uniform_histogram"])
def test_fit_with_a_random_miner_and_resume_from_a_saved_model(miner, tmp_path):
    # The miner's generator is the loss's state: jitted fits (JAX) thread it,
    # and a saved model resumes its draws where they stopped.
    def make_loss():
        if miner == "distance_weighted":
            return tfm.Contrastive(miner=miners.DistanceWeightedMiner(seed=1))
        return tfm.Contrastive(miner=miners.UniformHistogramMiner(num_bins=5, pos_per_bin=4, neg_per_bin=4, seed=1))

    x, y = _data()

    def new_model():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(4)])
        # TensorFlow: a graph (XLA would add seconds; `uniform_per_bin` and the other miners run under XLA above).
        jit_compile = FIT_JIT_COMPILE[0]
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss=make_loss(), jit_compile=jit_compile)
        return model

    def fit(model, epochs):
        return model.fit(x, y, batch_size=24, epochs=epochs, shuffle=False, verbose=0).history["loss"]

    def seed_state(model):
        return _np(model.loss.state.miner_seed_generator.state)

    model = new_model()
    generator = model.loss.miner.seed_generator
    assert any(v is generator.state for v in model.non_trainable_variables)
    losses = fit(model, 1)
    assert np.all(np.isfinite(losses))
    assert not np.array_equal(seed_state(model), _np(miners.DistanceWeightedMiner(seed=1).seed_generator.state))
    model.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(seed_state(restored), seed_state(model))
    fit(restored, 1)
    fit(model, 1)
    np.testing.assert_array_equal(seed_state(restored), seed_state(model))
    for a, b in zip(restored.trainable_variables, model.trainable_variables):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-6)
