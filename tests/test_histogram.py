"""The histogram family: Histogram (Ustinova & Lempitsky 2016), DynamicSoftMargin (Zhang & Rusinkiewicz 2019)."""

import keras
import numpy as np
import pytest
import reference_histogram as ref
from hypothesis import given, settings, strategies as st

from tfmetric.losses.histogram_loss import DynamicSoftMargin, Histogram, dynamic_soft_margin, histogram

import recorded
from conftest import BACKEND, COMPILE_MODES, FIT_JIT_COMPILE, check_against, slow_on_jax, tensor, value_and_grad

# The same four unit vectors as the other losses' examples, with labels that make pairs overlap.
UNIT = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]], "float32")


_STEPS = {}


def stateful_value_and_grad(loss, labels, x):
    """`value_and_grad` of a `DynamicSoftMargin` call that keeps its histogram's update.

    JAX traces the update: the call runs in a `keras.StatelessScope`, jitted
    (histogram in, new histogram out), and the new value is assigned after,
    as Keras' JAX trainer does.
    """
    if BACKEND != "jax":
        return value_and_grad(lambda e: loss(labels, e), x)
    import jax

    variable = loss.state.histogram
    if loss not in _STEPS:

        def call(e, y, h):
            with keras.StatelessScope(state_mapping=[(variable, h)]) as scope:
                value = loss(y, e)
            return value, scope.get_current_value(variable)

        _STEPS[loss] = jax.jit(jax.value_and_grad(call, has_aux=True))
    (value, new), grad = _STEPS[loss](jax.numpy.asarray(x), jax.numpy.asarray(labels), variable.value)
    variable.assign(new)
    return np.asarray(value), np.asarray(grad)


# ---------------------------------------------------------------- hand-made cases


def test_hand_made_histogram():
    # Labels 0 1 0 1: positive pairs (0, 2) and (1, 3), both at s = 0, so
    # Φ(s) = 0 below s = −0.2, rises to 1 at s = 0 and stays 1. Negative
    # pairs: (0, 1) at 0.8, (0, 3) at −0.6, (2, 1) at 0.6, (2, 3) at 0.8:
    # three negatives above every positive, one below.
    labels = np.array([0, 1, 0, 1])
    assert float(Histogram(num_bins=10)(labels, UNIT)) == pytest.approx(0.75, rel=1e-6)
    np.testing.assert_allclose(histogram(labels, UNIT, num_bins=10), [0.5, 1.0, 1.0, 0.5], rtol=1e-6)
    # A negative pair between the nodes: s = 0.1 with Δ = 0.2 shares half of
    # its mass with the node at 0 (Φ = 1 there): still 1 — and one at
    # s = −0.1 gets Φ(−0.1) = ½·Φ(−0.2) + ½·Φ(0) = ½.
    # Query 0 at angle 0; its positive at 90° (s = 0); negatives at s = −0.1 and 0.1.
    angles = np.arccos([-0.1, 0.1])
    x = np.array([[1.0, 0.0], [0.0, 1.0], *[[np.cos(t), np.sin(t)] for t in angles]], "float32")
    labels = np.array([0, 0, 1, 2])
    per_query = np.asarray(histogram(labels, x, num_bins=10))
    # Query 0: negatives at s = −0.1 (Φ = ½) and 0.1 (Φ = 1).
    assert per_query[0] == pytest.approx(0.75, abs=1e-5)


def test_hand_made_dynamic_soft_margin():
    # One anchor triple: a, p at distance 0 (same point), n at distance 2
    # (opposite): both anchors' margins are 0 − 2 = −2 = min_val; the
    # histogram is all at node 0, CDF ≡ 1, the loss is the margin, −2.
    x = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], "float32")
    labels = np.array([0, 0, 1])
    loss = DynamicSoftMargin()
    assert float(loss(labels, x)) == pytest.approx(-2.0, abs=1e-4)
    np.testing.assert_allclose(loss.histogram_value(), np.eye(10)[0], atol=1e-5)
    # Second call, margins at 0 (p and n at 90°): node 5 gets the batch's
    # 2 triplets with m = 0.01 against the history's 0.99: h ∝ (0.99, 0, ...,
    # 0.02 at node 5); CDF at bin 5 is 1; the loss is 0 and h moves.
    y = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], "float32")
    labels = np.array([0, 0, 1])
    # Anchor 0: p at √2, n at √2 → margin 0; anchor 1: p at √2, n at 2 → √2 − 2.
    d = np.sqrt(2.0)
    margins = [0.0, d - 2]
    want_h = np.zeros(10)
    want_h[0] = 0.99
    for t in margins:
        k = int(np.floor((t + 2) / 0.4))
        share = (t + 2) / 0.4 - k
        want_h[k] += 0.01 * (1 - share)
        want_h[k + 1] += 0.01 * share
    want_h /= want_h.sum()
    cdf = np.cumsum(want_h)
    want = np.mean([cdf[int(np.floor((t + 2) / 0.4))] * t for t in margins])
    assert float(loss(labels, y)) == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(loss.histogram_value(), want_h, atol=1e-6)


def test_references_match_the_hand_made_cases():
    labels = np.array([0, 1, 0, 1])
    assert ref.histogram(UNIT, labels, num_bins=10).loss == pytest.approx(0.75)
    x = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    want, new = ref.dynamic_soft_margin(x, np.array([0, 0, 1]))
    assert want.loss == pytest.approx(-2.0) and new == pytest.approx(np.eye(10)[0])


# ---------------------------------------------------------------- PyTorch Metric Learning


def _per_configuration(params):
    """All of `params` on TensorFlow; elsewhere (every case a compilation under JAX) the first of each configuration."""
    if BACKEND == "tensorflow":
        return params
    chosen = {}
    for param in params:
        chosen.setdefault(repr(sorted(param.values[2]["cfg"].items())), param)
    return list(chosen.values())


@pytest.mark.parametrize("peer, index, case", _per_configuration(recorded.cases("pml_histogram", ["HistogramLoss"])))
def test_histogram_reproduces_pytorch_metric_learning(peer, index, case):
    x, labels, recorded_grad = recorded.arrays(peer, index)
    cfg = {key: value for key, value in case["cfg"].items()}
    loss = Histogram(**cfg)
    value, grad = value_and_grad(lambda e: loss(labels, e), x.astype("float32"))
    assert float(value) == pytest.approx(case["loss"], rel=1e-5, abs=1e-7)
    assert np.abs(grad - recorded_grad).max() <= 1e-4 * np.abs(recorded_grad).max() + 1e-6
    assert ref.histogram(x, labels, **cfg).loss == pytest.approx(case["loss"], rel=1e-9, abs=1e-12)


def _sequences():
    cases = recorded.cases("pml_histogram", ["DynamicSoftMarginLoss"])
    by_sequence = {}
    for param in cases:
        _, index, case = param.values
        by_sequence.setdefault(case["cfg"]["sequence"], []).append((index, case))
    sequences = [pytest.param(steps, id=f"sequence-{number}") for number, steps in sorted(by_sequence.items())]
    if BACKEND == "tensorflow":
        return sequences
    # Elsewhere (every step a compilation under JAX): one sequence per
    # configuration, its first two steps (from an empty histogram, then from the running one).
    chosen = {}
    for param in sequences:
        (steps,) = param.values
        cfg = {key: value for key, value in steps[0][1]["cfg"].items() if key not in ("sequence", "step")}
        first = sorted(steps, key=lambda item: item[1]["cfg"]["step"])[:2]
        chosen.setdefault(repr(sorted(cfg.items())), pytest.param(first, id=param.id))
    return list(chosen.values())


@slow_on_jax
@pytest.mark.parametrize("steps", _sequences())
def test_dynamic_soft_margin_reproduces_pytorch_metric_learning_over_calls(steps):
    # One loss over consecutive batches: values, gradients and the running histogram.
    cfg = {key: value for key, value in steps[0][1]["cfg"].items() if key not in ("sequence", "step")}
    loss = DynamicSoftMargin(**cfg)
    previous = None
    for index, case in sorted(steps, key=lambda item: item[1]["cfg"]["step"]):
        x, labels, recorded_grad = recorded.arrays("pml_histogram", index)
        recorded_histogram = recorded.extra("pml_histogram", index, "h")
        want, new = ref.dynamic_soft_margin(x, labels, histogram=previous, **cfg)
        assert want.loss == pytest.approx(case["loss"], rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(new, recorded_histogram, atol=1e-12)
        np.testing.assert_allclose(want.grad, recorded_grad, atol=1e-10)
        value, grad = stateful_value_and_grad(loss, labels, x.astype("float32"))
        assert float(value) == pytest.approx(case["loss"], rel=1e-5, abs=1e-6)
        assert np.abs(grad - recorded_grad).max() <= 1e-4 * np.abs(recorded_grad).max()
        np.testing.assert_allclose(loss.histogram_value(), recorded_histogram, atol=1e-6)
        # The pure function from the previous histogram gives the same.
        losses, pure_new = dynamic_soft_margin(labels, x.astype("float32"), histogram=previous, return_histogram=True,
                                               **cfg)
        np.testing.assert_allclose(np.asarray(pure_new), recorded_histogram, atol=1e-6)
        assert float(np.mean(want.per_anchor)) == pytest.approx(float(np.mean(np.asarray(losses))), abs=1e-5)
        previous = recorded_histogram


# ---------------------------------------------------------------- random cases vs the references


# Every example compiles anew under JAX: a few there, more under TensorFlow (eager).
@settings(max_examples=20 if BACKEND == "tensorflow" else 3, deadline=None)
@given(
    n=st.integers(1, 14),
    num_classes=st.integers(1, 5),
    dim=st.integers(1, 6),
    seed=st.integers(0, 2**31),
    num_bins=st.sampled_from([4, 10, 100]),
    normalize=st.booleans(),
    weighted=st.booleans(),
)
def test_histogram_matches_brute_force(n, num_classes, dim, seed, num_bins, normalize, weighted):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    if not normalize:
        x = x / np.float32(np.sqrt(dim) * 1.5)  # dot products mostly inside [−1, 1]
    labels = rng.integers(0, num_classes, size=n)
    weights = rng.uniform(0.5, 2.0, size=n) if weighted else None
    loss = Histogram(num_bins=num_bins, normalize=normalize)
    check_against(
        loss, lambda e, y, **kw: ref.histogram(e, y, num_bins=num_bins, normalize=normalize, **kw), x, labels,
        sample_weight=weights,
    )


# Every example compiles anew under JAX: a few there, more under TensorFlow (eager).
@settings(max_examples=20 if BACKEND == "tensorflow" else 3, deadline=None)
@given(
    n=st.integers(1, 12),
    num_classes=st.integers(1, 5),
    dim=st.integers(1, 6),
    seed=st.integers(0, 2**31),
    config=st.sampled_from([{}, {"min_val": -1.0, "num_bins": 4, "momentum": 0.5}, {"num_bins": 2}]),
    weighted=st.booleans(),
)
def test_dynamic_soft_margin_matches_brute_force(n, num_classes, dim, seed, config, weighted):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    labels = rng.integers(0, num_classes, size=n)
    weights = rng.uniform(0.5, 2.0, size=n) if weighted else None
    check_against(
        DynamicSoftMargin(**config), lambda e, y, **kw: ref.dynamic_soft_margin_first_call(e, y, **config, **kw), x,
        labels, sample_weight=weights,
    )


def test_dynamic_soft_margin_from_a_running_histogram_matches_brute_force():
    rng = np.random.default_rng(3)
    start = rng.dirichlet(np.ones(10))
    for step in range(3):
        x = rng.normal(size=(12, 3)).astype("float32")
        labels = rng.integers(0, 3, size=12)
        want, new = ref.dynamic_soft_margin(x.astype("float64"), labels, momentum=0.3, histogram=start)
        losses, got = dynamic_soft_margin(labels, x, histogram=start.astype("float32"), momentum=0.3,
                                          return_histogram=True)
        np.testing.assert_allclose(np.asarray(losses), want.per_anchor, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(got), new, atol=1e-6)
        start = new


def _triplet_margin_sums_by_loops(d, positive, negative, min_val, delta, num_thresholds, weights):
    """Counts and sums of the margins `d_ap − d_an` below each threshold, and d Σ weights·sums / d d, by loops.

    As the loss decides it: `v_n > u_p − b` for `u_p = (d_ap − min_val)·(1/Δ)`
    and `v_n = d_an·(1/Δ)` computed in float32, compared exactly; the last
    column has every triplet (b = +∞).
    """
    n, r = d.shape
    inverse = np.float32(1.0 / delta)
    counts, sums = np.zeros((n, num_thresholds + 1)), np.zeros((n, num_thresholds + 1))
    grad = np.zeros((n, r))
    for a in range(n):
        for p in range(r):
            for q in range(r):
                if not (positive[a, p] and negative[a, q]):
                    continue
                u = (np.float32(d[a, p]) - np.float32(min_val)) * inverse
                v = np.float32(d[a, q]) * inverse
                for k in range(num_thresholds + 1):
                    if k == num_thresholds or float(v) > float(u) - k:
                        counts[a, k] += 1
                        sums[a, k] += float(d[a, p]) - float(d[a, q])
                        grad[a, p] += weights[a, k]
                        grad[a, q] -= weights[a, k]
    return counts, sums, grad


@pytest.mark.parametrize("by_slot", [False, True])
@pytest.mark.parametrize("min_val, num_thresholds", [(-2.0, 10), (-1.0, 7), (-0.5, 4), (-2.0, 40)])
def test_triplet_margin_sums_count_ties_as_the_loss_does(by_slot, min_val, num_thresholds):
    # Both ways of counting (cells of whole parts and places where operations
    # run one by one, a loop of comparisons under XLA) on distances whose
    # margins fall on the thresholds exactly, and a Δ (2/7) that is not a
    # float: each decides as the loops do. Under XLA the thresholds counted are a window of each row's (all of
    # them where there are fewer than whole parts, as at (-0.5, 4)), its start clipped at both ends.
    from tfmetric.losses import histogram_loss

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 9)
    d = (rng.integers(0, 11, (9, 9)) * 0.2).astype("float32")
    positive = (labels[:, None] == labels[None, :]) & ~np.eye(9, dtype=bool)
    negative = labels[:, None] != labels[None, :]
    delta = 2 * abs(min_val) / num_thresholds
    weights = rng.normal(size=(9, num_thresholds + 1)).astype("float32")
    expected = _triplet_margin_sums_by_loops(d, positive, negative, min_val, delta, num_thresholds, weights)
    count = histogram_loss._triplet_margin_sums_by_slot if by_slot else histogram_loss.triplet_margin_sums

    def counted(matrix):
        return count(matrix, tensor(positive), tensor(negative), min_val, delta, num_thresholds)

    counts, _ = counted(tensor(d))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(counts), expected[0])
    value, grad = value_and_grad(lambda matrix: keras.ops.sum(counted(matrix)[1] * tensor(weights)), d)
    np.testing.assert_allclose(value, np.sum(weights * expected[1]), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad, expected[2], rtol=1e-5, atol=1e-5)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("compiled", [True, False])
def test_the_cells_of_the_negatives_compile_in_a_graph_and_count_ties_as_the_loss_does(compiled):
    # In a TensorFlow graph without XLA on a CPU the negatives' cells are one
    # XLA-compiled call (`compiled_piece`), a loop of passes over the matrix
    # otherwise: the same counts, sums and gradient as the loops, on margins
    # on the thresholds, a Δ that is not a float, and k = 0 to 5 positives.
    import tensorflow as tf
    from test_keras_integration import xla_calls

    import tfmetric as tfm
    from tfmetric.losses import histogram_loss

    rng = np.random.default_rng(6)
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    d = (rng.integers(0, 11, (12, 12)) * 0.2).astype("float32")
    positive = (labels[:, None] == labels[None, :]) & ~np.eye(12, dtype=bool)
    negative = labels[:, None] != labels[None, :]
    min_val, num_thresholds = -1.0, 7
    delta = 2 * abs(min_val) / num_thresholds
    weights = rng.normal(size=(12, num_thresholds + 1)).astype("float32")
    want_counts, want_sums, want_grad = _triplet_margin_sums_by_loops(
        d, positive, negative, min_val, delta, num_thresholds, weights
    )

    def step(matrix, positive):
        with tf.GradientTape() as tape:
            tape.watch(matrix)
            counts, sums = histogram_loss.triplet_margin_sums(
                matrix, positive, tf.constant(negative), min_val, delta, num_thresholds
            )
            value = tf.reduce_sum(sums * weights)
        return counts, value, tape.gradient(value, matrix)

    previous = tfm.losses.compile_losses_with_xla(compiled)
    try:
        # The positives' mask of unknown width in the graph: the loop's keys too.
        step = tf.function(step, autograph=False, input_signature=[
            tf.TensorSpec((12, 12), tf.float32), tf.TensorSpec((12, 12), tf.bool)])
        assert xla_calls(step.get_concrete_function().graph) == int(compiled)
        for mask in (positive, np.zeros_like(positive)):
            counts, value, grad = step(tf.constant(d), tf.constant(mask))
            if mask.any():
                np.testing.assert_array_equal(counts.numpy(), want_counts)
                np.testing.assert_allclose(value, np.sum(weights * want_sums), rtol=1e-5, atol=1e-4)
                np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-5)
            else:
                np.testing.assert_array_equal(counts.numpy()[:, :-1], 0)
                np.testing.assert_array_equal(grad.numpy(), 0)
    finally:
        tfm.losses.compile_losses_with_xla(previous)


def test_reference_sets_and_multi_label_match_brute_force():
    # Eager (JAX jits each check); XLA: `test_compiled_matches_brute_force`.
    compiled = False
    rng = np.random.default_rng(11)
    x, ref_x = rng.normal(size=(6, 3)), rng.normal(size=(9, 3))
    labels, ref_labels = rng.integers(0, 3, 6), rng.integers(0, 3, 9)
    for function, reference in ((histogram, ref.histogram), (dynamic_soft_margin, ref.dynamic_soft_margin_first_call)):
        want = reference(x, labels, ref_x=ref_x, ref_labels=ref_labels)
        got = function(labels, x.astype("float32"), ref_labels, ref_x.astype("float32"))
        np.testing.assert_allclose(np.asarray(got), want.per_anchor, rtol=1e-4, atol=1e-6)
    multi_hot = (rng.random((8, 3)) < 0.4).astype("int32")
    y = rng.normal(size=(8, 4)).astype("float32")
    for loss, reference in (
        (Histogram(multi_label=True, num_bins=20), lambda e, t, **kw: ref.histogram(e, t, num_bins=20, multi_label=True,
                                                                                     **kw)),
        (DynamicSoftMargin(multi_label=True), lambda e, t, **kw: ref.dynamic_soft_margin_first_call(
            e, t, multi_label=True, **kw)),
    ):
        check_against(loss, reference, y, multi_hot, compiled=compiled)


@pytest.mark.parametrize("compiled", COMPILE_MODES)
def test_compiled_matches_brute_force(compiled):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(16, 5)).astype("float32")
    labels = np.repeat(np.arange(4), 4)
    check_against(Histogram(), ref.histogram, x, labels, compiled=compiled)
    stateful = DynamicSoftMargin()
    check_against(stateful, ref.dynamic_soft_margin_first_call, x, labels, compiled=compiled)
    # The running histogram was updated in the compiled call (JAX: the
    # jitted call's update is a tracer; `stateful_value_and_grad` keeps it).
    if BACKEND != "jax":
        _, want = ref.dynamic_soft_margin(x.astype("float64"), labels)
        np.testing.assert_allclose(stateful.histogram_value(), want, atol=1e-5)


# ---------------------------------------------------------------- degenerate batches, precisions


MAKERS = {"histogram": Histogram, "dynamic_soft_margin": DynamicSoftMargin}
_DEGENERATE = {kind: make() for kind, make in MAKERS.items()}


def _histogram_of(e, labels):
    return _DEGENERATE["histogram"](labels, e)


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize(
    "case", ["one example", "one class", "all distinct", "identical embeddings", "zero embeddings", "huge", "tiny"]
)
def test_degenerate_batches_are_finite(kind, case):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 3)).astype("float32")
    labels = np.repeat([0, 1], 4)
    expected = None
    if case == "one example":
        x, labels, expected = x[:1], labels[:1], 0.0
    elif case == "one class":
        labels, expected = np.zeros(8, int), 0.0
    elif case == "all distinct":
        labels, expected = np.arange(8), 0.0
    elif case in ("identical embeddings", "zero embeddings"):
        x = np.zeros_like(x) + (1.0 if case == "identical embeddings" else 0.0)
    elif case == "huge":
        x = x * np.float32(1e15)
    elif case == "tiny":
        x = x * np.float32(1e-30)
    # One loss (and so one compiled function per shape under JAX) for all
    # the cases, its running histogram emptied for each.
    loss = _DEGENERATE[kind]
    if kind == "dynamic_soft_margin":
        loss.state.histogram.assign(np.zeros(loss.state.histogram.shape, "float32"))
    for compiled in COMPILE_MODES if case in ("one example", "identical embeddings", "huge") else (False,):
        if kind == "dynamic_soft_margin":
            value, grad = stateful_value_and_grad(loss, labels, x)
        else:
            value, grad = value_and_grad(_histogram_of, x, labels, compiled=compiled)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), (compiled, value)
        if expected is not None:
            assert float(value) == pytest.approx(expected, abs=1e-6)
    if kind == "dynamic_soft_margin":
        state = loss.histogram_value()
        assert np.all(np.isfinite(state))
        # A batch without triplets leaves the histogram as it was (all zero).
        assert state.sum() == pytest.approx(0.0 if expected is not None else 1.0, abs=1e-5)


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_precisions(kind, dtype):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 4))
    labels = np.repeat(np.arange(4), 4)
    typed = tensor(x, dtype)
    value = MAKERS[kind]()(labels, typed)
    assert keras.backend.standardize_dtype(value.dtype) in ("float32", "float64")
    as_float = np.asarray(tensor(typed, "float32"), "float64")
    reference = {"histogram": ref.histogram, "dynamic_soft_margin": ref.dynamic_soft_margin_first_call}[kind]
    assert float(value) == pytest.approx(reference(as_float, labels).loss, rel=1e-5, abs=1e-6)


def test_large_int64_labels_stay_distinct():
    x = np.random.default_rng(7).normal(size=(4, 3)).astype("float32")
    big = 2**53
    labels = np.array([big, big, big + 1, big + 1])
    if BACKEND != "jax":
        labels = tensor(labels, "int64")
    for make in MAKERS.values():
        assert float(make()(labels, x)) != pytest.approx(float(make()(np.zeros(4, int), x)))


# ---------------------------------------------------------------- configuration and arguments


@slow_on_jax
@pytest.mark.parametrize(
    "loss",
    [
        Histogram(num_bins=10, reduction="sum", name="mine"),
        Histogram(delta=0.3, normalize=False),
        DynamicSoftMargin(min_val=-1.0, num_bins=5, momentum=0.2, reduction=None, name="dsm"),
    ],
    ids=["histogram", "histogram-delta", "dynamic"],
)
def test_config_round_trip(loss):
    config = loss.get_config()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert type(loss).from_config(config).get_config() == config
    x = np.random.default_rng(8).normal(size=(12, 3)).astype("float32")
    labels = np.repeat(np.arange(3), 4)
    np.testing.assert_allclose(np.asarray(type(loss).from_config(config)(labels, x)),
                               np.asarray(type(loss).from_config(config)(labels, x)))
    np.testing.assert_allclose(np.asarray(restored(labels, x)), np.asarray(type(loss).from_config(config)(labels, x)),
                               rtol=1e-6)


def test_bins_and_delta():
    assert Histogram().delta == pytest.approx(0.02) and Histogram().num_bins == 100
    assert Histogram(delta=0.5).num_bins == 4
    assert Histogram(delta=0.3).num_bins is None
    assert Histogram(num_bins=8, delta=0.25).delta == 0.25


def test_bad_arguments():
    with pytest.raises(ValueError, match="2 / num_bins"):
        Histogram(num_bins=10, delta=0.3)
    with pytest.raises(ValueError, match="num_bins"):
        Histogram(num_bins=0)
    with pytest.raises(ValueError, match="num_bins"):
        Histogram(num_bins=2.5)
    with pytest.raises(ValueError, match="delta"):
        Histogram(delta=-0.1)
    with pytest.raises(ValueError, match="delta"):
        histogram([0, 1], np.ones((2, 2)), delta=3.0)
    with pytest.raises(ValueError, match="min_val"):
        DynamicSoftMargin(min_val=1.0)
    with pytest.raises(ValueError, match="num_bins"):
        DynamicSoftMargin(num_bins=1)
    with pytest.raises(ValueError, match="momentum"):
        DynamicSoftMargin(momentum=0.0)
    with pytest.raises(ValueError, match="momentum"):
        dynamic_soft_margin([0, 1], np.ones((2, 2)), momentum=1.5)
    with pytest.raises(ValueError, match="one-hot"):
        Histogram()(np.eye(3), np.ones((3, 4)))


# ---------------------------------------------------------------- training


def _data():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 12)
    features = (rng.normal(size=(4, 6))[labels] + 0.5 * rng.normal(size=(48, 6))).astype("float32")
    return features, labels


# In a graph under TensorFlow (an XLA train step takes 15 s to compile;
# `test_compiled_matches_brute_force` runs both losses and the state's update with XLA), jitted under JAX.
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_fit_trains_and_keeps_the_state(kind):
    jit_compile = FIT_JIT_COMPILE[0]
    features, labels = _data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    loss = MAKERS[kind]()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, jit_compile=jit_compile)
    history = model.fit(features, labels, batch_size=24, epochs=3, verbose=0, shuffle=False).history["loss"]
    assert np.all(np.isfinite(history))
    assert history[-1] < history[0]
    if kind == "dynamic_soft_margin":
        # The running histogram is the model's and was updated in the compiled steps.
        assert any(v is loss.state.histogram for v in model.non_trainable_variables)
        state = loss.histogram_value()
        assert state.sum() == pytest.approx(1.0, abs=1e-5)
        # The last batch's own histogram differs from the running one: history counts.
        embeddings = model.predict(features[24:], verbose=0)
        _, batch_only = dynamic_soft_margin(labels[24:], embeddings, return_histogram=True)
        assert not np.allclose(state, np.asarray(batch_only), atol=1e-7)


def test_the_running_histogram_saves_and_loads_with_the_model(tmp_path):
    features, labels = _data()
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    loss = DynamicSoftMargin()
    model.compile(optimizer="sgd", loss=loss)
    model.fit(features, labels, batch_size=24, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.loss.histogram_value(), loss.histogram_value())
    assert loss.histogram_value().sum() == pytest.approx(1.0, abs=1e-5)
