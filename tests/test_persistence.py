"""A loss's learned state in every Keras persistence path: a resumed run ends exactly where an
uninterrupted one does — the model's weights, the loss's variables (random state included) and the
optimizer's variables."""

import functools

import keras
import numpy as np
import pytest

import tfmetric as tfm
from tfmetric.losses.proxy import ProxyLoss
from tfmetric.losses.registry import LOSSES, PROXY_LOSSES

from conftest import no_warnings, only_tensorflow, slow_on_jax

# Every kind of state a loss keeps: learned (trained by the optimizer, with
# Adam's moments), sampled (a random state) and remembered (a memory that is
# not trained), alone and wrapped.
STATEFUL = {
    "learned beta": lambda: tfm.MarginLoss(learn_beta=True, num_classes=4, nu=0.01, seed=1),
    "distance-weighted": lambda: tfm.MarginLoss(sampling="distance_weighted", seed=3),
    "centres": lambda: tfm.CenterLoss(num_classes=4, embedding_dim=4),
    "memory": lambda: tfm.CrossBatchMemory(tfm.MarginLoss(learn_beta=True, seed=0), memory_size=36),
    # Every loss with class vectors keeps them the same way (tfm.losses.proxy.ProxyLoss):
    # k vectors per class, trained 10× faster than the network.
    "proxies": lambda: tfm.SubCenterArcFace(4, 4, centers_per_class=2, proxy_lr_multiplier=10.0),
    # A state that is neither learned nor random: the dynamic soft margin's running histogram.
    "running histogram": lambda: tfm.DynamicSoftMargin(),
}
PATHS = ["backup_and_restore", "save_and_load_model", "checkpoint", "weights_checkpoint"]
EPOCHS, PREEMPTED_AFTER = 4, 2

rng = np.random.default_rng(0)
LABELS = np.repeat(np.arange(4), 12)
FEATURES = (rng.normal(size=(4, 6))[LABELS] + rng.normal(size=(48, 6))).astype("float32")


class Preemption(Exception):
    pass


class Preempt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == PREEMPTED_AFTER:
            raise Preemption


class Net(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.embed = keras.layers.Dense(4)

    def call(self, x):
        return self.embed(self.hidden(x))


def new_model(make_loss, kind="sequential"):
    """A model and its loss, built and compiled the same way every time."""
    keras.utils.set_random_seed(0)
    if kind == "sequential":
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(4)])
    else:
        model = Net()
        model(FEATURES[:1])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=make_loss())
    return model


def fit(model, epochs, callbacks=()):
    model.fit(FEATURES, LABELS, batch_size=12, epochs=epochs, shuffle=False, verbose=0, callbacks=list(callbacks))


def loss_states(loss):
    states = [getattr(loss, "state", None), getattr(getattr(loss, "loss", None), "state", None)]
    return [state for state in states if state is not None]


def snapshot(model):
    """Everything a resumed run must have restored, in a fixed order."""
    loss_variables = [v for state in loss_states(model.loss) for v in state.variables]
    variables = model.trainable_variables + model.non_trainable_variables + loss_variables + model.optimizer.variables
    return [keras.ops.convert_to_numpy(v) for v in variables]


def assert_same(got, want):
    assert len(got) == len(want)
    for index, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(a, b, err_msg=f"variable {index}")


@functools.lru_cache(maxsize=None)
def uninterrupted(name, kind="sequential"):
    model = new_model(STATEFUL[name], kind)
    fit(model, EPOCHS)
    return snapshot(model)


def resumed(path, make_loss, directory, kind="sequential"):
    """The model after a run stopped after `PREEMPTED_AFTER` epochs and resumed through `path`."""
    model = new_model(make_loss, kind)
    if path == "backup_and_restore":
        with pytest.raises(Preemption):
            fit(model, EPOCHS, [keras.callbacks.BackupAndRestore(str(directory)), Preempt()])
        model = new_model(make_loss, kind)
        with no_warnings():
            fit(model, EPOCHS, [keras.callbacks.BackupAndRestore(str(directory))])
        return model
    if path == "save_and_load_model":
        fit(model, PREEMPTED_AFTER)
        model.save(directory / "model.keras")
        model = keras.models.load_model(directory / "model.keras")  # not compiled again
    elif path == "checkpoint":
        fit(model, PREEMPTED_AFTER, [keras.callbacks.ModelCheckpoint(str(directory / "checkpoint.keras"))])
        model = keras.models.load_model(directory / "checkpoint.keras")
    else:
        file = directory / "checkpoint.weights.h5"
        fit(model, PREEMPTED_AFTER, [keras.callbacks.ModelCheckpoint(str(file), save_weights_only=True)])
        model = new_model(make_loss, kind)
        # Keras loads an optimizer's saved state only into a built optimizer.
        model.optimizer.build(model.trainable_variables)
        with no_warnings():
            model.load_weights(file)
    with no_warnings():
        fit(model, EPOCHS - PREEMPTED_AFTER)
    return model


@slow_on_jax
@pytest.mark.parametrize("name", STATEFUL)
@pytest.mark.parametrize("path", PATHS)
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(path, name, tmp_path):
    model = resumed(path, STATEFUL[name], tmp_path)
    assert_same(snapshot(model), uninterrupted(name))


def test_a_memory_created_at_its_first_batch_is_restored_too(tmp_path):
    # A subclassed model does not tell its output size at compile time: the
    # memory is created at the first batch, after BackupAndRestore has
    # restored the model. The saved size lets the restore create it first.
    def make_loss():
        return tfm.CrossBatchMemory(tfm.Contrastive(), memory_size=36)

    straight = new_model(make_loss, kind="subclassed")
    assert straight.loss.state is None
    fit(straight, EPOCHS)
    assert_same(snapshot(resumed("backup_and_restore", make_loss, tmp_path, kind="subclassed")), snapshot(straight))


def test_every_stateful_loss_of_the_registry_is_checked_here():
    # A new loss with state must join STATEFUL: its persistence is not free.
    kinds = {type(make()) for make in STATEFUL.values()}
    for key, entry in LOSSES.items():
        loss = entry.build()
        assert not loss_states(loss) or type(loss) in kinds, key
    assert any(issubclass(kind, ProxyLoss) for kind in kinds)
    assert all(issubclass(entry.loss_class, ProxyLoss) for entry in PROXY_LOSSES.values())


@pytest.mark.parametrize("name", STATEFUL)
def test_compile_makes_the_state_the_models(name):
    model = new_model(STATEFUL[name])
    states = loss_states(model.loss)
    assert states and all(state.variables for state in states)  # the memory is built from the output size
    owned = {id(v) for v in model.trainable_variables + model.non_trainable_variables}
    trainable = {id(v) for v in model.trainable_variables}
    for state in states:
        assert all(id(v) in owned for v in state.variables)
        assert all(id(v) in trainable for v in state.trainable_variables)
    model.optimizer.build(model.trainable_variables)  # as BackupAndRestore and load_model do
    learned = [v for state in states for v in state.trainable_variables]
    # Adam: an iteration counter, the learning rate and two moments per variable.
    assert len(model.optimizer.variables) == 2 + 2 * len(model.trainable_variables)
    learned_counts = {"learned beta": 2, "distance-weighted": 0, "centres": 1, "memory": 1, "proxies": 1}
    assert len(learned) == {**learned_counts, "running histogram": 0}[name]


def test_compiling_with_another_loss_takes_the_state_out():
    model = new_model(lambda: tfm.CenterLoss(num_classes=4, embedding_dim=4))
    centres = model.loss.state.centers
    model.compile(optimizer="adam", loss=tfm.BatchHardTriplet())
    assert all(v is not centres for v in model.variables)
    with no_warnings():
        fit(model, 1)
    assert "state" not in str(model.get_config())


def test_a_state_the_optimizer_has_no_slots_for_is_an_error():
    model = new_model(tfm.BatchHardTriplet)
    fit(model, 1)
    with pytest.raises(ValueError, match="Compile the model with a new optimizer"):
        model.compile(optimizer=model.optimizer, loss=tfm.CenterLoss(num_classes=4, embedding_dim=4))


def test_a_state_saved_for_another_configuration_is_an_error(tmp_path):
    model = new_model(lambda: tfm.MarginLoss(learn_beta=True, seed=1))
    model.save_weights(tmp_path / "beta.weights.h5")
    other = new_model(STATEFUL["learned beta"])  # a β per class as well
    with pytest.raises(ValueError, match="same loss configuration"):
        other.load_weights(tmp_path / "beta.weights.h5")


@only_tensorflow
def test_export_serves_the_model_alone(tmp_path):
    import tensorflow as tf

    model = new_model(STATEFUL["memory"])
    fit(model, 1)
    model.export(str(tmp_path / "served"))
    served = tf.saved_model.load(str(tmp_path / "served"))
    # One batch of 48 served, against predict's batches of 32 and 16: the matrix products may
    # round differently with the batch's shape (a few 1e-7 seen), so not bit for bit.
    np.testing.assert_allclose(served.serve(FEATURES).numpy(), model.predict(FEATURES, verbose=0), rtol=1e-5, atol=1e-6)
