"""Backend-neutral helpers: the loss tests run under TensorFlow and JAX."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
from hypothesis import settings

# CI runs the same examples every time (no flaky runs); locally, hypothesis
# explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

BACKEND = keras.backend.backend()


def value_and_grad(fn, x, compiled=False):
    """`(fn(x), d fn / d x)` as NumPy, eagerly or compiled (XLA / jax.jit)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def both(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = fn(x)
            return value, tape.gradient(value, x)

        if compiled:
            both = tf.function(both, jit_compile=True)
        value, grad = both(tf.convert_to_tensor(x))
        return np.asarray(value), np.asarray(grad)
    if BACKEND == "jax":
        import jax

        both = jax.value_and_grad(fn)
        if compiled:
            both = jax.jit(both)
        value, grad = both(jax.numpy.asarray(x))
        return np.asarray(value), np.asarray(grad)
    pytest.skip(f"no gradient helper for the {BACKEND} backend")


def check_against(loss, ref, x, labels, compiled=False, sample_weight=None, grad_rtol=1e-3):
    """Compares `loss(labels, x)` and its gradient with a NumPy reference.

    Gradients are compared only away from the reference's kinks (hinges,
    ties, coincident points), where they are defined.
    """
    want = ref(x.astype("float64"), labels, sample_weight=sample_weight)
    value, grad = value_and_grad(
        lambda e: loss(labels, e, sample_weight=sample_weight), x.astype("float32"), compiled
    )
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # Near a hinge, a term may count as active in one and not the other
    # (float32 distances near 0 err by ~sqrt(eps)), which moves losses
    # averaged over active terms.
    if want.kink > 1e-3:
        assert float(value) == pytest.approx(want.loss, rel=1e-4, abs=1e-5)
    if want.kink > 1e-3:
        scale = max(np.abs(want.grad).max(), 1e-6)
        np.testing.assert_allclose(grad / scale, want.grad / scale, atol=grad_rtol)
    return want


def tensor(x, dtype=None):
    return keras.ops.convert_to_tensor(x, dtype=dtype)


only_tensorflow = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow-specific")
