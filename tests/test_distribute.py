"""Cross-replica mining under tf.distribute: one device's training, on several.

Each test runs in a fresh process: logical devices and TF_CONFIG must be set
before TensorFlow starts.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import only_tensorflow

pytestmark = only_tensorflow

COMMON = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
{setup}
import keras, tfmetric as tfm

LOSSES = {{
    "BatchHardTriplet": lambda cross: tfm.BatchHardTriplet(margin=0.5, cross_replica=cross),
    "BatchAllTriplet": lambda cross: tfm.BatchAllTriplet(margin=0.5, cross_replica=cross),
    "SemiHardTriplet": lambda cross: tfm.SemiHardTriplet(margin=0.5, cross_replica=cross),
    "Contrastive hard": lambda cross: tfm.Contrastive(margin=1.0, negatives="hard", cross_replica=cross),
    "MarginLoss": lambda cross: tfm.MarginLoss(sampling="all", cross_replica=cross),
    # Every replica remembers the global batch: the same memory everywhere.
    "CrossBatchMemory": lambda cross: tfm.CrossBatchMemory(
        tfm.Contrastive(margin=1.0, negatives="hard"), memory_size=48, embedding_dim=4, cross_replica=cross
    ),
}}
rng = np.random.default_rng(0)
labels = np.repeat(np.arange(12), 8)
features = (rng.normal(size=(12, 6))[labels] + rng.normal(size=(96, 6))).astype("float32")


def new_model(weights=None):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(4)])
    if weights is not None:
        model.set_weights(weights)
    return model
"""

MIRRORED = COMMON.format(
    setup="""cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)"""
) + textwrap.dedent(
    """
    keras.utils.set_random_seed(0)
    initial = new_model().get_weights()
    # 20 global P×K batches (P = 4 classes × K = 4), fixed once, so that every
    # run sees the same ones: each of the two replicas gets 2 whole classes.
    planned = list(tfm.data.pk_sampler(features, labels, 4, 4, seed=0).repeat().take(20).as_numpy_iterator())
    x_steps = np.concatenate([x for x, _ in planned])
    y_steps = np.concatenate([y for _, y in planned])


    def train(make_loss, strategy):
        with strategy.scope():
            model = new_model(initial)
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss=make_loss())
        batches = tf.data.Dataset.from_tensor_slices((x_steps, y_steps)).batch(16)
        model.fit(batches, epochs=1, shuffle=False, verbose=0)
        return model.get_weights()


    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    report = {}
    for name, make in LOSSES.items():
        one_device = train(lambda: make(True), tf.distribute.get_strategy())
        gathered = train(lambda: make(True), mirrored)
        difference = lambda weights: max(float(np.max(np.abs(a - b))) for a, b in zip(one_device, weights))
        try:
            local = difference(train(lambda: make(False), mirrored))
        except ValueError as error:
            # A memory per replica would silently differ: refused.
            local = "refused" if "cross_replica=True" in str(error) else str(error)
        report[name] = {"cross_replica": difference(gathered), "local": local}
    # Per-example losses (reduction=None): each replica returns its own examples'.
    loss = tfm.SemiHardTriplet(margin=0.5, reduction=None, cross_replica=True)
    x, y = x_steps[:16], y_steps[:16]
    model = new_model(initial)
    want = loss(y, model(x)).numpy()
    halves = [x[:8], x[8:]], [y[:8], y[8:]]
    values = mirrored.experimental_distribute_values_from_function(
        lambda context: (halves[0][context.replica_id_in_sync_group], halves[1][context.replica_id_in_sync_group])
    )
    shares = mirrored.run(tf.function(lambda pair: loss(pair[1], model(pair[0]))), args=(values,))
    got = np.concatenate([s.numpy() for s in mirrored.experimental_local_results(shares)])
    report["per-example"] = {"cross_replica": float(np.max(np.abs(got - want))), "local": 1.0}
    print(json.dumps(report))
    """
)


MIRRORED_RESUME = COMMON.format(
    setup="""cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)"""
) + textwrap.dedent(
    """
    import tempfile

    STATEFUL = {
        "MarginLoss learned beta": lambda: tfm.MarginLoss(learn_beta=True, nu=0.01, seed=1, cross_replica=True),
        "CrossBatchMemory": lambda: tfm.CrossBatchMemory(
            tfm.MarginLoss(learn_beta=True, seed=0), memory_size=48, cross_replica=True
        ),
    }
    planned = list(tfm.data.pk_sampler(features, labels, 4, 4, seed=0).repeat().take(5).as_numpy_iterator())
    x_steps = np.concatenate([x for x, _ in planned])
    y_steps = np.concatenate([y for _, y in planned])
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


    class Preemption(Exception):
        pass


    class Preempt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Preemption


    def train(make_loss, callbacks=()):
        keras.utils.set_random_seed(0)
        with mirrored.scope():
            model = new_model()
            model.compile(optimizer=keras.optimizers.Adam(0.01), loss=make_loss())
        batches = tf.data.Dataset.from_tensor_slices((x_steps, y_steps)).batch(16)
        model.fit(batches, epochs=4, shuffle=False, verbose=0, callbacks=list(callbacks))
        states = [model.loss.state, getattr(getattr(model.loss, "loss", None), "state", None)]
        state = [v for s in states if s is not None for v in s.variables]
        return [np.asarray(v) for v in model.weights + state + model.optimizer.variables]


    report = {}
    for name, make in STATEFUL.items():
        straight = train(make)
        backup = tempfile.mkdtemp()
        try:
            train(make, [keras.callbacks.BackupAndRestore(backup), Preempt()])
        except Preemption:
            pass
        resumed = train(make, [keras.callbacks.BackupAndRestore(backup)])
        report[name] = {
            "variables": [len(straight), len(resumed)],
            "difference": max(float(np.max(np.abs(a - b))) for a, b in zip(straight, resumed)),
        }
    print(json.dumps(report))
    """
)


def run_script(script, env=None, timeout=600):
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_mirrored_cross_replica_training_equals_one_device():
    result = run_script(MIRRORED)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name, differences in report.items():
        # 20 SGD steps on the same global batches: the same weights...
        assert differences["cross_replica"] < 1e-5, (name, differences)
        # ...which mining each replica's half alone does not give (or which
        # the memory refuses to try).
        if name == "CrossBatchMemory":
            assert differences["local"] == "refused", differences
        else:
            assert differences["local"] > 1e-3, (name, differences)


@pytest.mark.slow
def test_mirrored_training_resumes_exactly_with_the_loss_state():
    result = run_script(MIRRORED_RESUME)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name, outcome in report.items():
        # The model, the loss's β (and memory, and random state) and Adam's moments.
        assert outcome["variables"][0] == outcome["variables"][1] >= 12, (name, outcome)
        assert outcome["difference"] == 0.0, (name, outcome)


WORKER = COMMON.format(setup="") + textwrap.dedent(
    """
    # keras.Model.fit does not run under MultiWorkerMirroredStrategy in Keras 3
    # (keras-team/keras#20585), so this is the custom loop the README shows.
    output, initial = sys.argv[1], np.load(sys.argv[2])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # The sampler's draws depend on TensorFlow's global seed too: the same as the test's.
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = new_model()
        model.set_weights([initial[name] for name in sorted(initial.files)])
        optimizer = keras.optimizers.SGD(0.05)
        optimizer.build(model.trainable_variables)
    loss = tfm.BatchHardTriplet(margin=0.5, cross_replica=True)


    def shard(context):
        # Each worker plans its own share of every epoch's P×K batches.
        return tfm.data.pk_sampler(features, labels, 2, 4, seed=0, input_context=context).repeat()


    @tf.function
    def train_step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=True))
            # The optimizer sums the replicas' gradients.
            optimizer.apply(tape.gradient(value, model.trainable_variables), model.trainable_variables)
            return value

        return strategy.reduce("SUM", strategy.run(replica_step, (x, y)), axis=None)


    batches = iter(strategy.distribute_datasets_from_function(shard))
    losses = [float(train_step(*next(batches))) for _ in range(5)]
    np.save(output, np.concatenate([w.ravel() for w in model.get_weights()]))
    print(json.dumps({"loss": losses}))
    """
)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_in_step_like_one_device(tmp_path):
    import keras
    import numpy as np
    import tensorflow as tf

    import tfmetric as tfm

    namespace = {}
    exec(COMMON.format(setup=""), namespace)  # the same data and model
    keras.utils.set_random_seed(0)
    model = namespace["new_model"]()
    np.savez(tmp_path / "initial.npz", *model.get_weights())

    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"worker{index}.npy"), str(tmp_path / "initial.npz")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        ))
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    first, second = (np.load(tmp_path / f"worker{index}.npy") for index in range(2))
    np.testing.assert_array_equal(first, second)
    losses = [json.loads(stdout.strip().splitlines()[-1])["loss"] for stdout, _ in outputs]
    assert losses[0] == losses[1]

    # One device, on the global batches: worker 0's share, then worker 1's.
    features, labels = namespace["features"], namespace["labels"]
    keras.utils.set_random_seed(0)
    shards = [
        iter(
            tfm.data.pk_sampler(
                features, labels, 2, 4, seed=0, input_context=tf.distribute.InputContext(2, worker)
            ).repeat()
        )
        for worker in range(2)
    ]
    optimizer = keras.optimizers.SGD(0.05)
    loss = tfm.BatchHardTriplet(margin=0.5)
    for step in range(5):
        parts = [next(shard) for shard in shards]
        x = tf.concat([part[0] for part in parts], axis=0)
        y = tf.concat([part[1] for part in parts], axis=0)
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        optimizer.apply(tape.gradient(value, model.trainable_variables), model.trainable_variables)
        assert float(value) == pytest.approx(losses[0][step], rel=1e-5)
    np.testing.assert_allclose(first, np.concatenate([w.ravel() for w in model.get_weights()]), atol=1e-5)


def test_cross_replica_changes_nothing_outside_a_strategy():
    import numpy as np
    import tensorflow as tf

    import tfmetric as tfm

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 3)
    embeddings = rng.normal(size=(12, 5)).astype("float32")
    weights = rng.random(12).astype("float32")
    for make in (
        tfm.BatchHardTriplet,
        tfm.SemiHardTriplet,
        tfm.Contrastive,
        lambda **kw: tfm.MarginLoss(sampling="all", **kw),
    ):
        plain, gathered = make(), make(cross_replica=True)
        assert gathered.get_config()["cross_replica"] and not plain.get_config()["cross_replica"]
        assert type(gathered).from_config(gathered.get_config()).cross_replica
        want = float(plain(labels, embeddings, sample_weight=weights))
        assert float(gathered(labels, embeddings, sample_weight=weights)) == want
        assert float(tf.function(gathered)(labels, embeddings, sample_weight=weights)) == pytest.approx(want, rel=1e-6)
