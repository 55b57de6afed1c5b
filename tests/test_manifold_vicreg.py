"""The manifold loss and VICReg: hand-made values, the brute force, PyTorch Metric Learning's values, edge cases."""

import doctest
import sys

import keras
import numpy as np
import pytest
import reference_manifold_vicreg as ref
from hypothesis import given, settings, strategies as st
from keras import ops

import tfmetric
from tfmetric.losses.manifold_loss import Manifold, manifold, manifold_similarities, meta_class_table
from tfmetric.losses.vicreg_loss import VICReg, split_views, vicreg, vicreg_terms

import recorded
from conftest import BACKEND, FIT_JIT_COMPILE, no_warnings, slow_on_jax, tensor, value_and_grad, variable_gradient

PEER = "pml_manifold_vicreg"
# How closely PML's float64 values are matched: JAX computes in float32 (its
# 64-bit mode is off); PML inverts the walk's matrix in float32 (1e-9 apart).
PRECISION = 2e-4 if BACKEND == "jax" else 1e-7
MANIFOLD_OPTIONS = ("lambda_c", "alpha", "margin")
VICREG_OPTIONS = ("invariance_lambda", "variance_mu", "covariance_v", "eps")


def numpy(value):
    return keras.ops.convert_to_numpy(value)


def run(fn):
    """`fn()` (a tensor or a list of them) as NumPy; jitted under JAX, whose eager operations compile per shape."""
    if BACKEND == "jax":
        import jax

        fn = jax.jit(fn)
    result = fn()
    if isinstance(result, (list, tuple)):
        return [np.asarray(numpy(value)) for value in result]
    return np.asarray(numpy(result))


def assert_gradient_close(got, want, tolerance, floor=1e-12):
    """Equal to `tolerance` × the largest entry of `want` (at least `floor`)."""
    assert np.all(np.isfinite(got))
    scale = max(np.abs(want).max(), floor)
    np.testing.assert_allclose(got / scale, want / scale, atol=tolerance)


# ---------------------------------------------------------------- the objectives, with gradients for both inputs

# One function per loss and options, its data as arguments: under JAX each compiles once per shape.
_OBJECTIVES = {}


def _objective(kind, options):
    key = (kind, tuple(sorted(options.items())))
    if key not in _OBJECTIVES:

        def of_both(z, labels, weights, x_like, w_like):
            size = int(np.prod(x_like.shape))
            x = ops.reshape(z[:size], tuple(x_like.shape))
            w = ops.reshape(z[size:], tuple(w_like.shape))
            losses = manifold(labels, x, w, **options) if kind == "manifold" else vicreg(x, w, **options)
            weights = ops.cast(weights, losses.dtype)
            return ops.sum(weights * losses) / ops.sum(weights)

        _OBJECTIVES[key] = of_both
    return _OBJECTIVES[key]


def value_and_gradients(kind, labels, x, w, options, sample_weight=None, compiled=False):
    """`(value, d/dx, d/dw)` of the weighted mean of `manifold(labels, x, w)` or `vicreg(x, w)`."""
    weights = np.ones(len(x), x.dtype) if sample_weight is None else np.asarray(sample_weight, x.dtype)
    labels = np.zeros(len(x), "int32") if labels is None else np.asarray(labels, "int32")
    value, grad = value_and_grad(
        _objective(kind, options), np.concatenate([x.ravel(), w.ravel()]), labels, weights, x, w, compiled=compiled
    )
    return float(value), grad[: x.size].reshape(x.shape), grad[x.size :].reshape(w.shape)


def proxy_gradient(loss, labels, x):
    """d loss(labels, x) / d loss.proxies (jitted under JAX)."""
    if BACKEND != "jax":
        return variable_gradient(lambda: loss(labels, x), loss.proxies)
    import jax

    def of_variable(value):
        with keras.StatelessScope(state_mapping=[(loss.proxies, value)]):
            return loss(labels, x)

    return np.asarray(jax.jit(jax.grad(of_variable))(jax.numpy.asarray(numpy(loss.proxies))))


# ================================================================ the manifold loss
# ---------------------------------------------------------------- hand-made cases


def test_hand_made_random_walk_of_two_nodes():
    # One example, one proxy: S̄ = [[0, 1], [1, 0]] whatever their cosine, and
    # (1 − α)(I − αS̄)⁻¹ = [[1, α], [α, 1]] / (1 + α).
    for alpha in (0.0, 0.5, 0.8):
        walk_e, walk_p = run(lambda: list(manifold_similarities(tensor([[1.0, 2.0]]), tensor([[3.0, -1.0]]), alpha)))
        # A float32 matrix inverse: a few ulps (PyTorch's solver is 1e-6 off).
        np.testing.assert_allclose(walk_e, [[1 / (1 + alpha), alpha / (1 + alpha)]], rtol=1e-5)
        np.testing.assert_allclose(walk_p, [[alpha / (1 + alpha), 1 / (1 + alpha)]], rtol=1e-5)


def test_hand_made_manifold_values():
    x = np.array([[1.0, 1.0], [2.0, 0.1], [0.3, -1.0]], "float32")
    w = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    # One proxy: no other proxy to compare with, the loss is 0.
    assert float(np.max(run(lambda: manifold([0, 0, 0], x, w[:1])))) == 0.0
    # α = 0: the walk never leaves its node, F = I: every score is 0, every
    # other proxy within the margin: log(1 + (K − 1)e^m), twice with λ = 1.
    for margin in (5e-4, 0.3):
        losses = run(lambda: manifold([0, 1, 1], x, w, alpha=0.0, margin=margin))
        np.testing.assert_allclose(losses, 2 * np.log1p(np.exp(margin)), rtol=1e-6)
        losses = run(lambda: manifold([0, 1, 2], x, np.eye(3, 2, dtype="float32") + 0.5, alpha=0.0, margin=margin))
        np.testing.assert_allclose(losses, 2 * np.log1p(2 * np.exp(margin)), rtol=1e-6)
    # An example halfway between two orthogonal proxies: by symmetry both are
    # equally similar on the manifold (t = m for both scores), whichever is its own.
    half = np.array([[1.0, 1.0]], "float32")
    for lambda_c in (0.0, 1.0, 3.0):
        for own in (0, 1):
            loss = run(lambda: manifold([own], half, w, lambda_c=lambda_c))
            assert float(loss[0]) == pytest.approx((1 + lambda_c) * np.log1p(np.exp(5e-4)), rel=1e-5)
    # An example on its own proxy, far from the other: every t < 0, no term.
    assert float(run(lambda: manifold([0], np.array([[1.0, 0.0]], "float32"), w))[0]) == 0.0


def test_context_loss_alone_is_lambda_infinity():
    rng = np.random.default_rng(1)
    x, w, ids = rng.normal(size=(7, 3)).astype("float32"), rng.normal(size=(3, 3)), rng.integers(0, 3, 7)
    both, intrinsic, context = run(lambda: [
        manifold(ids, x, w, lambda_c=1.0), manifold(ids, x, w, lambda_c=0.0), manifold(ids, x, w, lambda_c=np.inf),
    ])
    np.testing.assert_allclose(context, both - intrinsic, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(context)) and context.max() > 0
    want, _, _ = ref.manifold_losses(x.astype("float64"), ids, w, lambda_c=np.inf)
    np.testing.assert_allclose(context, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the brute force


@settings(max_examples={"tensorflow": 15, "torch": 15}.get(BACKEND, 4), deadline=None)
@given(
    n=st.integers(1, 6),
    num_proxies=st.integers(1, 4),
    dim=st.integers(1, 4),
    lambda_c=st.sampled_from([0.0, 1.0, 2.5, np.inf]),
    alpha=st.sampled_from([0.0, 0.5, 0.8, 0.95]),
    margin=st.sampled_from([0.0, 5e-4, 0.1]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_manifold_matches_brute_force(n, num_proxies, dim, lambda_c, alpha, margin, weighted, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    w = rng.normal(size=(num_proxies, dim)).astype("float32")
    ids = rng.integers(0, num_proxies, size=n)
    weights = rng.uniform(0.2, 2.0, size=n) if weighted else None
    options = {"lambda_c": lambda_c, "alpha": alpha, "margin": margin}
    want = ref.manifold(x, ids, w, sample_weight=weights, **options)
    _, jump, _ = ref.manifold_losses(x.astype("float64"), ids, w.astype("float64"), **options)
    value, grad_x, grad_w = value_and_gradients("manifold", ids, x, w, options, weights)
    # Near t = 0 a term may count in one and not the other (the loss jumps
    # there); near a kink the gradient is undefined. The t's are differences
    # of similarities of order 1/(N + K), often within 1e-3 of 0; float32
    # gets them right to ~1e-7.
    if jump > 1e-5:
        assert value == pytest.approx(want.loss, rel=1e-4, abs=1e-5)
    if want.kink > 1e-5:
        assert_gradient_close(grad_x, want.grad, 1e-3, floor=1e-3)
        assert_gradient_close(grad_w, want.ref_grad, 1e-3, floor=1e-3)


# ---------------------------------------------------------------- PyTorch Metric Learning 2.9


MANIFOLD_CASES = recorded.cases(PEER, ["ManifoldLoss"])
VICREG_CASES = recorded.cases(PEER, ["VICRegLoss"])


def test_pml_fixtures_are_present():
    assert len(MANIFOLD_CASES) == 28 and len(VICREG_CASES) >= 50
    assert {case.values[2]["cfg"]["lambda_c"] for case in MANIFOLD_CASES} == {0.0, 0.5, 1.0, 2.0}


def _options(case, names):
    return {name: case["cfg"][name] for name in names}


# Under JAX, where every shape is a compilation of its own, one case in three.
@slow_on_jax
@pytest.mark.parametrize("peer, index, case", MANIFOLD_CASES if BACKEND != "jax" else MANIFOLD_CASES[::3])
def test_manifold_reproduces_pytorch_metric_learning(peer, index, case):
    x, ids, grad = recorded.arrays(peer, index)
    w, grad_w = recorded.extra(peer, index, "w"), recorded.extra(peer, index, "gw")
    dtype = "float32" if BACKEND == "jax" else "float64"
    value, got_x, got_w = value_and_gradients(
        "manifold", ids, x.astype(dtype), w.astype(dtype), _options(case, MANIFOLD_OPTIONS)
    )
    assert value == pytest.approx(case["loss"], rel=PRECISION, abs=PRECISION)
    assert_gradient_close(got_x, grad, PRECISION * 10)
    assert_gradient_close(got_w, grad_w, PRECISION * 10)


def one_manifold_case_per_configuration():
    chosen = {}
    for param in MANIFOLD_CASES:
        x, _, _ = recorded.arrays(PEER, param.values[1])
        if len(x) == 16:
            chosen.setdefault(param.values[2]["cfg"]["lambda_c"], param)
    return list(chosen.values())


# Under JAX, where every case compiles, two of them.
@slow_on_jax
@pytest.mark.parametrize("peer, index, case", one_manifold_case_per_configuration()[:: 2 if BACKEND == "jax" else 1])
def test_manifold_class_reproduces_pytorch_metric_learning_in_float32(peer, index, case):
    x, ids, grad = recorded.arrays(peer, index)
    w, grad_w = recorded.extra(peer, index, "w"), recorded.extra(peer, index, "gw")
    loss = Manifold(embedding_dim=x.shape[1], **case["cfg"])
    loss.set_proxies(w)
    x = x.astype("float32")
    with no_warnings():
        value, got_x = value_and_grad(lambda e: loss(ids, e), x)
        got_w = proxy_gradient(loss, ids, x)
    assert float(value) == pytest.approx(case["loss"], rel=1e-5)
    assert_gradient_close(got_x, grad, 1e-4)
    assert_gradient_close(got_w, grad_w, 1e-4)


# ---------------------------------------------------------------- the class


def test_manifold_class_is_the_pure_function():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 3)).astype("float32")
    labels = rng.integers(0, 5, size=10)
    weights = rng.uniform(0.0, 2.0, size=10)
    options = {"lambda_c": 0.7, "alpha": 0.6, "margin": 0.05}
    loss = Manifold(5, 3, K=2, partition_seed=3, **options)
    total = Manifold(5, 3, K=2, partition_seed=3, reduction="sum", **options)
    each = Manifold(5, 3, K=2, partition_seed=3, reduction=None, **options)
    w = rng.normal(size=(2, 3))
    for one in (loss, total, each):
        one.set_proxies(w)
    w = loss.proxy_values()
    table = meta_class_table(5, 2, 3)
    with no_warnings():
        per_example, weighted, column, unweighted, summed, separate = run(lambda: [
            manifold(table[labels], x, w, **options),
            loss(labels, x, sample_weight=weights),
            loss(labels, x, sample_weight=weights[:, None]),  # Keras' (N, 1) weights
            loss(labels, x),
            total(labels, x, sample_weight=weights),
            each(labels, x),
        ])
    assert weighted == pytest.approx(np.sum(weights * per_example) / np.sum(weights), rel=1e-5)
    assert column == pytest.approx(weighted, rel=1e-6)
    assert unweighted == pytest.approx(np.mean(per_example), rel=1e-5)
    assert summed == pytest.approx(np.sum(weights * per_example), rel=1e-5)
    np.testing.assert_allclose(separate, per_example, rtol=1e-5)
    assert np.mean(per_example) > 0.1


def test_meta_classes_are_a_balanced_fixed_partition():
    np.testing.assert_array_equal(meta_class_table(6), np.arange(6))
    np.testing.assert_array_equal(meta_class_table(6, 6, partition_seed=9), np.arange(6))
    table = meta_class_table(10, 3, partition_seed=1)
    assert table.dtype == np.int32 and sorted(np.bincount(table).tolist()) == [3, 3, 4]
    np.testing.assert_array_equal(table, meta_class_table(10, 3, partition_seed=1))
    assert any(not np.array_equal(table, meta_class_table(10, 3, s)) for s in range(2, 6))
    loss = Manifold(10, 2, K=3, partition_seed=1)
    np.testing.assert_array_equal(loss.meta_classes, table)
    assert loss.proxies.shape == (3, 2) and loss.num_classes == 10


def test_manifold_logits_score_each_class_by_its_proxy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 3)).astype("float32")
    loss = Manifold(7, 3, K=3, partition_seed=2)
    loss.set_proxies(rng.normal(size=(3, 3)))
    w = loss.proxy_values().astype("float64")
    logits, predicted = run(lambda: [loss.logits(x), loss.predict_classes(x)])
    cosine = np.array([[ref._unit(a) @ ref._unit(p) for p in w] for a in x.astype("float64")])
    np.testing.assert_allclose(logits, cosine[:, loss.meta_classes], rtol=1e-5, atol=1e-6)
    assert logits.shape == (12, 7) and predicted.dtype == np.int32
    # Classes that share a proxy share a score: the first of them wins.
    np.testing.assert_array_equal(predicted, np.argmax(cosine[:, loss.meta_classes], axis=1))


def test_manifold_config_round_trip():
    for options in ({"K": 3, "lambda_c": 2.0, "alpha": 0.5, "margin": 0.01, "partition_seed": 4},
                    {"K": None, "lambda_c": float("inf")}):
        loss = Manifold(6, 5, proxy_lr_multiplier=10.0, name="mine", reduction="sum", **options)
        config = loss.get_config()
        for name, value in options.items():
            assert config[name] == value
        assert config["num_classes"] == 6 and config["embedding_dim"] == 5
        restored = Manifold.from_config(config)
        assert type(restored) is Manifold and restored.get_config() == config
        np.testing.assert_array_equal(restored.meta_classes, loss.meta_classes)
        deserialized = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(deserialized) is Manifold and deserialized.get_config() == config


def test_manifold_bad_arguments_are_errors():
    for make, match in [
        (lambda: Manifold(3, 2, lambda_c=-1.0), "lambda_c"),
        (lambda: Manifold(3, 2, lambda_c=float("nan")), "lambda_c"),
        (lambda: Manifold(3, 2, alpha=1.0), "alpha"),
        (lambda: Manifold(3, 2, alpha=-0.1), "alpha"),
        (lambda: Manifold(3, 2, margin=float("inf")), "margin"),
        (lambda: Manifold(3, 2, K=4), r"K \(the number of proxies\)"),
        (lambda: Manifold(3, 2, K=0), r"K \(the number of proxies\)"),
        (lambda: Manifold(0, 2), "num_classes"),
        (lambda: Manifold(3, 0), "positive"),
        (lambda: manifold([0], np.ones((1, 2)), np.ones((2, 3))), "size 2 for class vectors of size 3"),
        (lambda: manifold([0], np.ones((1, 2)), np.ones((2, 1, 2))), r"\(num_classes, embedding_dim\)"),
        (lambda: manifold([2], np.ones((1, 2)), np.ones((2, 2))), r"\[0, 2\)"),
        (lambda: manifold([0], np.ones((1, 2)), np.ones((2, 2)), alpha=1.5), "alpha"),
        (lambda: Manifold(3, 2)(np.array([0, 3]), np.ones((2, 2), "float32")), r"\[0, 3\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            make()


# ---------------------------------------------------------------- compiled, degenerate, half precision


def test_manifold_compiled_matches_eager_and_brute_force():
    rng = np.random.default_rng(23)
    x, w = rng.normal(size=(9, 3)).astype("float32"), rng.normal(size=(4, 3)).astype("float32")
    ids = np.array([0, 1, 2, 3, 0, 1, 2, 3, 3])
    want = ref.manifold(x, ids, w)
    assert want.kink > 1e-3
    results = []
    for compiled in (False, True):  # True: XLA under TensorFlow, jit under JAX (PyTorch: eager)
        value, grad_x, grad_w = value_and_gradients("manifold", ids, x, w, {}, compiled=compiled)
        assert value == pytest.approx(want.loss, rel=1e-5)
        assert_gradient_close(grad_x, want.grad, 1e-3)
        assert_gradient_close(grad_w, want.ref_grad, 1e-3)
        results.append(value)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        loss = Manifold(4, 3)
        loss.set_proxies(w)
        for jit in (False, True):
            compiled = tf.function(lambda labels, e: loss(labels, e), jit_compile=jit)
            assert float(compiled(tf.constant(ids), tf.constant(x))) == pytest.approx(want.loss, rel=1e-5)
        # XLA drops the assertions: an id out of range is a NaN loss (the
        # same shapes: the XLA program compiled above).
        bad = compiled(tf.constant(ids + 1), tf.constant(x))
        assert np.isnan(float(bad))


@pytest.mark.parametrize(
    "case",
    ["zero embeddings", "zero proxies", "huge", "tiny", "one example", "one proxy", "coincident", "identical",
     "proxies without examples"],
)
def test_manifold_degenerate_batches_are_finite(case):
    rng = np.random.default_rng(6)
    x, w = rng.normal(size=(6, 4)), rng.normal(size=(3, 4))
    ids = np.array([0, 0, 1, 1, 2, 0])
    if case == "zero embeddings":
        x = np.zeros_like(x)
    elif case == "zero proxies":
        w = np.zeros_like(w)
    elif case in ("huge", "tiny"):
        x, w = x * (1e18 if case == "huge" else 1e-18), w * (1e18 if case == "huge" else 1e-18)
    elif case == "one example":
        x, ids = x[:1], ids[:1]
    elif case == "one proxy":
        w, ids = w[:1], np.zeros(6, int)
    elif case == "coincident":
        x = w[ids] * 2.0
    elif case == "identical":
        x = np.repeat(x[:1], 6, axis=0)
    elif case == "proxies without examples":
        ids = np.zeros(6, int)
    x, w = x.astype("float32"), w.astype("float32")
    value, grad_x, grad_w = value_and_gradients("manifold", ids, x, w, {})
    assert np.isfinite(value) and np.all(np.isfinite(grad_x)) and np.all(np.isfinite(grad_w))
    # Everything is scale-free (cosines): the huge and tiny values are the plain ones'.
    scaled = x / np.abs(x).max() if np.abs(x).max() > 0 else x
    unit_w = w.astype("float64") / max(np.abs(w).max(), 1e-30)
    losses, jump, _ = ref.manifold_losses(scaled.astype("float64"), ids, unit_w)
    if jump > 1e-5:
        assert value == pytest.approx(np.mean(losses), rel=1e-4, abs=1e-6)
    if case == "one proxy":
        assert value == 0.0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_manifold_half_precision_embeddings_compute_in_float32(dtype):
    rng = np.random.default_rng(7)
    x, w, ids = rng.normal(size=(8, 4)), rng.normal(size=(3, 4)), rng.integers(0, 3, 8)
    half = tensor(x, dtype)
    exact = numpy(ops.cast(half, "float32"))
    loss = Manifold(3, 4)
    loss.set_proxies(w)
    value, want, function_value = run(lambda: [loss(ids, half), loss(ids, exact), manifold(ids, half, w)])
    assert value.dtype == np.float32 and function_value.dtype == np.float32
    assert value == pytest.approx(want, rel=1e-6)
    # int64 labels (the largest class id of a large problem) are exact.
    big = Manifold(2**20, 4, K=3)
    assert np.isfinite(float(run(lambda: big(np.array([2**20 - 1, 0, 5], "int64"), exact[:3]))))


# ---------------------------------------------------------------- training


CLASSES, DIM = 5, 4
rng = np.random.default_rng(0)
LABELS = np.repeat(np.arange(CLASSES), 16)
FEATURES = (rng.normal(size=(CLASSES, 8))[LABELS] * 2 + rng.normal(size=(len(LABELS), 8))).astype("float32")


def test_manifold_fit_trains_the_proxies_and_saves_them(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(DIM)])
    # PML's margin, 5e-4, is small next to the differences of the walk's
    # similarities in a batch of 20 (~1/(N + K)): 0.01 trains much faster,
    # and so do proxies that move faster than the network.
    loss = Manifold(CLASSES, DIM, margin=0.01, proxy_lr_multiplier=10.0)
    # In a graph under TensorFlow (XLA: `test_manifold_compiled_matches_eager_and_brute_force`
    # and VICReg's fit), jitted under JAX.
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, jit_compile=FIT_JIT_COMPILE[0])
    before = loss.proxy_values()
    assert any(v is loss.proxies for v in model.trainable_variables)
    with no_warnings():
        history = model.fit(FEATURES, LABELS, batch_size=20, epochs=20, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < 0.5 * history[0], history
    assert not np.allclose(loss.proxy_values(), before)
    embeddings = model.predict(FEATURES, verbose=0)
    predicted = numpy(loss.predict_classes(embeddings))
    assert np.mean(predicted == LABELS) > 0.85  # chance: 0.2
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(loaded.loss) is Manifold and loaded.loss.get_config() == loss.get_config()
    np.testing.assert_array_equal(loaded.loss.proxy_values(), loss.proxy_values())


# ================================================================ VICReg
# ---------------------------------------------------------------- hand-made cases


def test_hand_made_vicreg_values():
    # Two equal dimensions 0, 1, 2: variance 1 (std above 1: no variance
    # term), covariance 1 off the diagonal: c(Z) = 2·1² / 2 per view.
    z = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], "float32")
    invariance, variance, covariance = run(lambda: list(vicreg_terms(z, z + 0.1)))
    np.testing.assert_allclose(invariance, 25 * 0.01, rtol=1e-5)
    assert float(variance) == 0.0 and float(covariance) == pytest.approx(2.0, rel=1e-6)
    # A collapsed view (every row the same): std √ε, variance term μ(1 − √ε)/2
    # for it; the other view spreads (std √(1/2·(1+1)) = 1 → hinge ≈ 0).
    constant = np.ones((2, 3), "float32")
    spread = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]], "float32") / np.sqrt(2)
    invariance, variance, covariance = run(lambda: list(vicreg_terms(constant, spread, 1.0, 10.0, 1.0, 1e-4)))
    hinge = (1 - 0.01) + (2 * max(0.0, 1 - np.sqrt(1 + 1e-4)) + (1 - 0.01)) / 3
    assert float(variance) == pytest.approx(10 * hinge / 2, rel=1e-5)
    # Columns 0 and 1 of `spread` are opposite: covariance −1, twice, over D = 3.
    assert float(covariance) == pytest.approx(2 / 3, rel=1e-5)
    np.testing.assert_allclose(invariance, np.mean((constant - spread) ** 2, axis=1), rtol=1e-5)


def test_vicreg_of_one_example_is_finite():
    # One row has no spread: variances and covariances 0, the variance term
    # at its largest, μ(1 − √ε); PML returns NaN.
    one = np.array([[1.0, 2.0, 3.0]], "float32")
    value, grad_x, grad_w = value_and_gradients("vicreg", None, one, one + 1.0, {})
    assert value == pytest.approx(25 * 1.0 + 25 * (1 - 0.01), rel=1e-5)
    assert np.all(np.isfinite(grad_x)) and np.all(np.isfinite(grad_w))
    np.testing.assert_allclose(grad_x, -2 * 25 / 3 * np.ones((1, 3)), rtol=1e-5)


# ---------------------------------------------------------------- the brute force


@settings(max_examples={"tensorflow": 15, "torch": 15}.get(BACKEND, 4), deadline=None)
@given(
    n=st.integers(1, 7),
    dim=st.integers(1, 4),
    spread=st.sampled_from([0.3, 1.0, 3.0]),
    weights=st.sampled_from([(25.0, 25.0, 1.0, 1e-4), (1.0, 5.0, 10.0, 1e-2), (0.0, 1.0, 0.0, 1e-4)]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_vicreg_matches_brute_force(n, dim, spread, weights, weighted, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, dim)) * spread).astype("float32")
    y = (x + rng.normal(size=(n, dim)) * 0.5).astype("float32")
    sample_weight = rng.uniform(0.2, 2.0, size=n) if weighted else None
    options = dict(zip(VICREG_OPTIONS, weights))
    want = ref.vicreg(x, y, sample_weight=sample_weight, **options)
    value, grad_x, grad_y = value_and_gradients("vicreg", None, x, y, options, sample_weight)
    assert value == pytest.approx(want.loss, rel=1e-4, abs=1e-5)
    if want.kink > 1e-3:  # the variance hinge at std = 1
        assert_gradient_close(grad_x, want.grad, 1e-3, floor=1e-3)
        assert_gradient_close(grad_y, want.ref_grad, 1e-3, floor=1e-3)


# ---------------------------------------------------------------- PyTorch Metric Learning 2.9


@pytest.mark.parametrize("peer, index, case", VICREG_CASES if BACKEND != "jax" else VICREG_CASES[::3])
def test_vicreg_reproduces_pytorch_metric_learning(peer, index, case):
    views, _, grad = recorded.arrays(peer, index)
    dim = views.shape[1] // 2
    dtype = "float32" if BACKEND == "jax" else "float64"
    views = views.astype(dtype)
    value, got_x, got_y = value_and_gradients(
        "vicreg", None, views[:, :dim], views[:, dim:], _options(case, VICREG_OPTIONS)
    )
    precision = PRECISION if BACKEND == "jax" else 1e-10
    assert value == pytest.approx(case["loss"], rel=precision, abs=precision)
    assert_gradient_close(np.concatenate([got_x, got_y], axis=1), grad, precision * 10)


@pytest.mark.parametrize("peer, index, case", VICREG_CASES[5::9])
def test_vicreg_class_reproduces_pytorch_metric_learning_in_float32(peer, index, case):
    views, _, grad = recorded.arrays(peer, index)
    loss = VICReg(**_options(case, VICREG_OPTIONS))
    with no_warnings():
        value, got = value_and_grad(lambda v: loss(None, v), views.astype("float32"))
    assert float(value) == pytest.approx(case["loss"], rel=1e-5, abs=1e-6)
    assert_gradient_close(got, grad, 1e-4)


# ---------------------------------------------------------------- the class


def test_vicreg_class_is_the_pure_function():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(9, 3)).astype("float32"), rng.normal(size=(9, 3)).astype("float32")
    both = np.concatenate([x, y], axis=1)
    weights = rng.uniform(0.0, 2.0, size=9)
    options = {"invariance_lambda": 2.0, "variance_mu": 3.0, "covariance_v": 4.0, "eps": 1e-3}
    with no_warnings():
        per_example, weighted, column, unweighted, summed, separate, first, second = run(lambda: [
            vicreg(x, y, **options),
            VICReg(**options)(None, both, sample_weight=weights),
            VICReg(**options)(np.zeros(9), both, sample_weight=weights[:, None]),
            VICReg(**options)(None, both),
            VICReg(**options, reduction="sum")(None, both, sample_weight=weights),
            VICReg(**options, reduction=None)(None, both),
            *split_views(both),
        ])
    assert weighted == pytest.approx(np.sum(weights * per_example) / np.sum(weights), rel=1e-5)
    assert column == pytest.approx(weighted, rel=1e-6)
    assert unweighted == pytest.approx(np.mean(per_example), rel=1e-5)
    assert summed == pytest.approx(np.sum(weights * per_example), rel=1e-5)
    np.testing.assert_allclose(separate, per_example, rtol=1e-5)
    np.testing.assert_array_equal(first, x)
    np.testing.assert_array_equal(second, y)
    # The weights act on the invariance terms only: the rest is the batch's.
    invariance, variance, covariance = run(lambda: list(vicreg_terms(x, y, **options)))
    np.testing.assert_allclose(per_example - invariance, float(variance) + float(covariance), rtol=1e-5)


def test_vicreg_config_round_trip():
    loss = VICReg(invariance_lambda=1.0, variance_mu=2.0, covariance_v=3.0, eps=1e-3, reduction="sum", name="mine")
    config = loss.get_config()
    assert {k: config[k] for k in VICREG_OPTIONS} == dict(zip(VICREG_OPTIONS, (1.0, 2.0, 3.0, 1e-3)))
    restored = VICReg.from_config(config)
    assert type(restored) is VICReg and restored.get_config() == config
    deserialized = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(deserialized) is VICReg and deserialized.get_config() == config


def test_vicreg_bad_arguments_are_errors():
    x = np.ones((4, 3), "float32")
    for make, match in [
        (lambda: VICReg(invariance_lambda=-1.0), "invariance_lambda"),
        (lambda: VICReg(variance_mu=float("nan")), "variance_mu"),
        (lambda: VICReg(covariance_v=float("inf")), "covariance_v"),
        (lambda: VICReg(eps=0.0), "eps"),
        (lambda: VICReg()(None, x), r"2 \* embedding_dim"),
        (lambda: VICReg()(None, np.ones((4,), "float32")), "shape"),
        (lambda: vicreg(x, np.ones((4, 2), "float32")), "sizes 3 and 2"),
        (lambda: vicreg(x, np.ones((5, 3), "float32")), "4 and 5 rows"),
        (lambda: vicreg(x, x, eps=-1.0), "eps"),
    ]:
        with pytest.raises(ValueError, match=match):
            make()


# ---------------------------------------------------------------- compiled, degenerate, half precision


def test_vicreg_compiled_matches_eager_and_brute_force():
    rng = np.random.default_rng(9)
    x = (rng.normal(size=(12, 4)) * rng.uniform(0.3, 2.0, size=4)).astype("float32")
    y = (x + 0.3 * rng.normal(size=(12, 4))).astype("float32")
    want = ref.vicreg(x, y)
    assert want.kink > 1e-3
    for compiled in (False, True):
        value, grad_x, grad_y = value_and_gradients("vicreg", None, x, y, {}, compiled=compiled)
        assert value == pytest.approx(want.loss, rel=1e-5)
        assert_gradient_close(grad_x, want.grad, 1e-3)
        assert_gradient_close(grad_y, want.ref_grad, 1e-3)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        loss = VICReg()
        both = tf.constant(np.concatenate([x, y], axis=1))
        for jit in (False, True):
            # A graph with an unknown batch size, as `fit` traces it.
            compiled = tf.function(lambda v: loss(None, v), jit_compile=jit,
                                   input_signature=[tf.TensorSpec((None, 8), tf.float32)])
            assert float(compiled(both)) == pytest.approx(want.loss, rel=1e-5)


@pytest.mark.parametrize("case", ["zero", "constant", "identical views", "large", "one dimension", "one example"])
def test_vicreg_degenerate_batches_are_finite(case):
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    if case == "zero":
        x, y = np.zeros_like(x), np.zeros_like(y)
    elif case == "constant":
        x, y = np.ones_like(x) * 3.0, np.ones_like(y) * -2.0
    elif case == "identical views":
        y = x
    elif case == "large":
        # A fourth power of the scale (covariances squared): float32 holds up to ~1e9.
        x, y = x * 1e4, y * 1e4
    elif case == "one dimension":
        x, y = x[:, :1], y[:, :1]
    elif case == "one example":
        x, y = x[:1], y[:1]
    x, y = x.astype("float32"), y.astype("float32")
    value, grad_x, grad_y = value_and_gradients("vicreg", None, x, y, {})
    assert np.isfinite(value) and np.all(np.isfinite(grad_x)) and np.all(np.isfinite(grad_y))
    want = ref.vicreg(x, y)
    assert value == pytest.approx(want.loss, rel=1e-4, abs=1e-5)
    if case == "constant":
        assert value == pytest.approx(25 * 25 + 25 * (1 - 0.01), rel=1e-5)
        np.testing.assert_allclose(grad_x, 2 * 25 * 5 / 4 / 6, rtol=1e-5)  # the invariance term's only
    if case == "identical views":
        np.testing.assert_allclose(ref.vicreg_losses(x, x)[0], want.per_anchor)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_vicreg_half_precision_computes_in_float32(dtype):
    rng = np.random.default_rng(11)
    half = tensor(rng.normal(size=(8, 6)), dtype)
    exact = numpy(ops.cast(half, "float32"))
    value, want, function_value = run(lambda: [
        VICReg()(None, half), VICReg()(None, exact), vicreg(half[:, :3], half[:, 3:]),
    ])
    assert value.dtype == np.float32 and function_value.dtype == np.float32
    assert value == pytest.approx(want, rel=1e-6)


# ---------------------------------------------------------------- training two views


def test_vicreg_fit_two_views_without_labels():
    from sklearn.datasets import load_digits

    digits = load_digits().data.astype("float32")[:256] / 16.0
    rng = np.random.default_rng(12)
    first = digits + rng.normal(scale=0.2, size=digits.shape).astype("float32")
    second = digits + rng.normal(scale=0.2, size=digits.shape).astype("float32")
    keras.utils.set_random_seed(0)
    encoder = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(8)])
    view1, view2 = keras.Input((64,)), keras.Input((64,))
    model = keras.Model([view1, view2], keras.layers.Concatenate()([encoder(view1), encoder(view2)]))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=VICReg(), jit_compile=FIT_JIT_COMPILE[-1])
    history = model.fit([first, second], batch_size=64, epochs=8, verbose=0).history["loss"]  # no y
    assert np.all(np.isfinite(history)) and history[-1] < 0.5 * history[0], history
    # The embeddings spread out (no collapse): every dimension's std near 1 or above.
    embeddings = encoder.predict(digits, verbose=0)
    assert np.std(embeddings, axis=0).min() > 0.5
    # Any y is ignored.
    with_y = model.evaluate([first, second], np.zeros(len(first)), verbose=0)
    without_y = model.evaluate([first, second], verbose=0)
    assert with_y == pytest.approx(without_y, rel=1e-5)


# ================================================================ the docstrings' examples


@pytest.mark.skipif(BACKEND == "jax", reason="slow under JAX (each operation compiles); the math is tested above")
def test_docstring_examples(monkeypatch):
    # Until tfmetric exports them (tests/test_docs.py then runs these too).
    import tfmetric.losses.manifold_loss as manifold_module
    import tfmetric.losses.vicreg_loss as vicreg_module

    monkeypatch.setattr(tfmetric, "Manifold", Manifold, raising=False)
    monkeypatch.setattr(tfmetric, "VICReg", VICReg, raising=False)
    monkeypatch.setattr(tfmetric.losses, "vicreg", vicreg, raising=False)
    monkeypatch.setattr(tfmetric.losses, "manifold", manifold, raising=False)
    for module in (manifold_module, vicreg_module):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__
    assert sys.modules["tfmetric.losses.manifold_loss"] is manifold_module
