"""CenterLoss (learned class centres) and CrossBatchMemory (mining against past batches)."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tfmetric as tfm
from tfmetric.losses.registry import LOSSES as REGISTRY

import reference
from conftest import BACKEND, FIT_JIT_COMPILE, no_warnings, slow_on_jax, tensor, value_and_grad, variable_gradient
from registry import ALL_LOSSES, loss_and_reference

# ---------------------------------------------------------------- CenterLoss


def set_centers(loss, centers):
    loss.state.centers.assign(np.asarray(centers, "float32"))


@settings(max_examples=15 if BACKEND == "tensorflow" else 5, deadline=None)
@given(n=st.integers(1, 30), num_classes=st.integers(1, 6), dim=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_center_loss_matches_brute_force(n, num_classes, dim, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    labels = rng.integers(0, num_classes, size=n)
    weights = rng.uniform(0.1, 2.0, size=n)
    centers = rng.normal(size=(num_classes, dim))
    loss = tfm.CenterLoss(num_classes, dim)
    set_centers(loss, centers)
    want, want_centers = reference.center(x, labels, centers.astype("float32").astype("float64"), weights)
    value, grad = value_and_grad(lambda e: loss(labels, e, sample_weight=weights), x, compiled=n % 2 == 0)
    assert float(value) == pytest.approx(want.loss, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(grad, want.grad, rtol=1e-4, atol=1e-5)
    unweighted = reference.center(x, labels, centers.astype("float32").astype("float64"))[1]
    centers_gradient = variable_gradient(lambda: loss(labels, x), loss.state.centers)
    np.testing.assert_allclose(centers_gradient, unweighted, rtol=1e-4, atol=1e-5)
    per_example = keras.ops.convert_to_numpy(tfm.CenterLoss(num_classes, dim, reduction=None)(labels, x))
    np.testing.assert_allclose(per_example, 0.5 * np.sum(x.astype("float64") ** 2, axis=1), rtol=1e-5)
    assert want_centers.shape == centers.shape


def center_model(kind):
    if kind == "sequential":
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    inputs = keras.Input((8,))
    return keras.Model(inputs, keras.layers.Dense(4)(inputs))


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_center_loss_trains_centres_in_plain_fit_and_saves_them(kind, tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    x = rng.normal(size=(30, 8)).astype("float32") + labels[:, None]
    model = center_model(kind)
    loss = tfm.CenterLoss(num_classes=3, embedding_dim=4)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, jit_compile=FIT_JIT_COMPILE[-1])
    with no_warnings():
        model.fit(x, labels, batch_size=10, epochs=3, verbose=0)
    centers = loss.centers_value()
    # Each centre moved towards its class's embeddings, away from the origin.
    assert np.all(np.linalg.norm(centers, axis=1) > 1e-3)
    assert any(v is loss.state.centers for v in model.trainable_variables)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.loss.centers_value(), centers, rtol=1e-6)
    assert float(loaded.evaluate(x, labels, verbose=0)) == pytest.approx(
        float(model.evaluate(x, labels, verbose=0)), rel=1e-5
    )


def test_center_loss_edges():
    loss = tfm.CenterLoss(num_classes=3, embedding_dim=2)
    assert float(loss(np.array([1]), np.array([[3.0, 4.0]]))) == pytest.approx(12.5)
    huge = np.array([[1e18, 0.0], [0.0, -1e18]], "float32")
    value, grad = value_and_grad(lambda e: loss(np.array([0, 2]), e), huge)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    for dtype in ("float16", "bfloat16"):
        value = loss(np.array([0, 1]), tensor([[1.0, 2.0], [3.0, 4.0]], dtype))
        assert keras.backend.standardize_dtype(value.dtype) == "float32" and float(value) == pytest.approx(7.5)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss(np.array([0, 3]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="size 5"):
        loss(np.array([0, 1]), np.ones((2, 5)))
    with pytest.raises(ValueError, match="positive"):
        tfm.CenterLoss(num_classes=0, embedding_dim=2)
    config = tfm.CenterLoss(3, 2, reduction="sum", name="c").get_config()
    restored = keras.losses.deserialize(keras.losses.serialize(tfm.CenterLoss.from_config(config)))
    assert type(restored) is tfm.CenterLoss and restored.get_config() == config


# ---------------------------------------------------------------- CrossBatchMemory

# The wrapped losses checked against their references on the union batch.
# Every loss class of the registry once (its first deterministic configuration).
WRAPPED = sorted({REGISTRY[kind].loss_class: kind for kind in reversed(list(ALL_LOSSES))}.values())
if BACKEND == "jax":
    # Un-jitted (the memory assigns variables), every JAX operation compiles
    # for every shape: one loss checks the memory's mechanics there, one
    # whose positive slots visit the memory's rows.
    WRAPPED = ["semi_hard"]


def batches(seed, sizes, dim=4, num_classes=5):
    rng = np.random.default_rng(seed)
    for size in sizes:
        yield rng.normal(size=(size, dim)).astype("float32"), rng.integers(0, num_classes, size=size)


def union_reference(kind, x, labels, memory_x, memory_labels):
    """The reference loss of the batch's queries against batch ∪ memory, and its gradient for the batch.

    The batch is both the queries and the reference's first rows (no query
    its own pair); the memory's rows are constants.
    """
    ref = loss_and_reference(kind)[1]
    all_x = np.concatenate([x, memory_x]).astype("float64") if len(memory_x) else x.astype("float64")
    all_labels = np.concatenate([labels, memory_labels]) if len(memory_labels) else labels
    want = ref(x.astype("float64"), labels, ref_x=all_x, ref_labels=all_labels, remove_diagonal=True)
    return want, want.grad + want.ref_grad[: len(x)]


@slow_on_jax
@pytest.mark.parametrize("kind", WRAPPED)
def test_memory_matches_the_loss_on_batch_and_memory(kind):
    inner = loss_and_reference(kind)[0]
    memory = tfm.CrossBatchMemory(inner, memory_size=20)
    kept_x, kept_labels = [], []
    # Partly filled (0, 6, 13 entries), then full and wrapping around.
    for step, (x, labels) in enumerate(batches(1, [6, 7, 8, 6, 5])):
        memory_x = np.concatenate(kept_x[-20:]) if kept_x else np.zeros((0, 4), "float32")
        memory_labels = np.concatenate(kept_labels[-20:]) if kept_labels else np.zeros(0, int)
        memory_x, memory_labels = memory_x[-20:], memory_labels[-20:]
        want, want_grad = union_reference(kind, x, labels, memory_x, memory_labels)
        if BACKEND == "jax":
            # Under jax.grad the memory's update is traced: record it in a scope and apply it.
            with keras.StatelessScope() as scope:
                value, grad = value_and_grad(lambda e: memory(labels, e), x, stateful=True)
            for variable in memory.state.variables:
                variable.assign(scope.get_current_value(variable))
        else:
            value, grad = value_and_grad(lambda e: memory(labels, e), x, compiled=step == 3)
        assert float(value) == pytest.approx(want.loss, rel=1e-4, abs=1e-5), step
        if want.kink > 1e-3:
            scale = max(np.abs(want_grad).max(), 1e-6)
            np.testing.assert_allclose(grad / scale, want_grad / scale, atol=1e-3)
        kept_x.append(x)
        kept_labels.append(labels)
        remembered_x, remembered_labels = memory.memory()
        assert sorted(map(tuple, remembered_x)) == sorted(map(tuple, np.concatenate(kept_x)[-20:]))
        assert len(remembered_labels) == min(20, sum(map(len, kept_labels)))


def test_memory_gives_anchors_positives_their_batch_lacks():
    loss = tfm.CrossBatchMemory(tfm.BatchHardTriplet(margin=1.0), memory_size=8)
    # All-distinct labels: no positive in the batch, loss 0 without memory.
    assert float(loss(np.array([0, 1]), np.array([[0.0], [5.0]]))) == 0.0
    # Next batch: the positives are in memory. Anchor 0 (x = 1): positive
    # at 0 (d = 1), closest negative at 4 (d = 3): relu(1 − 3 + 1) = 0;
    # anchor 1 (x = 4) likewise.
    assert float(loss(np.array([0, 1]), np.array([[1.0], [4.0]]))) == 0.0
    value = float(loss(np.array([0, 1]), np.array([[2.5], [3.0]])))
    # Anchor 0 (2.5): farthest positive 0 at 2.5, closest negative 3 at 0.5 -> 3.
    # Anchor 1 (3.0): farthest positive 5 at 2, closest negative 2.5 at 0.5 -> 2.5.
    assert value == pytest.approx((3.0 + 2.5) / 2)


def test_memory_keeps_large_labels_apart():
    big = 2**30 if BACKEND == "jax" else 2**40
    loss = tfm.CrossBatchMemory(tfm.Contrastive(margin=1.0), memory_size=4)
    loss(np.array([big, big + 1]), np.array([[0.0], [0.2]]))
    # Four distinct labels: the remembered examples at 0 and 0.2 are
    # negatives of the new one at 0.1, each (1 − 0.1)²; labels merged by a
    # float cast would make some of them positives instead (0.1²).
    value = float(loss(np.array([big + 2, big + 3]), np.array([[0.1], [9.0]])))
    assert value == pytest.approx(2 * 0.9**2 / 6)


def memory_data():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 8)
    rng.shuffle(labels)
    return rng.normal(size=(32, 8)).astype("float32") + labels[:, None], labels


@pytest.mark.parametrize("jit_compile", FIT_JIT_COMPILE)
def test_memory_in_plain_fit_fills_and_saves(jit_compile, tmp_path):
    keras.utils.set_random_seed(0)
    x, labels = memory_data()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    loss = tfm.CrossBatchMemory(tfm.Contrastive(margin=1.0), memory_size=24, embedding_dim=4)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss, jit_compile=jit_compile)
    with no_warnings():
        history = model.fit(x, labels, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))
    remembered_x, remembered_labels = loss.memory()
    # The last three batches of 8, as the model embedded them then.
    assert len(remembered_x) == 24
    assert sorted(remembered_labels.tolist()) == sorted(labels[8:].tolist())
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.loss.memory()[1], remembered_labels)
    np.testing.assert_allclose(loaded.loss.memory()[0], remembered_x)


@pytest.mark.skipif(BACKEND == "jax", reason="JAX needs embedding_dim: its variables cannot be created in a trace")
def test_memory_created_at_the_first_call_in_fit():
    x, labels = memory_data()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    loss = tfm.CrossBatchMemory(tfm.MultiSimilarity(), memory_size=16)
    model.compile(optimizer="sgd", loss=loss)
    model.fit(x, labels, batch_size=8, epochs=1, verbose=0)
    assert loss.embedding_dim == 4 and len(loss.memory()[0]) == 16


def test_memory_config_and_errors():
    loss = tfm.CrossBatchMemory(tfm.SemiHardTriplet(margin=0.3), memory_size=64, embedding_dim=3, name="xbm")
    config = loss.get_config()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is tfm.CrossBatchMemory and restored.get_config() == config
    assert type(restored.loss) is tfm.SemiHardTriplet and restored.loss.margin == pytest.approx(0.3)
    with pytest.raises(ValueError, match="memory_size must be at least"):
        loss(np.arange(65) % 3, np.ones((65, 3)))
    with pytest.raises(ValueError, match="size 4"):
        loss(np.array([0, 1]), np.ones((2, 4)))
    for bad in (tfm.CenterLoss(2, 3), tfm.NPairsMultilabel(), keras.losses.MeanSquaredError(), loss):
        with pytest.raises(ValueError, match="CrossBatchMemory wraps"):
            tfm.CrossBatchMemory(bad)
    with pytest.raises(ValueError, match="per class"):
        tfm.CrossBatchMemory(tfm.MarginLoss(learn_beta=True, num_classes=3))
    with pytest.raises(ValueError, match="memory_size must be positive"):
        tfm.CrossBatchMemory(tfm.Contrastive(), memory_size=0)


@slow_on_jax
def test_every_in_batch_loss_can_be_wrapped():
    x, labels = next(batches(2, [12]))
    for kind in sorted(ALL_LOSSES):
        loss = tfm.CrossBatchMemory(loss_and_reference(kind)[0], memory_size=24)
        for _ in range(3 if BACKEND == "tensorflow" else 1):
            value, grad = value_and_grad(lambda e: keras.ops.sum(loss.call(labels, e)), x, stateful=True)
            assert np.all(np.isfinite(grad)) and np.all(np.isfinite(value)), kind
            loss(labels, x)
