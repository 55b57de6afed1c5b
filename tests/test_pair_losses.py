"""Contrastive and MarginLoss: brute force, sampling statistics, learned β."""

import functools

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tfmetric as tfm
from tfmetric.losses.margin import drawn_margin_terms, margin_terms
from tfmetric.mining import (
    distance_weighted_log_weights,
    label_masks,
    sample_negative_counts,
    sample_negative_draws,
    smallest_entries,
)

import reference
from conftest import (
    BACKEND,
    COMPILE_MODES,
    FIT_JIT_COMPILE,
    no_warnings,
    only_tensorflow,
    slow_on_jax,
    tensor,
    value_and_grad,
    variable_gradient,
)
from registry import check

DISTANCES = tfm.distances.DISTANCES

SQUARE = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]], "float32")
SQUARE_LABELS = np.array([0, 0, 1, 1])


# ---------------------------------------------------------------- hand-made cases


def test_hand_made_contrastive_square():
    # Positive pairs: d = 1 and 2 -> 1 + 4. Negative pairs at 2, √5, √5, √8
    # with margin 2.5 -> 0.25, (2.5 - √5)², (2.5 - √5)², 0.
    near = (2.5 - 5**0.5) ** 2
    want_all = (5 + 0.25 + 2 * near) / 6
    # "hard": two positive pairs, so the two closest negative pairs: 2 and
    # one of the tied √5 pairs (both give the same loss).
    want_hard = (5 + 0.25 + near) / 4
    assert check("contrastive_all", SQUARE, SQUARE_LABELS, margin=2.5).loss == pytest.approx(want_all)
    assert check("contrastive_hard", SQUARE, SQUARE_LABELS, margin=2.5).loss == pytest.approx(want_hard)


def test_hand_made_contrastive_hard_splits_ties_at_the_cut():
    # One positive pair (0, 1); negatives (0, 2), (1, 2) both at distance 1:
    # one of them is used, its loss shared half and half.
    x = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0]], "float32")
    labels = np.array([0, 0, 1])
    loss = tfm.Contrastive(margin=1.5, negatives="hard", reduction=None)
    # Anchor 0: pairs (0,1): 4 and (0,2) with weight 1/2: 0.25 -> (4 + 0.125) / 1.5.
    per_anchor = np.asarray(loss(labels, x))
    np.testing.assert_allclose(per_anchor, [4.125 / 1.5, 4.125 / 1.5, 0.25], rtol=1e-6)
    assert float(tfm.Contrastive(margin=1.5, negatives="hard")(labels, x)) == pytest.approx(4.25 / 2)


def test_hand_made_margin_loss():
    # 1-D points on a line, no normalisation, β = 1, m = 0.2:
    # positives (0, 1) at 0.5 -> relu(0.2 + 0.5 - 1) = 0; negatives (0, 2)
    # at 1.1 -> relu(0.2 - 1.1 + 1) = 0.1, (1, 2) at 0.6 -> 0.6.
    x = np.array([[0.0], [0.5], [1.1]], "float32")
    labels = np.array([0, 0, 1])
    loss = tfm.MarginLoss(margin=0.2, beta=1.0, sampling="all", normalize=False)
    # Ordered terms: both sides of each negative pair -> (0.1 + 0.6) * 2 / 4.
    assert float(loss(labels, x)) == pytest.approx(0.35)
    with_nu = tfm.MarginLoss(margin=0.2, beta=1.0, nu=0.1, sampling="all", normalize=False)
    # ν·β per term: 6 terms (2 positive, 4 negative) -> + 0.6 / 4.
    assert float(with_nu(labels, x)) == pytest.approx(0.35 + 0.15)
    assert check("margin_all", x, labels, margin=0.2, beta=1.0, nu=0.1, normalize=False).loss == pytest.approx(0.5)


# ---------------------------------------------------------------- random cases


@settings(max_examples=20 if BACKEND == "tensorflow" else 5, deadline=None)
@given(
    negatives=st.sampled_from(["all", "hard"]),
    n=st.integers(1, 48),
    num_classes=st.integers(1, 10),
    dim=st.integers(1, 8),
    seed=st.integers(0, 2**31),
    distance=st.sampled_from(DISTANCES),
    margin=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    normalize=st.booleans(),
)
def test_contrastive_matches_brute_force(negatives, n, num_classes, dim, seed, distance, margin, normalize):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    labels = rng.integers(0, num_classes, size=n)
    check(f"contrastive_{negatives}", x, labels, distance=distance, margin=margin, normalize=normalize)


@settings(max_examples=20 if BACKEND == "tensorflow" else 5, deadline=None)
@given(
    n=st.integers(1, 48),
    num_classes=st.integers(1, 10),
    dim=st.integers(2, 16),
    seed=st.integers(0, 2**31),
    margin=st.sampled_from([0.0, 0.1, 0.2, 0.5]),
    beta=st.sampled_from([0.5, 1.0, 1.2]),
    nu=st.sampled_from([0.0, 0.1]),
    normalize=st.booleans(),
)
def test_margin_all_matches_brute_force(n, num_classes, dim, seed, margin, beta, nu, normalize):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    labels = rng.integers(0, num_classes, size=n)
    check("margin_all", x, labels, margin=margin, beta=beta, nu=nu, normalize=normalize)


@settings(max_examples=15 if BACKEND == "tensorflow" else 5, deadline=None)
@given(n=st.integers(2, 40), seed=st.integers(0, 2**31), nu=st.sampled_from([0.0, 0.2]))
def test_margin_terms_with_sampled_counts_and_class_betas(n, seed, nu):
    # The sampled variant is the same sum with each negative repeated as often
    # as it was drawn, and β per class.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    labels = rng.integers(0, 4, size=n)
    counts = rng.integers(0, 3, size=(n, n)) * (labels[:, None] != labels[None, :])
    class_beta = rng.uniform(-0.3, 0.3, size=4)
    want = reference.margin(x.astype("float64"), labels, 0.2, 1.1, nu, True, counts, class_beta)

    def loss(e):
        distances = tfm.distances.pairwise_distance(e, "euclidean", normalize=True)
        anchor_beta = tensor(1.1 + class_beta[labels], "float32")
        sums, active = margin_terms(
            distances, *label_masks(tensor(labels)), anchor_beta, tensor(counts, "float32"), 0.2, nu
        )
        return tfm.losses.reduce_anchor_terms(sums, active)

    value, grad = value_and_grad(loss, x)
    assert float(value) == pytest.approx(want.loss, rel=1e-4, abs=1e-5)
    if want.kink > 1e-3:
        scale = max(np.abs(want.grad).max(), 1e-6)
        np.testing.assert_allclose(grad / scale, want.grad / scale, atol=1e-3)


# ---------------------------------------------------------------- hard-negative selection


@slow_on_jax
@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 30),
    seed=st.integers(0, 2**31),
    count=st.integers(0, 1000),
    levels=st.sampled_from([3, 1000]),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_smallest_entries_selects_exactly_count(n, seed, count, levels, dtype):
    if dtype == "float64" and BACKEND == "jax" and not keras.config.floatx() == "float64":
        import jax

        if not jax.config.jax_enable_x64:
            dtype = "float32"
    rng = np.random.default_rng(seed)
    # Few levels: many ties at the cut.
    values = rng.integers(0, levels, size=(n, n)) / levels * 3.0
    candidates = rng.random((n, n)) < 0.6
    weights = np.asarray(smallest_entries(tensor(values, dtype), tensor(candidates), count))
    chosen = np.sort(values[candidates])[: min(count, candidates.sum())]
    assert weights.sum() == pytest.approx(len(chosen), abs=1e-4)
    assert np.all(weights[~candidates] == 0) and np.all((weights >= 0) & (weights <= 1 + 1e-6))
    assert np.sum(weights * values) == pytest.approx(chosen.sum(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("compiled", COMPILE_MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_smallest_entries_cuts_between_neighbouring_floats(compiled, dtype):
    # Values one ulp apart share every digit of their bit patterns but the
    # last: the radix selection's last level and the bisection's last steps
    # decide. The three equal values at the cut share the remaining 2.
    if dtype == "float64" and BACKEND == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            dtype = "float32"
    one = np.array(1.0, dtype)
    up = np.nextafter(one, 2 * one)
    values = np.array([[up, one, np.nextafter(up, 2 * one)], [up, 0.0, up], [one, one, 3.0]], dtype)
    candidates = np.array([[1, 1, 1], [1, 0, 1], [1, 0, 1]], bool)

    def select(values, candidates):
        return smallest_entries(values, candidates, 4)

    if compiled:
        import tensorflow as tf

        select = tf.function(select, jit_compile=True)
    weights = np.asarray(select(tensor(values, dtype), tensor(candidates)))
    want = [[2 / 3, 1, 0], [2 / 3, 0, 2 / 3], [1, 0, 0]]
    np.testing.assert_allclose(weights, want, rtol=1e-6)


# ---------------------------------------------------------------- distance-weighted sampling


def sphere_layout(dim, negative_distances, class_size):
    """`class_size` copies of e1 (class 0) and one negative per distance, each its own class."""
    rows = [np.eye(dim)[0]] * class_size
    for k, d in enumerate(negative_distances):
        theta = 2 * np.arcsin(d / 2)
        rows.append(np.cos(theta) * np.eye(dim)[0] + np.sin(theta) * np.eye(dim)[k + 1])
    labels = np.concatenate([np.zeros(class_size, int), np.arange(1, len(negative_distances) + 1)])
    return np.array(rows, "float32"), labels


def sampled_counts(x, labels, seed, cutoff=0.5, nonzero_loss_cutoff=1.4):
    def counts(x, labels):
        distances = tfm.distances.pairwise_distance(x, "euclidean", normalize=True)
        positive, negative = label_masks(labels)
        log_weights = distance_weighted_log_weights(distances, negative, x.shape[1], cutoff, nonzero_loss_cutoff)
        uniforms = keras.random.uniform((len(labels), 32), seed=seed)
        return sample_negative_counts(log_weights, positive, uniforms)

    if BACKEND == "jax":
        import jax

        # One compilation instead of one per operation and shape.
        counts = jax.jit(counts)
    return keras.ops.convert_to_numpy(counts(tensor(x), tensor(labels)))


def expected_probabilities(dim, distances, cutoff=0.5, nonzero_loss_cutoff=1.4):
    d = np.maximum(np.asarray(distances, np.float64), cutoff)
    log_weights = -((dim - 2) * np.log(d) + (dim - 3) / 2 * np.log(1 - d**2 / 4))
    log_weights = np.where(np.asarray(distances) < nonzero_loss_cutoff, log_weights, -np.inf)
    weights = np.exp(log_weights - log_weights.max())
    return weights / weights.sum()


def chi_square_p_value(observed, expected_probability):
    from scipy import stats

    expected = expected_probability * observed.sum()
    keep = expected > 5  # the test's validity condition; merge the rest
    observed = np.append(observed[keep], observed[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    return stats.chisquare(observed, expected).pvalue


@pytest.mark.parametrize("dim", [16, 512])
# 33: one independent uniform per positive pair; 60: more positives than
# independent uniforms per anchor, the rest turned by golden-ratio steps.
@pytest.mark.parametrize("class_size", [33, 60])
def test_distance_weighted_sampling_follows_the_inverse_density(dim, class_size):
    negative_distances = [0.3, 0.6, 0.8, 1.0, 1.2, 1.35, 1.45, 1.9]
    if dim == 512:
        # The weights span hundreds of orders of magnitude here: only the
        # nearest candidates have a chance, and they must still get it.
        negative_distances = [0.55, 0.56, 0.57, 0.6, 1.0, 1.3, 1.5]
    x, labels = sphere_layout(dim, negative_distances, class_size)
    counts = sampled_counts(x, labels, seed=7)
    anchors = counts[:class_size]
    # Never the anchor itself nor a same-class example.
    assert np.all(anchors[:, :class_size] == 0)
    # One draw per positive pair.
    assert np.all(anchors.sum(axis=1) == class_size - 1)
    observed = anchors[:, class_size:].sum(axis=0)
    probability = expected_probabilities(dim, negative_distances)
    assert np.all(observed[probability == 0] == 0)
    assert chi_square_p_value(observed, probability) > 1e-3
    # The distances the weights favour are actually drawn: the test has power.
    assert observed[np.argmax(probability)] > 0


def draws_by_loops(log_weights, positive, uniforms):
    """Each positive pair's draw, one at a time: the first column whose running weight exceeds the target."""
    counts = np.zeros(log_weights.shape)
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    for a, row in enumerate(log_weights):
        candidates = np.flatnonzero(np.isfinite(row))
        if not len(candidates):
            continue
        cumulative = np.cumsum(np.where(np.isfinite(row), np.exp(row - row[candidates].max()), 0.0))
        for rank in range(int(positive[a].sum())):
            turned = uniforms[a, rank % uniforms.shape[1]] + (rank // uniforms.shape[1]) * golden
            target = (turned - np.floor(turned)) * cumulative[-1]
            counts[a, min(int(np.sum(cumulative <= target)), candidates[-1])] += 1
    return counts


# Fewer positives than uniforms per row, and more (golden-ratio turns).
@pytest.mark.parametrize("compiled", COMPILE_MODES)
@pytest.mark.parametrize("class_size", [5, 45])
def test_distance_weighted_draws_match_loops(compiled, class_size):
    # A search in rows where operations run one by one, a binary search per
    # positive slot under XLA: the same columns as the loops.
    rng = np.random.default_rng(class_size)
    labels = np.repeat(np.arange(90 // class_size), class_size)
    positive = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    log_weights = np.where(labels[:, None] != labels[None, :], rng.normal(scale=3.0, size=positive.shape), -np.inf)
    log_weights[3] = -np.inf  # a row without a candidate draws nothing
    log_weights[7, :-2] = -np.inf  # only the last two columns (a neighbour class's)
    uniforms = rng.uniform(size=(len(labels), 32))

    def draw(log_weights, positive, uniforms):
        return sample_negative_counts(log_weights, positive, uniforms)

    if compiled:
        import tensorflow as tf

        draw = tf.function(draw, jit_compile=True)
    counts = keras.ops.convert_to_numpy(draw(tensor(log_weights), tensor(positive), tensor(uniforms)))
    expected = draws_by_loops(log_weights, positive, uniforms)
    np.testing.assert_array_equal(counts, expected)
    assert counts[3].sum() == 0 and counts[7, -2:].sum() == class_size - 1


@pytest.mark.parametrize("nu", [0.0, 0.2])
def test_drawn_margin_terms_are_the_terms_of_the_draws(nu):
    # Where operations run one by one, the margin loss takes its terms on the
    # positive pairs' and the drawn negatives' entries: each row's sum of
    # relu(m + d_ap − β_a) and of relu(m − d_an + β_a) per draw, and its
    # gradient w.r.t. every distance, against loops over the loops' draws.
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(6), 4)
    positive = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    negative = labels[:, None] != labels[None, :]
    distances = rng.uniform(0.3, 1.8, size=positive.shape)
    log_weights = np.where(negative, rng.normal(scale=2.0, size=positive.shape), -np.inf)
    log_weights[5] = -np.inf  # a row that draws nothing
    uniforms = rng.uniform(size=(len(labels), 32))
    beta, margin = rng.uniform(0.8, 1.4, size=len(labels)), 0.3
    draws = sample_negative_draws(tensor(log_weights), tensor(positive), tensor(uniforms))
    if draws is None:
        pytest.skip("the drawn terms are for the backends that run operation by operation")
    counts = draws_by_loops(log_weights, positive, uniforms)
    row_weights = rng.uniform(0.5, 2.0, size=len(labels))
    want_sums, want_active, want_grad = np.zeros(len(labels)), np.zeros(len(labels)), np.zeros(positive.shape)
    for a in range(len(labels)):
        for n in range(len(labels)):
            for weight, sign in ((float(positive[a, n]), 1.0), (counts[a, n], -1.0)):
                value = margin + sign * (distances[a, n] - beta[a])
                want_sums[a] += weight * (max(value, 0.0) + nu * beta[a])
                want_active[a] += weight * (value > 0)
                want_grad[a, n] += row_weights[a] * weight * sign * (value > 0)

    def weighted(d):
        sums, active = drawn_margin_terms(d, tensor(positive), draws, tensor(beta), margin, nu)
        weighted.active = active
        return keras.ops.sum(sums * tensor(row_weights)) + 0 * keras.ops.sum(active)

    value, grad = value_and_grad(weighted, distances)
    np.testing.assert_allclose(value, np.sum(want_sums * row_weights), rtol=1e-10)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weighted.active), want_active)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-12)
    # The same as the dense terms with the draws counted.
    dense = margin_terms(
        tensor(distances), tensor(positive), tensor(negative), tensor(beta),
        sample_negative_counts(tensor(log_weights), tensor(positive), tensor(uniforms)), margin, nu,
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dense[0]), want_sums, rtol=1e-10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_distance_weighted_log_weights_at_antipodal_points(dtype):
    # With nonzero_loss_cutoff beyond 2, opposite points (d = 2, and d a
    # rounding above it) may be drawn: their weight is the largest, and
    # finite, so that the row's draws are not all lost to an infinite one.
    distances = np.array([[0.0, 1.0, 1.5, 2.0, np.nextafter(np.array(2.0, dtype), 3)]], dtype)
    negative = np.array([[False, True, True, True, True]])
    log_weights = keras.ops.convert_to_numpy(
        distance_weighted_log_weights(tensor(distances), tensor(negative), 128, 0.5, 2.5)
    )
    assert log_weights[0, 0] == -np.inf and np.all(np.isfinite(log_weights[0, 1:]))
    assert log_weights[0, 2] < log_weights[0, 1] < log_weights[0, 3] == log_weights[0, 4]
    want = -(126 * np.log(distances[0, 1:3]) + 62.5 * np.log(1 - distances[0, 1:3] ** 2 / 4))
    np.testing.assert_allclose(log_weights[0, 1:3], want, rtol=1e-5)


def test_distance_weighted_sampling_falls_back_to_uniform():
    # Every negative at or beyond nonzero_loss_cutoff: uniform over them.
    negative_distances = [1.4, 1.6, 1.8, 1.95]
    x, labels = sphere_layout(8, negative_distances, 50)
    observed = sampled_counts(x, labels, seed=3)[:50, 50:].sum(axis=0)
    assert chi_square_p_value(observed, np.full(4, 0.25)) > 1e-3


def test_distance_weighted_sampling_is_reproducible_and_varies():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 16)).astype("float32")
    labels = np.repeat(np.arange(8), 4)
    first = [float(tfm.MarginLoss(seed=5)(labels, x)) for _ in range(2)]
    loss = tfm.MarginLoss(seed=5)
    again = [float(loss(labels, x)) for _ in range(2)]
    assert again == pytest.approx(first[:1] + [again[1]])
    assert first[0] == first[1] == again[0]
    # Successive calls draw anew.
    draws = {float(loss(labels, x)) for _ in range(5)}
    assert len(draws) > 1


def test_distance_weighted_margin_loss_gradient_is_finite_and_compiled():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 512)).astype("float32")
    labels = np.repeat(np.arange(6), 4)
    loss = tfm.MarginLoss(seed=2)
    for compiled in COMPILE_MODES:
        value, grad = value_and_grad(lambda e: loss(labels, e), x, compiled=compiled)
        assert np.isfinite(value) and np.all(np.isfinite(grad)) and float(value) > 0


# ---------------------------------------------------------------- degenerate batches


def all_losses():
    return [
        tfm.Contrastive(margin=0.5),
        tfm.Contrastive(margin=0.5, negatives="hard"),
        tfm.MarginLoss(sampling="all"),
        tfm.MarginLoss(seed=0),
        tfm.MarginLoss(seed=0, normalize=False, learn_beta=True),
    ]


@functools.lru_cache(maxsize=None)
def degenerate_loss(index):
    """`(x, labels) -> loss(labels, x)` of `all_losses()[index]`: compiled once per shape."""
    loss = all_losses()[index]
    return lambda x, labels: loss(labels, x)


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize(
    "case",
    ["one example", "one class", "all distinct", "identical embeddings", "zero embeddings", "huge", "tiny"],
)
def test_degenerate_batches_are_finite(index, case):
    rng = np.random.default_rng(5)
    loss = degenerate_loss(index)
    x = rng.normal(size=(8, 3)).astype("float32")
    labels = np.repeat([0, 1], 4)
    if case == "one example":
        x, labels = x[:1], labels[:1]
    elif case == "one class":
        labels = np.zeros(8, int)
    elif case == "all distinct":
        labels = np.arange(8)
    elif case in ("identical embeddings", "zero embeddings"):
        x = np.zeros_like(x) + (1.0 if case == "identical embeddings" else 0.0)
    elif case == "huge":
        # d² of the contrastive loss overflows float32 beyond d ≈ 1e19.
        x = x * np.float32(1e15 if index < 2 else 1e30)
    elif case == "tiny":
        x = x * np.float32(1e-30)
    # Compiled (XLA / jax.jit) for the cases most likely to differ from eager.
    for compiled in COMPILE_MODES if case in ("one example", "identical embeddings", "huge") else (False,):
        # The distance-weighted draws advance a random state: not under jax.jit.
        value, grad = value_and_grad(loss, x, labels, compiled=compiled, stateful=index >= 3)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), (compiled, value)
        if case == "one example":
            assert float(value) == 0.0


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_precisions(index, dtype):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 4))
    labels = np.repeat(np.arange(4), 4)
    value = all_losses()[index](labels, tensor(x, dtype))
    assert keras.backend.standardize_dtype(value.dtype) in ("float32", "float64")
    assert np.isfinite(float(value))
    if index < 3:
        as_float = np.asarray(tensor(tensor(x, dtype), "float32"), "float64")
        reference_value = all_losses()[index](labels, as_float)
        assert float(value) == pytest.approx(float(reference_value), rel=1e-5, abs=1e-6)


def test_large_int64_labels_stay_distinct():
    x = np.array([[0.0], [0.1], [3.0], [3.1]], "float32")
    big = 2**53
    labels = np.array([big, big, big + 1, big + 1])
    if BACKEND != "jax":  # JAX without x64 has no int64 tensor
        labels = tensor(labels, "int64")
    merged = np.zeros(4, int)
    for loss in (tfm.Contrastive(margin=1.0), tfm.MarginLoss(sampling="all", normalize=False)):
        assert float(loss(labels, x)) != pytest.approx(float(loss(merged, x)))


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("index", range(5))
def test_config_round_trip(index):
    loss = all_losses()[index]
    config = loss.get_config()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    x = np.random.default_rng(8).normal(size=(12, 3)).astype("float32")
    labels = np.repeat(np.arange(3), 4)
    if config.get("sampling") != "distance_weighted":
        assert float(restored(labels, x)) == pytest.approx(float(loss(labels, x)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="negatives"):
        tfm.Contrastive(negatives="semi_hard")
    with pytest.raises(ValueError, match="sampling"):
        tfm.MarginLoss(sampling="random")
    with pytest.raises(ValueError, match="learn_beta"):
        tfm.MarginLoss(num_classes=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        tfm.MarginLoss(learn_beta=True, num_classes=3)(np.array([0, 3]), np.ones((2, 4)))
    with pytest.raises(ValueError, match="one-hot"):
        tfm.Contrastive()(np.eye(3), np.ones((3, 4)))


# ---------------------------------------------------------------- β learned by model.fit


def embedding_model(kind):
    if kind == "sequential":
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(6), keras.layers.UnitNormalization()])
    if kind == "functional":
        inputs = keras.Input((8,))
        return keras.Model(inputs, keras.layers.UnitNormalization()(keras.layers.Dense(6)(inputs)))

    class Embedder(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(6)

        def call(self, x):
            return self.dense(x)

    return Embedder()


def margin_data():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 8)
    x = rng.normal(size=(32, 8)).astype("float32") + labels[:, None]
    return x, labels


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_learn_beta_trains_beta_in_plain_fit(kind, tmp_path):
    keras.utils.set_random_seed(0)
    x, labels = margin_data()
    model = embedding_model(kind)
    loss = tfm.MarginLoss(learn_beta=True, num_classes=4, nu=0.1, seed=1)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    before = loss.beta_value().copy()
    with no_warnings():
        model.fit(x, labels, batch_size=16, epochs=2, verbose=0, shuffle=False)
    after = loss.beta_value()
    assert not np.allclose(after, before)
    # The embedding layers trained alongside, and β is part of the model.
    assert len(model.trainable_variables) == 4
    assert any(v is loss.state.beta for v in model.trainable_variables)
    if kind == "subclassed":
        return
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.loss.beta_value(), after, rtol=1e-6)
    assert float(loaded.evaluate(x, labels, verbose=0)) == pytest.approx(
        float(model.evaluate(x, labels, verbose=0)), rel=1e-5
    ) or loss.sampling == "distance_weighted"
    # Training goes on with the loaded optimizer (tests/test_persistence.py: exactly).
    loaded.fit(x, labels, batch_size=16, verbose=0)
    assert not np.allclose(loaded.loss.beta_value(), after)


def test_learned_beta_gradient_is_exact():
    # d loss / d β: -1 per active positive term, +1 per active negative term,
    # + ν per term, over the number of active terms.
    x = np.array([[0.0], [0.5], [1.1]], "float32")
    labels = np.array([0, 0, 1])
    loss = tfm.MarginLoss(margin=0.2, beta=1.0, nu=0.1, learn_beta=True, sampling="all", normalize=False)
    gradient = float(variable_gradient(lambda: loss(labels, x), loss.state.beta))
    # 4 active negative terms, 6 terms in all: (4 + 0.6) / 4.
    assert gradient == pytest.approx((4 + 0.6) / 4)


def test_distance_weighted_sampling_draws_anew_in_fit():
    keras.utils.set_random_seed(0)
    x, labels = margin_data()
    model = embedding_model("functional")
    loss = tfm.MarginLoss(seed=4)
    model.compile(optimizer="sgd", loss=loss, jit_compile=FIT_JIT_COMPILE[-1])
    state = loss.state.seed_generator.state
    before = np.asarray(keras.ops.convert_to_numpy(state)).copy()
    model.fit(x, labels, batch_size=16, epochs=1, verbose=0)
    after = np.asarray(keras.ops.convert_to_numpy(state))
    # The random state advanced once per training step (JAX threads it
    # through the compiled step as model state).
    assert not np.array_equal(before, after)
    assert any(v is state for v in model.non_trainable_variables)


@only_tensorflow
def test_hard_negatives_with_an_unknown_batch_size():
    # A graph traced for any batch size (a dataset batched without
    # drop_remainder, or a batch gathered across replicas).
    import tensorflow as tf

    loss = tfm.Contrastive(margin=1.0, negatives="hard")
    traced = tf.function(loss, input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 3], tf.float32)])
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 3).astype("int32")
    embeddings = rng.normal(size=(12, 3)).astype("float32")
    np.testing.assert_allclose(float(traced(labels, embeddings)), float(loss(labels, embeddings)), rtol=1e-6)


@only_tensorflow
@pytest.mark.parametrize("compiled", COMPILE_MODES)
def test_distance_weighted_margin_loss_with_an_unknown_batch_size(compiled):
    # Under XLA the draws' binary search cannot take its length from the
    # batch size: the same draws as a graph traced for this batch size.
    import tensorflow as tf

    signature = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 16], tf.float32)]
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 3).astype("int32")
    embeddings = rng.normal(size=(12, 16)).astype("float32")
    values = []
    for input_signature in (signature, None):
        loss = tfm.MarginLoss(seed=3)
        traced = tf.function(loss, input_signature=input_signature, jit_compile=compiled)
        values.append(float(traced(labels, embeddings)))
    assert np.isfinite(values[0])
    assert values[0] == pytest.approx(values[1], rel=1e-6)
