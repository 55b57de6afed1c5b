"""Multi-label batches: the losses with `multi_label=True` train a model, and what refuses them says so.

The values against NumPy references with multi-hot labels are in
`test_reference_sets.py`; the retrieval metrics in `test_evaluation.py`.
"""

import keras
import numpy as np
import pytest

import tfmetric as tfm

from conftest import FIT_JIT_COMPILE, only_tensorflow


def tagged_data(n=96, num_tags=5, dim=8, seed=0):
    """Examples with one or two of `num_tags` tags; an example's features are the sum of its tags' centres."""
    rng = np.random.default_rng(seed)
    tags = np.zeros((n, num_tags), "float32")
    tags[np.arange(n), rng.integers(0, num_tags, n)] = 1
    second = rng.random(n) < 0.4
    tags[np.flatnonzero(second), rng.integers(0, num_tags, second.sum())] = 1
    centres = rng.normal(size=(num_tags, dim)) * 2
    x = (tags @ centres + rng.normal(size=(n, dim))).astype("float32")
    return x, tags


@pytest.mark.parametrize(
    "loss", [tfm.BatchHardTriplet(margin=0.5, multi_label=True), tfm.MultiSimilarity(multi_label=True)]
)
def test_a_model_trains_on_multi_hot_labels(loss):
    keras.utils.set_random_seed(0)
    x, tags = tagged_data()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, jit_compile=FIT_JIT_COMPILE[-1])
    before = tfm.evaluation.retrieval_metrics(model.predict(x, verbose=0), tags, nmi=False, multi_label=True)
    history = model.fit(x, tags, batch_size=32, epochs=10, verbose=0).history["loss"]
    after = tfm.evaluation.retrieval_metrics(model.predict(x, verbose=0), tags, nmi=False, multi_label=True)
    assert all(np.isfinite(history)) and history[-1] < history[0]
    assert after["map@r"] > before["map@r"]


def test_multi_label_is_asked_for_explicitly():
    x, tags = tagged_data(n=8)
    # (N, 1) stays class ids; (N, C) without the flag is refused as one-hot.
    with pytest.raises(ValueError, match="one-hot"):
        tfm.BatchHardTriplet()(tags, x)
    single = tfm.BatchHardTriplet(multi_label=True)(np.eye(8)[np.arange(8) % 3][:, :3], x)
    assert float(single) == pytest.approx(float(tfm.BatchHardTriplet()(np.arange(8) % 3, x)), rel=1e-6)
    with pytest.raises(ValueError, match="only 0 and 1"):
        tfm.Contrastive(multi_label=True)(tags * 2, x)
    # Round trip of the configuration.
    loss = tfm.Circle(multi_label=True)
    assert tfm.Circle.from_config(loss.get_config()).multi_label


def test_what_needs_single_labels_says_so():
    with pytest.raises(ValueError, match="class ids"):
        tfm.CrossBatchMemory(tfm.Contrastive(multi_label=True), memory_size=16)
    with pytest.raises(ValueError, match="multi_label"):
        tfm.MarginLoss(learn_beta=True, num_classes=3, multi_label=True)


@only_tensorflow
def test_sparse_multi_hot_labels():
    import tensorflow as tf

    x, tags = tagged_data(n=12)
    dense = tfm.SemiHardTriplet(multi_label=True)(tags, x)
    sparse = tfm.SemiHardTriplet(multi_label=True)(tf.sparse.from_dense(tags), x)
    assert float(sparse) == pytest.approx(float(dense), rel=1e-6)


def test_pure_functions_take_multi_hot_references():
    x, tags = tagged_data(n=10)
    losses = tfm.losses.contrastive(tags[:4], x[:4], tags, x, multi_label=True, remove_diagonal=True)
    assert keras.ops.shape(losses) == (4,) and np.all(np.isfinite(keras.ops.convert_to_numpy(losses)))
    with pytest.raises(ValueError, match="5 classes against reference labels with 4"):
        tfm.losses.contrastive(tags, x, tags[:, :4], x, multi_label=True)
