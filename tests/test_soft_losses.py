"""N-pair, multi-similarity, circle, binomial deviance, soft nearest neighbour, NCA."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tfmetric as tfm

import recorded
import reference
from conftest import BACKEND, COMPILE_MODES, check_against, slow_on_jax, tensor, value_and_grad
from registry import SOFT_LOSSES, loss_and_reference, loss_function

DISTANCES = tfm.distances.DISTANCES
SQUARE = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]], "float32")
SQUARE_LABELS = np.array([0, 0, 1, 1])
# Arguments the random tests draw, per loss.
OPTIONS = {
    "npairs": {"normalize": [False, True]},
    "multi_similarity": {"alpha": [1.0, 2.0], "beta": [10.0, 50.0], "base": [0.0, 0.5], "normalize": [True, False]},
    "multi_similarity_mined": {"alpha": [2.0], "beta": [10.0, 50.0], "normalize": [True, False]},
    "circle": {"margin": [0.25, 0.4], "gamma": [16.0, 80.0], "normalize": [True, False]},
    "binomial_deviance": {"cost": [1.0, 25.0], "threshold": [0.0, 0.5], "normalize": [True, False]},
    "soft_nearest_neighbor": {"temperature": [0.5, 1.0, 4.0], "distance": list(DISTANCES), "normalize": [False, True]},
    "nca": {"softmax_scale": [1.0, 4.0], "distance": list(DISTANCES), "normalize": [True, False]},
    "supcon": {"temperature": [0.1, 0.5], "normalize": [True, False]},
    "ntxent": {"temperature": [0.07, 0.5], "normalize": [True, False]},
    "instance": {"gamma": [4.0, 64.0], "normalize": [True, False]},
    "fast_ap": {"num_bins": [5, 10], "distance": list(DISTANCES)},
    "smooth_ap": {"temperature": [0.1, 0.5], "normalize": [True, False]},
    "pnp": {"variant": ["O", "Ds", "Iu", "Ib"], "anneal": [0.1, 0.5]},
    "pnp_dq": {"alpha": [1.0, 2.0], "anneal": [0.1]},
    "ranked_list": {"Tn": [1.0, 10.0], "Tp": [0.0, 1.0], "imbalance": [0.5, 0.8]},
    "histogram": {"num_bins": [10, 100], "normalize": [True, False]},
    "angular": {"alpha": [30.0, 40.0]},
    "tuplet_margin": {"margin": [5.73, 10.0], "scale": [8.0, 64.0]},
    "intra_pair_variance": {"pos_eps": [0.01, 0.1], "neg_eps": [0.01, 0.1]},
    "threshold_consistent_margin": {"margin_plus": [0.9, 0.5], "margin_minus": [0.5, 0.2]},
    "generalized_lifted_structure": {"neg_margin": [1.0, 0.5], "pos_margin": [0.0, 0.2], "distance": list(DISTANCES)},
    "snr_contrastive": {"pos_margin": [0.0, 0.2], "neg_margin": [1.0, 0.5], "normalize": [True, False]},
}


def check(kind, x, labels, compiled=False, sample_weight=None, **kwargs):
    loss, ref = loss_and_reference(kind, **kwargs)
    return check_against(loss, ref, x, labels, compiled, sample_weight)


# ---------------------------------------------------------------- hand-made cases


def test_hand_made_soft_nearest_neighbor_square():
    # Anchor 0: squared distances 1 (positive), 4 and 8 (negatives):
    # −log(e⁻¹ / (e⁻¹ + e⁻⁴ + e⁻⁸)); by symmetry of the square, anchors 1–3 alike.
    d2 = {0: (1, [4, 8]), 1: (1, [5, 5]), 2: (4, [4, 5]), 3: (4, [8, 5])}
    want = np.mean([np.log(1 + sum(np.exp(p - q) for q in qs)) for p, qs in d2.values()])
    assert check("soft_nearest_neighbor", SQUARE, SQUARE_LABELS).loss == pytest.approx(want)
    nca = tfm.NCA(softmax_scale=1.0, normalize=False)(SQUARE_LABELS, SQUARE)
    assert float(nca) == pytest.approx(want, rel=1e-6)


def test_hand_made_npairs_is_the_paper_loss_with_one_positive():
    # One positive per anchor: log(1 + Σ_n exp(s_an − s_ap)).
    x = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [-1.0, 0.5]], "float32")
    labels = np.array([0, 0, 1, 1])
    s = x.astype("float64") @ x.T.astype("float64")
    pairs = {0: 1, 1: 0, 2: 3, 3: 2}
    want = np.mean(
        [np.log1p(sum(np.exp(s[a, n] - s[a, p]) for n in range(4) if n not in (a, p))) for a, p in pairs.items()]
    )
    assert check("npairs", x, labels).loss == pytest.approx(want)


def test_hand_made_multi_similarity_and_mining():
    # Anchor 0 of three 1-D unit vectors: positive at s = 1 (same point),
    # negative at s = −1; λ = 0.5, α = 2, β = 50.
    x = np.array([[1.0], [1.0], [-1.0]], "float32")
    labels = np.array([0, 0, 1])
    pull = np.log1p(np.exp(-2 * 0.5)) / 2
    push = np.log1p(np.exp(50 * -1.5)) / 50
    # Anchors 0, 1: one positive, one negative; anchor 2: two negatives.
    want = (2 * (pull + push) + np.log1p(2 * np.exp(50 * -1.5)) / 50) / 3
    assert float(tfm.MultiSimilarity()(labels, x)) == pytest.approx(want, rel=1e-6)
    # With ε = 0.1 nothing is hard: the negative (−1) is far below the
    # positive (1) — every pair is dropped and the loss is 0.
    assert float(tfm.MultiSimilarity(epsilon=0.1)(labels, x)) == 0.0


def test_hand_made_binomial_deviance_and_circle():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], "float32")
    labels = np.array([0, 0, 1])
    # Anchor 0: positive at s = 0, negative at s = 1. Anchor 1: positive at
    # 0, negative at 0. Anchor 2: no positive.
    softplus = lambda v: np.log1p(np.exp(v))  # noqa: E731
    want = (softplus(1.0) + softplus(25.0) + softplus(1.0) + softplus(-25.0)) / 2
    assert float(tfm.BinomialDeviance()(labels, x)) == pytest.approx(want, rel=1e-6)
    m, gamma = 0.4, 80.0
    circle = [
        softplus(-gamma * (1 + m) * (0 - (1 - m)) + gamma * (1 + m) * (1 - m)),
        softplus(-gamma * (1 + m) * (0 - (1 - m)) + gamma * m * (0 - m)),
    ]
    assert float(tfm.Circle()(labels, x)) == pytest.approx(np.mean(circle), rel=1e-6)


# ---------------------------------------------------------------- the peers' values


PML_LOSSES = {"multi_similarity": tfm.MultiSimilarity, "circle": tfm.Circle, "nca": tfm.NCA}


@pytest.mark.parametrize("peer, index, case", recorded.cases("pml", PML_LOSSES))
def test_reproduces_pytorch_metric_learning(peer, index, case):
    x, labels, recorded_grad = recorded.arrays(peer, index)
    loss = PML_LOSSES[case["kind"]]()
    value, grad = value_and_grad(lambda e: loss(labels, e), x.astype("float32"))
    assert float(value) == pytest.approx(case["loss"], rel=1e-5)
    assert np.abs(grad - recorded_grad).max() <= 1e-4 * np.abs(recorded_grad).max()


@pytest.mark.parametrize("peer, index, case", recorded.cases("tfa", ["npairs", "npairs_multilabel"]))
def test_reproduces_tf_addons_npairs(peer, index, case):
    similarity, labels, _ = recorded.arrays(peer, index)
    if case["kind"] == "npairs":
        assert float(tfm.losses.npairs_loss(labels, similarity)) == pytest.approx(case["loss"], rel=1e-5)
        assert reference.tfa_npairs(labels, similarity.astype("float64")) == pytest.approx(case["loss"], rel=1e-6)
    else:
        assert float(tfm.losses.npairs_multilabel_loss(labels, similarity)) == pytest.approx(case["loss"], rel=1e-5)


# ---------------------------------------------------------------- random cases


@settings(max_examples=40 if BACKEND == "tensorflow" else 4, deadline=None)
@given(
    kind=st.sampled_from(sorted(SOFT_LOSSES)),
    n=st.integers(1, 40),
    num_classes=st.integers(1, 10),
    dim=st.integers(1, 8),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_matches_brute_force(kind, n, num_classes, dim, seed, data):
    options = {name: data.draw(st.sampled_from(values), label=name) for name, values in OPTIONS[kind].items()}
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    labels = rng.integers(0, num_classes, size=n)
    check(kind, x, labels, **options)


# ---------------------------------------------------------------- multi-label N-pairs


@settings(max_examples=15 if BACKEND == "tensorflow" else 5, deadline=None)
@given(n=st.integers(1, 24), num_labels=st.integers(1, 5), seed=st.integers(0, 2**31), normalize=st.booleans())
def test_npairs_multilabel_matches_brute_force(n, num_labels, seed, normalize):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    multi_hot = (rng.random((n, num_labels)) < 0.4).astype("int32")
    loss = tfm.NPairsMultilabel(normalize=normalize)
    check_against(
        loss, lambda e, y, **kw: reference.npairs_multilabel(e, y, normalize, **kw), x, multi_hot, compiled=n % 2 == 0
    )


def test_npairs_multilabel_inputs():
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    multi_hot = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    want = reference.npairs_multilabel(x.astype("float64"), multi_hot).loss
    assert float(tfm.NPairsMultilabel()(multi_hot, x)) == pytest.approx(want, rel=1e-5)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        sparse = tf.sparse.from_dense(tf.constant(multi_hot))
        assert float(tfm.NPairsMultilabel()(sparse, x)) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="0 and 1"):
        tfm.NPairsMultilabel()(multi_hot * 2, x)
    with pytest.raises(ValueError, match="num_classes"):
        tfm.NPairsMultilabel()(np.array([0, 1, 1, 0]), x)


# ---------------------------------------------------------------- degenerate batches


@pytest.mark.parametrize("kind", sorted(SOFT_LOSSES))
@pytest.mark.parametrize(
    "case",
    ["one example", "one class", "all distinct", "identical embeddings", "zero embeddings", "huge", "tiny"],
)
def test_degenerate_batches_are_finite(kind, case):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 3)).astype("float32")
    labels = np.repeat([0, 1], 4)
    expected = None
    # Losses whose anchors need a positive (and a negative) to have a term.
    # (Some have a term for every anchor, or for the batch: their negatives still push.)
    needs_positive = kind not in (
        "multi_similarity", "multi_similarity_mined", "ranked_list", "intra_pair_variance",
        "threshold_consistent_margin", "generalized_lifted_structure", "snr_contrastive",
    )
    needs_negative = kind in ("circle", "binomial_deviance", "soft_nearest_neighbor", "nca", "multi_similarity_mined")
    if case == "one example":
        x, labels, expected = x[:1], labels[:1], 0.0
    elif case == "one class":
        labels = np.zeros(8, int)
        expected = 0.0 if needs_negative else None
    elif case == "all distinct":
        labels = np.arange(8)
        expected = 0.0 if needs_positive else None
    elif case in ("identical embeddings", "zero embeddings"):
        x = np.zeros_like(x) + (1.0 if case == "identical embeddings" else 0.0)
    elif case == "huge":
        # Raw dot products and squared distances grow like x²: 1e15 keeps them in float32.
        x = x * np.float32(1e15)
    elif case == "tiny":
        x = x * np.float32(1e-30)
    loss = loss_function(kind)
    # Compiled too (once per loss and shape) for the cases most likely to differ.
    for compiled in COMPILE_MODES if case in ("one example", "identical embeddings", "huge") else (False,):
        value, grad = value_and_grad(loss, x, labels, compiled=compiled)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), (compiled, value)
        if expected is not None:
            assert float(value) == pytest.approx(expected, abs=1e-6), compiled


@pytest.mark.parametrize("kind", sorted(SOFT_LOSSES))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_precisions(kind, dtype):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 4))
    labels = np.repeat(np.arange(4), 4)
    loss, ref = loss_and_reference(kind)
    typed = tensor(x, dtype)
    value = loss(labels, typed)
    assert keras.backend.standardize_dtype(value.dtype) in ("float32", "float64")
    as_float = np.asarray(tensor(typed, "float32"), "float64")
    assert float(value) == pytest.approx(ref(as_float, labels).loss, rel=1e-5, abs=1e-6)


def test_large_int64_labels_stay_distinct():
    x = np.random.default_rng(7).normal(size=(4, 3)).astype("float32")
    big = 2**53
    labels = np.array([big, big, big + 1, big + 1])
    if BACKEND != "jax":  # JAX without x64 has no int64 tensor
        labels = tensor(labels, "int64")
    merged = np.zeros(4, int)
    for kind in SOFT_LOSSES:
        loss = loss_and_reference(kind)[0]
        assert float(loss(labels, x)) != pytest.approx(float(loss(merged, x))), kind


# ---------------------------------------------------------------- configuration


@slow_on_jax
@pytest.mark.parametrize("kind", sorted(SOFT_LOSSES) + ["npairs_multilabel"])
def test_config_round_trip(kind):
    if kind == "npairs_multilabel":
        loss = tfm.NPairsMultilabel(normalize=True, reduction="sum", name="mine")
        labels = (np.random.default_rng(9).random((12, 3)) < 0.5).astype("int32")
    else:
        loss = loss_and_reference(kind, reduction="sum", name="mine")[0]
        labels = np.repeat(np.arange(3), 4)
    config = loss.get_config()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert type(loss).from_config(config).get_config() == config
    x = np.random.default_rng(8).normal(size=(12, 3)).astype("float32")
    assert float(restored(labels, x)) == pytest.approx(float(loss(labels, x)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        tfm.SoftNearestNeighbor(temperature=0.0)
    with pytest.raises(ValueError, match="softmax_scale"):
        tfm.NCA(softmax_scale=-1.0)
    with pytest.raises(ValueError, match="alpha and beta"):
        tfm.MultiSimilarity(beta=0.0)
    with pytest.raises(ValueError, match="distance"):
        tfm.SoftNearestNeighbor(distance="L2")
    with pytest.raises(ValueError, match="one-hot"):
        tfm.Circle()(np.eye(3), np.ones((3, 4)))


@pytest.mark.parametrize("add_one", [False, True])
@pytest.mark.parametrize("compiled", COMPILE_MODES)
def test_row_logsumexp_value_and_gradient(add_one, compiled):
    """`log Σ_mask e^v` (`log(1 + Σ)`), its gradient the softmax weights (0 outside the mask), against
    float64 loops; rows with an empty mask, one entry, and values of ±1e4 (written gradient op by op,
    autodiff under XLA)."""
    rng = np.random.default_rng(5)
    values = rng.normal(size=(5, 6)) * 3
    values[3] = [1e4, -1e4, 2.0, 1e4 - 1.0, 0.0, 5.0]
    mask = rng.random((5, 6)) < 0.6
    mask[1] = False
    mask[2] = [False, False, True, False, False, False]
    mask[3] = [True, True, False, True, False, False]
    weights = rng.normal(size=5)

    def weighted(v, m, w):
        logs = tfm.losses.base.row_logsumexp(v, keras.ops.convert_to_tensor(m) > 0.5, add_one)
        return keras.ops.sum(logs * keras.ops.convert_to_tensor(w))

    value, grad = value_and_grad(
        weighted, values.astype("float32"), mask.astype("float32"), weights.astype("float32"), compiled=compiled
    )
    want_value, want_grad = 0.0, np.zeros_like(values)
    for row in range(5):
        terms = [values[row, j] for j in range(6) if mask[row, j]] + ([0.0] if add_one else [])
        if not terms:
            continue
        top = max(terms)
        log_sum = top + np.log(sum(np.exp(t - top) for t in terms))
        want_value += weights[row] * log_sum
        for j in range(6):
            if mask[row, j]:
                want_grad[row, j] = weights[row] * np.exp(values[row, j] - log_sum)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
