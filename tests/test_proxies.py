"""What every loss with class vectors shares: training in plain `fit`, saving, the learning-rate
multiplier, class ids out of range, mixed precision, the classifier. (The math of each loss and its
parity with PyTorch Metric Learning: tests/test_margin_softmax.py, tests/test_proxy_metric.py.)"""

import keras
import numpy as np
import pytest

import tfmetric as tfm
from tfmetric.losses.proxy import ProxyLoss
from tfmetric.losses.registry import PROXY_FAMILIES, PROXY_LOSSES

from conftest import BACKEND, FIT_JIT_COMPILE, no_warnings, slow_on_jax

CLASSES, DIM = 5, 4
rng = np.random.default_rng(0)
LABELS = np.repeat(np.arange(CLASSES), 16)
CENTRES = rng.normal(size=(CLASSES, 8)) * 2
FEATURES = (CENTRES[LABELS] + rng.normal(size=(len(LABELS), 8))).astype("float32")


def new_model(entry, **overrides):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(DIM)])
    model.compile(
        optimizer=keras.optimizers.Adam(0.01), loss=entry.build(CLASSES, DIM, **overrides),
        jit_compile=FIT_JIT_COMPILE[0],  # XLA: tests/test_margin_softmax.py, tests/test_proxy_metric.py
    )
    return model


def test_the_registry_lists_every_proxy_loss_once():
    classes = {entry.loss_class for entry in PROXY_LOSSES.values()}
    assert len(classes) == len(PROXY_LOSSES) == 11
    assert all(issubclass(cls, ProxyLoss) for cls in classes)
    assert {entry.family for entry in PROXY_LOSSES.values()} == set(PROXY_FAMILIES)
    for entry in PROXY_LOSSES.values():
        assert getattr(tfm, entry.loss_class.__name__) is entry.loss_class
        assert getattr(tfm.losses, entry.function.__name__) is entry.function


# L-Softmax's multiplicative margin of 4 trains the slowest (its paper anneals
# it in); 2 shows the same mechanics within the test's few steps.
EASIER = {"large_margin_softmax": {"margin": 2}}


@pytest.mark.parametrize("key", PROXY_LOSSES)
def test_fit_trains_the_class_vectors_and_saves_them(key, tmp_path):
    model = new_model(PROXY_LOSSES[key], **EASIER.get(key, {}))
    loss = model.loss
    before = loss.proxy_values()
    assert loss.proxies.dtype == "float32" and tuple(loss.proxies.shape)[-1] == DIM
    assert any(v is loss.proxies for v in model.trainable_variables)  # joined in compile
    with no_warnings():
        history = model.fit(FEATURES, LABELS, batch_size=20, epochs=20, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0], history
    assert not np.allclose(loss.proxy_values(), before)
    # Used as a classifier, the class vectors recognise the training data.
    embeddings = model.predict(FEATURES, verbose=0)
    predicted = keras.ops.convert_to_numpy(loss.predict_classes(embeddings))
    assert np.mean(predicted == LABELS) > 0.75, key  # chance: 0.2
    logits = keras.ops.convert_to_numpy(loss.logits(embeddings))
    assert logits.shape == (len(LABELS), CLASSES)
    np.testing.assert_array_equal(np.argmax(logits, axis=1), predicted)

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(loaded.loss) is type(loss) and loaded.loss.get_config() == loss.get_config()
    np.testing.assert_array_equal(loaded.loss.proxy_values(), loss.proxy_values())
    assert float(loaded.loss(LABELS, embeddings)) == pytest.approx(float(loss(LABELS, embeddings)), rel=1e-6)


def first_update(key, optimizer, multiplier):
    """How far one step moves the class vectors and the first kernel."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(DIM)])
    loss = PROXY_LOSSES[key].build(CLASSES, DIM, proxy_lr_multiplier=multiplier)
    model.compile(optimizer=optimizer, loss=loss)
    proxies, kernel = loss.proxy_values(), keras.ops.convert_to_numpy(model.layers[0].kernel)
    model.fit(FEATURES, LABELS, batch_size=len(LABELS), epochs=1, verbose=0, shuffle=False)
    return loss.proxy_values() - proxies, keras.ops.convert_to_numpy(model.layers[0].kernel) - kernel


@slow_on_jax
@pytest.mark.parametrize("key", ["arcface", "proxy_anchor"])
@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.01),
        lambda: keras.optimizers.SGD(0.01, momentum=0.9),
        lambda: keras.optimizers.Adam(1e-3),
        lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.0),
    ],
    ids=["sgd", "momentum", "adam", "adamw"],
)
def test_proxy_lr_multiplier_multiplies_the_first_update(key, optimizer):
    # Scaling the gradient would give 100× under SGD and 1× under Adam
    # (which divides by the gradient's size): the step itself must be 100×.
    proxies, kernel = first_update(key, optimizer(), 1.0)
    fast_proxies, fast_kernel = first_update(key, optimizer(), 100.0)
    moved = np.abs(proxies) > 1e-7
    assert moved.sum() > 0
    np.testing.assert_allclose(fast_proxies[moved], 100 * proxies[moved], rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(fast_kernel, kernel, rtol=1e-5, atol=1e-8)  # the network's rate is its own
    if "Adam" in type(optimizer()).__name__:
        # Adam's first step is ±lr per entry: 0.1 for the proxies, 0.001 for the network.
        assert np.max(np.abs(fast_proxies)) == pytest.approx(0.1, rel=1e-3)
        assert np.max(np.abs(kernel)) == pytest.approx(1e-3, rel=1e-3)


def test_class_vectors_can_be_set_whatever_the_multiplier():
    loss = tfm.ProxyAnchor(3, 2, proxy_lr_multiplier=100.0)
    vectors = np.arange(6, dtype="float32").reshape(3, 2)
    loss.set_proxies(vectors)
    np.testing.assert_allclose(loss.proxy_values(), vectors, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss.proxies), vectors / 100, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        loss.set_proxies(np.zeros((2, 2)))


# The base class checks the ids; Proxy Anchor reduces over proxies itself.
@pytest.mark.parametrize("key", ["arcface", "proxy_anchor"])
def test_class_ids_out_of_range_are_errors(key):
    loss = PROXY_LOSSES[key].build(3, 2)
    x = rng.normal(size=(4, 2)).astype("float32")
    for labels in ([0, 1, 2, 3], [0, -1, 2, 1], [0, 1, 2, 2**40]):
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            loss(np.asarray(labels), x)
        if BACKEND != "jax" or labels[-1] < 2**31:  # JAX without 64-bit mode wraps int64 when converting
            with pytest.raises(ValueError, match=r"\[0, 3\)"):
                loss(keras.ops.convert_to_tensor(np.asarray(labels)), x)
    with pytest.raises(ValueError, match="size 3 for class vectors of size 2"):
        loss(np.array([0, 1]), np.zeros((2, 3), "float32"))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 3\)"):
            tf.function(loss)(tf.constant([0, 1, 2, 3]), tf.constant(x))
        # XLA drops assertions: the loss says so with a NaN.
        assert np.isnan(float(tf.function(loss, jit_compile=True)(tf.constant([0, 1, 2, 3]), tf.constant(x))))
    if BACKEND == "jax":
        import jax

        assert np.isnan(float(jax.jit(loss)(jax.numpy.array([0, 1, 2, 3]), jax.numpy.asarray(x))))


# The vectors' dtype is the base class's (each loss's half-precision math:
# tests/test_margin_softmax.py, tests/test_proxy_metric.py).
@pytest.mark.parametrize("key", ["arcface", "proxy_anchor", "soft_triple"])
def test_mixed_precision_keeps_the_class_vectors_float32(key):
    keras.mixed_precision.set_global_policy("mixed_float16" if BACKEND != "jax" else "mixed_bfloat16")
    try:
        model = new_model(PROXY_LOSSES[key])
        with no_warnings():
            history = model.fit(FEATURES, LABELS, batch_size=40, epochs=1, verbose=0).history["loss"]
        assert model.outputs[0].dtype in ("float16", "bfloat16")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.loss.proxies.dtype == "float32"
    assert np.all(np.isfinite(history)) and np.all(np.isfinite(model.loss.proxy_values()))


@slow_on_jax
def test_no_batch_by_class_by_dimension_tensor():
    # 1024 classes × 256 dimensions × 64 examples would be 64 MB in float32;
    # the losses use one (N, D) × (D, C·k) product.
    classes, dim, n = 1024, 256, 64
    x = rng.normal(size=(n, dim)).astype("float32")
    y = rng.integers(0, classes, n)
    for entry in PROXY_LOSSES.values():
        loss = entry.build(classes, dim)
        if BACKEND == "tensorflow":
            import tensorflow as tf

            graph = tf.function(loss).get_concrete_function(tf.constant(y), tf.constant(x)).graph
            sizes = [
                int(np.prod(op_output.shape))
                for op in graph.get_operations()
                for op_output in op.outputs
                if op_output.shape.is_fully_defined()
            ]
            k = loss.centers_per_class or 1
            # The class vectors themselves; the manifold loss's random walk
            # needs the (N + C)² matrix of batch and vectors (documented).
            largest = max(classes * k * dim, (n + classes) ** 2 if entry.key == "manifold" else 0)
            assert max(sizes) <= largest, entry.key
        assert np.isfinite(float(loss(y, x)))
