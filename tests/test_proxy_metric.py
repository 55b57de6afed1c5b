"""ProxyNCA, Proxy Anchor, SoftTriple, P2SGrad: brute force, PyTorch Metric Learning's values, edge cases.

(What every loss with class vectors shares — fit, saving, the learning-rate
multiplier, class ids out of range — is tests/test_proxies.py.)
"""

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from keras import ops

from tfmetric.losses import proxy_metric as pm
from tfmetric.losses.proxy_metric import P2SGrad, ProxyAnchor, ProxyNCA, SoftTriple, UnitNormUniform

import recorded
from conftest import BACKEND, COMPILE_MODES, no_warnings, tensor, value_and_grad, variable_gradient

KINDS = ("proxy_nca", "proxy_anchor", "soft_triple", "p2sgrad")
CLASSES = {"proxy_nca": ProxyNCA, "proxy_anchor": ProxyAnchor, "soft_triple": SoftTriple, "p2sgrad": P2SGrad}
FUNCTIONS = {"proxy_nca": pm.proxy_nca, "proxy_anchor": pm.proxy_anchor, "soft_triple": pm.soft_triple,
             "p2sgrad": pm.p2sgrad}
# Arguments the random tests draw, per loss.
OPTIONS = {
    "proxy_nca": {"temperature": [1.0, 1 / 9, 0.5]},
    "proxy_anchor": {"margin": [0.0, 0.1, 0.3], "alpha": [4.0, 32.0]},
    "soft_triple": {"scale": [5.0, 20.0], "gamma": [0.1, 0.5], "margin": [0.0, 0.01, 0.2]},
    "p2sgrad": {},
}
# How closely the peers' float64 values are matched: JAX computes in float32 (its 64-bit mode is off).
PRECISION = 2e-4 if BACKEND == "jax" else 1e-10


# ---------------------------------------------------------------- brute-force references (float64 loops)


def unit(v):
    norm = np.sqrt(np.sum(np.square(v)))
    return v / norm if norm > 0 else np.zeros_like(v)


def log_sum_exp(values):
    top = max(values)
    return top + np.log(sum(np.exp(v - top) for v in values))


def ref_proxy_nca(labels, x, w, temperature=1.0):
    losses = []
    for i in range(len(x)):
        logits = [-np.sum(np.square(unit(x[i]) - unit(w[c]))) / temperature for c in range(len(w))]
        losses.append(log_sum_exp(logits) - logits[labels[i]])
    return np.array(losses)


def ref_proxy_anchor(labels, x, w, margin=0.1, alpha=32.0, sample_weight=None):
    weights = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    positive_sum, with_positive, negative_sum = 0.0, 0, 0.0
    for c in range(len(w)):
        pull, push, has_positive = 0.0, 0.0, False
        for i in range(len(x)):
            if weights[i] == 0:
                continue
            s = unit(x[i]) @ unit(w[c])
            if labels[i] == c:
                pull += weights[i] * np.exp(-alpha * (s - margin))
                has_positive = True
            else:
                push += weights[i] * np.exp(alpha * (s + margin))
        positive_sum += np.log1p(pull)
        with_positive += has_positive
        negative_sum += np.log1p(push)
    return (positive_sum / with_positive if with_positive else 0.0) + negative_sum / len(w)


def ref_soft_triple_similarity(x, w, gamma):
    """`(N, C)` S_ic, with loops."""
    out = np.zeros((len(x), len(w)))
    for i in range(len(x)):
        for c in range(len(w)):
            cosines = [unit(x[i]) @ unit(w[c, t]) for t in range(w.shape[1])]
            top = max(cosines)
            e = [np.exp((v - top) / gamma) for v in cosines]
            out[i, c] = sum(ei * v for ei, v in zip(e, cosines)) / sum(e)
    return out


def ref_soft_triple(labels, x, w, scale=20.0, gamma=0.1, margin=0.01):
    similarity = ref_soft_triple_similarity(x, w, gamma)
    losses = []
    for i in range(len(x)):
        logits = [scale * (similarity[i, c] - (margin if c == labels[i] else 0.0)) for c in range(len(w))]
        losses.append(log_sum_exp(logits) - logits[labels[i]])
    return np.array(losses)


def ref_soft_triple_regularizer(w):
    classes, k = w.shape[:2]
    if k < 2:
        return 0.0
    total = 0.0
    for c in range(classes):
        for t in range(k):
            for u in range(t + 1, k):
                total += np.sqrt(2.0 + 1e-5 - 2.0 * unit(w[c, t]) @ unit(w[c, u]))
    return total / (classes * k * (k - 1))


def ref_p2sgrad(labels, x, w, norms=None):
    """`norms`: the class vectors' norms, held fixed (PML's renormalised weights); default: their own."""
    norms = [np.linalg.norm(v) for v in w] if norms is None else norms
    losses = []
    for i in range(len(x)):
        terms = []
        for c in range(len(w)):
            cosine = np.clip(unit(x[i]) @ (w[c] / norms[c] if norms[c] > 0 else w[c] * 0), -1.0, 1.0)
            terms.append((cosine - (c == labels[i])) ** 2)
        losses.append(np.mean(terms))
    return np.array(losses)


REFERENCES = {"proxy_nca": ref_proxy_nca, "proxy_anchor": ref_proxy_anchor, "soft_triple": ref_soft_triple,
              "p2sgrad": ref_p2sgrad}


def ref_objective(kind, labels, x, w, coefficients, options, sample_weight=None):
    """The scalar the tests differentiate: `Σ c_i ℓ_i` of the per-example losses, Proxy Anchor's loss itself."""
    if kind == "proxy_anchor":
        return ref_proxy_anchor(labels, x, w, sample_weight=sample_weight, **options)
    return float(np.sum(coefficients * REFERENCES[kind](labels, x, w, **options)))


def numeric_gradient(f, a, h=1e-6):
    """Central differences of the float64 function `f` at `a`."""
    grad = np.zeros_like(a)
    for index in np.ndindex(a.shape):
        up, down = a.copy(), a.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (f(up) - f(down)) / (2 * h)
    return grad


def ref_value_and_gradients(kind, labels, x, w, coefficients, options, sample_weight=None):
    x, w = x.astype("float64"), w.astype("float64")

    def at(xx, ww):
        return ref_objective(kind, labels, xx, ww, coefficients, options, sample_weight)

    grad_x = numeric_gradient(lambda xx: at(xx, w), x)
    if kind == "p2sgrad":
        # The norms are constants for the gradient (see P2SGrad).
        norms = [np.linalg.norm(v) for v in w]
        grad_w = numeric_gradient(lambda ww: float(np.sum(coefficients * ref_p2sgrad(labels, x, ww, norms))), w)
    else:
        grad_w = numeric_gradient(lambda ww: at(x, ww), w)
    return at(x, w), grad_x, grad_w


# ---------------------------------------------------------------- tfmetric's side


def objective(kind, labels, x, w, coefficients, options, sample_weight=None):
    if kind == "proxy_anchor":
        return pm.proxy_anchor(labels, x, w, sample_weight=sample_weight, **options)
    losses = FUNCTIONS[kind](labels, x, w, **options)
    if coefficients is None:
        return ops.sum(losses)
    return ops.sum(ops.cast(coefficients, losses.dtype) * losses)


# One function per loss and options, its data as arguments: under JAX, each compiles once per shape.
_OBJECTIVES = {}


def _objective_of_both(kind, options):
    key = (kind, tuple(sorted(options.items())))
    if key not in _OBJECTIVES:

        def of_both(z, labels, coefficients, sample_weight, x_like, w_like):
            size = int(np.prod(x_like.shape))
            x = ops.reshape(z[:size], tuple(x_like.shape))
            w = ops.reshape(z[size:], tuple(w_like.shape))
            return objective(kind, labels, x, w, coefficients, options, sample_weight)

        _OBJECTIVES[key] = of_both
    return _OBJECTIVES[key]


def value_and_gradients(kind, labels, x, w, coefficients, options, sample_weight=None):
    """`(value, d/dx, d/dw)` of `objective`, both gradients from one (jitted under JAX) function."""
    ones = np.ones(len(labels), x.dtype)
    coefficients = ones if coefficients is None else np.asarray(coefficients, x.dtype)
    sample_weight = ones if sample_weight is None else np.asarray(sample_weight, x.dtype)  # ones: none
    value, grad = value_and_grad(
        _objective_of_both(kind, options), np.concatenate([x.ravel(), w.ravel()]), np.asarray(labels, "int32"),
        coefficients, sample_weight, x, w,
    )
    return float(value), grad[:x.size].reshape(x.shape), grad[x.size:].reshape(w.shape)


def near_clip(x, w):
    cosines = np.array([[unit(a) @ unit(p) for p in w.astype("float64")] for a in x.astype("float64")])
    return np.any(np.abs(1 - np.abs(cosines)) < 1e-3)


def assert_gradient_close(got, want, tolerance, floor=1e-12):
    """Equal to `tolerance` × the largest entry of `want` (or `floor`, float32's limit on saturated losses)."""
    assert np.all(np.isfinite(got))
    scale = max(np.abs(want).max(), floor)
    np.testing.assert_allclose(got / scale, want / scale, atol=tolerance)


def random_case(kind, rng, n, num_classes, dim, k=2):
    x = rng.normal(size=(n, dim))
    labels = rng.integers(0, num_classes, size=n)
    shape = (num_classes, k, dim) if kind == "soft_triple" else (num_classes, dim)
    w = rng.normal(size=shape)
    return labels, x, w


def build(kind, num_classes, dim, k=2, **options):
    if kind == "soft_triple":
        options.setdefault("tau", 0.0)
        return SoftTriple(num_classes, dim, centers_per_class=k, **options)
    return CLASSES[kind](num_classes, dim, **options)


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


def proxy_gradient(loss, labels, x):
    """d loss(labels, x) / d loss.proxies (`conftest.variable_gradient`, jitted under JAX)."""
    if BACKEND != "jax":
        return variable_gradient(lambda: loss(labels, x), loss.proxies)
    import jax

    def of_variable(value):
        with keras.StatelessScope(state_mapping=[(loss.proxies, value)]):
            return loss(labels, x)

    return np.asarray(jax.jit(jax.grad(of_variable))(jax.numpy.asarray(numpy(loss.proxies))))


# ---------------------------------------------------------------- hand-made cases


def test_hand_made_proxy_nca():
    # Class vectors e0, e1, −e0; an example at 2·e0 of class 0 is at squared
    # distances 0, 2 and 4; one at e1 of class 2 at 2, 0 and 2.
    w = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    x = np.array([[2.0, 0.0], [0.0, 1.0]])
    for temperature in (1.0, 0.5, 1 / 9):
        want = [np.log(1 + np.exp(-2 / temperature) + np.exp(-4 / temperature)),
                np.log(1 + 2 * np.exp(-2 / temperature)) + 2 / temperature]
        got = run(lambda: pm.proxy_nca([0, 2], x, w, temperature=temperature))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_tiny_proxy_nca_and_soft_triple_losses_are_exact_in_float32():
    # e^−18 is below float32's resolution of 1: a log-softmax gives 0 for
    # log(1 + e^−18); the cross-entropy of `class_cross_entropy` keeps it.
    w = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    x = np.array([[1.0, 0.0]], "float32")
    got = float(run(lambda: pm.proxy_nca([0], x, w, temperature=1 / 9))[0])
    assert got == pytest.approx(np.log1p(np.exp(-18.0)), rel=1e-5)
    # SoftTriple with one centre a class: logits 20·(1 − 0.01) and 20·0.
    got = float(run(lambda: pm.soft_triple([0], x, w[:, None, :], scale=20.0, gamma=0.1, margin=0.01))[0])
    assert got == pytest.approx(np.log1p(np.exp(-20.0 * 0.99)), rel=1e-5)


def test_hand_made_proxy_anchor():
    # One example, at e0, of class 0; class vectors e0 and e1. Class 0 pulls
    # it at cosine 1 and has no negative; class 1 pushes it at cosine 0.
    w = np.array([[1.0, 0.0], [0.0, 3.0]])
    for margin, alpha in [(0.1, 32.0), (0.2, 16.0), (0.0, 8.0)]:
        want = np.log1p(np.exp(-alpha * (1 - margin))) + np.log1p(np.exp(alpha * margin)) / 2
        got = float(run(lambda: pm.proxy_anchor([0], np.array([[5.0, 0.0]]), w, margin=margin, alpha=alpha)))
        assert got == pytest.approx(want, rel=1e-5)
    # Two examples of class 1 at cosines 0.6 and 0.8 to e1, and 0.8, 0.6 to e0:
    # class 1 pulls both, class 0 pushes both; P⁺ = {1}.
    x = np.array([[0.8, 0.6], [0.6, 0.8]])
    pull = np.log1p(np.exp(-32 * (0.6 - 0.1)) + np.exp(-32 * (0.8 - 0.1)))
    push = np.log1p(np.exp(32 * (0.8 + 0.1)) + np.exp(32 * (0.6 + 0.1)))
    assert float(run(lambda: pm.proxy_anchor([1, 1], x, w))) == pytest.approx(pull + push / 2, rel=1e-5)


def test_hand_made_soft_triple():
    # Class 0's centres at cosines 1 and 0.6 to the example, class 1's at 0 and −1.
    w = np.array([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [-1.0, 0.0]]])
    x = np.array([[1.0, 0.0]])
    for scale, gamma, margin in [(20.0, 0.1, 0.01), (10.0, 0.5, 0.2), (1.0, 1.0, 0.0)]:
        own = (np.exp(1 / gamma) * 1.0 + np.exp(0.6 / gamma) * 0.6) / (np.exp(1 / gamma) + np.exp(0.6 / gamma))
        other = (np.exp(0.0) * 0.0 + np.exp(-1 / gamma) * -1.0) / (1.0 + np.exp(-1 / gamma))
        want = np.log1p(np.exp(scale * (other - own + margin)))
        got = run(lambda: pm.soft_triple([0], x, w, scale=scale, gamma=gamma, margin=margin))
        np.testing.assert_allclose(got, [want], rtol=1e-5, atol=1e-7)
    # The regulariser: class 0's centres are √(2 − 1.2) apart, class 1's √2; C·k·(k − 1) = 4.
    want = (np.sqrt(0.8 + 1e-5) + np.sqrt(2 + 1e-5)) / 4
    assert float(run(lambda: pm.soft_triple_regularizer(tensor(w, "float32")))) == pytest.approx(want, rel=1e-6)


def test_hand_made_p2sgrad():
    # Cosines (0.6, 0.8) and (0, −1); targets (1, 0) and (0, 1).
    w = np.array([[2.0, 0.0], [0.0, 0.5]])
    x = np.array([[3.0, 4.0], [0.0, -1.0]])
    got = run(lambda: pm.p2sgrad([0, 1], x, w))
    np.testing.assert_allclose(got, [(0.4**2 + 0.8**2) / 2, (0.0 + 2.0**2) / 2], rtol=1e-6)


# ---------------------------------------------------------------- random cases against the brute force


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15 if BACKEND == "tensorflow" else 5, deadline=None)
@given(
    n=st.integers(1, 8),
    num_classes=st.integers(1, 4),
    dim=st.integers(1, 4),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_matches_brute_force(kind, n, num_classes, dim, k, seed, data):
    options = {name: data.draw(st.sampled_from(values), label=name) for name, values in OPTIONS[kind].items()}
    rng = np.random.default_rng(seed)
    if kind == "p2sgrad":
        # In one dimension every cosine is ±1, at the clip's kink.
        dim = max(dim, 2)
    labels, x, w = random_case(kind, rng, n, num_classes, dim, k)
    x, w = x.astype("float32"), w.astype("float32")
    coefficients = rng.uniform(0.5, 1.5, size=n)
    want, want_x, want_w = ref_value_and_gradients(kind, labels, x, w, coefficients, options)
    value, grad_x, grad_w = value_and_gradients(kind, labels, x, w, coefficients, options)
    assert value == pytest.approx(want, rel=1e-4, abs=1e-5)
    # The gradient is defined away from P2SGrad's clip at cosine ±1 (the
    # float32 cosine may fall on the other side of it). A saturated softmax
    # (an example deep in its class, small T) has a gradient below float32's
    # resolution of its value: hence the floor.
    if not (kind == "p2sgrad" and near_clip(x, w)):
        assert_gradient_close(grad_x, want_x, 1e-3, floor=1e-2)
        assert_gradient_close(grad_w, want_w, 1e-3, floor=1e-2)


# ---------------------------------------------------------------- PyTorch Metric Learning 2.9


PML_KINDS = {"ProxyNCALoss": "proxy_nca", "ProxyAnchorLoss": "proxy_anchor", "SoftTripleLoss": "soft_triple",
             "P2SGradLoss": "p2sgrad"}
PML_CASES = recorded.cases("pml_proxies", PML_KINDS)
# Under JAX, where every case is a compilation of its own, one case in three (all four losses).
BACKEND_PML_CASES = PML_CASES if BACKEND != "jax" else PML_CASES[::3]
NOT_FUNCTION_ARGUMENTS = ("num_classes", "centers_per_class", "tau")


def function_options(case):
    return {name: value for name, value in case["cfg"].items() if name not in NOT_FUNCTION_ARGUMENTS}


def test_pml_fixtures_are_present():
    assert {case.values[2]["kind"] for case in PML_CASES} == set(PML_KINDS)
    assert len(PML_CASES) >= 40
    # PML has no τ: the regulariser is off in every recorded SoftTriple case.
    assert all(case.values[2]["cfg"].get("tau", 0.0) == 0.0 for case in PML_CASES)


@pytest.mark.parametrize("peer, index, case", BACKEND_PML_CASES)
def test_reproduces_pytorch_metric_learning(peer, index, case):
    x, labels, recorded_grad = recorded.arrays(peer, index)
    w, recorded_grad_w = recorded.extra(peer, index, "w"), recorded.extra(peer, index, "gw")
    kind = PML_KINDS[case["kind"]]
    # PML's reduction: the mean over examples (Proxy Anchor: its own divisors).
    coefficients = np.full(len(x), 1.0 / len(x))
    dtype = "float32" if BACKEND == "jax" else "float64"
    value, grad_x, grad_w = value_and_gradients(
        kind, labels, x.astype(dtype), w.astype(dtype), coefficients, function_options(case)
    )
    # P2SGrad: PML's renormalised vectors have norm 1 − 1e-7 (its renorm's ε), tfmetric's exactly 1.
    tolerance = max(PRECISION, 1e-6) if kind == "p2sgrad" else PRECISION
    assert value == pytest.approx(case["loss"], rel=tolerance, abs=tolerance)
    assert_gradient_close(grad_x, recorded_grad, tolerance * 10)
    assert_gradient_close(grad_w, recorded_grad_w, tolerance * 10)


def one_case_per_loss():
    chosen = {}
    for param in PML_CASES:
        case = param.values[2]
        x, _, _ = recorded.arrays("pml_proxies", param.values[1])
        if len(x) == 16:
            chosen.setdefault(case["kind"], param)
    return list(chosen.values())


@pytest.mark.parametrize("peer, index, case", one_case_per_loss())
def test_class_reproduces_pytorch_metric_learning_in_float32(peer, index, case):
    x, labels, recorded_grad = recorded.arrays(peer, index)
    w, recorded_grad_w = recorded.extra(peer, index, "w"), recorded.extra(peer, index, "gw")
    cfg = dict(case["cfg"])
    loss = CLASSES[PML_KINDS[case["kind"]]](embedding_dim=x.shape[1], **cfg)
    loss.set_proxies(w)
    x = x.astype("float32")
    with no_warnings():
        value, grad_x = value_and_grad(lambda e: loss(labels, e), x)
        grad_w = proxy_gradient(loss, labels, x)
    assert float(value) == pytest.approx(case["loss"], rel=1e-5)
    assert_gradient_close(grad_x, recorded_grad, 1e-4)
    assert_gradient_close(grad_w, recorded_grad_w, 1e-4)


# ---------------------------------------------------------------- the classes


@pytest.mark.parametrize("kind", KINDS)
def test_class_is_the_pure_function(kind):
    rng = np.random.default_rng(1)
    labels, x, w = random_case(kind, rng, 12, 4, 3, k=3)
    x = x.astype("float32")
    weights = rng.uniform(0.0, 2.0, size=12)
    options = {name: values[-1] for name, values in OPTIONS[kind].items()}
    loss = build(kind, 4, 3, k=3, **options)
    loss.set_proxies(w)
    w = loss.proxy_values()
    with no_warnings():
        if kind == "proxy_anchor":
            want, weighted, column, called, unweighted = run(lambda: [
                pm.proxy_anchor(labels, x, w, sample_weight=weights, **options),
                loss(labels, x, sample_weight=weights),
                loss(labels, x, sample_weight=weights[:, None]),  # Keras' (N, 1) weights
                loss.call(labels, x),  # the loss of the batch
                pm.proxy_anchor(labels, x, w, **options),
            ])
            assert weighted == pytest.approx(want, rel=1e-6) and column == pytest.approx(want, rel=1e-6)
            assert called == pytest.approx(unweighted, rel=1e-6)
            return
        total = build(kind, 4, 3, k=3, reduction="sum", **options)
        each = build(kind, 4, 3, k=3, reduction=None, **options)
        total.set_proxies(w)
        each.set_proxies(w)
        per_example, weighted, unweighted, summed, separate = run(lambda: [
            FUNCTIONS[kind](labels, x, w, **options),
            loss(labels, x, sample_weight=weights),
            loss(labels, x),
            total(labels, x, sample_weight=weights),
            each(labels, x),
        ])
        assert weighted == pytest.approx(np.sum(weights * per_example) / np.sum(weights), rel=1e-5)
        assert unweighted == pytest.approx(np.mean(per_example), rel=1e-5)
        assert summed == pytest.approx(np.sum(weights * per_example), rel=1e-5)
        np.testing.assert_allclose(separate, per_example, rtol=1e-5)


def test_soft_triple_adds_its_regularizer_once_to_the_mean():
    rng = np.random.default_rng(2)
    labels, x, w = random_case("soft_triple", rng, 10, 3, 4, k=4)
    x = x.astype("float32")
    for tau in (0.2, 1.0):
        loss = SoftTriple(3, 4, centers_per_class=4, tau=tau)
        loss.set_proxies(w)
        w32 = loss.proxy_values().astype("float64")
        per_example = ref_soft_triple(labels, x.astype("float64"), w32)
        regularizer = ref_soft_triple_regularizer(w32)
        assert 0.3 < regularizer < 1.0
        each = SoftTriple(3, 4, centers_per_class=4, tau=tau, reduction=None)
        each.set_proxies(w)
        mean, separate = run(lambda: [loss(labels, x), each(labels, x)])
        assert mean == pytest.approx(np.mean(per_example) + tau * regularizer, rel=1e-5)
        np.testing.assert_allclose(separate, per_example + tau * regularizer, rtol=1e-5)
    # The regulariser's gradient w.r.t. the centres.
    _, grad = value_and_grad(pm.soft_triple_regularizer, w32.astype("float32"))
    assert_gradient_close(grad, numeric_gradient(ref_soft_triple_regularizer, w32), 1e-3)


def test_proxy_anchor_sample_weight_counts_and_removes_examples():
    rng = np.random.default_rng(3)
    labels, x, w = random_case("proxy_anchor", rng, 6, 4, 3)
    labels = np.array([0, 0, 1, 2, 2, 3])
    x = x.astype("float32")
    # Weight 2: the example twice.
    weights = np.array([2.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    doubled, weighted = run(lambda: [
        pm.proxy_anchor(np.concatenate([labels, labels[:1]]), np.concatenate([x, x[:1]]), w),
        pm.proxy_anchor(labels, x, w, sample_weight=weights),
    ])
    assert weighted == pytest.approx(doubled, rel=1e-5)
    # Weight 0: the example is not there — not even in P⁺ (class 1 has no other example).
    weights = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    kept = weights > 0
    without, weighted, negative = run(lambda: [
        pm.proxy_anchor(labels[kept], x[kept], w),
        pm.proxy_anchor(labels, x, w, sample_weight=weights),
        pm.proxy_anchor(labels, x, w, sample_weight=-weights),
    ])
    assert weighted == pytest.approx(without, rel=1e-5)
    assert ref_proxy_anchor(labels, x.astype("float64"), w, sample_weight=weights) == pytest.approx(without, rel=1e-5)
    # Its gradient is the brute force's, and 0 for the removed example.
    options = {"margin": 0.1, "alpha": 32.0}
    _, want_x, want_w = ref_value_and_gradients("proxy_anchor", labels, x, w, None, options, weights)
    _, grad_x, grad_w = value_and_gradients("proxy_anchor", labels, x, w.astype("float32"), None, options, weights)
    assert_gradient_close(grad_x, want_x, 1e-3)
    assert_gradient_close(grad_w, want_w, 1e-3)
    assert np.all(grad_x[2] == 0)
    assert np.isnan(negative)


@pytest.mark.parametrize("n, num_classes, dim, by_gram", [(6, 40, 3, True), (40, 2, 8, False)])
def test_p2sgrad_by_gram_and_by_cosines(n, num_classes, dim, by_gram):
    # Many classes in few dimensions: from the Gram matrix of the class
    # vectors; few classes: from the cosines. Both are the reference's.
    assert pm._gram_is_cheaper(n, num_classes, dim) == by_gram
    rng = np.random.default_rng(n)
    labels, x, w = random_case("p2sgrad", rng, n, num_classes, dim)
    x, w = x.astype("float32"), w.astype("float32")
    coefficients = rng.uniform(0.5, 1.5, size=n)
    want, want_x, want_w = ref_value_and_gradients("p2sgrad", labels, x, w, coefficients, {})
    value, grad_x, grad_w = value_and_gradients("p2sgrad", labels, x, w, coefficients, {})
    assert value == pytest.approx(want, rel=1e-5)
    assert_gradient_close(grad_x, want_x, 1e-4)
    assert_gradient_close(grad_w, want_w, 1e-4)
    half = run(lambda: pm.p2sgrad(labels, x.astype("float16"), w))
    np.testing.assert_allclose(half, ref_p2sgrad(labels, x, w), rtol=3e-3)


@pytest.mark.parametrize("mixed", [False, True], ids=["float32", "mixed"])
def test_p2sgrad_by_gram_trains_in_fit(mixed):
    # 60 classes in 4 dimensions, batches of 30: the loss comes from the Gram
    # matrix in the compiled train step, in mixed precision too.
    assert pm._gram_is_cheaper(30, 60, 4)
    rng = np.random.default_rng(5)
    features = rng.normal(size=(120, 8)).astype("float32")
    labels = rng.integers(0, 60, size=120)
    policy = "mixed_bfloat16" if BACKEND == "jax" else "mixed_float16"
    keras.mixed_precision.set_global_policy(policy if mixed else "float32")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss=P2SGrad(60, 4))
        with no_warnings():
            history = model.fit(features, labels, batch_size=30, epochs=8, verbose=0, shuffle=False).history["loss"]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(np.isfinite(history)) and history[-1] < history[0], history
    embeddings = ops.convert_to_numpy(ops.cast(model(features[:30]), "float32"))
    got = run(lambda: pm.p2sgrad(labels[:30], embeddings, model.loss.proxies))
    np.testing.assert_allclose(got, ref_p2sgrad(labels[:30], embeddings, model.loss.proxy_values()), rtol=1e-5)


def test_p2sgrad_cosines_are_clipped():
    # Examples on their class vectors: in float32 a sixth of these cosines
    # round to just above 1 (or below −1) unless clipped.
    x = np.random.default_rng(8).normal(size=(300, 7)).astype("float32")
    loss = P2SGrad(300, 7)
    loss.set_proxies(x)
    same, opposite, logits = run(lambda: [pm.p2sgrad_cosines(x, x), pm.p2sgrad_cosines(-x, x), loss.logits(x)])
    for cosines in (same, logits):
        assert cosines.max() <= 1.0 and np.diagonal(cosines).min() > 1 - 1e-6
    assert opposite.min() >= -1.0 and np.diagonal(opposite).max() < -1 + 1e-6


def reference_logits(kind, x, w, options):
    x, w = x.astype("float64"), w.astype("float64")
    if kind == "proxy_nca":
        return np.array([[-np.sum((unit(a) - unit(p)) ** 2) / options["temperature"] for p in w] for a in x])
    if kind == "soft_triple":
        return options["scale"] * ref_soft_triple_similarity(x, w, options["gamma"])
    return np.array([[unit(a) @ unit(p) for p in w] for a in x])


@pytest.mark.parametrize("kind", KINDS)
def test_logits_and_predicted_classes(kind):
    rng = np.random.default_rng(4)
    _, x, w = random_case(kind, rng, 20, 5, 3, k=3)
    options = {"proxy_nca": {"temperature": 0.5}, "soft_triple": {"scale": 7.0, "gamma": 0.3}}.get(kind, {})
    loss = build(kind, 5, 3, k=3, **options)
    loss.set_proxies(w)
    x = x.astype("float32")
    logits, predicted = run(lambda: [loss.logits(x), loss.predict_classes(x)])
    want = reference_logits(kind, x, loss.proxy_values(), options)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    assert predicted.dtype == np.int32
    np.testing.assert_array_equal(predicted, np.argmax(want, axis=1))
    assert len(set(predicted.tolist())) > 1


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip(kind):
    options = {
        "proxy_nca": {"temperature": 0.25},
        "proxy_anchor": {"margin": 0.2, "alpha": 16.0},
        "soft_triple": {"centers_per_class": 3, "scale": 10.0, "gamma": 0.2, "margin": 0.05, "tau": 0.5},
        "p2sgrad": {},
    }[kind]
    extra = {} if kind == "proxy_anchor" else {"reduction": "sum"}
    loss = CLASSES[kind](6, 5, proxy_lr_multiplier=10.0, name="mine", **options, **extra)
    config = loss.get_config()
    for name, value in options.items():
        assert config[name] == value
    restored = type(loss).from_config(config)
    assert type(restored) is type(loss) and restored.get_config() == config
    deserialized = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(deserialized) is type(loss) and deserialized.get_config() == config
    assert type(deserialized.proxy_initializer) is type(loss.proxy_initializer)


def test_default_initialisations():
    keras.utils.set_random_seed(0)
    # ProxyNCA++: normal, σ = 1/8.
    values = ProxyNCA(64, 256).proxy_values()
    assert values.std() == pytest.approx(0.125, rel=0.03) and abs(values.mean()) < 0.01
    # Proxy Anchor: PyTorch's kaiming_normal_(mode="fan_out") on (C, D): σ = √(2/C).
    values = ProxyAnchor(50, 400).proxy_values()
    assert values.std() == pytest.approx(np.sqrt(2 / 50), rel=0.03)
    assert np.abs(values).max() > 3 * np.sqrt(2 / 50)  # not truncated
    # SoftTriple: PyTorch's kaiming_uniform_(a=√5) on (D, C·k): uniform on ±1/√(C·k).
    values = SoftTriple(8, 512, centers_per_class=4).proxy_values()
    bound = 1 / np.sqrt(32)
    assert values.shape == (8, 4, 512)
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.99 * bound
    assert values.std() == pytest.approx(bound / np.sqrt(3), rel=0.03)
    # P2SGrad: uniform on [−1, 1], every vector of unit norm.
    values = P2SGrad(30, 200).proxy_values()
    np.testing.assert_allclose(np.linalg.norm(values, axis=1), 1.0, rtol=1e-5)
    assert abs(values.mean()) < 0.005  # symmetric (entries' spread: 0.07)
    # Uniform entries over a norm near √(D/3): the largest is near √(3/D) (normal ones would reach ~2.3×).
    assert 0.9 * np.sqrt(3 / 200) < np.abs(values).max() < 1.25 * np.sqrt(3 / 200)
    first, second = UnitNormUniform(seed=3), UnitNormUniform.from_config(UnitNormUniform(seed=3).get_config())
    np.testing.assert_array_equal(numpy(first((4, 3))), numpy(second((4, 3))))
    restored = keras.initializers.deserialize(keras.initializers.serialize(first))
    assert type(restored) is UnitNormUniform and restored.get_config() == first.get_config()


def test_bad_arguments_are_errors():
    for make, match in [
        (lambda: ProxyNCA(3, 2, temperature=0.0), "temperature"),
        (lambda: ProxyNCA(3, 2, temperature=-1.0), "temperature"),
        (lambda: ProxyAnchor(3, 2, alpha=0.0), "alpha"),
        (lambda: ProxyAnchor(3, 2, margin=-0.1), "margin"),
        (lambda: ProxyAnchor(3, 2, reduction=None), "sum over class vectors"),
        (lambda: ProxyAnchor(3, 2, reduction="sum"), "sum over class vectors"),
        (lambda: SoftTriple(3, 2, scale=0.0), "scale"),
        (lambda: SoftTriple(3, 2, gamma=0.0), "gamma"),
        (lambda: SoftTriple(3, 2, tau=-1.0), "tau"),
        (lambda: SoftTriple(3, 2, margin=float("nan")), "margin"),
        (lambda: SoftTriple(3, 2, centers_per_class=None), "centers_per_class"),
        (lambda: SoftTriple(3, 2, centers_per_class=0), "centers_per_class"),
        (lambda: P2SGrad(0, 2), "positive"),
        (lambda: pm.proxy_nca([0], np.ones((1, 2)), np.ones((2, 3))), "size 2 for class vectors of size 3"),
        (lambda: pm.soft_triple([0], np.ones((1, 2)), np.ones((2, 2))), r"\(num_classes, centers_per_class"),
        (lambda: pm.p2sgrad([0], np.ones((1, 2)), np.ones((2, 1, 2))), r"\(num_classes, embedding_dim\)"),
        (lambda: pm.proxy_anchor([0], np.ones((1, 2)), np.ones((2, 2)), alpha=-1.0), "alpha"),
    ]:
        with pytest.raises(ValueError, match=match):
            make()


# ---------------------------------------------------------------- compiled, degenerate, half precision


def _per_example_x(x, labels, w, kind):
    return objective(kind, labels, x, w, None, {})


def _per_example_w(w, labels, x, kind):
    return objective(kind, labels, x, w, None, {})


def regularized_soft_triple(w, labels, x):
    return ops.mean(pm.soft_triple(labels, x, w)) + 0.2 * pm.soft_triple_regularizer(ops.cast(w, x.dtype))


# One function per loss and argument: each compiles once per shape (conftest.value_and_grad).
COMPILED = {
    kind: (lambda x, labels, w, kind=kind: _per_example_x(x, labels, w, kind),
           lambda w, labels, x, kind=kind: _per_example_w(w, labels, x, kind))
    for kind in KINDS
}


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_matches_eager(kind):
    rng = np.random.default_rng(5)
    labels, x, w = random_case(kind, rng, 9, 4, 3, k=3)
    x, w = x.astype("float32"), w.astype("float32")
    _, want_x, want_w = ref_value_and_gradients(kind, labels, x, w, np.ones(9), {})
    of_x, of_w = COMPILED[kind]
    results = []
    for compiled in COMPILE_MODES:
        value, grad_x = value_and_grad(of_x, x, labels.astype("int32"), w, compiled=compiled)
        value_w, grad_w = value_and_grad(of_w, w, labels.astype("int32"), x, compiled=compiled)
        assert float(value) == pytest.approx(float(value_w), rel=1e-6)
        assert_gradient_close(grad_x, want_x, 1e-3)
        assert_gradient_close(grad_w, want_w, 1e-3)
        results.append(float(value))
        if kind == "soft_triple":
            # With SoftTriple's regulariser.
            value, grad_w = value_and_grad(regularized_soft_triple, w, labels.astype("int32"), x, compiled=compiled)
            regularizer = ref_soft_triple_regularizer(w.astype("float64"))
            assert float(value) == pytest.approx(results[-1] / 9 + 0.2 * regularizer, rel=1e-5)
            want = want_w / 9 + 0.2 * numeric_gradient(ref_soft_triple_regularizer, w.astype("float64"))
            assert_gradient_close(grad_w, want, 1e-3)
    assert results[-1] == pytest.approx(results[0], rel=1e-5)


def expected_degenerate(kind, labels, num_classes, k=2):
    """The loss where every cosine is 0 (zero embeddings or zero class vectors; defaults)."""
    if kind == "proxy_nca":
        return np.log(num_classes)
    if kind == "p2sgrad":
        return 1.0 / num_classes
    if kind == "soft_triple":
        scale, margin = 20.0, 0.01
        return np.log1p((num_classes - 1) * np.exp(scale * margin))
    alpha, margin = 32.0, 0.1
    counts = np.bincount(labels, minlength=num_classes)
    pull = sum(np.log1p(n * np.exp(alpha * margin)) for n in counts if n)
    push = sum(np.log1p((len(labels) - n) * np.exp(alpha * margin)) for n in counts)
    return pull / np.count_nonzero(counts) + push / num_classes


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "case", ["zero embeddings", "zero class vectors", "huge", "tiny", "one example", "one class", "coincident"]
)
def test_degenerate_batches_are_finite(kind, case):
    rng = np.random.default_rng(6)
    labels, x, w = random_case(kind, rng, 6, 3, 4, k=2)
    labels = np.array([0, 0, 1, 1, 2, 0])
    expected = None
    if case == "zero embeddings":
        x = np.zeros_like(x)
        expected = expected_degenerate(kind, labels, 3)
    elif case == "zero class vectors":
        w = np.zeros_like(w)
        expected = expected_degenerate(kind, labels, 3)
    elif case in ("huge", "tiny"):
        # Every loss normalises both sides: scale-free.
        scale = 1e18 if case == "huge" else 1e-18
        x32, w32 = x.astype("float32"), w.astype("float32")
        expected = float(run(lambda: objective(kind, labels, x32, w32, np.ones(6) / 6, {})))
        x, w = x * scale, w * scale
    elif case == "one example":
        labels, x = labels[:1], x[:1]
    elif case == "one class":
        labels, w = np.zeros(6, int), w[:1]
    elif case == "coincident":
        # Examples on their class vectors (a kink of the distances, the clip, the regulariser's root).
        w[:, -1] = w[:, 0] if kind == "soft_triple" else w[:, -1]
        x = (w[labels, 0] if kind == "soft_triple" else w[labels]) * 2.0
    x, w = x.astype("float32"), w.astype("float32")
    coefficients = np.full(len(labels), 1.0 / len(labels))
    value, grad_x, grad_w = value_and_gradients(kind, labels, x, w, coefficients, {})
    assert np.isfinite(value) and np.all(np.isfinite(grad_x)) and np.all(np.isfinite(grad_w))
    if expected is not None:
        assert value == pytest.approx(expected, rel=1e-4)
    elif case != "coincident":
        assert value == pytest.approx(ref_objective(kind, labels, x.astype("float64"), w.astype("float64"),
                                                    coefficients, {}), rel=1e-4, abs=1e-6)
    if case == "one class" and kind in ("proxy_nca", "soft_triple"):
        assert value == 0.0  # a softmax over one class
    if kind == "soft_triple":
        # With the regulariser (SoftTriple's loss): finite at coincident centres and for k = 1.
        for centres in (w, w[:, :1]):
            value, grad_w = value_and_grad(regularized_soft_triple, centres, labels.astype("int32"), x)
            assert np.isfinite(value) and np.all(np.isfinite(grad_w))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_embeddings_compute_in_float32(kind, dtype):
    rng = np.random.default_rng(7)
    labels, x, w = random_case(kind, rng, 8, 3, 4, k=2)
    half = tensor(x, dtype)
    exact = numpy(ops.cast(half, "float32"))
    loss = build(kind, 3, 4)
    loss.set_proxies(w)
    value, want, function_value, function_want = run(lambda: [
        loss(labels, half), loss(labels, exact), objective(kind, labels, half, w, None, {}),
        objective(kind, labels, exact, w, None, {}),
    ])
    assert value.dtype == np.float32 and function_value.dtype == np.float32
    assert value == pytest.approx(want, rel=1e-6)
    assert function_value == pytest.approx(function_want, rel=1e-6)
