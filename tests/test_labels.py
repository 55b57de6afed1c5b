import keras
import numpy as np
import pytest

import tfmetric as tfm
from tfmetric.labels import standardize_labels

from conftest import BACKEND, only_tensorflow, tensor

EMBEDDINGS = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]], "float32")
LOSS = tfm.BatchHardTriplet(margin=1.0)


def reference_loss():
    return float(LOSS(np.array([0, 0, 1, 1]), EMBEDDINGS))


@pytest.mark.parametrize(
    "labels",
    [
        np.array([2**53, 2**53, 2**53 + 1, 2**53 + 1], "int64"),
        np.array([2**24, 2**24, 2**24 + 1, 2**24 + 1], "float64"),
        np.array([[7], [7], [-3], [-3]], "int16"),
        [5, 5, 6, 6],
        np.array([1.0, 1.0, 2.0, 2.0], "float32"),
    ],
    ids=["int64>2**53", "float64>2**24", "column-int16", "list", "float32"],
)
def test_labels_keep_their_identity(labels):
    assert float(LOSS(labels, EMBEDDINGS)) == pytest.approx(reference_loss(), rel=1e-6)


@only_tensorflow
def test_int64_tensor_labels_are_compared_exactly():
    import tensorflow as tf

    labels = tf.constant([2**53, 2**53, 2**53 + 1, 2**53 + 1], tf.int64)
    assert float(LOSS(labels, EMBEDDINGS)) == pytest.approx(reference_loss(), rel=1e-6)
    run = tf.function(lambda y, x: LOSS(y, x), jit_compile=True)
    assert float(run(labels, EMBEDDINGS)) == pytest.approx(reference_loss(), rel=1e-6)


def test_merged_labels_would_change_the_loss():
    # The identity test above can fail: merging the two classes changes the value.
    assert float(LOSS(np.zeros(4), EMBEDDINGS)) != pytest.approx(reference_loss())


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.eye(4), "one-hot"),
        (np.array([0.0, 0.5, 1.0, 1.0]), "non-integral"),
        (np.array([0.0, np.nan, 1.0, 1.0]), "finite"),
        (np.array([0, 0, 1]), "batch size"),
        (np.zeros((4, 1, 1)), "shape"),
        (np.array(["a", "a", "b", "b"]), "numeric"),
    ],
)
def test_bad_labels_are_named(labels, message):
    with pytest.raises(ValueError, match=message):
        LOSS(labels, EMBEDDINGS)


@pytest.mark.parametrize(
    "labels, message",
    [(np.eye(4, dtype="float32"), "one-hot"), (np.array([0.0, 0.5, 1.0, 1.0], "float32"), "non-integral")],
)
def test_bad_label_tensors_are_named_eagerly(labels, message):
    with pytest.raises(ValueError, match=message):
        LOSS(tensor(labels), EMBEDDINGS)


@only_tensorflow
def test_bad_labels_fail_inside_a_graph():
    import tensorflow as tf

    run = tf.function(lambda y, x: LOSS(y, x))
    with pytest.raises(tf.errors.InvalidArgumentError, match="integral"):
        run(tf.constant([0.0, 0.5, 1.0, 1.0]), EMBEDDINGS)
    run = tf.function(
        lambda y, x: LOSS(y, x),
        input_signature=[tf.TensorSpec([None]), tf.TensorSpec([None, 2])],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch size"):
        run(tf.constant([0.0, 1.0, 1.0]), EMBEDDINGS)


def test_standardized_labels_are_flat():
    labels = standardize_labels(np.array([[3], [1], [3]]))
    assert tuple(labels.shape) == (3,)
    assert list(np.asarray(labels)) == [1, 0, 1]
    if BACKEND == "jax":
        assert keras.backend.standardize_dtype(labels.dtype) == "int32"
