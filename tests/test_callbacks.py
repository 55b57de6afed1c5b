"""Callbacks: retrieval metrics in the history, the collapse warning."""

import warnings

import keras
import numpy as np
import pytest

import tfmetric as tfm


def clustered(n=120, classes=6, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    x = (rng.normal(size=(classes, dim))[labels] * 3 + rng.normal(size=(n, dim))).astype("float32")
    return x, labels


def test_retrieval_evaluation_logs_the_metrics_every_n_epochs():
    keras.utils.set_random_seed(0)
    x, y = clustered()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(optimizer="adam", loss=tfm.BatchHardTriplet(margin=0.5))
    callback = tfm.callbacks.RetrievalEvaluation(x, y, k=(1, 5), every_n_epochs=2)
    history = model.fit(
        tfm.data.pk_sampler(x, y, 3, 4, seed=0), epochs=4, shuffle=False, verbose=0, callbacks=[callback]
    ).history
    # Logged at epochs 2 and 4 only.
    assert len(history["val_map@r"]) == 2 and len(history["loss"]) == 4
    want = tfm.evaluation.retrieval_metrics(model.predict(x, verbose=0), y, k=(1, 5), nmi=False)
    assert history["val_precision@1"][-1] == pytest.approx(want["precision@1"])
    assert history["val_recall@5"][-1] == pytest.approx(want["recall@5"])


def test_collapse_is_reported_plainly():
    x, y = clustered()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, kernel_initializer="zeros", bias_initializer="ones")])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=tfm.BatchHardTriplet(margin=0.5))
    with pytest.warns(tfm.callbacks.EmbeddingCollapseWarning, match="collapsed after epoch 1"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[tfm.callbacks.RetrievalEvaluation(x, y)])
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not tfm.callbacks.check_collapse(rng.normal(size=(50, 4)))
    with pytest.warns(tfm.callbacks.EmbeddingCollapseWarning):
        assert tfm.callbacks.check_collapse(np.ones((50, 4)) + rng.normal(size=(50, 4)) * 1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="together"):
        tfm.callbacks.RetrievalEvaluation(np.zeros((2, 2)), [0, 1], reference=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="every_n_epochs"):
        tfm.callbacks.RetrievalEvaluation(np.zeros((2, 2)), [0, 1], every_n_epochs=0)
