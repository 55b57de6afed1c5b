"""`tfmetric compare`: the protocols, the seeds' mean ± std, the baselines, every method."""

import numpy as np
import pytest

from tfmetric import compare, datasets
from tfmetric.evaluation import retrieval_metrics

from conftest import only_tensorflow

# P×K batches are tf.data.
pytestmark = only_tensorflow

SMALL = dict(epochs=1, train_size=200, eval_size=150)


def test_protocol_split():
    x = np.arange(20, dtype="float32").reshape(10, 2)
    y_train, y_test = np.array([0, 1, 2, 3, 0, 1, 2, 3]), np.array([3, 1])
    train, test = (x[:8], y_train), (x[8:], y_test)
    (x_seen, y_seen), (x_unseen, y_unseen) = datasets.protocol_split(train, test, "open")
    np.testing.assert_array_equal(y_seen, [0, 1, 0, 1])
    np.testing.assert_array_equal(x_seen, x[[0, 1, 4, 5]])
    # Every example of the unseen classes, from both splits.
    np.testing.assert_array_equal(y_unseen, [2, 3, 2, 3, 3])
    np.testing.assert_array_equal(x_unseen, x[[2, 3, 6, 7, 8]])
    (_, y_seen), (_, y_unseen) = datasets.protocol_split(train, test, "open", seen_classes=[3])
    assert set(y_seen) == {3} and set(y_unseen) == {0, 1, 2}
    assert datasets.protocol_split(train, test, "closed") == (train, test)
    with pytest.raises(ValueError, match="seen and unseen classes"):
        datasets.protocol_split(train, test, "open", seen_classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="Unknown protocol 'half'"):
        datasets.protocol_split(train, test, "half")


def test_baselines_and_seeds(tmp_path, capsys):
    rows = compare.run(methods=["raw pixels", "untrained encoder", "softmax"], seeds=2, out_dir=str(tmp_path), **SMALL)
    pixels, untrained, softmax = rows
    # The pixels of the unseen digits 5–9, compared by cosine, computed here independently.
    (_, _), (x_unseen, y_unseen) = datasets.protocol_split(*datasets.load("digits")[:2], "open")
    keep = np.sort(np.random.default_rng(0).choice(len(y_unseen), 150, replace=False))
    expected = retrieval_metrics(x_unseen[keep], y_unseen[keep], k=(1, 4), nmi=False, distance="cosine")
    for name in compare.METRICS:
        assert pixels[name] == (pytest.approx(expected[name]), 0.0)
    for row in (untrained, softmax):
        assert len(row["runs"]) == 2 and row["runs"][0] != row["runs"][1]  # the seeds differ
        for name in compare.METRICS:
            values = [run[name] for run in row["runs"]]
            assert row[name] == (pytest.approx(np.mean(values)), pytest.approx(np.std(values)))
            assert 0.0 <= row[name][0] <= 1.0
    assert pixels["figure"] is None and (tmp_path / "softmax.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "open protocol: train on 200 examples of classes 0–4, retrieve among 150 of classes 5–9" in printed
    assert "mean ± std over 2 seeds" in printed and "raw pixels" in printed


# One method of each kind of training: every trainer runs (the losses
# themselves are fitted one by one in test_keras_integration.py).
ONE_OF_EACH_KIND = [
    "raw pixels",
    "untrained encoder",
    "softmax",
    "softmax + center loss",
    "siamese (random pairs)",
    "triplet (random triplets)",
    "cross-batch memory",
    "batch-hard triplet",
    "ArcFace",
]


def test_one_of_each_kind_covers_every_trainer():
    trainers = {compare.TRAINERS[method].__qualname__.split(".")[0] for method in compare.METHODS}
    assert {compare.TRAINERS[method].__qualname__.split(".")[0] for method in ONE_OF_EACH_KIND} == trainers


@pytest.mark.slow
def test_one_method_of_each_kind_trains_and_draws(tmp_path, capsys):
    rows = compare.run(methods=ONE_OF_EACH_KIND, seeds=1, out_dir=str(tmp_path), protocol="closed", **SMALL)
    assert [row["method"] for row in rows] == ONE_OF_EACH_KIND
    for row in rows:
        assert all(0.0 <= row[name][0] <= 1.0 and row[name][1] == 0.0 for name in compare.METRICS), row
        if row["method"] != "raw pixels":
            assert (tmp_path / row["figure"].split("/")[-1]).stat().st_size > 1000
    table = capsys.readouterr().out
    assert "closed protocol" in table and all(method in table for method in ONE_OF_EACH_KIND)


@pytest.mark.parametrize("dimensions", [2, 8])
def test_every_method_builds_a_loss_that_computes(dimensions):
    """Each method's loss, as `compare` configures it, gives a finite value on a small batch."""
    import keras

    encoder = compare.encoder_network("mlp", 64, (8, 8), dimensions)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 4)
    x = keras.ops.convert_to_tensor(rng.normal(size=(16, dimensions)).astype("float32"))
    built = 0
    for method in compare.METHODS:
        if method not in compare.PROXIES and compare.ONLINE.get(method) is None:
            continue
        value = float(keras.ops.convert_to_numpy(compare.method_loss(method, encoder, 4)(y, x)))
        assert np.isfinite(value), method
        built += 1
    assert built == len(compare.PROXIES) + len(compare.ONLINE) - 1


def test_a_cnn_with_augmentation_in_more_dimensions(tmp_path):
    rows = compare.run(
        methods=["batch-hard triplet", "ArcFace"],
        seeds=1,
        dimensions=8,
        encoder="cnn",
        augment=True,
        out_dir=str(tmp_path),
        epochs=1,
        train_size=100,
        eval_size=100,
    )
    assert all(row["figure"] is None and 0.0 < row["precision@1"][0] <= 1.0 for row in rows)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # figures are 2-D only


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Unknown method 'k-means'"):
        compare.run(methods=["k-means"], out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="augment.*encoder='cnn'"):
        compare.run(methods=["softmax"], augment=True, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Unknown encoder 'resnet'"):
        compare.encoder_network("resnet", 64, (8, 8), 2)


def test_command_line(tmp_path, capsys):
    from tfmetric.__main__ import main

    main(
        [
            "compare",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--train-size",
            "200",
            "--eval-size",
            "100",
            "--protocol",
            "closed",
        ]
        + ["--methods", "softmax", "semi-hard triplet", "--out-dir", str(tmp_path)]
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["semi_hard_triplet.png", "softmax.png"]
    assert "closed protocol" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="does not hold the four IDX files"):
        main(["compare", "--dataset", "mnist", "--data-dir", str(tmp_path), "--methods", "softmax"])
