import keras
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import tfmetric as tfm

import recorded
import reference
from conftest import BACKEND, COMPILE_MODES, only_tensorflow, slow_on_jax, tensor, value_and_grad
from registry import ALL_LOSSES, TRIPLET_LOSSES, check, loss_and_reference, loss_function, typical_arguments

DISTANCES = tfm.distances.DISTANCES

# ---------------------------------------------------------------- hand-made cases

SQUARE = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]], "float32")
SQUARE_LABELS = np.array([0, 0, 1, 1])


@pytest.mark.parametrize(
    "kind, expected",
    [
        # anchors: relu(1 - 2 + 1), relu(1 - √5 + 1), relu(2 - 2 + 1), relu(2 - √5 + 1)
        ("batch_hard", (0 + 0 + 1 + (3 - 5**0.5)) / 4),
        # B0: (2-2+1) + (2-√5+1); B1: (2-√8+1) + (2-√5+1); the rest <= 0.
        ("batch_all_nonzero", (1 + 2 * (3 - 5**0.5) + (3 - 8**0.5)) / 4),
        ("batch_all_all", (1 + 2 * (3 - 5**0.5) + (3 - 8**0.5)) / 8),
        # (B0, B1): A0 is at exactly d_ap = 2, not beyond it: the negative is
        # A1 at √5. Equal distances must stay equal for this to hold.
        ("semi_hard", 2 * (3 - 5**0.5) / 4),
        # Both positive pairs see negatives at 2, √8, √5, √5: S = Σ exp(1 − d);
        # J = log S + d_ap with d_ap = 1 and 2; mean of J²/2 over 2 pairs.
        (
            "lifted_structure",
            sum(
                (np.log(np.exp(-1) + np.exp(1 - 8**0.5) + 2 * np.exp(1 - 5**0.5)) + d_ap) ** 2 / 4
                for d_ap in (1.0, 2.0)
            ),
        ),
    ],
)
def test_hand_made_square(kind, expected):
    want = check(kind, SQUARE, SQUARE_LABELS, margin=1.0)
    if expected is not None:
        assert want.loss == pytest.approx(expected)


def test_hand_made_semi_hard_picks_the_nearest_farther_negative():
    # Anchor 0, positive 1 at distance 1; negatives at 0.5 (closer: not
    # semi-hard), 1.5 (semi-hard) and 3. Only anchor 0's pair and its mirror.
    x = np.array([[0.0], [1.0], [0.5], [1.5], [3.0]], "float32")
    labels = np.array([0, 0, 1, 2, 3])
    loss = tfm.SemiHardTriplet(margin=1.0, reduction=None)
    per_anchor = np.asarray(loss(labels, x))
    # (0, 1): negative 1.5 -> 1 - 1.5 + 1 = 0.5. (1, 0): negatives at 0.5, 0.5,
    # 2 from anchor 1; the nearest beyond 1 is 2 -> 1 - 2 + 1 = 0.
    np.testing.assert_allclose(per_anchor, [0.5, 0.0, 0.0, 0.0, 0.0], atol=1e-6)
    assert float(tfm.SemiHardTriplet(margin=1.0)(labels, x)) == pytest.approx(0.25)


def test_hand_made_batch_all_counts_only_positive_triplets():
    x = np.array([[0.0], [1.0], [0.5], [5.0]], "float32")
    labels = np.array([0, 0, 1, 2])
    # Triplets: (0,1,n=0.5): 1-0.5+0.1=0.6; (0,1,n=5): 1-5+0.1<0;
    # (1,0,n=0.5): 1-0.5+0.1=0.6; (1,0,n=5): 1-4+0.1<0.
    nonzero = tfm.BatchAllTriplet(margin=0.1)(labels, x)
    every = tfm.BatchAllTriplet(margin=0.1, average="all")(labels, x)
    assert float(nonzero) == pytest.approx(0.6)
    assert float(every) == pytest.approx(0.3)


# ---------------------------------------------------------------- random cases


@settings(max_examples=20 if BACKEND == "tensorflow" else 8, deadline=None)
@given(
    kind=st.sampled_from(sorted(TRIPLET_LOSSES)),
    n=st.integers(1, 64),
    num_classes=st.integers(1, 12),
    dim=st.integers(1, 8),
    seed=st.integers(0, 2**31),
    distance=st.sampled_from(DISTANCES),
    margin=st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0]),
    normalize=st.booleans(),
)
def test_matches_brute_force(kind, n, num_classes, dim, seed, distance, margin, normalize):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    labels = rng.integers(0, num_classes, size=n)
    if kind == "batch_hard_soft":
        assume(distance != "squared_euclidean" or not normalize)
    check(kind, x, labels, distance=distance, margin=margin, normalize=normalize)


# Every in-batch loss, the soft ones of test_soft_losses.py too.
@slow_on_jax
@pytest.mark.parametrize("kind", sorted(ALL_LOSSES))
def test_pk_batch_with_weights_and_compiled(kind):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(48, 8)).astype("float32")
    labels = np.repeat(np.arange(12), 4)
    rng.shuffle(labels)
    weights = rng.uniform(0.0, 2.0, size=48)
    for compiled in COMPILE_MODES:
        check(kind, x, labels, compiled=compiled, sample_weight=weights, **typical_arguments(kind))


@slow_on_jax
@pytest.mark.parametrize("kind", sorted(ALL_LOSSES))
def test_reduction_none_gives_per_anchor_losses(kind):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 4)).astype("float32")
    labels = rng.integers(0, 5, size=20)
    loss, ref = loss_and_reference(kind, reduction=None, **typical_arguments(kind))
    weights = rng.uniform(0.5, 1.5, size=20)
    got = np.asarray(loss(labels, x, sample_weight=weights))
    np.testing.assert_allclose(got, weights * ref(x.astype("float64"), labels).per_anchor, rtol=1e-4, atol=1e-5)
    summed = loss_and_reference(kind, reduction="sum", **typical_arguments(kind))[0](labels, x, sample_weight=weights)
    want = ref(x.astype("float64"), labels, sample_weight=weights)
    assert float(summed) == pytest.approx(want.weighted_sum, rel=1e-4)


# ---------------------------------------------------------------- fixtures


FIXTURE_KINDS = ("semi_hard", "batch_hard", "batch_all_nonzero", "batch_all_all", "lifted_struct")
FIXTURE_CASES = recorded.cases("tfa", FIXTURE_KINDS) + recorded.cases("pml", FIXTURE_KINDS)
# The peers' values are checked in full under TensorFlow and PyTorch; under
# JAX, where every case is a compilation of its own, one case in ten checks
# the backend.
BACKEND_CASES = FIXTURE_CASES[::10] if BACKEND == "jax" else FIXTURE_CASES


def loss_for_fixture(case):
    cfg = case["cfg"]
    common = {"margin": cfg["margin"], "distance": cfg["distance"]}
    if case["kind"] == "semi_hard":
        return tfm.SemiHardTriplet(**common)
    if case["kind"] == "lifted_struct":
        return tfm.LiftedStructure(**common)
    if case["kind"] == "batch_hard":
        return tfm.BatchHardTriplet(soft=cfg.get("soft", False), **common)
    average = "nonzero" if case["kind"] == "batch_all_nonzero" else "all"
    return tfm.BatchAllTriplet(average=average, **common)


def test_fixtures_are_present():
    assert len(FIXTURE_CASES) >= 100


@slow_on_jax
@pytest.mark.parametrize("peer, index, case", BACKEND_CASES)
def test_reproduces_fixture(peer, index, case):
    x, labels, recorded_grad = recorded.arrays(peer, index)
    x = x.astype("float32")
    loss = loss_for_fixture(case)
    # Eagerly, and one case in sixteen compiled too.
    for compiled in COMPILE_MODES if index % 16 == 0 else (False,):
        value, grad = value_and_grad(lambda e: loss(labels, e), x, compiled=compiled)
        assert abs(float(value) - case["loss"]) <= 1e-4 * abs(case["loss"])
        assert np.all(np.isfinite(grad))
        if recorded_grad.size:
            error = np.abs(grad - recorded_grad).max() / np.abs(recorded_grad).max()
            assert error <= 1e-3


# ---------------------------------------------------------------- degenerate batches


@pytest.mark.parametrize("kind", sorted(TRIPLET_LOSSES))
@pytest.mark.parametrize(
    "case",
    ["one example", "one class", "all distinct", "identical embeddings", "zero embeddings", "huge", "tiny"],
)
def test_degenerate_batches_are_finite(kind, case):
    rng = np.random.default_rng(5)
    # Under JAX, where each distance is a compilation, the distances' own
    # degenerate cases are left to test_distances.py.
    for distance in DISTANCES if BACKEND != "jax" else ("euclidean",):
        x = rng.normal(size=(8, 3)).astype("float32")
        labels = np.repeat([0, 1], 4)
        margin = 0.5
        expected = None
        if case == "one example":
            x, labels, expected = x[:1], labels[:1], 0.0
        elif case == "one class":
            labels, expected = np.zeros(8, int), 0.0
        elif case == "all distinct":
            labels, expected = np.arange(8), 0.0
        elif case in ("identical embeddings", "zero embeddings"):
            x = np.zeros_like(x) + (1.0 if case == "identical embeddings" else 0.0)
            # Every distance is 0 (cosine of zero vectors: 1 everywhere, still all equal).
            expected = np.log(2.0) if kind == "batch_hard_soft" else margin
            if kind == "lifted_structure":
                # J = log(8 exp(m)) for each positive pair: 4 negatives on either side.
                expected = (margin + np.log(8.0)) ** 2 / 2
        elif case == "huge":
            scale = 1e15 if distance == "squared_euclidean" else 1e30
            if kind == "lifted_structure":
                # Its value grows like d²: beyond d ≈ 1e19 it is not a float32.
                scale = scale**0.5
            x = x * np.float32(scale)
        elif case == "tiny":
            x = x * np.float32(1e-30)
        loss = loss_function(kind, margin=margin, distance=distance)
        # Eagerly for every distance, and compiled (once per loss and shape) too.
        for compiled in COMPILE_MODES if distance == "euclidean" else (False,):
            value, grad = value_and_grad(loss, x, labels, compiled=compiled)
            assert np.isfinite(value) and np.all(np.isfinite(grad)), (distance, compiled, value)
            if expected is not None:
                assert float(value) == pytest.approx(expected, rel=1e-5, abs=1e-6), (distance, compiled)


@pytest.mark.parametrize("kind", sorted(TRIPLET_LOSSES))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_precisions(kind, dtype):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 4))
    labels = np.repeat(np.arange(4), 4)
    loss = loss_and_reference(kind, margin=0.5)[0]
    typed = tensor(x, dtype)
    value = loss(labels, typed)
    as_float = np.asarray(tensor(typed, "float32"), "float64")
    want = loss_and_reference(kind, margin=0.5)[1](as_float, labels).loss
    # float64 stays what the backend makes of it (float32 in JAX without x64).
    expected_dtype = keras.backend.standardize_dtype(typed.dtype) if dtype == "float64" else "float32"
    assert keras.backend.standardize_dtype(value.dtype) == expected_dtype
    assert float(value) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_scaled_batch_scales_the_loss():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 4)).astype("float32")
    labels = np.repeat(np.arange(4), 4)
    small = tfm.BatchAllTriplet(margin=0.5)(labels, x)
    huge = tfm.BatchAllTriplet(margin=0.5e30)(labels, x * np.float32(1e30))
    assert float(huge) / 1e30 == pytest.approx(float(small), rel=1e-5)


# ---------------------------------------------------------------- configuration


@slow_on_jax
@pytest.mark.parametrize("kind", sorted(TRIPLET_LOSSES))
def test_config_round_trip(kind):
    loss = loss_and_reference(kind, margin=0.3, distance="cosine", normalize=True, reduction="sum", name="mine")[0]
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    x = np.random.default_rng(8).normal(size=(12, 3)).astype("float32")
    labels = np.repeat(np.arange(3), 4)
    assert float(restored(labels, x)) == pytest.approx(float(loss(labels, x)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="average"):
        tfm.BatchAllTriplet(average="mean")
    with pytest.raises(ValueError, match="distance"):
        tfm.SemiHardTriplet(distance="manhattan")
    with pytest.raises(ValueError, match="shape"):
        tfm.BatchHardTriplet()(np.zeros(4), np.zeros((4, 2, 2)))
    with pytest.raises(ValueError, match="sample_weight"):
        tfm.BatchHardTriplet()(np.zeros(4), np.zeros((4, 2)), sample_weight=np.ones(3))


def test_active_triplet_fraction_metric():
    rng = np.random.default_rng(9)
    metric = tfm.metrics.ActiveTripletFraction(margin=0.5)
    active = valid = 0
    for _ in range(2):
        x = rng.normal(size=(12, 3)).astype("float32")
        labels = rng.integers(0, 3, size=12)
        metric.update_state(labels, x)
        d = reference.distance_matrix(x, "euclidean")
        for a in range(12):
            for p in range(12):
                for q in range(12):
                    if p != a and labels[p] == labels[a] and labels[q] != labels[a]:
                        valid += 1
                        active += d[a, p] - d[a, q] + 0.5 > 0
    assert float(metric.result()) == pytest.approx(active / valid, rel=1e-6)
    one_batch = tfm.metrics.ActiveTripletFraction(margin=0.5, distance="cosine")
    one_batch.update_state(labels, x)
    want = reference.active_triplet_fraction(x, labels, 0.5, distance="cosine")
    assert float(one_batch.result()) == pytest.approx(want, rel=1e-6)
    one_batch.reset_state()
    assert float(one_batch.result()) == 0.0


def test_batch_hard_terms_on_a_distance_matrix_match_the_loss():
    # The loss differentiates only the chosen pairs, recomputed from the
    # embeddings; the public terms function reads them from the matrix.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(24, 6)).astype("float32")
    labels = np.repeat(np.arange(6), 4)

    def from_matrix(x):
        positive, negative = tfm.mining.label_masks(keras.ops.convert_to_tensor(labels))
        distances = tfm.distances.pairwise_distance(x)
        losses, valid = tfm.losses.batch_hard_triplet_terms(distances, positive, negative, margin=0.5)
        return keras.ops.sum(losses) / keras.ops.sum(valid)

    expected_value, expected_gradient = value_and_grad(from_matrix, x)
    value, gradient = value_and_grad(lambda x: tfm.BatchHardTriplet(margin=0.5)(labels, x), x)
    assert np.any(expected_gradient != 0)
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-6)


def _all_triplets_by_loops(d, positive, negative, margin, weights):
    """Sums and counts of the triplets with `d_an < d_ap + margin` (in float32), and d Σ weights·sums / d d."""
    n, r = d.shape
    sums, active, grad = np.zeros(n), np.zeros(n), np.zeros((n, r))
    for a in range(n):
        for p in np.flatnonzero(positive[a]):
            key = np.float32(d[a, p]) + np.float32(margin)
            for q in np.flatnonzero(negative[a]):
                if d[a, q] < key:
                    sums[a] += float(key) - float(d[a, q])
                    active[a] += 1
                    grad[a, p] += weights[a]
                    grad[a, q] -= weights[a]
    return sums, active, grad


def _all_triplet_terms_by(way, d, positive, negative, margin):
    """`all_triplet_terms` on the float32 matrix `d` in one of its three ways, or None where it has no such way."""
    from tfmetric.losses import triplet
    from tfmetric.mining import positive_table

    positive, negative = tensor(positive), tensor(negative)
    table = positive_table(positive)
    # No table of positives under XLA or JAX: the loop only.
    if (way == "keys" and table is None) or (way == "counts" and not triplet._float64_at_hand()):
        return None

    def sums(matrix):
        if way == "keys":
            return triplet._all_triplet_sums_by_keys(matrix, positive, negative, margin, table)
        return triplet._all_triplet_sums_by_slot(matrix, positive, negative, margin, from_counts=way == "counts")

    return triplet._attached_triplet_terms(d, positive, negative, margin, sums, from_counts=way == "counts")


@only_tensorflow
def test_batch_all_choice_of_way_keeps_nothing_for_the_gradient():
    # The cond between the slot loop and the binary search runs on the
    # gradient-free matrix: it outputs its three results alone. Intermediates
    # kept for a gradient would be optionals of other types in its two
    # branches, which TensorFlow's type inference logs as an invalid graph.
    import tensorflow as tf

    loss = tfm.BatchAllTriplet()
    x = tf.constant(np.random.default_rng(0).normal(size=(48, 4)).astype("float32"))
    y = tf.constant(np.repeat(np.arange(4), 12))

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(y, x)
        return tape.gradient(value, x)

    # The loss as TensorFlow's kernels, not the XLA function it compiles itself into on a CPU.
    previous = tfm.losses.compile_losses_with_xla(False)
    try:
        graph = step.get_concrete_function(x, y).graph
    finally:
        tfm.losses.compile_losses_with_xla(previous)
    conds = [(op.name, len(op.outputs)) for op in graph.get_operations() if op.type in ("If", "StatelessIf")]
    # Batch-all's has three outputs; the distance matrix's own (whether to scale it) one.
    assert any(outputs == 3 for _, outputs in conds) and all(outputs <= 3 for _, outputs in conds), conds
    assert np.all(np.isfinite(step(x, y).numpy()))


@pytest.mark.parametrize("way", ["slot", "keys", "counts"])
def test_all_triplet_terms_count_ties_as_the_loop_does(way):
    # Every way (a pass per positive slot; a binary search among each
    # query's keys, taken from k = 10 positives where operations run one by
    # one; the loop's counts alone, under XLA) on distances where
    # d_an = d_ap + margin exactly: no loss, not active.
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1, 2], [12, 11, 3])
    n = len(labels)
    d = (rng.integers(0, 11, (n, n)) * 0.25).astype("float32")
    positive = (labels[:, None] == labels[None, :]) & ~np.eye(n, dtype=bool)
    negative = labels[:, None] != labels[None, :]
    weights = rng.normal(size=n).astype("float32")
    if _all_triplet_terms_by(way, tensor(d), positive, negative, 0.5) is None:
        pytest.skip(f"no {way} way on this backend")

    def terms(matrix):
        return _all_triplet_terms_by(way, matrix, positive, negative, 0.5)

    sums, active, grad = _all_triplets_by_loops(d, positive, negative, 0.5, weights)
    _, got_active, valid = terms(tensor(d))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got_active), active)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(valid), positive.sum(1) * negative.sum(1))
    value, got_grad = value_and_grad(lambda matrix: keras.ops.sum(terms(matrix)[0] * tensor(weights)), d)
    np.testing.assert_allclose(value, np.sum(weights * sums), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got_grad, grad, rtol=1e-5, atol=1e-5)


def _semi_hard_by_loops(d, positive, negative, margin):
    """Each anchor's semi-hard loss sum and the gradient's ±1 entries, one triplet at a time (+inf never beyond)."""
    n, r = d.shape
    sums, grad = np.zeros(n), np.zeros((n, r))
    for a in range(n):
        negatives = [q for q in range(r) if negative[a, q]]
        if not negatives:
            continue
        farthest = max(negatives, key=lambda q: (d[a, q], -q))
        for p in (p for p in range(r) if positive[a, p]):
            beyond = [q for q in negatives if d[a, p] < d[a, q] < np.inf]
            chosen = min(beyond, key=lambda q: (d[a, q], q)) if beyond else farthest
            value = d[a, p] - d[a, chosen] + margin
            if value > 0:
                sums[a] += value
                grad[a, p] += 1
                grad[a, chosen] -= 1
    return sums, grad


@only_tensorflow
@pytest.mark.parametrize("mode", ["pieces", "kernels", "xla"])
def test_semi_hard_negatives_by_groups_match_the_loops(mode):
    # In a TensorFlow graph without XLA on a CPU the semi-hard negatives are
    # found by groups of the negatives between a query's sorted positives, in
    # one XLA-compiled call (`compiled_piece`), and under XLA so too where
    # the most positives of a query are 8 to 16; a positive at a time
    # otherwise. All as the loops: ties between positives and negatives (not
    # beyond) and among negatives (the first column), negative distances,
    # +inf (never beyond, the farthest), NaN positives of both signs (no
    # term, no other choice changed), 0 to 9 positives, a query without
    # negatives.
    import tensorflow as tf
    from test_keras_integration import xla_calls

    from tfmetric.losses import triplet

    rng = np.random.default_rng(7)
    labels = np.repeat([0, 1, 2, 3], [10, 2, 1, 3])
    n = len(labels)
    d = ((rng.integers(0, 11, (n, n)) - 2) * 0.25).astype("float32")
    d[0, 10], d[13, 0], d[1, 2], d[2, 1] = np.inf, np.inf, np.nan, -np.nan
    positive = (labels[:, None] == labels[None, :]) & ~np.eye(n, dtype=bool)
    negative = labels[:, None] != labels[None, :]
    negative[3] = False
    weights = rng.normal(size=n).astype("float32")
    want_sums, want_grad = _semi_hard_by_loops(d, positive, negative, 0.5)

    def step(matrix, positive):
        with tf.GradientTape() as tape:
            tape.watch(matrix)
            sums, _ = triplet.semi_hard_triplet_terms(matrix, positive, tf.constant(negative), 0.5)
            value = tf.reduce_sum(sums * weights)
        return sums, tape.gradient(value, matrix)

    previous = tfm.losses.compile_losses_with_xla(mode == "pieces")
    try:
        step = tf.function(step, autograph=False, jit_compile=mode == "xla", input_signature=[
            tf.TensorSpec((n, n), tf.float32), tf.TensorSpec((n, n), tf.bool)])
        if mode != "xla":
            assert xla_calls(step.get_concrete_function().graph) == int(mode == "pieces")
        for mask in (positive, np.zeros_like(positive)):
            sums, grad = step(tf.constant(d), tf.constant(mask))
            np.testing.assert_allclose(sums, want_sums if mask.any() else 0, rtol=1e-6)
            np.testing.assert_allclose(grad, weights[:, None] * want_grad if mask.any() else 0, rtol=1e-6)
    finally:
        tfm.losses.compile_losses_with_xla(previous)


@pytest.mark.parametrize("way", ["slot", "keys", "counts"])
def test_all_triplet_terms_keep_small_losses_among_large_distances_exact(way):
    # Distances near 1000 a few 2⁻¹⁰ apart and a margin of 2⁻⁸: every gap is
    # exact in float32, while G·d sums to ~10⁴ per row, whose float32 rounding
    # (2⁻¹⁰ there) would swamp the losses if the counts' way did not sum in
    # float64.
    rng = np.random.default_rng(6)
    labels = np.repeat([0, 1, 2], [12, 11, 3])
    n = len(labels)
    d = (1000 + rng.integers(0, 12, (n, n)) / 1024).astype("float32")
    positive = (labels[:, None] == labels[None, :]) & ~np.eye(n, dtype=bool)
    negative = labels[:, None] != labels[None, :]
    terms = _all_triplet_terms_by(way, tensor(d), positive, negative, 2.0**-8)
    if terms is None:
        pytest.skip(f"no {way} way on this backend")
    sums, active, _ = _all_triplets_by_loops(d, positive, negative, 2.0**-8, np.ones(n))
    assert sums.max() < 2 and active.sum() > 100
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(terms[0]), sums.astype("float32"))
