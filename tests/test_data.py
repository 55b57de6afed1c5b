"""The P×K sampler: batch structure, epochs, repeats, sharding, streaming, errors."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import tfmetric as tfm

from conftest import only_tensorflow

# The sampler is tf.data.
pytestmark = only_tensorflow


def unbalanced(seed=0, n=600, num_classes=25):
    rng = np.random.default_rng(seed)
    # Skewed class sizes, from ~170 down to ~2: some below k, most with a remainder.
    frequency = 1.0 / np.arange(1, num_classes + 1) ** 1.5
    y = rng.choice(num_classes, size=n, p=frequency / frequency.sum())
    x = np.arange(n, dtype="float32")[:, None] * np.ones((1, 3), "float32")
    return x, y


def epoch(dataset):
    return [(xb.numpy(), yb.numpy()) for xb, yb in dataset]


def check_batches(batches, x_ids_to_labels, p, k):
    used = []
    for xb, yb in batches:
        assert yb.shape == (p * k,)
        classes = yb.reshape(p, k)
        assert np.all(classes == classes[:, :1]), "a class's examples are contiguous"
        assert len(set(classes[:, 0])) == p, "p distinct classes"
        ids = xb[:, 0].astype(int)
        np.testing.assert_array_equal(x_ids_to_labels[ids], yb)
        used += ids.tolist()
    return used


def max_batches_by_brute_force(y, p, k, allow_repeats=False):
    counts = np.array(list(collections.Counter(y.tolist()).values()))
    groups = -(-counts // k) if allow_repeats else counts // k
    return max(b for b in range(0, groups.sum() // p + 1) if np.minimum(groups, b).sum() >= p * b)


@pytest.mark.parametrize("p, k", [(4, 2), (5, 4), (8, 3)])
def test_batches_are_p_classes_by_k_examples_each_used_once(p, k):
    x, y = unbalanced()
    dataset = tfm.data.pk_sampler(x, y, p, k, seed=1)
    expected = max_batches_by_brute_force(y, p, k)
    assert int(dataset.cardinality()) == expected
    for _ in range(2):
        used = check_batches(epoch(dataset), y, p, k)
        assert len(used) == expected * p * k
        assert len(set(used)) == len(used), "no example twice in an epoch"


def test_balanced_data_uses_every_example_every_epoch():
    y = np.repeat(np.arange(12), 8)
    rng = np.random.default_rng(2)
    rng.shuffle(y)
    x = np.arange(len(y), dtype="float32")[:, None]
    dataset = tfm.data.pk_sampler(x, y, 4, 4, seed=0)
    for _ in range(3):
        assert sorted(check_batches(epoch(dataset), y, 4, 4)) == list(range(len(y)))


def test_order_changes_every_epoch_and_seed_reproduces():
    x, y = unbalanced()
    first = tfm.data.pk_sampler(x, y, 4, 3, seed=7)
    again = tfm.data.pk_sampler(x, y, 4, 3, seed=7)
    other = tfm.data.pk_sampler(x, y, 4, 3, seed=8)
    epochs_first = [np.concatenate([b[0][:, 0] for b in epoch(first)]) for _ in range(2)]
    epochs_again = [np.concatenate([b[0][:, 0] for b in epoch(again)]) for _ in range(2)]
    for a, b in zip(epochs_first, epochs_again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(epochs_first[0], epochs_first[1])
    assert not np.array_equal(np.concatenate([b[0][:, 0] for b in epoch(other)]), epochs_first[0])


def test_small_classes_are_skipped_or_topped_up():
    # Class 0 has 1 example, class 1 has 3, classes 2-5 have 4; k = 4.
    y = np.array([0] + [1] * 3 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4)
    x = np.arange(len(y), dtype="float32")[:, None]
    skipped = epoch(tfm.data.pk_sampler(x, y, 2, 4, seed=0))
    assert set(np.concatenate([b[1] for b in skipped])) == {2, 3, 4, 5}
    topped = epoch(tfm.data.pk_sampler(x, y, 2, 4, seed=0, allow_repeats=True))
    labels = np.concatenate([b[1] for b in topped])
    assert set(labels) == {0, 1, 2, 3, 4, 5} and len(topped) == 3
    ids = np.concatenate([b[0][:, 0] for b in topped]).astype(int)
    np.testing.assert_array_equal(y[ids], labels)
    # Every example appears; class 0's one example four times.
    assert set(ids) == set(range(len(y)))
    assert collections.Counter(ids.tolist())[0] == 4


def test_nested_inputs_and_load_fn(tmp_path):
    y = np.repeat(np.arange(6), 3)
    features = {"image": np.arange(18 * 4, dtype="float32").reshape(18, 4), "id": np.arange(18)}
    for xb, yb in tfm.data.pk_sampler(features, y, 3, 3, seed=0):
        np.testing.assert_array_equal(y[xb["id"].numpy()], yb.numpy())
        np.testing.assert_array_equal(xb["image"].numpy()[:, 0], xb["id"].numpy() * 4)
    paths = []
    for i in range(18):
        path = tmp_path / f"{i}.txt"
        path.write_text(str(i))
        paths.append(str(path))

    def load(path):
        return tf.strings.to_number(tf.io.read_file(path))

    for xb, yb in tfm.data.pk_sampler(np.array(paths), y, 3, 3, seed=0, load_fn=load):
        np.testing.assert_array_equal(y[xb.numpy().astype(int)], yb.numpy())


def test_sharding_gives_workers_disjoint_shares():
    x, y = unbalanced()
    shares = []
    for worker in range(3):
        context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=worker)
        dataset = tfm.data.pk_sampler(x, y, 4, 3, seed=5, input_context=context)
        shares.append(check_batches(epoch(dataset), y, 4, 3))
        assert int(dataset.cardinality()) == max_batches_by_brute_force(y, 4, 3) // 3
    together = sum(shares, [])
    assert len(set(together)) == len(together)
    with pytest.raises(ValueError, match="seed"):
        tfm.data.pk_sampler(x, y, 4, 3, input_context=tf.distribute.InputContext(2, 0))


def test_errors_name_the_numbers():
    x, y = unbalanced()
    eligible = sum(1 for c in collections.Counter(y.tolist()).values() if c >= 3)
    with pytest.raises(ValueError, match=rf"p=100 .* only {eligible} of the"):
        tfm.data.pk_sampler(x, y, 100, 3)
    with pytest.raises(ValueError, match="k=1"):
        tfm.data.pk_sampler(x, y, 4, 1)
    with pytest.raises(ValueError, match="599 in x, 600 labels"):
        tfm.data.pk_sampler(x[:-1], y, 4, 3)
    with pytest.raises(ValueError, match="integer"):
        tfm.data.pk_sampler(x, y + 0.5, 4, 3)
    with pytest.raises(ValueError, match="one class id per example.*multi-hot"):
        tfm.data.pk_sampler(x, np.eye(600), 4, 3)
    with pytest.raises(ValueError, match="one class id per example.*SparseTensor"):
        tfm.data.pk_sampler(x, tf.sparse.from_dense(np.eye(600)), 4, 3)
    with pytest.raises(ValueError, match="one integer label"):
        tfm.data.pk_sampler(x, np.zeros((600, 1, 1)), 4, 3)


def test_fit_with_a_triplet_loss():
    import keras

    keras.utils.set_random_seed(0)
    x, y = unbalanced()
    dataset = tfm.data.pk_sampler(x / 600.0, y, 4, 4, seed=0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.UnitNormalization()])
    model.compile(optimizer="adam", loss=tfm.BatchHardTriplet(margin=0.2))
    history = model.fit(dataset, epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2 and np.all(np.isfinite(history.history["loss"]))


# ---------------------------------------------------------------- streaming


def write_tfrecords(path, x, y):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for features, label in zip(x, y):
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "x": tf.train.Feature(float_list=tf.train.FloatList(value=features)),
                        "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                    }
                )
            )
            writer.write(example.SerializeToString())


def read_tfrecords(path, dim):
    spec = {"x": tf.io.FixedLenFeature([dim], tf.float32), "y": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        return example["x"], example["y"]

    return tf.data.TFRecordDataset(str(path)).map(parse)


def test_pk_batches_from_tfrecords(tmp_path):
    x, y = unbalanced(n=400)
    write_tfrecords(tmp_path / "data.tfrecord", x, y)
    stream = read_tfrecords(tmp_path / "data.tfrecord", 3)
    used = check_batches(epoch(tfm.data.pk_batches(stream, 4, 3)), y, 4, 3)
    assert len(set(used)) == len(used)
    # Only the documented losses: what is still carried at the end.
    counts = collections.Counter(y.tolist())
    complete_groups = sum(c // 3 for c in counts.values())
    assert len(used) == 3 * 4 * max_batches_by_brute_force(y, 4, 3)
    small_blocks = check_batches(epoch(tfm.data.pk_batches(stream, 4, 3, block_size=50)), y, 4, 3)
    assert len(set(small_blocks)) == len(small_blocks)
    assert complete_groups * 3 - len(small_blocks) <= 2 * 3 * len(counts)


def test_pk_batches_with_a_class_sorted_stream_still_makes_valid_batches():
    y = np.sort(np.repeat(np.arange(10), 12))
    x = np.arange(len(y), dtype="float32")[:, None]
    stream = tf.data.Dataset.from_tensor_slices((x, y))
    batches = epoch(tfm.data.pk_batches(stream, 3, 4, block_size=24))
    used = check_batches(batches, y, 3, 4)
    assert len(set(used)) == len(used)


def test_pk_batches_sharding_and_errors():
    y = np.repeat(np.arange(8), 6)
    rng = np.random.default_rng(0)
    rng.shuffle(y)
    x = np.arange(len(y), dtype="float32")[:, None]
    stream = tf.data.Dataset.from_tensor_slices((x, y))
    shares = [
        check_batches(
            epoch(tfm.data.pk_batches(stream, 2, 2, input_context=tf.distribute.InputContext(2, worker))), y, 2, 2
        )
        for worker in range(2)
    ]
    assert not set(shares[0]) & set(shares[1])
    with pytest.raises(ValueError, match="block_size=7"):
        tfm.data.pk_batches(stream, 4, 2, block_size=7)
    ragged = tf.data.Dataset.from_generator(
        lambda: iter([(np.zeros(2, "float32"), 0)]),
        output_signature=(tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.int64)),
    )
    with pytest.raises(ValueError, match="fixed shape"):
        tfm.data.pk_batches(ragged, 2, 2)


REPLICAS_SCRIPT = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import tfmetric as tfm
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
y = np.repeat(np.arange(10), 6)
x = np.arange(len(y), dtype="float32")[:, None]
dataset = strategy.experimental_distribute_dataset(tfm.data.pk_sampler(x, y, 4, 3, seed=0))
for _, labels in dataset:
    for replica in strategy.experimental_local_results(labels):
        classes = replica.numpy().reshape(2, 3)
        assert (classes == classes[:, :1]).all() and classes[0, 0] != classes[1, 0], classes
print("whole classes per replica")
"""


def test_each_replica_gets_whole_classes():
    import subprocess
    import sys

    # Two logical CPUs must be configured before TensorFlow starts: a new process.
    result = subprocess.run([sys.executable, "-c", REPLICAS_SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "whole classes per replica" in result.stdout


def test_the_docstring_example_fits_on_the_sampler_without_a_warning():
    # The example passes shuffle=False to model.fit, as every documented fit on
    # the sampler must: Keras warns about its default shuffle=True for a dataset.
    import doctest
    import warnings

    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for example in doctest.DocTestFinder().find(tfm.data.pk_sampler, "pk_sampler", globs={}):
            runner.run(example)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0
