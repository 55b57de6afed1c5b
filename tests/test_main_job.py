"""The main job (`tfmetric demo`), its data, and export to a fresh process."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import tfmetric as tfm
from tfmetric import datasets, demo
from tfmetric.data import random_pairs, random_triplets

from conftest import only_tensorflow

# tf.data pipelines and TensorBoard logs.
pytestmark = only_tensorflow


@pytest.mark.slow
def test_demo_trains_writes_tensorboard_logs_and_reports(tmp_path, capsys):
    result = demo.run(epochs=3, log_dir=str(tmp_path), verbose=0)
    assert result["after"]["accuracy"] > result["before"]["accuracy"] - 0.01
    assert result["after"]["recall@1"] > 0.9 and result["loss"][-1] < result["loss"][0]
    printed = capsys.readouterr().out
    assert f"tensorboard --logdir {tmp_path}" in printed and "1-NN accuracy" in printed and "recall@1" in printed
    assert (tmp_path / "projector" / "projector_config.pbtxt").exists()
    assert (tmp_path / "projector" / "sprite.png").exists()
    assert (tmp_path / "pca" / "embeddings.gif").exists()
    assert list((tmp_path / "retrieval").glob("events.out.tfevents.*"))
    # The lookups: an index of the held-out examples, calibrated, saved, answering one training example per class.
    index = result["index"]
    held_out_labels = datasets.load("digits", 0)[1][1]
    assert len(index) == len(held_out_labels) and 0 < index.threshold < 2
    assert f"An index of the {len(index)} held-out embeddings" in printed and "random pixels" in printed
    loaded = tfm.search.Index.load(tmp_path / "index.npz")
    assert loaded.threshold == index.threshold and len(loaded) == len(index)


def test_demo_on_fashion_mnist_files(tmp_path, capsys):
    # IDX files as Debian's dataset-fashion-mnist installs them, tiny: the demo runs offline on them.
    from test_datasets import write_dataset

    write_dataset(tmp_path / "idx", np.random.default_rng(0), train=160, test=40, compress=True)
    result = demo.run(
        dataset="fashion_mnist", data_dir=str(tmp_path / "idx"), epochs=1, log_dir=str(tmp_path / "logs"), verbose=0
    )
    assert len(result["loss"]) == 1 and np.isfinite(result["loss"][0])
    assert "fashion_mnist: 160 training, 40 held-out examples" in capsys.readouterr().out
    assert (tmp_path / "logs" / "projector" / "sprite.png").exists()


def test_demo_command_line(capsys):
    from tfmetric.__main__ import main

    with pytest.raises(SystemExit):
        main(["demo", "--loss", "n_pairs"])
    assert "invalid choice: 'n_pairs'" in capsys.readouterr().err


def test_offline_download_fails_with_a_clear_message(monkeypatch):
    def offline():
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(RuntimeError, match="downloads it on first use.*--dataset digits"):
        datasets.load("mnist")
    from tfmetric.__main__ import main

    with pytest.raises(SystemExit, match="tfmetric demo: Could not load mnist"):
        main(["demo", "--dataset", "mnist"])
    with pytest.raises(ValueError, match="Unknown dataset"):
        datasets.load("cifar")


def test_random_pairs_and_triplets():
    labels = np.array([5, 5, 5, 7, 7, 9, 2])  # class 2 and 9 have a single example
    first, second, similar = random_pairs(labels, 1000, seed=0)
    assert similar.sum() == 500
    assert np.all(first != second)
    np.testing.assert_array_equal(labels[first] == labels[second], similar == 1)
    assert set(first) <= {0, 1, 2, 3, 4}  # anchors have a positive
    assert set(second[similar == 0]) == set(range(7))  # any other class can be the negative
    anchors, positives, negatives = random_triplets(labels, 2000, seed=1)
    assert np.all(labels[anchors] == labels[positives]) and np.all(anchors != positives)
    assert np.all(labels[anchors] != labels[negatives])
    # Positives are uniform over the anchor's other class members.
    counts = np.bincount(positives[anchors == 0], minlength=3)[1:3]
    assert abs(counts[0] - counts[1]) < 0.2 * counts.sum()
    np.testing.assert_array_equal(random_triplets(labels, 10, seed=3)[2], random_triplets(labels, 10, seed=3)[2])
    with pytest.raises(ValueError, match="two classes"):
        random_pairs([1, 1, 1], 4)
    with pytest.raises(ValueError, match="single example"):
        random_triplets([1, 2, 3], 4)


def test_navigation_queries_are_balanced_distinct_and_share_places():
    texts, labels = datasets.navigation_queries()
    assert len(texts) == len(set(texts)) == len(labels) > 500
    assert 0.4 < labels.mean() < 0.6
    assert "导航到高铁东站" in texts and "去安泰小区怎么走" in texts
    navigation = {text for text, label in zip(texts, labels) if label == 1}
    assert "去安泰小区怎么走" in navigation and "安泰小区几点关门" not in navigation
    assert texts == datasets.navigation_queries()[0]


@pytest.mark.slow
def test_exported_and_saved_models_serve_identically_in_a_fresh_process(tmp_path):
    keras.utils.set_random_seed(0)
    (x, y), _, _ = datasets.load("digits")
    model = demo.embedding_network(64, 16)
    model.compile(
        optimizer="adam", loss=tfm.SemiHardTriplet(margin=0.3), metrics=[tfm.metrics.ActiveTripletFraction(margin=0.3)]
    )
    model.fit(tfm.data.pk_sampler(x, y, 8, 8, seed=0), epochs=1, shuffle=False, verbose=0)
    model.export(str(tmp_path / "served"), verbose=False)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x[:200])
    np.save(tmp_path / "y.npy", y[:200])
    want = model.predict(x[:200], verbose=0)
    evaluated = model.evaluate(x[:64], y[:64], batch_size=64, verbose=0, return_dict=True)
    script = textwrap.dedent(
        f"""
        import json, os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import numpy as np, tensorflow as tf
        x, y = np.load("{tmp_path}/x.npy"), np.load("{tmp_path}/y.npy")
        served = tf.saved_model.load("{tmp_path}/served")  # no tfmetric needed to serve
        np.save("{tmp_path}/served.npy", served.serve(tf.constant(x)).numpy())
        import keras, tfmetric
        restored = keras.models.load_model("{tmp_path}/model.keras")
        np.save("{tmp_path}/restored.npy", restored.predict(x, verbose=0))
        print(json.dumps({{
            "loss": type(restored.loss).__name__,
            "config": restored.loss.get_config(),
            "evaluated": restored.evaluate(x[:64], y[:64], batch_size=64, verbose=0, return_dict=True),
        }}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "restored.npy"), want, rtol=1e-5, atol=1e-6)
    assert report["loss"] == "SemiHardTriplet" and report["config"] == model.loss.get_config()
    assert report["evaluated"] == pytest.approx(evaluated, rel=1e-5)
