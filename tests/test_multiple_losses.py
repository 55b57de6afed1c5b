"""`MultipleLosses`: several losses on one output, against the NumPy references of its parts."""

import keras
import numpy as np
import pytest

import tfmetric as tfm

import reference
from conftest import BACKEND, COMPILE_MODES, FIT_JIT_COMPILE, value_and_grad

RNG = np.random.default_rng(3)
X = RNG.normal(size=(12, 4)).astype("float32")
LABELS = np.repeat(np.arange(4), 3)


def combined():
    return tfm.MultipleLosses([tfm.BatchHardTriplet(margin=0.5), tfm.MultiSimilarity()], weights=[2.0, 0.25])


def _value(x, labels):
    return COMBINED(labels, x)


COMBINED = combined()


@pytest.mark.parametrize("compiled", COMPILE_MODES)
def test_is_the_weighted_sum_of_its_losses(compiled):
    hard = reference.batch_hard(X, LABELS, margin=0.5)
    similarity = reference.multi_similarity(X, LABELS)
    value, grad = value_and_grad(_value, X, LABELS, compiled=compiled)
    np.testing.assert_allclose(value, 2.0 * hard.loss + 0.25 * similarity.loss, rtol=1e-5)
    np.testing.assert_allclose(grad, 2.0 * hard.grad + 0.25 * similarity.grad, rtol=1e-3, atol=1e-5)


def test_weights_by_name_and_defaults():
    parts = {"triplet": tfm.BatchHardTriplet(margin=0.5), "similarity": tfm.MultiSimilarity()}
    by_name = tfm.MultipleLosses(parts, weights={"similarity": 0.25})
    expected = reference.batch_hard(X, LABELS, margin=0.5).loss + 0.25 * reference.multi_similarity(X, LABELS).loss
    np.testing.assert_allclose(float(by_name(LABELS, X)), expected, rtol=1e-5)
    unweighted = tfm.MultipleLosses(list(parts.values()))
    assert unweighted.weights == [1.0, 1.0]


def test_labels_reach_the_losses_exactly():
    # Two classes whose ids differ by 1 above 2**53: a cast to float64 merges them.
    labels = np.array([2**60, 2**60, 2**60 + 1, 2**60 + 1], dtype="int64")
    x = X[:4]
    loss = tfm.MultipleLosses([tfm.BatchHardTriplet(margin=0.5)])
    expected = reference.batch_hard(x, np.array([0, 0, 1, 1]), margin=0.5).loss
    if BACKEND == "jax":
        pytest.skip("JAX without x64 holds int32 labels (tests/test_labels.py)")
    np.testing.assert_allclose(float(loss(labels, x)), expected, rtol=1e-5)


def test_config_round_trip():
    parts = {"triplet": tfm.BatchHardTriplet(margin=0.3), "arcface": tfm.ArcFace(3, 4)}
    loss = tfm.MultipleLosses(parts, weights={"arcface": 0.5}, name="both")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, tfm.MultipleLosses) and restored.name == "both"
    assert restored.names == ["triplet", "arcface"] and restored.weights == [1.0, 0.5]
    assert restored.losses[0].margin == 0.3 and restored.losses[1].num_classes == 3
    assert restored.get_config() == loss.get_config()


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        tfm.MultipleLosses([])
    with pytest.raises(ValueError, match="2 weights for 1 losses"):
        tfm.MultipleLosses([tfm.Circle()], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="unknown losses"):
        tfm.MultipleLosses({"circle": tfm.Circle()}, weights={"nca": 1.0})
    with pytest.raises(ValueError, match="as a dict"):
        tfm.MultipleLosses([tfm.Circle()], weights={"circle": 1.0})
    with pytest.raises(TypeError, match="Keras loss"):
        tfm.MultipleLosses([3])


def test_the_states_inside_train_and_save_with_the_model(tmp_path):
    """A proxy loss inside: its class vectors join the model in compile, train, and reload exactly."""
    keras.utils.set_random_seed(0)
    arcface = tfm.ArcFace(num_classes=4, embedding_dim=4)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=tfm.MultipleLosses([tfm.BatchHardTriplet(margin=0.5), arcface], weights=[1.0, 0.1]),
        jit_compile=FIT_JIT_COMPILE[-1],
    )
    assert any(v is arcface.proxies for v in model.trainable_variables)
    before = keras.ops.convert_to_numpy(arcface.proxies)
    model.fit(X, LABELS, batch_size=12, epochs=3, verbose=0)
    assert not np.allclose(keras.ops.convert_to_numpy(arcface.proxies), before)
    expected = model.evaluate(X, LABELS, batch_size=12, verbose=0)
    model.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras")
    assert restored.evaluate(X, LABELS, batch_size=12, verbose=0) == pytest.approx(expected, rel=1e-6)
