"""ArcFace, CosFace, SphereFace, L-Softmax, sub-centre ArcFace and the normalised softmax: their math
against a brute-force NumPy reference and PyTorch Metric Learning's recorded values, degenerate batches,
the classes against their pure functions. (What all losses with class vectors share — fit, saving, the
learning-rate multiplier, labels out of range — is tested in tests/test_proxies.py.)"""

import inspect
import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from keras import ops

from tfmetric.losses import margin_softmax as ms

import recorded
from conftest import BACKEND, tensor, value_and_grad, variable_gradient

KINDS = ("arcface", "cosface", "sphereface", "large_margin_softmax", "subcenter_arcface", "normalized_softmax")
CLASSES = {
    "arcface": ms.ArcFace,
    "cosface": ms.CosFace,
    "sphereface": ms.SphereFace,
    "large_margin_softmax": ms.LargeMarginSoftmax,
    "subcenter_arcface": ms.SubCenterArcFace,
    "normalized_softmax": ms.NormalizedSoftmax,
}
FUNCTIONS = {kind: getattr(ms, kind) for kind in KINDS}
DEFAULTS = {
    "arcface": {"margin": 0.5, "scale": 64.0},
    "cosface": {"margin": 0.35, "scale": 64.0},
    "sphereface": {"margin": 4, "scale": 1.0},
    "large_margin_softmax": {"margin": 4, "scale": 1.0},
    "subcenter_arcface": {"margin": 0.5, "scale": 64.0},
    "normalized_softmax": {"temperature": 0.05},
}
# Arguments the random tests draw, per loss. ArcFace's margins of 1.2 and 2
# put many true classes beyond θ = π − m, where the logit changes formula.
OPTIONS = {
    "arcface": {"margin": [0.5, 0.2, 1.2, 2.0], "scale": [64.0, 4.0, 16.0]},
    "subcenter_arcface": {"margin": [0.5, 0.2, 2.0], "scale": [64.0, 8.0]},
    "cosface": {"margin": [0.35, 0.1, -0.2], "scale": [64.0, 5.0]},
    "sphereface": {"margin": [4, 1, 2, 3], "scale": [1.0, 2.5]},
    "large_margin_softmax": {"margin": [4, 1, 2, 3], "scale": [1.0, 0.5]},
    "normalized_softmax": {"temperature": [0.05, 0.5, 1.0]},
}
PML_KINDS = {
    "ArcFaceLoss": "arcface",
    "CosFaceLoss": "cosface",
    "SphereFaceLoss": "sphereface",
    "LargeMarginSoftmaxLoss": "large_margin_softmax",
    "SubCenterArcFaceLoss": "subcenter_arcface",
    "NormalizedSoftmaxLoss": "normalized_softmax",
}


# The batches' shape wherever a test may choose it: JAX compiles every
# operation anew for each new shape (eagerly too), once for all tests.
N, C, D = 8, 3, 4


def proxies_shape(kind, num_classes, dim, k=3):
    return (num_classes, k, dim) if kind == "subcenter_arcface" else (num_classes, dim)


# ---------------------------------------------------------------- the brute-force reference


def _cosine(a, b):
    na, nb = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in b))
    return 0.0 if na == 0 or nb == 0 else sum(u * v for u, v in zip(a, b)) / (na * nb)


def _angle(c):
    return math.acos(min(max(c, -1.0), 1.0))


def _psi(c, m):
    """The papers' ψ(θ) = (−1)^k cos(mθ) − 2k, k = ⌊mθ/π⌋, from the angle itself."""
    theta = _angle(c)
    k = math.floor(theta * m / math.pi)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def reference_losses(kind, labels, x, w, options):
    """Each example's loss, with loops over examples and classes, in float64."""
    options = {**DEFAULTS[kind], **options}
    losses = np.zeros(len(x))
    for i, (xi, y) in enumerate(zip(x, labels)):
        norm_x = math.sqrt(sum(v * v for v in xi))
        logits = []
        for j in range(w.shape[0]):
            if kind == "subcenter_arcface":
                c = max(_cosine(xi, centre) for centre in w[j])
            else:
                c = _cosine(xi, w[j])
            target = j == y
            if kind in ("arcface", "subcenter_arcface"):
                m, s = options["margin"], options["scale"]
                if target:
                    theta = _angle(c)
                    c = math.cos(theta + m) if theta <= math.pi - m else c - m * math.sin(m)
                logits.append(s * c)
            elif kind == "cosface":
                logits.append(options["scale"] * (c - options["margin"] if target else c))
            elif kind == "sphereface":
                logits.append(options["scale"] * norm_x * (_psi(c, options["margin"]) if target else c))
            elif kind == "large_margin_softmax":
                norm_w = math.sqrt(sum(v * v for v in w[j]))
                logits.append(options["scale"] * norm_x * norm_w * (_psi(c, options["margin"]) if target else c))
            else:
                logits.append(c / options["temperature"])
        # −log softmax(z)_y = log(1 + Σ_{j≠y} exp(z_j − z_y)), with log1p: exact
        # for tiny losses, where finite differences need every digit.
        others = [z - logits[y] for j, z in enumerate(logits) if j != y]
        top = max(others, default=0.0)
        if top > 0:
            losses[i] = top + math.log(math.exp(-top) + sum(math.exp(d - top) for d in others))
        else:
            losses[i] = math.log1p(sum(math.exp(d) for d in others))
    return losses


def numeric_gradient(f, a, h=1e-6):
    """Central finite differences of the scalar `f` at the array `a`."""
    grad = np.zeros_like(a)
    for index in np.ndindex(a.shape):
        step = h * max(1.0, abs(a[index]))
        up, down = a.copy(), a.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (f(up) - f(down)) / (2 * step)
    return grad


def distance_to_kinks(kind, labels, x, w, options):
    """How close the batch is to where the loss or its gradient is not smooth.

    The true class's angle near 0 (the angle's derivative is infinite) and,
    for ArcFace, near π − m (the logit changes formula there); for sub-centre
    ArcFace also two sub-centres of a class equally close (the max switches).
    """
    options = {**DEFAULTS[kind], **options}
    distance = math.inf
    for xi, y in zip(x, labels):
        cosines = [[_cosine(xi, centre) for centre in (w[j] if w.ndim == 3 else [w[j]])] for j in range(w.shape[0])]
        theta = _angle(max(cosines[y]))
        # From a float32 cosine near 1 the angle has a relative error of ~6e-8/θ² (1 % at θ = 2.4e-3,
        # where sub-centre ArcFace's gradient was 0.8 % off at scale 64): counted a tenth, the angle
        # lets gradients be checked from θ = 1e-2 and values from 1e-3.
        distance = min(distance, theta / 10)
        if kind in ("arcface", "subcenter_arcface"):
            distance = min(distance, abs(theta - (math.pi - options["margin"])))
        for values in cosines:
            top = sorted(values, reverse=True)
            if len(top) > 1:
                distance = min(distance, top[0] - top[1])
    return distance


def reference(kind, labels, x, w, options=None, gradients=True):
    """`(mean loss, d/dx, d/dw)` of the reference (gradients by finite differences)."""
    options = options or {}
    x, w = np.asarray(x, "float64"), np.asarray(w, "float64")

    def mean(xx, ww):
        return float(np.mean(reference_losses(kind, labels, xx, ww, options)))

    if not gradients:
        return mean(x, w), None, None
    return mean(x, w), numeric_gradient(lambda a: mean(a, w), x), numeric_gradient(lambda a: mean(x, a), w)


# ---------------------------------------------------------------- the implementation, with both gradients


def _packed_mean_loss(kind, options):
    """The mean loss as a function of x and w packed in one vector: both gradients in one call."""
    function = FUNCTIONS[kind]

    def mean_loss(packed, labels, x_like, w_like):
        size = int(np.prod(x_like.shape))
        x = ops.reshape(packed[:size], tuple(x_like.shape))
        w = ops.reshape(packed[size:], tuple(w_like.shape))
        # A sum over the batch size: Keras 3.15's PyTorch `mean` computes float64 in float32.
        return ops.sum(function(labels, x, w, **options)) / x_like.shape[0]

    return mean_loss


# Built once: compiled, each compiles once per shape (see conftest.value_and_grad).
MEAN_LOSS = {kind: _packed_mean_loss(kind, {}) for kind in KINDS}


def loss_and_gradients(kind, x, labels, w, options=None, compiled=False):
    """`(mean loss, d/dx, d/dw)` of the pure function, as NumPy."""
    mean_loss = _packed_mean_loss(kind, options) if options else MEAN_LOSS[kind]
    packed = np.concatenate([np.ravel(x), np.ravel(w)])
    value, grad = value_and_grad(mean_loss, packed, labels, np.zeros_like(x), np.zeros_like(w), compiled=compiled)
    return float(value), grad[: x.size].reshape(x.shape), grad[x.size :].reshape(w.shape)


def numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def assert_gradient_close(got, want, tolerance):
    scale = max(np.abs(want).max(), 1e-12)
    np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=tolerance)


def random_case(kind, n, num_classes, dim, seed, k=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)) * rng.choice([0.3, 1.0, 3.0])
    w = rng.normal(size=proxies_shape(kind, num_classes, dim, k))
    return x.astype("float32"), rng.integers(0, num_classes, n), w.astype("float32")


# ---------------------------------------------------------------- hand-made cases


def test_hand_made_arcface_cosface_and_normalized_softmax():
    # Class vectors along the axes; example 0 on class 0's (θ = 0), example
    # 1 at 36.87° from class 1's (cos = 0.8) and 53.13° from class 0's.
    w = np.array([[2.0, 0.0], [0.0, 0.5]], "float32")
    x = np.array([[3.0, 0.0], [0.6, 0.8]], "float32")
    labels = np.array([0, 1])
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    theta = math.acos(0.8)
    want = {
        "arcface": [softplus(-8 * math.cos(0.3)), softplus(8 * 0.6 - 8 * math.cos(theta + 0.3))],
        "cosface": [softplus(-8 * (1 - 0.3)), softplus(8 * 0.6 - 8 * (0.8 - 0.3))],
        "normalized_softmax": [softplus(-1 / 0.25), softplus((0.6 - 0.8) / 0.25)],
    }
    options = {"arcface": {"margin": 0.3, "scale": 8.0}, "cosface": {"margin": 0.3, "scale": 8.0},
               "normalized_softmax": {"temperature": 0.25}}
    for kind, values in want.items():
        got = numpy(FUNCTIONS[kind](labels, x, w, **options[kind]))
        np.testing.assert_allclose(got, values, rtol=1e-5, err_msg=kind)


def test_hand_made_arcface_beyond_pi_minus_m():
    # θ_y = 120° > π − m for m = 1.2 rad: the logit is s·(cos θ − m·sin m),
    # not s·cos(θ + m) (which would be larger again).
    w = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    x = np.array([[-0.5, math.sqrt(3) / 2]], "float32")
    got = float(ms.arcface([0], x, w, margin=1.2, scale=2.0)[0])
    target = 2 * (-0.5 - 1.2 * math.sin(1.2))
    assert got == pytest.approx(math.log1p(math.exp(2 * math.sqrt(3) / 2 - target)), rel=1e-5)


def test_hand_made_sphereface_and_large_margin_softmax():
    # θ_y = 60°, m = 2: mθ = 120° ≤ π, ψ = cos 120° = −0.5 (k = 0); m = 4:
    # mθ = 240°, k = 1, ψ = −cos 240° − 2 = −1.5.
    w = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    x = 3 * np.array([[0.5, math.sqrt(3) / 2]], "float32")
    for m, psi in [(2, -0.5), (4, -1.5), (1, 0.5)]:
        # SphereFace: the class vectors' norms do not count, the embedding's does.
        want = math.log1p(math.exp(1.5 * 3 * (math.sqrt(3) / 2 - psi)))
        assert float(ms.sphereface([0], x, w, margin=m, scale=1.5)[0]) == pytest.approx(want, rel=1e-5), m
        # L-Softmax: both norms (1 and 2) scale the logits.
        want = math.log1p(math.exp(0.5 * 3 * (2 * math.sqrt(3) / 2 - 1 * psi)))
        assert float(ms.large_margin_softmax([0], x, w, margin=m, scale=0.5)[0]) == pytest.approx(want, rel=1e-5), m


def test_hand_made_subcenter_arcface_takes_the_closest_subcentre():
    # Class 0's second sub-centre is the example's direction; class 1's
    # closest is at 90°. Swapping the layout (k, C) would pair them otherwise.
    w = np.array([[[0.0, 1.0], [1.0, 0.0]], [[-1.0, 0.0], [0.0, -1.0]]], "float32")
    x = np.array([[2.0, 0.0]], "float32")
    want = math.log1p(math.exp(-4.0 * math.cos(0.5)))  # z_1 = 4·cos 90° = 0
    assert float(ms.subcenter_arcface([0], x, w, scale=4.0)[0]) == pytest.approx(want, rel=1e-5)
    want = math.log1p(math.exp(4.0 * 1.0 - 4.0 * math.cos(math.pi / 2 + 0.5)))
    assert float(ms.subcenter_arcface([1], x, w, scale=4.0)[0]) == pytest.approx(want, rel=1e-5)


def test_subcenter_arcface_gives_tied_subcentres_one_gradient():
    # Two identical sub-centres per class: the loss and every gradient are
    # ArcFace's with one of them, its class vector's gradient taken by one
    # copy (the first), not doubled nor lost.
    rng = np.random.default_rng(8)
    x = rng.normal(size=(6, 4)).astype("float32")
    w = rng.normal(size=(3, 4)).astype("float32")
    labels = np.array([0, 1, 2, 0, 1, 2])
    twins = np.repeat(w[:, None, :], 2, axis=1)
    value, grad_x = value_and_grad(lambda x: ops.sum(ms.subcenter_arcface(labels, x, twins)), x)
    want, want_x = value_and_grad(lambda x: ops.sum(ms.arcface(labels, x, w)), x)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(grad_x, want_x, rtol=1e-4, atol=1e-5)
    _, grad_twins = value_and_grad(lambda v: ops.sum(ms.subcenter_arcface(labels, x, v)), twins)
    _, want_w = value_and_grad(lambda v: ops.sum(ms.arcface(labels, x, v)), w)
    np.testing.assert_allclose(grad_twins.sum(axis=1), want_w, rtol=1e-4, atol=1e-5)
    assert np.all(grad_twins[:, 1] == 0)


# ---------------------------------------------------------------- random cases


@settings(max_examples=15 if BACKEND == "tensorflow" else 5, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    n=st.integers(1, 10),
    num_classes=st.integers(1, 6),
    k=st.integers(1, 3),
    dim=st.integers(2, 6),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_matches_brute_force(kind, n, num_classes, k, dim, seed, data):
    options = {name: data.draw(st.sampled_from(values), label=name) for name, values in OPTIONS[kind].items()}
    x, labels, w = random_case(kind, n, num_classes, dim, seed, k)
    value, grad_x, grad_w = loss_and_gradients(kind, x, labels, w, options)
    assert np.isfinite(value) and np.all(np.isfinite(grad_x)) and np.all(np.isfinite(grad_w))
    kink = distance_to_kinks(kind, labels, x, w, options)
    want, want_x, want_w = reference(kind, labels, x, w, options, gradients=kink > 1e-3)
    if kink > 1e-4:
        assert value == pytest.approx(want, rel=1e-4, abs=1e-5)
    if kink > 1e-3:
        assert_gradient_close(grad_x, want_x, 2e-3)
        assert_gradient_close(grad_w, want_w, 2e-3)


# ---------------------------------------------------------------- PyTorch Metric Learning


def _split(case):
    """The recorded configuration: the pure function's options, the class's."""
    cfg = dict(case["cfg"])
    num_classes = cfg.pop("num_classes")
    class_options = dict(cfg)
    cfg.pop("centers_per_class", None)
    return num_classes, cfg, class_options


def _first_of_16_examples(cases):
    """Of each loss's cases, the first with 16 examples."""
    first = {}
    for case in cases:
        if len(recorded.arrays(*case.values[:2])[0]) == 16:
            first.setdefault(PML_KINDS[case.values[2]["kind"]], case)
    return [first[kind] for kind in KINDS]


PARITY_CASES = recorded.cases("pml_proxies", PML_KINDS)
# The classes are checked on one case per loss.
CLASS_CASES = {case.values[1] for case in _first_of_16_examples(PARITY_CASES)}
if BACKEND == "jax":
    # JAX compiles every new shape (about a second each) and, without x64,
    # computes in float32: there, one case per loss; the other backends run
    # them all, in float64.
    PARITY_CASES = _first_of_16_examples(PARITY_CASES)


@pytest.mark.parametrize("peer, index, case", PARITY_CASES)
def test_reproduces_pytorch_metric_learning(peer, index, case):
    x, labels, want_x = recorded.arrays(peer, index)
    w, want_w = recorded.extra(peer, index, "w"), recorded.extra(peer, index, "gw")
    kind = PML_KINDS[case["kind"]]
    num_classes, options, class_options = _split(case)
    assert w.shape[0] == num_classes
    # float64 (float32 under JAX, which runs without x64).
    value, grad_x, grad_w = loss_and_gradients(kind, x, labels, w, options)
    exact = grad_x.dtype == np.float64
    assert value == pytest.approx(case["loss"], rel=1e-9 if exact else 1e-5, abs=1e-12 if exact else 1e-6)
    assert_gradient_close(grad_x, want_x, 1e-9 if exact else 1e-4)
    assert_gradient_close(grad_w, want_w, 1e-9 if exact else 1e-4)
    # The reference agrees with PML too.
    assert np.mean(reference_losses(kind, labels, x, w, options)) == pytest.approx(case["loss"], rel=1e-9, abs=1e-12)

    if index in CLASS_CASES:
        # The class, in float32, with PML's class vectors.
        loss = CLASSES[kind](num_classes, x.shape[1], **class_options)
        loss.set_proxies(w)
        x32 = x.astype("float32")
        value, grad_x = value_and_grad(lambda e: loss(labels, e), x32)
        grad_w = variable_gradient(lambda: loss(labels, x32), loss.proxies)
        assert float(value) == pytest.approx(case["loss"], rel=1e-5)
        assert_gradient_close(grad_x, want_x, 1e-4)
        assert_gradient_close(grad_w, want_w, 1e-4)


@pytest.mark.parametrize("peer, index, case", recorded.cases("pml_proxies", ["SubCenterArcFaceLoss.get_outliers"]))
def test_outliers_reproduce_pytorch_metric_learning(peer, index, case):
    x, labels, _ = recorded.arrays(peer, index)
    w = recorded.extra(peer, index, "w")
    num_classes, _, class_options = _split(case)
    threshold = class_options.pop("threshold")  # degrees, as PML takes it
    loss = ms.SubCenterArcFace(num_classes, x.shape[1], **class_options)
    loss.set_proxies(w)
    outliers, dominant = loss.outliers(x, labels, threshold=np.radians(threshold))
    want = np.sort(recorded.extra(peer, index, "outliers").astype("int64"))  # PML lists them class by class
    np.testing.assert_array_equal(outliers, want)
    np.testing.assert_allclose(dominant, recorded.extra(peer, index, "dominant"), rtol=1e-6)  # NaN: no example


def test_outliers_by_hand():
    # Class 0: sub-centre 0 (along x) is closest for 3 examples, sub-centre
    # 1 (along y) for 1: 0 dominates; the example at 80° from it is an
    # outlier at 75°, not at 85°. Class 1 has no example.
    loss = ms.SubCenterArcFace(2, 2, centers_per_class=2)
    loss.set_proxies(np.array([[[2.0, 0.0], [0.0, 3.0]], [[1.0, 1.0], [-1.0, 1.0]]]))
    angles = np.radians([0.0, 10.0, -20.0, 80.0])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 5
    outliers, dominant = loss.outliers(x, np.zeros(4, int))
    np.testing.assert_array_equal(outliers, [3])
    np.testing.assert_array_equal(dominant[0], [2.0, 0.0])
    assert np.all(np.isnan(dominant[1]))
    assert loss.outliers(x, np.zeros(4, int), threshold=np.radians(85))[0].tolist() == []
    assert loss.outliers(x, np.zeros(4, int), threshold=np.radians(15))[0].tolist() == [2, 3]
    with pytest.raises(ValueError, match="radians"):
        loss.outliers(x, np.zeros(4, int), threshold=75)


# ---------------------------------------------------------------- degenerate batches


def degenerate_batches(kind):
    rng = np.random.default_rng(3)
    labels = np.array([0, 1, 2, 1, 0, 0, 2, 1])
    w = rng.normal(size=proxies_shape(kind, C, D)).astype("float32")
    x = rng.normal(size=(N, D)).astype("float32")
    own = w[labels, 0] if w.ndim == 3 else w[labels]  # an own class vector of each example
    zero_w = w.copy()
    zero_w[1] = 0.0
    yield "zero embeddings", np.where(np.arange(N)[:, None] % 2 == 0, 0.0, x).astype("float32"), labels, w
    yield "zero class vectors", x, labels, zero_w
    yield "all zero", np.zeros_like(x), labels, np.zeros_like(w)
    yield "huge embeddings", x * np.float32(1e18), labels, w
    yield "huge class vectors", x, labels, w * np.float32(1e18)
    yield "on the class vectors", 3 * own, labels, w
    yield "opposite the class vectors", -own, labels, w
    yield "one example", x[:1], labels[:1], w
    yield "one class", x, np.zeros(N, int), w[:1]
    yield "one dimension", x[:, :1], labels, w[..., :1]


@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_batches_are_finite(kind):
    for name, x, labels, w in degenerate_batches(kind):
        value, grad_x, grad_w = loss_and_gradients(kind, x, labels, w)
        assert np.isfinite(value) and np.all(np.isfinite(grad_x)) and np.all(np.isfinite(grad_w)), name
        want = reference(kind, labels, x, w, gradients=False)[0]
        # In float32 a cosine of 1 − 6e-8 is an angle of 3.5e-4: ArcFace's
        # s·cos(θ + m) is known to s·sin(m)·3.5e-4 there.
        close = 2e-2 if name == "on the class vectors" and "arcface" in kind else 1e-5
        assert value == pytest.approx(want, rel=1e-4, abs=close), name
        if name in ("one class", "all zero"):
            assert np.all(grad_x == 0) and np.all(grad_w == 0), name
        if name == "one class":
            assert value == 0.0


# ---------------------------------------------------------------- the classes


def class_and_options(kind, num_classes=None, dim=None, **overrides):
    options = {name: values[-1] for name, values in OPTIONS[kind].items()}  # not the defaults
    options.update(overrides)
    extra = {"centers_per_class": 3} if kind == "subcenter_arcface" else {}
    return CLASSES[kind](num_classes or C, dim or D, **extra, **options), options


@pytest.mark.parametrize("kind", KINDS)
def test_class_is_the_pure_function(kind):
    x, labels, w = random_case(kind, N, C, D, seed=11)
    loss, options = class_and_options(kind)
    loss.set_proxies(w)
    per_example = numpy(FUNCTIONS[kind](labels, x, w, **options))
    assert per_example.shape == (N,)
    assert float(numpy(loss(labels, x))) == pytest.approx(per_example.mean(), rel=1e-6)
    weights = np.linspace(0.0, 2.0, N)
    assert float(numpy(loss(labels, x, sample_weight=weights))) == pytest.approx(
        np.sum(weights * per_example) / np.sum(weights), rel=1e-6
    )
    unreduced, _ = class_and_options(kind, reduction=None)
    unreduced.set_proxies(w)
    np.testing.assert_allclose(numpy(unreduced(labels, x)), per_example, rtol=1e-6)
    assert numpy(unreduced.call(labels, x)).shape == (N,)
    # The options reach the math: the defaults give another loss.
    assert float(np.mean(numpy(FUNCTIONS[kind](labels, x, w)))) != pytest.approx(per_example.mean(), rel=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip(kind):
    loss, _ = class_and_options(kind, proxy_lr_multiplier=10.0, reduction="sum", name="mine")
    config = loss.get_config()
    rebuilt = type(loss).from_config(config)
    assert rebuilt.get_config() == config
    for name, value in {**class_and_options(kind)[1], "proxy_lr_multiplier": 10.0, "reduction": "sum"}.items():
        assert config[name] == value, name
    assert keras.saving.get_registered_object(f"tfmetric>{type(loss).__name__}") is type(loss)
    deserialized = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(deserialized) is type(loss) and deserialized.get_config() == config
    x, labels, w = random_case(kind, N, C, D, seed=12)
    loss.set_proxies(w)
    rebuilt.set_proxies(w)
    assert float(numpy(rebuilt(labels, x))) == pytest.approx(float(numpy(loss(labels, x))), rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_and_names(kind):
    parameters = inspect.signature(CLASSES[kind]).parameters
    for name, value in DEFAULTS[kind].items():
        assert parameters[name].default == value, name
        assert inspect.signature(FUNCTIONS[kind]).parameters[name].default == value, name
    assert parameters["name"].default == kind
    assert parameters["reduction"].default == "sum_over_batch_size"
    if kind == "subcenter_arcface":
        assert parameters["centers_per_class"].default == 3
    assert CLASSES[kind](C, D).get_config()["name"] == kind


# Each loss's initial class vectors: (mean of the squares, bound of the entries) for D = 64.
INITIAL = {
    "arcface": (1e-4, None),  # insightface: N(0, 0.01²)
    "subcenter_arcface": (1e-4, None),
    "cosface": (1.0, None),  # PyTorch Metric Learning: N(0, 1)
    "sphereface": (1 / 64, math.sqrt(3 / 64)),  # Caffe's xavier: U(±√(3/D))
    "large_margin_softmax": (2 / 64, None),  # Caffe's msra: N(0, 2/D)
    "normalized_softmax": (1 / (3 * 64), 1 / 8),  # Zhai & Wu: U(±1/√D)
}


@pytest.mark.parametrize("kind", KINDS)
def test_initial_class_vectors(kind):
    first, second = CLASSES[kind](200, 64).proxy_values(), CLASSES[kind](200, 64).proxy_values()
    assert not np.allclose(first, second)  # every loss draws its own
    mean_square, bound = INITIAL[kind]
    assert np.mean(np.square(first)) == pytest.approx(mean_square, rel=0.05)
    if bound is not None:
        assert np.abs(first).max() <= bound and np.abs(first).max() > 0.95 * bound


@pytest.mark.parametrize(
    "kind, arguments, message",
    [
        ("arcface", {"margin": math.pi}, "radians"),
        ("arcface", {"margin": -0.1}, "radians"),
        ("arcface", {"scale": 0.0}, "scale"),
        ("subcenter_arcface", {"margin": 28.6}, "degrees"),
        ("subcenter_arcface", {"scale": -1.0}, "scale"),
        ("cosface", {"margin": float("nan")}, "margin"),
        ("cosface", {"scale": float("inf")}, "scale"),
        ("sphereface", {"margin": 2.5}, "integer"),
        ("sphereface", {"margin": 0}, "integer"),
        ("large_margin_softmax", {"margin": True}, "integer"),
        ("large_margin_softmax", {"scale": 0}, "scale"),
        ("normalized_softmax", {"temperature": 0.0}, "temperature"),
    ],
)
def test_invalid_arguments(kind, arguments, message):
    with pytest.raises(ValueError, match=message):
        CLASSES[kind](3, 2, **arguments)
    x, labels, w = random_case(kind, 2, 3, 2, seed=0)
    with pytest.raises(ValueError, match=message):
        FUNCTIONS[kind](labels, x, w, **arguments)


@pytest.mark.parametrize("kind", KINDS)
def test_class_vector_shapes_are_checked(kind):
    x, labels, w = random_case(kind, 2, 3, 4, seed=0)
    wrong = w[:, 0] if w.ndim == 3 else w[:, None]
    with pytest.raises(ValueError, match="shape"):
        FUNCTIONS[kind](labels, x, wrong)
    with pytest.raises(ValueError, match="size 3 for class vectors of size 4"):
        FUNCTIONS[kind](labels, x[:, :3], w)


def expected_logits(kind, loss, x, w):
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    if w.ndim == 3:
        cosine = np.einsum("nd,ckd->nck", unit(x), unit(w)).max(axis=2)
    else:
        cosine = unit(x) @ unit(w).T
    if kind == "normalized_softmax":
        return cosine / loss.temperature
    logits = loss.scale * cosine
    if kind in ("sphereface", "large_margin_softmax"):
        logits *= np.linalg.norm(x, axis=1)[:, None]
    if kind == "large_margin_softmax":
        logits *= np.linalg.norm(w, axis=1)[None, :]
    return logits


@pytest.mark.parametrize("kind", KINDS)
def test_logits_and_predicted_classes(kind):
    x, _, w = random_case(kind, N, C, D, seed=13)
    loss, _ = class_and_options(kind)
    loss.set_proxies(w)
    np.testing.assert_allclose(numpy(loss.logits(x)), expected_logits(kind, loss, x, w), rtol=1e-5, atol=1e-5)
    # Class vectors of different lengths, orthogonal: each is recognised as its class.
    rng = np.random.default_rng(14)
    k = loss.centers_per_class or 1
    basis = np.linalg.qr(rng.normal(size=(3 * k, 3 * k)))[0] * rng.uniform(0.5, 3.0, size=(3 * k, 1))
    vectors = basis.reshape(proxies_shape(kind, 3, 3 * k, k) if k > 1 else (3, 3)).astype("float32")
    loss, _ = class_and_options(kind, dim=3 * k)
    loss.set_proxies(vectors)
    members = vectors.reshape(3 * k, 3 * k)  # every vector (every sub-centre), class-major
    predicted = numpy(loss.predict_classes(members))
    np.testing.assert_array_equal(predicted, np.repeat(np.arange(3), k))


# ---------------------------------------------------------------- compiled, precisions


@pytest.mark.parametrize("kind", KINDS)
def test_compiled(kind):
    # XLA under TensorFlow, jit under JAX (PyTorch runs eagerly): once per
    # loss. (The classes train under XLA in tests/test_proxies.py.)
    x, labels, w = random_case(kind, N, C, D, seed=15)
    want, want_x, want_w = reference(kind, labels, x, w)
    value, grad_x, grad_w = loss_and_gradients(kind, x, labels, w, compiled=True)
    assert value == pytest.approx(want, rel=1e-4)
    assert_gradient_close(grad_x, want_x, 2e-3)
    assert_gradient_close(grad_w, want_w, 2e-3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_precisions(kind, dtype):
    if dtype == "float64" and BACKEND == "jax":
        pytest.skip("JAX runs without x64: its float64 is float32")
    x, labels, w = random_case(kind, N, C, D, seed=16)
    typed = tensor(x, dtype)
    values = FUNCTIONS[kind](labels, typed, w)
    assert keras.backend.standardize_dtype(values.dtype) == ("float64" if dtype == "float64" else "float32")
    as_float = numpy(tensor(typed, "float32")).astype("float64")
    want = reference_losses(kind, labels, as_float, w.astype("float64"), {})
    np.testing.assert_allclose(numpy(values).astype("float64"), want, rtol=1e-4, atol=1e-5)
    loss = CLASSES[kind](C, D)
    loss.set_proxies(w)
    value = loss(labels, typed)
    assert keras.backend.standardize_dtype(value.dtype) in ("float32", "float64")
    assert float(numpy(value)) == pytest.approx(want.mean(), rel=1e-4)
    if dtype == "float16":
        _, grad = value_and_grad(lambda e: loss(labels, e), x.astype("float16"))
        assert np.all(np.isfinite(np.asarray(grad, "float32")))
