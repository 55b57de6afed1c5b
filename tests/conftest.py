"""Backend-neutral helpers: the loss tests run under TensorFlow, JAX and PyTorch."""

import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path

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

REPOSITORY = Path(__file__).resolve().parents[1]


def _refuse_reading_beside_the_repository():
    """Makes a test that opens a file beside the repository fail.

    A user's clone has nothing beside it (no shared folder): whatever a test
    reads must be in the repository, an installed package, or a temporary
    directory. Checked for every file this process opens; the test of the
    test sources (`test_repository.py`) covers the other processes.
    """
    beside = str(REPOSITORY.parent) + os.sep
    inside = str(REPOSITORY) + os.sep
    environments = tuple(str(Path(path).resolve()) + os.sep for path in (sys.prefix, sys.base_prefix))
    temporary = str(Path(tempfile.gettempdir()).resolve()) + os.sep

    def allowed(path):
        if path.startswith((inside, *environments)):
            return True
        if not path.startswith(temporary):
            return False
        # A clone inside the temporary directory: only pytest's and
        # tempfile's own folders there, not the clone's neighbours.
        return not inside.startswith(temporary) or path[len(temporary) :].startswith(("pytest-of-", "tmp"))

    def hook(event, args):
        if event != "open" or not isinstance(args[0], (str, os.PathLike)):
            return
        path = os.path.abspath(args[0])
        if path.startswith(beside) and not allowed(path + os.sep):
            raise RuntimeError(f"Tests must not read outside the repository; opened {path}.")

    sys.addaudithook(hook)


_refuse_reading_beside_the_repository()
BACKEND = keras.backend.backend()
# How `model.fit` runs a loss for each backend's users, and so in the tests:
# TensorFlow in a graph without and with XLA, JAX jitted (un-jitted JAX
# fits are tens of times slower), PyTorch eagerly (Keras' default for it;
# torch.compile would add minutes).
FIT_JIT_COMPILE = {"tensorflow": [False, True], "jax": [True], "torch": [False]}[BACKEND]
# The `compiled` arguments of `value_and_grad` that differ on this backend.
COMPILE_MODES = (False, True) if BACKEND == "tensorflow" else (False,)


# Compiled value-and-gradient functions of the `fn`s given data as `args`.
_COMPILED = {}


def value_and_grad(fn, x, *args, compiled=False, stateful=False):
    """`(fn(x, *args), d fn / d x)` as NumPy, eagerly or compiled.

    `compiled`: XLA under TensorFlow. JAX jits unless `fn` assigns
    variables (`stateful`): un-jitted, it compiles every operation for every
    new shape, which is slower than one compilation of the whole function.
    PyTorch always runs eagerly. A closure over its data compiles anew at
    every call; the same `fn` with its data as `args` (labels, say) compiles
    once per shape.
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def both(x, *args):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = fn(x, *args)
            return value, tape.gradient(value, x)

        if compiled:
            if args:
                both = _COMPILED.setdefault(fn, tf.function(both, jit_compile=True))
                args = [tf.convert_to_tensor(arg) for arg in args]
            else:
                both = tf.function(both, jit_compile=True)
        value, grad = both(tf.convert_to_tensor(x), *args)
        return np.asarray(value), np.asarray(grad)
    if BACKEND == "jax":
        import jax

        both = jax.value_and_grad(fn)
        if not stateful:
            both = _COMPILED.setdefault(fn, jax.jit(both)) if args else jax.jit(both)
            args = [jax.numpy.asarray(arg) for arg in args]
        value, grad = both(jax.numpy.asarray(x), *args)
        return np.asarray(value), np.asarray(grad)
    if BACKEND == "torch":
        import torch

        # PyTorch users train eagerly (Keras' "auto" jit_compile is off for
        # torch); torch.compile would add minutes of compilation.
        x = torch.tensor(np.asarray(x), requires_grad=True)
        value = fn(x, *args)
        (grad,) = torch.autograd.grad(value, x, allow_unused=True)
        grad = torch.zeros_like(x) if grad is None else grad
        return value.detach().cpu().numpy(), grad.detach().cpu().numpy()
    pytest.skip(f"no gradient helper for the {BACKEND} backend")


def variable_gradient(fn, variable):
    """d fn() / d `variable` (a Keras variable that `fn` reads), as NumPy."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = fn()
        return np.asarray(tf.convert_to_tensor(tape.gradient(value, variable.value)))
    if BACKEND == "jax":
        import jax

        def of_variable(value):
            with keras.StatelessScope(state_mapping=[(variable, value)]):
                return fn()

        return np.asarray(jax.grad(of_variable)(jax.numpy.asarray(keras.ops.convert_to_numpy(variable))))
    import torch

    (grad,) = torch.autograd.grad(fn(), variable.value)
    return grad.detach().cpu().numpy()


@contextlib.contextmanager
def no_warnings():
    """Turns every warning a user would see into an error.

    Libraries' DeprecationWarnings are hidden from users by default (and
    NumPy 2 raises one for every PyTorch tensor Keras converts).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def check_against(loss, ref, x, labels, compiled=False, sample_weight=None, grad_rtol=1e-3):
    """Compares `loss(labels, x)` and its gradient with a NumPy reference.

    Gradients are compared only away from the reference's kinks (hinges,
    ties, coincident points), where they are defined.
    """
    want = ref(x.astype("float64"), labels, sample_weight=sample_weight)
    value, grad = value_and_grad(
        lambda e: loss(labels, e, sample_weight=sample_weight), x.astype("float32"), compiled=compiled
    )
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # Near a hinge, a term may count as active in one and not the other
    # (float32 distances near 0 err by ~sqrt(eps)), which moves losses
    # averaged over active terms.
    if want.kink > 1e-3:
        assert float(value) == pytest.approx(want.loss, rel=1e-4, abs=1e-5)
    if want.kink > 1e-3:
        # Floored at 1e-3: float32 leaves ~1e-6 of rounding in a gradient
        # that is exactly 0 (FastAP of a one-class batch).
        scale = max(np.abs(want.grad).max(), 1e-3)
        np.testing.assert_allclose(grad / scale, want.grad / scale, atol=grad_rtol)
    return want


def tensor(x, dtype=None):
    return keras.ops.convert_to_tensor(x, dtype=dtype)


# TensorFlow by nature (tf.data, TensorBoard, tf.distribute): skipped on the
# other backends. Every other test is marked `backend_neutral`, which CI runs
# under JAX and PyTorch and on the oldest TensorFlow and Keras.
only_tensorflow = pytest.mark.tensorflow_only
# Minutes under JAX, which compiles every new shape anew, and nothing
# JAX-specific that the JAX run's other tests miss: more shapes and
# configurations of the losses it checks there (values, gradients, peers,
# degenerate batches, fits), Keras' save/load and config plumbing. CI's JAX
# run deselects them; TensorFlow and PyTorch run them.
slow_on_jax = pytest.mark.slow_on_jax


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # tryfirst: the markers must be there before `-m` selects on them.
    for item in items:
        if item.get_closest_marker("tensorflow_only") is None:
            item.add_marker(pytest.mark.backend_neutral)
        elif BACKEND != "tensorflow":
            item.add_marker(pytest.mark.skip(reason="TensorFlow-specific"))
