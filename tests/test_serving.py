"""`tfm.search.serving.export`: a SavedModel served in a fresh process, against a NumPy search."""

import subprocess
import sys

import keras
import numpy as np
import pytest

from tfmetric.search import Index
from tfmetric.search.serving import UNKNOWN_LABELS, export

from conftest import BACKEND, slow_on_jax

K = 4


def brute_force(queries, references, k, distance):
    """Every distance in float64, sorted by (distance, index): `(distances, indices)`, each `(N, k)`."""
    all_distances, all_indices = [], []
    for query in np.asarray(queries, float):
        values = []
        for reference in np.asarray(references, float):
            if distance == "cosine":
                cosine = query @ reference / max(np.linalg.norm(query) * np.linalg.norm(reference), 1e-300)
                values.append(1.0 - cosine)
            else:
                squared = float(np.sum((query - reference) ** 2))
                values.append(np.sqrt(squared) if distance == "euclidean" else squared)
        order = sorted(range(len(values)), key=lambda i: (values[i], i))[:k]
        all_distances.append([values[i] for i in order])
        all_indices.append(order)
    return np.array(all_distances), np.array(all_indices)


def embedding_model(inputs=5, outputs=3):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((inputs,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(outputs)]
    return keras.Sequential(layers)


def identity_model():
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False, kernel_initializer="identity")])


# Loads every export with TensorFlow alone and writes what `serve` (and its
# signature, and `embed`) answer; run in this process or in a fresh one.
SERVE_ALL = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf


def serve_all(root, names, fresh):
    for name in names:
        folder = os.path.join(root, name)
        served = tf.saved_model.load(os.path.join(folder, "served"))
        queries = tf.constant(np.load(os.path.join(folder, "queries.npy")))
        answer = {key: value.numpy() for key, value in served.serve(queries).items()}
        # Strings come as object arrays of bytes, which np.savez would pickle.
        answer = {key: value.astype(bytes) if value.dtype == object else value for key, value in answer.items()}
        signature = served.signatures["serving_default"](inputs=queries)
        assert sorted(signature) == sorted(answer), (sorted(signature), sorted(answer))
        for key, value in signature.items():
            np.testing.assert_array_equal(value.numpy().astype(answer[key].dtype), answer[key])
        answer["embedded"] = served.embed(queries).numpy()
        np.savez(os.path.join(folder, "answer.npz"), **answer)
    assert not fresh or "tfmetric" not in sys.modules, "served without tfmetric"
    print("served", len(names))
"""


def serve(tmp_path, names, fresh):
    """What each export in `names` serves: `{name: {output: array}}`."""
    if fresh:
        script = SERVE_ALL + f"\nserve_all({str(tmp_path)!r}, {names!r}, fresh=True)\n"
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.split()[-2:] == ["served", str(len(names))]
    else:
        namespace = {}
        exec(SERVE_ALL, namespace)
        namespace["serve_all"](str(tmp_path), names, fresh=False)
    answers = {}
    for name in names:
        with np.load(tmp_path / name / "answer.npz") as stored:
            answers[name] = dict(stored)
    return answers


def write_export(tmp_path, name, index, queries, k=K, model=None):
    (tmp_path / name).mkdir()
    np.save(tmp_path / name / "queries.npy", queries)
    export(index, tmp_path / name / "served", model=model, k=k)


def threshold_between_nearest(nearest):
    """A threshold halfway between two middle nearest distances, far from every one (no float32 doubt)."""
    ordered = np.sort(nearest)
    middle = len(ordered) // 2
    assert ordered[middle] - ordered[middle - 1] > 1e-3, "the test data needs a gap at its median"
    return float((ordered[middle - 1] + ordered[middle]) / 2)


# name: (distance, labels ("int", "string" or None), threshold?); one fresh process serves them all.
RANDOM_CASES = {
    "euclidean-int-threshold": ("euclidean", "int", True),
    "squared-string-threshold": ("squared_euclidean", "string", True),
    "cosine-int": ("cosine", "int", False),
    "cosine-unlabelled-threshold": ("cosine", None, True),
}


# JAX models are traced through jax2tf; export refuses PyTorch ones (tested below).
@slow_on_jax
@pytest.mark.skipif(BACKEND == "torch", reason="export serves TensorFlow and JAX models")
# In a fresh process (slow: TensorFlow's import), the promise: served without tfmetric.
@pytest.mark.parametrize("fresh", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["here", "fresh process"])
def test_exports_serve_the_index_search(tmp_path, fresh):
    rng = np.random.default_rng(0)
    model = embedding_model()
    references = rng.normal(size=(36, 5)).astype("float32")
    # Near some references, and anywhere.
    queries = np.concatenate([references[:8] + rng.normal(scale=0.2, size=(8, 5)), rng.normal(size=(8, 5))])
    queries = queries.astype("float32")
    classes = np.arange(36) % 5
    expected = {}
    for name, (distance, label_kind, with_threshold) in RANDOM_CASES.items():
        labels = {"int": classes, "string": np.array([f"类 {c}" for c in classes]), None: None}[label_kind]
        index = Index(model, distance=distance)
        index.add(x=references, labels=labels, verbose=0)
        want = index.search(x=queries, k=K, verbose=0)
        if with_threshold:
            index.threshold = threshold_between_nearest(want.distances[:, 0])
        write_export(tmp_path, name, index, queries)
        expected[name] = (index, want)

    # By hand: the identity model, references at (0, 0) and (6, 8), classes 3 and 4.
    index = Index(identity_model())
    index.add(np.array([[0.0, 0.0], [6.0, 8.0]]), labels=[3, 4])
    index.threshold = 5.0
    # (3, 4) is 5 from both (a tie, to the lower index; 5 <= 5 matches), (6, 8) is
    # reference 1, (100, 100) is beyond the threshold.
    write_export(tmp_path, "by-hand", index, np.array([[3.0, 4.0], [6.0, 8.0], [100.0, 100.0]], "float32"))
    # One reference, k beyond it; a threshold below every distance: all unknown.
    index = Index(identity_model(), distance="squared_euclidean")
    index.add(np.array([[1.0, 1.0]]), labels=["only"])
    index.threshold = 0.5
    write_export(tmp_path, "one-reference", index, np.array([[1.0, 2.0], [3.0, 1.0]], "float32"), k=10)

    answers = serve(tmp_path, [*RANDOM_CASES, "by-hand", "one-reference"], fresh)

    assert answers["by-hand"]["indices"].tolist() == [[0, 1], [1, 0], [1, 0]]
    far = [np.hypot(94, 92), np.hypot(100, 100)]
    np.testing.assert_allclose(answers["by-hand"]["distances"], [[5, 5], [0, 10], far], rtol=1e-6)
    assert answers["by-hand"]["labels"].tolist() == [[3, 4], [4, 3], [4, 3]]
    assert answers["by-hand"]["matched"].tolist() == [True, True, False]
    assert answers["by-hand"]["label"].tolist() == [3, 4, UNKNOWN_LABELS["int"]]
    assert answers["by-hand"]["label"].dtype == np.int64
    one = answers["one-reference"]
    assert one["indices"].tolist() == [[0], [0]] and one["distances"].tolist() == [[1.0], [4.0]]
    assert one["labels"].tolist() == [[b"only"], [b"only"]]
    assert one["matched"].tolist() == [False, False] and one["label"].tolist() == [b"", b""]

    for name, (index, want) in expected.items():
        got = answers[name]
        distance, label_kind, with_threshold = RANDOM_CASES[name]
        np.testing.assert_allclose(got["embedded"], model.predict(queries, verbose=0), rtol=1e-5, atol=1e-6)
        reference_distances, reference_indices = brute_force(got["embedded"], index.embeddings, K + 1, distance)
        np.testing.assert_allclose(want.distances, reference_distances[:, :K], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got["distances"], want.distances, rtol=1e-5, atol=1e-5)
        assert got["distances"].dtype == np.float32 and got["indices"].dtype == np.int64
        # The order is the NumPy search's wherever float32 cannot swap two neighbours.
        separated = (np.diff(reference_distances, axis=1) > 1e-4).all(axis=1)
        assert separated.mean() > 0.8, name
        np.testing.assert_array_equal(got["indices"][separated], want.indices[separated])
        np.testing.assert_array_equal(got["indices"][separated], reference_indices[separated, :K])
        if label_kind is None:
            assert "labels" not in got and "label" not in got
        else:
            labels = index.labels[got["indices"]]
            served = np.char.decode(got["labels"], "utf-8") if label_kind == "string" else got["labels"]
            np.testing.assert_array_equal(served, labels)
        if not with_threshold:
            assert "matched" not in got and "label" not in got
            continue
        matched = [row[0] <= index.threshold for row in reference_distances]
        assert got["matched"].tolist() == matched and 0 < sum(matched) < len(matched)
        if label_kind is not None:
            unknown = UNKNOWN_LABELS[label_kind]
            want_label = [index.labels[row[0]] if hit else unknown for row, hit in zip(reference_indices, matched)]
            served = np.char.decode(got["label"], "utf-8") if label_kind == "string" else got["label"]
            assert served.tolist() == want_label


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3"])
def test_k_must_be_a_positive_integer(tmp_path, k):
    index = Index(identity_model())
    index.add(np.eye(2))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        export(index, tmp_path / "served", k=k)


def test_an_empty_index_or_no_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="The index is empty"):
        export(Index(identity_model()), tmp_path / "served")
    index = Index()
    index.add(np.eye(2))
    with pytest.raises(ValueError, match="needs the model"):
        export(index, tmp_path / "served")
    assert not (tmp_path / "served").exists()


def test_the_model_must_fit_the_index(tmp_path):
    index = Index(embedding_model(outputs=3))
    index.add(np.eye(2))
    with pytest.raises(ValueError, match=r"2-dimensional embeddings; the model outputs shape \(None, 3\)"):
        export(index, tmp_path / "served")

    class Unbuilt(keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(ValueError, match="one input and one output"):
        export(index, tmp_path / "served", model=Unbuilt())


@pytest.mark.parametrize("labels", [np.array([0.5, 1.5]), np.array([1, 2**63], np.uint64)], ids=["float", "uint64"])
def test_labels_must_be_integers_or_strings(tmp_path, labels):
    index = Index(identity_model())
    index.add(np.eye(2), labels=labels)
    with pytest.raises(ValueError, match=f"or string labels; the index's labels have dtype {labels.dtype}"):
        export(index, tmp_path / "served")


@pytest.mark.skipif(BACKEND != "torch", reason="the PyTorch backend's refusal")
def test_a_pytorch_model_is_refused_with_the_way_out(tmp_path):
    index = Index(identity_model())
    index.add(np.eye(2))
    with pytest.raises(ValueError, match="from the TensorFlow and JAX backends; received a model of the 'torch'"):
        export(index, tmp_path / "served")
