import functools

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tfmetric as tfm

import recorded
import reference
from conftest import COMPILE_MODES, value_and_grad

DISTANCES = tfm.distances.DISTANCES


# ---------------------------------------------------------------- references (loops)


def reference_pair_contrastive(distances, similar, margin):
    losses, grads = [], []
    for d, y in zip(distances, similar):
        if y:
            losses.append(d * d)
            grads.append(2 * d)
        else:
            gap = max(margin - d, 0.0)
            losses.append(gap * gap)
            grads.append(-2 * gap)
    n = len(losses)
    return np.mean(losses), np.array(grads) / n


def reference_offline_triplet(triplets, margin, distance, soft):
    """Mean loss and its gradient, each triplet as a batch of 3 rows."""
    losses, grads = [], np.zeros_like(triplets)
    kink = np.inf
    for i, rows in enumerate(triplets):
        d = reference.distance_matrix(rows, distance)
        gap = d[0, 1] - d[0, 2]
        if soft:
            losses.append(np.logaddexp(0.0, gap))
            slope = 1.0 / (1.0 + np.exp(-gap))
        else:
            losses.append(max(gap + margin, 0.0))
            slope = float(gap + margin > 0)
            kink = min(kink, abs(gap + margin))
        dloss_dd = np.zeros((3, 3))
        dloss_dd[0, 1], dloss_dd[0, 2] = slope, -slope
        grads[i] = reference.chain_distance_gradient(rows, distance, False, dloss_dd)
    return np.mean(losses), grads / len(triplets), kink


def reference_hinge(scores, classes, margin, aggregate):
    losses, grads = [], np.zeros_like(scores)
    kink = np.inf
    for i, (row, y) in enumerate(zip(scores, classes)):
        violations = {j: row[j] - row[y] + margin for j in range(len(row)) if j != y}
        kink = min([kink] + [abs(v) for v in violations.values()])
        if aggregate == "sum":
            losses.append(sum(max(v, 0.0) for v in violations.values()))
            for j, v in violations.items():
                if v > 0:
                    grads[i, j] += 1
                    grads[i, y] -= 1
        else:
            worst = max(violations, key=violations.get, default=None)
            if worst is None:
                losses.append(0.0)
                continue
            values = sorted(violations.values())
            if len(values) > 1:
                kink = min(kink, values[-1] - values[-2])
            losses.append(max(violations[worst], 0.0))
            if violations[worst] > 0:
                grads[i, worst] += 1
                grads[i, y] -= 1
    return np.mean(losses), grads / len(scores), kink


def assert_grad_close(got, want, atol=1e-3):
    scale = max(np.abs(want).max(), 1e-6)
    np.testing.assert_allclose(got / scale, want / scale, atol=atol)


# ---------------------------------------------------------------- PairContrastive


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**31), margin=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_pair_contrastive_matches_brute_force(n, seed, margin):
    rng = np.random.default_rng(seed)
    distances = rng.uniform(0, 3, size=n).astype("float32")
    similar = rng.integers(0, 2, size=n)
    want, want_grad = reference_pair_contrastive(distances.astype("float64"), similar, margin)
    loss = tfm.PairContrastive(margin=margin)
    for compiled in COMPILE_MODES:
        value, grad = value_and_grad(lambda d: loss(similar, d), distances, compiled=compiled)
        assert float(value) == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert_grad_close(grad, want_grad)


@pytest.mark.parametrize("peer, index, case", recorded.cases("tfa", ["pair_contrastive"]))
def test_pair_contrastive_reproduces_tf_addons(peer, index, case):
    distances, similar, recorded_grad = recorded.arrays(peer, index)
    loss = tfm.PairContrastive(margin=case["cfg"]["margin"])
    value, grad = value_and_grad(lambda d: loss(similar, d), distances.astype("float32"))
    assert abs(float(value) - case["loss"]) <= 1e-4 * abs(case["loss"])
    np.testing.assert_allclose(grad, recorded_grad, rtol=1e-4, atol=1e-6)


def test_pair_contrastive_shapes_and_weights():
    loss = tfm.PairContrastive(margin=1.0, reduction=None)
    per_pair = loss(np.array([[1], [0], [0]]), np.array([[0.5], [0.25], [3.0]], "float32"))
    np.testing.assert_allclose(np.asarray(per_pair), [0.25, 0.5625, 0.0])
    weighted = tfm.PairContrastive(margin=1.0)([1, 0], [0.5, 0.25], sample_weight=[2.0, 0.0])
    assert float(weighted) == pytest.approx(0.25)


# ---------------------------------------------------------------- TripletLoss


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 24),
    dim=st.integers(1, 8),
    seed=st.integers(0, 2**31),
    distance=st.sampled_from(DISTANCES),
    margin=st.sampled_from([0.0, 0.2, 1.0]),
    soft=st.booleans(),
)
def test_offline_triplet_matches_brute_force(n, dim, seed, distance, margin, soft):
    triplets = np.random.default_rng(seed).normal(size=(n, 3, dim)).astype("float32")
    want, want_grad, kink = reference_offline_triplet(triplets.astype("float64"), margin, distance, soft)
    loss = tfm.TripletLoss(margin=margin, distance=distance, soft=soft)
    value, grad = value_and_grad(lambda t: loss(np.zeros(n), t), triplets)
    assert float(value) == pytest.approx(want, rel=1e-4, abs=1e-5)
    if kink > 1e-3:
        assert_grad_close(grad, want_grad)


@functools.lru_cache(maxsize=None)
def triplet_loss(distance):
    """`(triplets, labels) -> loss`, one per distance: compiled once."""
    loss = tfm.TripletLoss(margin=0.5, distance=distance)
    return lambda triplets, labels: loss(labels, triplets)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("scale", [0.0, 1.0, 1e-30, 1e15])
def test_offline_triplet_degenerate_is_finite(distance, scale):
    # Anchor, positive and negative all equal: every distance is 0.
    triplets = np.ones((4, 3, 5), "float32") * np.float32(scale)
    for compiled in COMPILE_MODES:
        value, grad = value_and_grad(triplet_loss(distance), triplets, np.zeros(4), compiled=compiled)
        assert float(value) == pytest.approx(0.5)
        assert np.all(np.isfinite(grad))


def test_offline_triplet_huge_values():
    triplets = np.array([[[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]], "float32") * np.float32(1e30)
    value, grad = value_and_grad(lambda t: tfm.TripletLoss(margin=0.0)(np.zeros(1), t), triplets)
    assert float(value) == 0.0 and np.all(np.isfinite(grad))
    value = tfm.TripletLoss(margin=6e30)(np.zeros(1), triplets)
    assert float(value) == pytest.approx(1e30, rel=1e-5)


def test_offline_triplet_shape_error():
    with pytest.raises(ValueError, match="anchor, positive, negative"):
        tfm.TripletLoss()(np.zeros(2), np.zeros((2, 2, 4)))


# ---------------------------------------------------------------- MulticlassHinge


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 32),
    num_classes=st.integers(1, 10),
    seed=st.integers(0, 2**31),
    margin=st.sampled_from([0.0, 0.1, 1.0, 5.0]),
    aggregate=st.sampled_from(["sum", "max"]),
)
def test_multiclass_hinge_matches_brute_force(n, num_classes, seed, margin, aggregate):
    rng = np.random.default_rng(seed)
    scores = (rng.normal(size=(n, num_classes)) * 3).astype("float32")
    classes = rng.integers(0, num_classes, size=n)
    want, want_grad, kink = reference_hinge(scores.astype("float64"), classes, margin, aggregate)
    loss = tfm.MulticlassHinge(margin=margin, aggregate=aggregate)
    for compiled in COMPILE_MODES:
        value, grad = value_and_grad(lambda s: loss(classes, s), scores, compiled=compiled)
        assert float(value) == pytest.approx(want, rel=1e-5, abs=1e-5)
        if kink > 1e-3:
            assert_grad_close(grad, want_grad)


def test_multiclass_hinge_any_margin_unlike_keras_hinge():
    scores = np.array([[3.0, 1.0, 0.0]], "float32")
    assert float(tfm.MulticlassHinge(margin=1.0)([0], scores)) == 0.0
    # With margin 2.5 the second class violates by 0.5.
    assert float(tfm.MulticlassHinge(margin=2.5)([0], scores)) == pytest.approx(0.5)
    assert float(tfm.MulticlassHinge(margin=4.0, aggregate="max")([0], scores)) == pytest.approx(2.0)


def test_multiclass_hinge_errors():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        tfm.MulticlassHinge()([3], np.zeros((1, 3)))
    with pytest.raises(ValueError, match="aggregate"):
        tfm.MulticlassHinge(aggregate="mean")
    with pytest.raises(ValueError, match="num_classes"):
        tfm.MulticlassHinge()([0], np.zeros((1, 3, 2)))


# ---------------------------------------------------------------- Keras integration


@pytest.mark.parametrize(
    "loss",
    [
        tfm.PairContrastive(margin=0.7, reduction="sum", name="pc"),
        tfm.TripletLoss(margin=0.3, distance="cosine", soft=True),
        tfm.MulticlassHinge(margin=2.0, aggregate="max"),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_config_round_trip(loss):
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()


def test_siamese_model_trains_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6)) * 2
    a_class, b_class = rng.integers(0, 4, 256), rng.integers(0, 4, 256)
    left = (centres[a_class] + rng.normal(size=(256, 6))).astype("float32")
    right = (centres[b_class] + rng.normal(size=(256, 6))).astype("float32")
    similar = (a_class == b_class).astype("float32")
    encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
    inputs = [keras.Input((6,)), keras.Input((6,))]
    distance = tfm.layers.PairDistance()([encoder(inputs[0]), encoder(inputs[1])])
    model = keras.Model(inputs, distance)
    model.compile(keras.optimizers.Adam(0.01), loss=tfm.PairContrastive(margin=2.0))
    history = model.fit([left, right], similar, batch_size=32, epochs=5, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    path = tmp_path / "siamese.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(
        restored.predict([left, right], verbose=0), model.predict([left, right], verbose=0), rtol=1e-5
    )
    assert isinstance(restored.loss, tfm.PairContrastive)


def test_classifier_with_hinge_trains():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)).astype("float32")
    y = np.argmax(x[:, :3], axis=1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(0.05), loss=tfm.MulticlassHinge(margin=2.0))
    history = model.fit(x, y, batch_size=50, epochs=10, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
