"""Angular, tuplet margin, intra-pair variance, threshold-consistent margin (`tfm.losses.pair_weighting`)."""

import doctest

import keras
import numpy as np
import pytest
import reference_pair_weighting as ref
from hypothesis import given, settings, strategies as st

import tfmetric
from tfmetric.losses import pair_weighting as pw

import recorded
from conftest import BACKEND, FIT_JIT_COMPILE, tensor, value_and_grad

CLASSES = {
    "angular": pw.Angular,
    "tuplet_margin": pw.TupletMargin,
    "intra_pair_variance": pw.IntraPairVariance,
    "threshold_consistent_margin": pw.ThresholdConsistentMargin,
}
FUNCTIONS = {
    "angular": pw.angular,
    "tuplet_margin": pw.tuplet_margin,
    "intra_pair_variance": pw.intra_pair_variance,
    "threshold_consistent_margin": pw.threshold_consistent_margin,
}
# Arguments the random tests draw, per loss.
OPTIONS = {
    "angular": {"alpha": [30.0, 40.0, 50.0]},
    "tuplet_margin": {"margin": [0.0, 5.73, 20.0], "scale": [8.0, 64.0]},
    "intra_pair_variance": {"pos_eps": [0.0, 0.01, 0.3], "neg_eps": [0.0, 0.01, 0.3]},
    "threshold_consistent_margin": {
        "lambda_plus": [0.5, 1.0], "lambda_minus": [1.0, 2.0], "margin_plus": [0.2, 0.9], "margin_minus": [-0.2, 0.5],
    },
}
# A 2-D batch whose cosines are simple: s(0,1) = s(2,3) = 0.8, s(1,2) = 0.6,
# s(0,3) = −0.6, s(0,2) = s(1,3) = 0.
POINTS = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]], "float32")
POINT_LABELS = np.array([0, 0, 1, 1])


ON_TENSORFLOW = BACKEND == "tensorflow"
# Off TensorFlow, gradients are checked under `jax.jit` (PyTorch ignores
# `compiled`): one function object per configuration (`_cached`), called on
# a few fixed shapes, compiles once per shape instead of once per call.
COMPILED = BACKEND == "jax"
# The shape of the batches the compiled functions are shared on.
N, DIM = 12, 4
_CACHE = {}


def _cached(key, build):
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def weighted_loss(kind, **options):
    """`fn(embeddings, labels, sample_weight)`, the same object for the same configuration."""

    def build():
        loss = CLASSES[kind](**options)
        return lambda e, y, w: loss(y, e, sample_weight=w)

    return _cached(("loss", kind, tuple(sorted(options.items()))), build)


def check(kind, x, labels, weights=None, compiled=False, **options):
    """The loss and its gradient against the NumPy reference (as `conftest.check_against`)."""
    want = ref.REFERENCES[kind](x.astype("float64"), labels, **options, sample_weight=weights)
    if weights is None and compiled:
        weights = np.ones(len(x), "float32")
    value, grad = value_and_grad(weighted_loss(kind, **options), x.astype("float32"), labels, weights,
                                 compiled=compiled)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    if want.kink > 1e-3:
        assert float(value) == pytest.approx(want.loss, rel=1e-4, abs=1e-5)
        scale = max(np.abs(want.grad).max(), 1e-6)
        np.testing.assert_allclose(grad / scale, want.grad / scale, atol=1e-3)
    return want


def loss_and_reference(kind, **options):
    loss = CLASSES[kind](**options)
    return loss, lambda x, y, **kw: ref.REFERENCES[kind](x, y, **options, **kw)


# ---------------------------------------------------------------- hand-made cases


def test_hand_made_threshold_consistent_margin():
    # Positives all at 0.8 ≤ 0.9: mean 0.1. Negatives ≥ 0.5: only s(1,2) =
    # 0.6, both orders: mean 0.1. λ₊ = λ₋ = 1.
    assert float(pw.ThresholdConsistentMargin()(POINT_LABELS, POINTS)) == pytest.approx(0.2, rel=1e-6)
    # m₊ = 0.5: no positive below; λ₋ = 3: 3 × 0.1.
    loss = pw.ThresholdConsistentMargin(lambda_minus=3.0, margin_plus=0.5)
    assert float(loss(POINT_LABELS, POINTS)) == pytest.approx(0.3, rel=1e-6)


def test_hand_made_intra_pair_variance():
    # μ₊ = 0.8: every positive is above 0.99 μ₊, no loss. The eight negative
    # similarities 0, −0.6, 0.6, 0 (twice each) have μ₋ = 0: relu(s)² is
    # 0.36 for two of them, mean 0.09.
    assert float(pw.IntraPairVariance()(POINT_LABELS, POINTS)) == pytest.approx(0.09, rel=1e-6)
    # One class, ε₊ = 0: the positive pairs below their mean pay.
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], "float32")  # s01 = 0.6, s02 = 0, s12 = 0.8
    # Positives: (0,1), (0,2), (1,2) and back: μ₊ = (0.6 + 0 + 0.8)/3; only s = 0 is below.
    mean = 1.4 / 3
    want = 2 * mean**2 / 6
    assert float(pw.IntraPairVariance(pos_eps=0.0)(np.zeros(3, int), x)) == pytest.approx(want, rel=1e-5)


def test_hand_made_angular():
    # Anchor 0, positive 1 (x_a·x_p = 0.8): negatives 2 ((x_a + x_p)·x_n =
    # 0 + 0.6) and 3 (−0.6 + 0); by the symmetry of the four points every
    # positive pair has the same loss.
    t2 = np.tan(np.radians(40.0)) ** 2
    base = -2 * (1 + t2) * 0.8
    want = np.log1p(np.exp(4 * t2 * 0.6 + base) + np.exp(4 * t2 * -0.6 + base))
    assert float(pw.Angular()(POINT_LABELS, POINTS)) == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(np.asarray(pw.angular(POINT_LABELS, POINTS)), [want] * 4, rtol=1e-6)
    # The scale of the embeddings does not matter (all are normalised).
    assert float(pw.Angular()(POINT_LABELS, POINTS * np.array([[3.0], [0.5], [2.0], [7.0]], "float32"))) == (
        pytest.approx(want, rel=1e-6)
    )


def test_hand_made_tuplet_margin():
    # Pair (0, 1): cos θ = 0.8, negatives of 0 at 0 and −0.6; pair (1, 0):
    # negatives of 1 at 0.6 and 0. Anchors 2, 3 mirror 1, 0.
    m, gamma = np.radians(5.73), 8.0
    target = np.cos(np.arccos(0.8) - m)
    first = np.log1p(np.exp(gamma * (0 - target)) + np.exp(gamma * (-0.6 - target)))
    second = np.log1p(np.exp(gamma * (0.6 - target)) + np.exp(gamma * (0 - target)))
    assert float(pw.TupletMargin(scale=gamma)(POINT_LABELS, POINTS)) == pytest.approx((first + second) / 2, rel=1e-5)
    # Margin 0: the N-pair loss on scaled cosines.
    plain = np.log1p(np.exp(gamma * (0 - 0.8)) + np.exp(gamma * (-0.6 - 0.8)))
    per_query = np.asarray(pw.tuplet_margin(POINT_LABELS, POINTS, margin=0.0, scale=gamma))
    assert per_query[0] == pytest.approx(plain, rel=1e-5)


def test_docstring_examples(monkeypatch):
    # The names are exported by the package once registered; until then the
    # examples see them through these stand-ins.
    for name in ("Angular", "TupletMargin", "IntraPairVariance", "ThresholdConsistentMargin"):
        monkeypatch.setattr(tfmetric, name, getattr(pw, name), raising=False)
    for name in FUNCTIONS:
        monkeypatch.setattr(tfmetric.losses, name, FUNCTIONS[name], raising=False)
    result = doctest.testmod(pw, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0


# ---------------------------------------------------------------- PyTorch Metric Learning


# Eight configurations (two per loss) on seven batches. Off TensorFlow, each
# configuration once, on batches of different sizes (every case compiles anew
# under JAX); TensorFlow checks them all.
PML_CASES = [
    case for case in recorded.cases("pml_pair_weighting", CLASSES)
    if ON_TENSORFLOW or (case.values[1] // 8 + case.values[1] % 8) % 7 == 0
]


@pytest.mark.parametrize("peer, index, case", PML_CASES)
def test_reproduces_pytorch_metric_learning(peer, index, case):
    x, labels, recorded_grad = recorded.arrays(peer, index)
    loss = CLASSES[case["kind"]](**case["cfg"])
    value, grad = value_and_grad(lambda e: loss(labels, e), x.astype("float32"))
    assert float(value) == pytest.approx(case["loss"], rel=1e-5, abs=1e-7)
    if case["kind"] == "angular":
        # PML does not normalise the negatives (the recorded inputs are unit
        # vectors): its gradient has a radial part, which normalisation removes.
        assert np.abs(np.sum(grad * x, axis=1)).max() <= 1e-5 * max(np.abs(recorded_grad).max(), 1e-12)
        recorded_grad = recorded_grad - np.sum(recorded_grad * x, axis=1, keepdims=True) * x
    assert np.abs(grad - recorded_grad).max() <= 1e-4 * max(np.abs(recorded_grad).max(), 1e-12)


# ---------------------------------------------------------------- random cases vs the reference


# TensorFlow: eager, any shape, the options drawn. Elsewhere: the default
# options on `(N, DIM)` batches, compiled once per loss (and shared with the
# tests below).
@settings(max_examples=20 if ON_TENSORFLOW else 6, deadline=None)
@given(
    kind=st.sampled_from(sorted(CLASSES)),
    n=st.integers(1, 16) if ON_TENSORFLOW else st.just(N),
    num_classes=st.integers(1, 5),
    dim=st.integers(1, 5) if ON_TENSORFLOW else st.just(DIM),
    weighted=st.booleans(),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_matches_brute_force(kind, n, num_classes, dim, weighted, seed, data):
    drawn = OPTIONS[kind] if ON_TENSORFLOW else {}
    options = {name: data.draw(st.sampled_from(values), label=name) for name, values in drawn.items()}
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    labels = rng.integers(0, num_classes, size=n)
    weights = rng.uniform(0.5, 2.0, size=n).astype("float32") if weighted else None
    check(kind, x, labels, weights, compiled=COMPILED, **options)


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_compiled_matches_brute_force(kind):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(N, DIM)).astype("float32")
    labels = np.repeat(np.arange(4), 3)
    check(kind, x, labels, compiled=True)


def split_loss(kind, multi_label, remove_diagonal):
    """`fn(rows, labels, ref_labels)`: the sum of the per-query losses of `rows[:n]` against `rows[n:]`.

    One input holds the queries and the reference, so that one gradient
    gives both: rows `[:n]` through the queries, rows `[n:]` through the
    reference rows. Under JAX the per-query losses are jitted on their own,
    inside the jitted gradient (a jitted function called by a jitted step).
    """

    def build():
        def losses(rows, labels, ref_labels):
            n = keras.ops.shape(labels)[0]
            return FUNCTIONS[kind](labels, rows[:n], ref_labels, rows[n:], multi_label=multi_label,
                                   remove_diagonal=remove_diagonal)

        if BACKEND == "jax":
            import jax

            losses = jax.jit(losses)
        return lambda rows, labels, ref_labels: keras.ops.sum(losses(rows, labels, ref_labels))

    return _cached(("split", kind, multi_label, remove_diagonal), build)


@settings(max_examples=16 if ON_TENSORFLOW else 4, deadline=None)
@given(
    kind=st.sampled_from(sorted(CLASSES)),
    n=st.integers(1, 8) if ON_TENSORFLOW else st.just(5),
    m=st.integers(1, 10) if ON_TENSORFLOW else st.just(7),
    batch_in_reference=st.booleans(),
    multi_label=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_queries_and_reference_rows_against_the_reference(kind, n, m, batch_in_reference, multi_label, seed):
    """Values and gradients with a reference set: other rows, or the batch followed by other rows.

    The second is a cross-batch memory's reference (`remove_diagonal`: no
    query is its own pair): every batch row has a gradient through its
    query and through its reference row, checked separately here.
    """
    rng = np.random.default_rng(seed)
    x, other = rng.normal(size=(n, 3)), rng.normal(size=(m, 3))
    if multi_label:
        labels, other_labels = (rng.random((n, 3)) < 0.4).astype("int32"), (rng.random((m, 3)) < 0.4).astype("int32")
    else:
        labels, other_labels = rng.integers(0, 3, size=n), rng.integers(0, 3, size=m)
    ref_x, ref_labels = other, other_labels
    if batch_in_reference:
        ref_x, ref_labels = np.concatenate([x, other]), np.concatenate([labels, other_labels])
    want = ref.REFERENCES[kind](x, labels, ref_x=ref_x, ref_labels=ref_labels, multi_label=multi_label,
                                remove_diagonal=batch_in_reference)
    if not COMPILED:  # each query's loss, eagerly (JAX: their sum, below)
        got = FUNCTIONS[kind](labels, x.astype("float32"), ref_labels, ref_x.astype("float32"),
                              multi_label=multi_label, remove_diagonal=batch_in_reference)
        if want.kink > 1e-3:
            np.testing.assert_allclose(np.asarray(got), want.per_anchor, rtol=1e-4, atol=1e-5)
    value, grad = value_and_grad(
        split_loss(kind, multi_label, batch_in_reference), np.concatenate([x, ref_x]).astype("float32"), labels,
        ref_labels, compiled=COMPILED,
    )
    assert np.all(np.isfinite(grad))
    if want.kink > 1e-3:
        assert float(value) == pytest.approx(np.sum(want.per_anchor), rel=1e-4, abs=1e-5)
        scale = max(np.abs(want.per_query_grad).max(), np.abs(want.per_query_ref_grad).max(), 1e-6)
        np.testing.assert_allclose(grad[:n] / scale, want.per_query_grad / scale, atol=1e-3, err_msg="queries")
        np.testing.assert_allclose(grad[n:] / scale, want.per_query_ref_grad / scale, atol=1e-3, err_msg="reference")


def memory_loss(kind):
    """`fn(x, other, labels, ref_labels)`: as a cross-batch memory, the batch against `[x; other]`."""

    def build():
        def fn(x, other, labels, ref_labels):
            reference = keras.ops.concatenate([x, keras.ops.convert_to_tensor(other, x.dtype)], axis=0)
            return keras.ops.sum(FUNCTIONS[kind](labels, x, ref_labels, reference, remove_diagonal=True))

        return fn

    return _cached(("memory", kind), build)


# JAX: one loss of each kind of gradient (a hand-written one, automatic ones).
@pytest.mark.parametrize("kind", sorted(CLASSES) if BACKEND != "jax" else ["angular", "intra_pair_variance"])
def test_reference_that_begins_with_the_batch(kind):
    # The gradient of each batch row sums its two roles (query, reference row).
    rng = np.random.default_rng(21)
    x, other = rng.normal(size=(6, 4)), rng.normal(size=(9, 4))
    labels, other_labels = rng.integers(0, 3, size=6), rng.integers(0, 3, size=9)
    ref_labels = np.concatenate([labels, other_labels])
    want = ref.REFERENCES[kind](x, labels, ref_x=np.concatenate([x, other]), ref_labels=ref_labels,
                                remove_diagonal=True)
    value, grad = value_and_grad(memory_loss(kind), x.astype("float32"), other.astype("float32"), labels, ref_labels,
                                 compiled=COMPILED)
    assert want.kink > 1e-3
    assert float(value) == pytest.approx(np.sum(want.per_anchor), rel=1e-4)
    both = want.per_query_grad + want.per_query_ref_grad[:6]
    np.testing.assert_allclose(grad, both, atol=1e-3 * np.abs(both).max())
    # Neither role alone.
    for part in (want.per_query_grad, want.per_query_ref_grad[:6]):
        assert np.abs(part - both).max() > 1e-2 * np.abs(both).max()


def test_pure_functions_take_the_miner_of_the_classes():
    from tfmetric.miners import PairMarginMiner

    rng = np.random.default_rng(14)
    x = rng.normal(size=(N, DIM)).astype("float32")
    labels = rng.integers(0, 3, size=N)
    miner = PairMarginMiner(pos_margin=0.9, neg_margin=1.3)
    for kind in sorted(CLASSES):
        mined = np.asarray(FUNCTIONS[kind](labels, x, miner=miner))
        np.testing.assert_allclose(mined, np.asarray(CLASSES[kind](reduction=None, miner=miner)(labels, x)), rtol=1e-5,
                                   atol=1e-7, err_msg=kind)
        assert np.abs(mined - np.asarray(FUNCTIONS[kind](labels, x))).max() > 1e-4, kind


def test_global_losses_ignore_sample_weights_and_repeat_per_query():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(N, DIM)).astype("float32")
    labels = rng.integers(0, 3, size=N)
    for kind in ("intra_pair_variance", "threshold_consistent_margin"):
        loss = CLASSES[kind]()
        value = float(loss(labels, x))
        assert float(loss(labels, x, sample_weight=rng.uniform(0.1, 3.0, size=N))) == pytest.approx(value, rel=1e-6)
        np.testing.assert_allclose(np.asarray(FUNCTIONS[kind](labels, x)), value, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(CLASSES[kind](reduction=None)(labels, x)), value, rtol=1e-6)


# ---------------------------------------------------------------- degenerate batches


@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize(
    "case", ["one example", "one class", "all distinct", "identical embeddings", "zero embeddings", "huge", "tiny"]
)
def test_degenerate_batches_are_finite(kind, case):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(N, DIM)).astype("float32")
    labels = np.repeat([0, 1, 2], N // 3)
    expected = None
    per_pair = kind in ("angular", "tuplet_margin")
    if case == "one example":
        x, labels, expected = x[:1], labels[:1], 0.0
    elif case == "one class":
        labels = np.zeros(N, int)
        expected = 0.0 if per_pair else None
    elif case == "all distinct":
        labels = np.arange(N)
        expected = 0.0 if per_pair else None
    elif case in ("identical embeddings", "zero embeddings"):
        x = np.zeros_like(x) + (1.0 if case == "identical embeddings" else 0.0)
        if kind == "intra_pair_variance":
            expected = 0.0  # every similarity equals its mean
    elif case == "huge":
        x = x * np.float32(1e30)
    elif case == "tiny":
        x = x * np.float32(1e-30)
    # TensorFlow: eagerly, and two cases under XLA; JAX: jitted (on the
    # functions of the random tests); PyTorch: eagerly.
    modes = [COMPILED]
    if ON_TENSORFLOW and case in ("identical embeddings", "huge"):
        modes.append(True)
    for compiled in modes:
        value, grad = value_and_grad(weighted_loss(kind), x, labels, np.ones(len(x), "float32"), compiled=compiled)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), (compiled, value)
        if expected is not None:
            assert float(value) == pytest.approx(expected, abs=1e-6), compiled


@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_precisions(kind, dtype):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(N, DIM))
    labels = np.repeat(np.arange(4), 3)
    loss, reference = loss_and_reference(kind)
    typed = tensor(x, dtype)
    value = loss(labels, typed)
    assert keras.backend.standardize_dtype(value.dtype) in ("float32", "float64")
    as_float = np.asarray(tensor(typed, "float32"), "float64")
    assert float(value) == pytest.approx(reference(as_float, labels).loss, rel=1e-5, abs=1e-6)


def test_large_int64_labels_stay_distinct():
    x = np.random.default_rng(7).normal(size=(4, 3)).astype("float32")
    big = 2**53
    labels = np.array([big, big, big + 1, big + 1])
    if BACKEND != "jax":  # JAX without x64 has no int64 tensor
        labels = tensor(labels, "int64")
    merged = np.zeros(4, int)
    for kind, cls in CLASSES.items():
        assert float(cls()(labels, x)) != pytest.approx(float(cls()(merged, x))), kind


# ---------------------------------------------------------------- configuration and arguments


NON_DEFAULT = {
    "angular": {"alpha": 45.0},
    "tuplet_margin": {"margin": 10.0, "scale": 32.0},
    "intra_pair_variance": {"pos_eps": 0.05, "neg_eps": 0.1},
    "threshold_consistent_margin": {"lambda_plus": 0.5, "lambda_minus": 2.0, "margin_plus": 0.8, "margin_minus": 0.2},
}


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_config_round_trip(kind):
    loss = CLASSES[kind](**NON_DEFAULT[kind], reduction="sum", name="mine", multi_label=False)
    config = loss.get_config()
    for name, value in NON_DEFAULT[kind].items():
        assert config[name] == value
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert type(loss).from_config(config).get_config() == config
    x = np.random.default_rng(8).normal(size=(N, DIM)).astype("float32")
    labels = np.repeat(np.arange(3), 4)
    assert float(restored(labels, x)) == pytest.approx(float(loss(labels, x)))
    assert CLASSES[kind](miner=None).miner is None


def test_bad_arguments():
    for alpha in (0.0, 90.0, -5.0, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            pw.Angular(alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        pw.angular([0, 0], np.ones((2, 2)), alpha=95.0)
    with pytest.raises(ValueError, match="margin"):
        pw.TupletMargin(margin=-1.0)
    with pytest.raises(ValueError, match="margin"):
        pw.TupletMargin(margin=float("inf"))
    with pytest.raises(ValueError, match="scale"):
        pw.TupletMargin(scale=0.0)
    with pytest.raises(ValueError, match="pos_eps"):
        pw.IntraPairVariance(pos_eps=-0.1)
    with pytest.raises(ValueError, match="neg_eps"):
        pw.intra_pair_variance([0, 1], np.ones((2, 2)), neg_eps=float("nan"))
    with pytest.raises(ValueError, match="lambda_minus"):
        pw.ThresholdConsistentMargin(lambda_minus=-1.0)
    with pytest.raises(ValueError, match="margin_plus and margin_minus"):
        pw.ThresholdConsistentMargin(margin_plus=1.5)
    with pytest.raises(ValueError, match="one-hot"):
        pw.Angular()(np.eye(3), np.ones((3, 4)))
    with pytest.raises(TypeError):
        pw.TupletMargin(normalize=False)


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_model_fit(kind):
    rng = np.random.default_rng(13)
    x = rng.normal(size=(32, 5)).astype("float32")
    labels = np.repeat(np.arange(4), 8)
    # TensorFlow: every loss in a graph, and the hand-written gradient under
    # XLA too (the other losses' XLA forms are checked above).
    modes = FIT_JIT_COMPILE if kind == "angular" else FIT_JIT_COMPILE[:1]
    for jit_compile in modes:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=CLASSES[kind](), jit_compile=jit_compile)
        history = model.fit(x, labels, batch_size=16, epochs=3, shuffle=False, verbose=0)
        losses = history.history["loss"]
        assert all(np.isfinite(losses)), (jit_compile, losses)
        assert losses[-1] < losses[0] or losses[0] == 0, (jit_compile, losses)


@pytest.mark.parametrize("alpha", [40.0, 75.0])
def test_angular_in_the_batch_both_ways(alpha):
    # Up to α ≈ 65.9° one exponential of the Gram matrix serves every slot;
    # beyond, its products would underflow (f ≈ 30 lost at 75°), and each
    # slot's logits go through a log-sum-exp.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, DIM)).astype("float32")
    labels = rng.integers(0, 3, size=N)
    check("angular", x, labels, None, compiled=COMPILED, alpha=alpha)


@pytest.mark.parametrize("alpha", [40.0, 75.0])
def test_angular_in_the_batch_without_shared_negatives(alpha):
    # Multi-hot labels: a positive pair's rows may have different negatives,
    # so the Gram matrix's gradient scatters each pair's weights into the
    # positive's row instead of taking them from the positive's own slot.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(N, DIM)).astype("float32")
    labels = (rng.random((N, 3)) < 0.4).astype("int32")
    want = ref.angular(x.astype("float64"), labels, alpha, multi_label=True)
    value, grad = value_and_grad(
        _cached(("multi", alpha), lambda: lambda e, y: pw.Angular(alpha, multi_label=True)(y, e)), x, labels,
        compiled=COMPILED,
    )
    assert float(value) == pytest.approx(want.loss, rel=1e-4, abs=1e-5)
    scale = max(np.abs(want.grad).max(), 1e-6)
    np.testing.assert_allclose(grad / scale, want.grad / scale, atol=1e-3)


# Class ids of the batch against itself, op by op: every class's pairs from
# one product of its rows, unless the classes padded to the largest would
# take over twice the batch's rows (a long tail). Each batch both ways, the
# padding bound forced to 0 (slots) and to any size (classes).
ANGULAR_CLASS_BATCHES = {
    "P×K": np.repeat(np.arange(6), 4),
    "uneven, with single rows": np.array([0, 3, 3, 1, 0, 2, 3, 4, 0, 3, 5, 3, 6, 1]),
    "long tail": np.concatenate([np.zeros(9, int), np.repeat(np.arange(1, 8), 2)]),
    "one class": np.zeros(6, int),
    "no pair": np.arange(5),
}


ONLY_OP_BY_OP = pytest.mark.skipif(BACKEND == "jax", reason="JAX compiles: its angular loss takes every slot")


@ONLY_OP_BY_OP
@pytest.mark.parametrize("padding", [0, 10**6])
@pytest.mark.parametrize("batch", sorted(ANGULAR_CLASS_BATCHES))
def test_angular_by_class_and_by_slot(monkeypatch, batch, padding):
    monkeypatch.setattr(pw, "_CLASS_BLOCKS_MAX_PADDING", padding)
    labels = ANGULAR_CLASS_BATCHES[batch]
    rng = np.random.default_rng(len(labels))
    x = rng.normal(size=(len(labels), DIM)).astype("float32")
    # Weights of the queries: the two rows of a pair weigh their terms differently.
    weights = rng.uniform(0.5, 2.0, size=len(labels)).astype("float32")
    want = ref.angular(x.astype("float64"), labels, sample_weight=weights)
    value, grad = value_and_grad(lambda e, y, w: pw.Angular()(y, e, sample_weight=w), x, labels, weights)
    assert float(value) == pytest.approx(want.loss, rel=1e-5, abs=1e-7)
    scale = max(np.abs(want.grad).max(), 1e-6)
    np.testing.assert_allclose(grad / scale, want.grad / scale, atol=1e-5)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("batch", sorted(ANGULAR_CLASS_BATCHES))
def test_angular_by_class_compiles_its_pieces_in_a_graph(batch, monkeypatch):
    # In a TensorFlow graph without XLA on a CPU the classes' products, sums
    # and gradient are XLA-compiled calls (`compiled_piece`; here from the
    # smallest class up): the loss and its gradient as the reference's, and
    # as TensorFlow's kernels give them.
    import tensorflow as tf

    from tfmetric.losses import base

    monkeypatch.setattr(pw, "_CLASS_PIECES_FROM", 1)

    labels = ANGULAR_CLASS_BATCHES[batch]
    rng = np.random.default_rng(len(labels) + 1)
    x = tf.constant(rng.normal(size=(len(labels), DIM)).astype("float32"))
    weights = rng.uniform(0.5, 2.0, size=len(labels)).astype("float32")
    want = ref.angular(x.numpy().astype("float64"), labels, sample_weight=weights)

    def step(x, labels):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = pw.Angular()(labels, x, sample_weight=weights)
        return value, tape.gradient(value, x)

    results = []
    for compiled in (True, False):
        previous = tfmetric.losses.compile_losses_with_xla(compiled)
        try:
            base._COMPILED_PIECES.pop(pw._class_sums, None)
            base._COMPILED_PIECES.pop(pw._class_gradient, None)
            results.append(tf.function(step, autograph=False)(x, tf.constant(labels)))
            # Traced in both branches of the choice between classes and slots.
            pieces = base._COMPILED_PIECES
            assert (pw._class_sums in pieces) == (pw._class_gradient in pieces) == compiled
        finally:
            tfmetric.losses.compile_losses_with_xla(previous)
    scale = max(np.abs(want.grad).max(), 1e-6)
    for value, grad in results:
        assert float(value) == pytest.approx(want.loss, rel=1e-5, abs=1e-7)
        np.testing.assert_allclose(grad.numpy() / scale, want.grad / scale, atol=1e-5)
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)


@ONLY_OP_BY_OP
def test_angular_by_class_keeps_float64():
    labels = np.repeat(np.arange(4), 3)
    x = np.random.default_rng(5).normal(size=(12, DIM))
    want = ref.angular(x, labels)
    value, grad = value_and_grad(lambda e, y: pw.Angular()(y, e), x, labels)
    assert float(value) == pytest.approx(want.loss, rel=1e-12)
    np.testing.assert_allclose(grad, want.grad, rtol=1e-9, atol=1e-12)
