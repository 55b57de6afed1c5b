"""The losses inside Keras: compile, fit, save/load, metrics, mixed precision."""

import keras
import numpy as np
import pytest
from conftest import BACKEND

import tfmetric as tfm

LOSSES = [
    tfm.BatchHardTriplet(margin=0.5),
    tfm.BatchHardTriplet(soft=True, distance="squared_euclidean"),
    tfm.BatchAllTriplet(margin=0.2, distance="cosine", average="all"),
    tfm.SemiHardTriplet(margin=0.3, normalize=True),
    tfm.Contrastive(margin=1.0, negatives="hard"),
    tfm.MarginLoss(seed=0),
]


def clustered_data(n=96, classes=6, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    centres = rng.normal(size=(classes, dim)) * 2
    x = (centres[labels] + rng.normal(size=(n, dim))).astype("float32")
    order = rng.permutation(n)
    return x[order], labels[order].astype("int64")


def embedding_model(dim=10):
    return keras.Sequential([keras.Input((dim,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])


def grouped(x, y, batch_size=24):
    """Batches of whole classes (4 classes x 6), as a P×K sampler gives."""
    order = np.argsort(y, kind="stable")
    return x[order], y[order]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_lowers_the_loss(loss, jit_compile):
    keras.utils.set_random_seed(0)
    x, y = grouped(*clustered_data())
    model = embedding_model()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=loss,
        metrics=[tfm.metrics.ActiveTripletFraction(margin=0.2)],
        jit_compile=jit_compile,
    )
    history = model.fit(x, y, batch_size=24, epochs=8, shuffle=False, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
    assert 0.0 <= history["active_triplet_fraction"][-1] <= 1.0


def test_saved_model_keeps_the_loss_and_metric(tmp_path):
    x, y = grouped(*clustered_data())
    model = embedding_model()
    model.compile(
        optimizer="adam",
        loss=tfm.SemiHardTriplet(margin=0.3, distance="cosine"),
        metrics=[tfm.metrics.ActiveTripletFraction(margin=0.3, distance="cosine")],
    )
    model.fit(x, y, batch_size=24, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)  # no custom_objects
    assert isinstance(restored.loss, tfm.SemiHardTriplet)
    assert restored.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    before = model.evaluate(x, y, batch_size=24, verbose=0, return_dict=True)
    after = restored.evaluate(x, y, batch_size=24, verbose=0, return_dict=True)
    assert after == pytest.approx(before, rel=1e-5)
    restored.fit(x, y, batch_size=24, epochs=1, verbose=0)


def test_sample_weight_through_fit():
    x, y = grouped(*clustered_data())
    model = embedding_model()
    model.compile(optimizer="adam", loss=tfm.BatchHardTriplet())
    weights = np.ones(len(y), "float32")
    unweighted = model.evaluate(x, y, batch_size=96, verbose=0)
    weighted = model.evaluate(x, y, sample_weight=weights * 3, batch_size=96, verbose=0)
    assert weighted == pytest.approx(unweighted, rel=1e-5)
    weights[y == 0] = 0
    assert model.evaluate(x, y, sample_weight=weights, batch_size=96, verbose=0) != pytest.approx(unweighted)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("make_loss", [lambda: tfm.BatchAllTriplet(margin=0.2), lambda: tfm.MarginLoss(learn_beta=True)])
def test_mixed_precision(policy, make_loss):
    keras.mixed_precision.set_global_policy(policy)
    try:
        x, y = grouped(*clustered_data())
        model = embedding_model()
        model.compile(optimizer="adam", loss=make_loss())
        history = model.fit(x, y, batch_size=24, epochs=2, verbose=0).history
        assert all(np.isfinite(history["loss"]))
        out = model(x[:24])
        value = make_loss()(y[:24], out)
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert np.isfinite(float(value))
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute")
def test_mirrored_strategy_runs():
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    x, y = grouped(*clustered_data())
    for make_loss in (lambda: tfm.BatchHardTriplet(margin=0.5), lambda: tfm.MarginLoss(learn_beta=True, seed=0)):
        with strategy.scope():
            model = embedding_model()
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss=make_loss())
        history = model.fit(x, y, batch_size=24, epochs=2, verbose=0).history
        assert all(np.isfinite(history["loss"]))
    assert model.loss.beta_value() != pytest.approx(1.2)
