"""Callbacks: retrieval metrics in the history, the collapse warning."""

import warnings

import keras
import numpy as np
import pytest

import tfmetric as tfm

from conftest import only_tensorflow

# TensorBoard writers, tf.data.
pytestmark = only_tensorflow


def clustered(n=120, classes=6, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    x = (rng.normal(size=(classes, dim))[labels] * 3 + rng.normal(size=(n, dim))).astype("float32")
    return x, labels


def test_retrieval_evaluation_logs_the_metrics_every_n_epochs():
    keras.utils.set_random_seed(0)
    x, y = clustered()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(optimizer="adam", loss=tfm.BatchHardTriplet(margin=0.5))
    callback = tfm.callbacks.RetrievalEvaluation(x, y, k=(1, 5), every_n_epochs=2)
    history = model.fit(
        tfm.data.pk_sampler(x, y, 3, 4, seed=0), epochs=4, shuffle=False, verbose=0, callbacks=[callback]
    ).history
    # Logged at epochs 2 and 4 only.
    assert len(history["val_map@r"]) == 2 and len(history["loss"]) == 4
    want = tfm.evaluation.retrieval_metrics(model.predict(x, verbose=0), y, k=(1, 5), nmi=False)
    assert history["val_precision@1"][-1] == pytest.approx(want["precision@1"])
    assert history["val_recall@5"][-1] == pytest.approx(want["recall@5"])


def test_retrieval_evaluation_with_multi_hot_labels():
    keras.utils.set_random_seed(0)
    x, y = clustered(n=48)
    # A second tag on every third example.
    tags = np.eye(6)[y]
    tags[::3, 0] = 1
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(optimizer="adam", loss=tfm.Contrastive(multi_label=True))
    callback = tfm.callbacks.RetrievalEvaluation(x, tags, k=(1,), multi_label=True)
    history = model.fit(x, tags, batch_size=16, epochs=1, verbose=0, callbacks=[callback]).history
    want = tfm.evaluation.retrieval_metrics(model.predict(x, verbose=0), tags, k=(1,), nmi=False, multi_label=True)
    assert history["val_map@r"][-1] == pytest.approx(want["map@r"])


def test_collapse_is_reported_plainly():
    x, y = clustered()
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(4, kernel_initializer="zeros", bias_initializer="ones")]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=tfm.BatchHardTriplet(margin=0.5))
    with pytest.warns(tfm.callbacks.EmbeddingCollapseWarning, match="collapsed after epoch 1"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[tfm.callbacks.RetrievalEvaluation(x, y)])
    diverged = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, bias_initializer="ones")])
    diverged.layers[-1].bias.assign(np.full(4, np.nan, "float32"))
    with pytest.warns(RuntimeWarning, match="NaN or infinite values after epoch 1: retrieval metrics skipped"):
        callback = tfm.callbacks.RetrievalEvaluation(x, y)
        callback.set_model(diverged)
        callback.on_epoch_end(0, {})
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not tfm.callbacks.check_collapse(rng.normal(size=(50, 4)))
    with pytest.warns(tfm.callbacks.EmbeddingCollapseWarning):
        assert tfm.callbacks.check_collapse(np.ones((50, 4)) + rng.normal(size=(50, 4)) * 1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="together"):
        tfm.callbacks.RetrievalEvaluation(np.zeros((2, 2)), [0, 1], reference=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="every_n_epochs"):
        tfm.callbacks.RetrievalEvaluation(np.zeros((2, 2)), [0, 1], every_n_epochs=0)


# --- TensorBoard files -------------------------------------------------------

import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
import urllib.request  # noqa: E402

# The [viz] extra (the README's test command installs it; the oldest-versions
# run of CI, which selects backend-neutral tests only, does not).
Image = pytest.importorskip("PIL.Image")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from tfmetric import plots  # noqa: E402
from tfmetric.recurrent import active_units, layer_inputs  # noqa: E402


def logged(log_dir):
    """`{tag: [(step, tensor), ...]}` from the TensorBoard event files in `log_dir`."""
    accumulator = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return {
        tag: [(event.step, tf_tensor(event.tensor_proto)) for event in accumulator.Tensors(tag)]
        for tag in accumulator.Tags()["tensors"]
    }


def tf_tensor(proto):
    import tensorflow as tf

    return tf.make_ndarray(proto)


def test_retrieval_evaluation_writes_tensorboard_scalars(tmp_path):
    x, y = clustered()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(optimizer="adam", loss=tfm.BatchHardTriplet(margin=0.5))
    callback = tfm.callbacks.RetrievalEvaluation(x, y, k=(1,), log_dir=tmp_path)
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[callback]).history
    scalars = logged(tmp_path)
    assert {"val_precision@1", "val_map@r", "val_r_precision", "val_recall@1"} <= set(scalars)
    assert [step for step, _ in scalars["val_map@r"]] == [0, 1]
    np.testing.assert_allclose([value for _, value in scalars["val_map@r"]], history["val_map@r"], rtol=1e-6)


class TensorBoardServer:
    """`tensorboard` on 127.0.0.1 (a free port), stopped on exit."""

    def __init__(self, log_dir):
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                "--logdir",
                str(log_dir),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--load_fast",
                "false",
                "--reload_interval",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started = time.monotonic()
        output = ""
        while time.monotonic() - started < 120:
            line = self.process.stdout.readline()
            output += line
            found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if found:
                self.url = found.group(1)
                return
            if not line and self.process.poll() is not None:
                break
        self.process.kill()
        raise RuntimeError(f"TensorBoard did not start:\n{output}")

    def get(self, route, **query):
        url = self.url + "data/plugin/projector/" + route + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def wait_for(self, route, done, **query):
        """The route's answer once `done(answer)`; TensorBoard loads runs in the background."""
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = self.get(route, **query)
                if done(answer):
                    return answer
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"TensorBoard never served the expected {route}")
            time.sleep(0.3)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()


@pytest.mark.slow
def test_embedding_projector_is_served_by_tensorboard(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = clustered(n=60)
    names = [f"point\t{index}" for index in range(60)]  # a tab must not shift the columns
    images = np.random.default_rng(0).integers(0, 256, size=(60, 12, 10), dtype=np.uint8)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(6, name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    model.compile(optimizer="adam", loss=tfm.BatchAllTriplet())
    run = tmp_path / "projector"
    callback = tfm.callbacks.EmbeddingProjector(
        run, x, labels=y, metadata={"name": names}, images=images, layer="hidden"
    )
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    hidden_model = keras.Model(inputs, hidden)
    with TensorBoardServer(tmp_path) as server:
        runs = json.loads(server.wait_for("runs", lambda answer: b"projector" in answer))
        assert runs == ["projector"]
        info = json.loads(server.get("info", run="projector"))
        (embedding,) = info["embeddings"]
        assert embedding["tensorName"] == "epoch_0001/.ATTRIBUTES/VARIABLE_VALUE"
        assert embedding["tensorShape"] == [60, 6]
        assert embedding["sprite"] == {"imagePath": "sprite.png", "singleImageDim": [10, 12]}

        def served(name):
            return np.frombuffer(server.get("tensor", run="projector", name=name), np.float32).reshape(60, 6)

        np.testing.assert_allclose(served(embedding["tensorName"]), hidden_model.predict(x, verbose=0), atol=1e-5)
        rows = server.get("metadata", run="projector", name=embedding["tensorName"]).decode().splitlines()
        assert rows[0] == "label\tname" and len(rows) == 61
        assert [row.split("\t") for row in rows[1:3]] == [[str(y[0]), "point 0"], [str(y[1]), "point 1"]]
        sprite = Image.open(io.BytesIO(server.get("sprite_image", run="projector", name=embedding["tensorName"])))
        assert sprite.size == (8 * 10, 8 * 12)  # an 8 × 8 grid of 10 × 12 thumbnails

        # The next export is served next to the previous one.
        first = hidden_model.predict(x, verbose=0)
        model.fit(x, y, epochs=2, initial_epoch=1, verbose=0, callbacks=[callback])
        info = json.loads(server.wait_for("info", lambda answer: b"epoch_0002" in answer, run="projector"))
        names = [embedding["tensorName"] for embedding in info["embeddings"]]
        assert names == ["epoch_0002/.ATTRIBUTES/VARIABLE_VALUE", "epoch_0001/.ATTRIBUTES/VARIABLE_VALUE"]
        np.testing.assert_allclose(served(names[0]), hidden_model.predict(x, verbose=0), atol=1e-5)
        np.testing.assert_allclose(served(names[1]), first, atol=1e-5)
        assert not np.allclose(first, hidden_model.predict(x, verbose=0), atol=1e-3)
    # Two checkpoints are kept.
    assert sorted(path.name for path in run.glob("embeddings-*.index")) == ["embeddings-1.index", "embeddings-2.index"]


def test_projector_metadata_has_a_header_only_with_several_columns(tmp_path):
    x, y = clustered(n=12)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    tfm.callbacks.EmbeddingProjector(tmp_path, x, labels=y).set_model(model)
    callback = tfm.callbacks.EmbeddingProjector(tmp_path, x, labels=y)
    callback.set_model(model)
    callback.export(0)
    assert (tmp_path / "metadata.tsv").read_text().splitlines() == [str(label) for label in y]
    assert not (tmp_path / "sprite.png").exists()
    assert "sprite" not in (tmp_path / "projector_config.pbtxt").read_text()


def test_projector_export_interrupted_leaves_a_consistent_run(tmp_path, monkeypatch):
    import tensorflow as tf

    from tfmetric.callbacks import base

    x, y = clustered(n=12)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])

    def consistent():
        # Every tensor the config names is in the checkpoint TensorBoard follows, complete.
        config = tmp_path / "projector_config.pbtxt"
        latest = tf.train.latest_checkpoint(str(tmp_path))
        if config.exists():
            names = re.findall(r'tensor_name: "([^"]+)"', config.read_text())
            reader = tf.train.load_checkpoint(latest)
            assert names and all(reader.get_tensor(name).shape == (12, 2) for name in names)
        assert not [path for path in os.listdir(tmp_path) if path.endswith(".tmp")]

    # Interrupted while writing the config, on the first export.
    def interrupted_replace(source, destination):
        raise KeyboardInterrupt

    callback = tfm.callbacks.EmbeddingProjector(tmp_path, x, labels=y)
    callback.set_model(model)
    monkeypatch.setattr(base.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        callback.export(0)
    monkeypatch.undo()
    consistent()
    assert not (tmp_path / "projector_config.pbtxt").exists()

    # Interrupted while saving the second checkpoint.
    callback = tfm.callbacks.EmbeddingProjector(tmp_path, x, labels=y)
    callback.set_model(model)
    callback.export(0)
    consistent()

    def interrupted_save(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tf.train.CheckpointManager, "save", interrupted_save)
        with pytest.raises(KeyboardInterrupt):
            callback.export(1)
    consistent()
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("embeddings-1")

    # Interrupted between the new checkpoint and the new config.
    with monkeypatch.context() as patch:
        patch.setattr(base.os, "replace", interrupted_replace)
        with pytest.raises(KeyboardInterrupt):
            callback.export(1)
    consistent()
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("embeddings-2")
    assert "epoch_0001" in (tmp_path / "projector_config.pbtxt").read_text()


def test_sprite_fits_tensorboards_limit():
    # 36 images of 2000 × 1500 px would tile to 12000 × 9000.
    images = np.broadcast_to(np.uint8(200), (36, 1500, 2000))
    sheet, (width, height) = plots.sprite(images)
    assert max(sheet.size) <= 8192 and sheet.size == (6 * width, 6 * height)
    assert width / height == pytest.approx(2000 / 1500, rel=0.01)
    colour, _ = plots.sprite(np.random.default_rng(0).random((5, 4, 4, 3)))
    assert colour.mode == "RGB" and colour.size == (12, 12)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plots.sprite(np.full((2, 3, 3), 2.0))
    with pytest.raises(ValueError, match="height, width"):
        plots.sprite(np.zeros((2, 3)))


def test_projector_counts_examples_of_multi_input_models(tmp_path):
    first, second = keras.Input((3,), name="first"), keras.Input((2,), name="second")
    model = keras.Model({"first": first, "second": second}, keras.layers.Concatenate()([first, second]))
    x = {"first": np.ones((5, 3), "float32"), "second": np.zeros((5, 2), "float32")}
    callback = tfm.callbacks.EmbeddingProjector(tmp_path, x, labels=np.arange(5))
    callback.set_model(model)
    callback.export(0)
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path)))
    assert reader.get_tensor("epoch_0001/.ATTRIBUTES/VARIABLE_VALUE").shape == (5, 5)


def test_projector_bad_arguments():
    with pytest.raises(ValueError, match="one value per input"):
        tfm.callbacks.EmbeddingProjector("logs", np.zeros((3, 2)), labels=[0, 1])
    with pytest.raises(ValueError, match="images has 2 entries"):
        tfm.callbacks.EmbeddingProjector("logs", np.zeros((3, 2)), images=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        tfm.callbacks.EmbeddingProjector("logs", np.zeros((3, 2)), images=np.full((3, 4, 4), 16.0))


# --- Gate activations -------------------------------------------------------

QUERIES = ["去安泰小区怎么走", "导航到高铁东站", "我要去南漳涌泉"]


def cjk_font():
    spec = importlib.util.find_spec("mplfonts")
    return os.path.join(spec.submodule_search_locations[0], "fonts", "NotoSansCJKsc-Regular.otf")


def text_model():
    vocabulary = {character: index + 1 for index, character in enumerate(sorted(set("".join(QUERIES))))}
    width = max(map(len, QUERIES)) + 2
    tokens = np.array([[vocabulary[c] for c in query] + [0] * (width - len(query)) for query in QUERIES])
    inputs = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(len(vocabulary) + 1, 8, mask_zero=True)(inputs)
    encoded = keras.layers.Bidirectional(keras.layers.LSTM(6), name="encoder")(embedded)
    model = keras.Model(inputs, keras.layers.UnitNormalization()(encoded))
    model.compile(optimizer="adam", loss=tfm.BatchHardTriplet(margin=0.5))
    return model, tokens


def test_gate_activations_export_counts_heatmaps_and_images(tmp_path):
    keras.utils.set_random_seed(0)
    model, tokens = text_model()
    callback = tfm.callbacks.GateActivations(
        "encoder", tokens, tmp_path, threshold=0.5, tokens=[list(query) for query in QUERIES], font=cjk_font()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # matplotlib warns of every missing glyph
        warnings.filterwarnings("ignore", message=".*structure of `inputs`", category=UserWarning)
        model.fit(tokens, np.array([0, 0, 1]), epochs=2, verbose=0, callbacks=[callback])
    layer = model.get_layer("encoder")
    inputs, mask = layer_inputs(model, layer)(tokens)
    want = active_units(tfm.lstm_gates(layer, inputs, mask), threshold=0.5)
    export = tmp_path / "gates" / "epoch-0002"
    summary = json.loads((export / "counts.json").read_text(encoding="utf-8"))
    assert summary["units"] == 12 and summary["threshold"] == 0.5 and summary["epoch"] == 2
    for index, (query, sample) in enumerate(zip(QUERIES, summary["samples"])):
        assert sample["tokens"] == list(query)
        for gate in ("input", "forget", "output"):
            assert sample[gate] == want[gate][index, : len(query)].tolist()
    rows = (export / "counts.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "sample\tposition\ttoken\tinput\tforget\toutput"
    assert len(rows) == 1 + sum(map(len, QUERIES))
    assert rows[1].split("\t") == ["0", "0", "去"] + [str(want[gate][0, 0]) for gate in ("input", "forget", "output")]
    for index in range(3):
        assert Image.open(export / f"sample-{index:03d}.png").size[0] > 300
    images = logged(tmp_path)
    assert sorted(images) == ["gates/sample-000", "gates/sample-001", "gates/sample-002"]
    assert [step for step, _ in images["gates/sample-000"]] == [0, 1]
    assert (tmp_path / "gates" / "epoch-0001" / "counts.json").exists()


def test_cjk_tokens_render_with_a_cjk_font(monkeypatch):
    from matplotlib import font_manager

    counts = {"input": [1, 2, 3], "forget": [0, 1, 0], "output": [3, 3, 3]}
    # matplotlib's own fonts only, whatever the machine has installed.
    installed = font_manager.fontManager.ttflist
    latin = [entry for entry in installed if "DejaVu" in entry.name or "Last Resort" in entry.name]
    # Without a CJK font the glyphs would be boxes, and we say so. (matplotlib's
    # own Last Resort font "covers" everything with boxes: it does not count.)
    monkeypatch.setattr(font_manager.fontManager, "ttflist", latin)
    with pytest.warns(UserWarning, match="No installed font can draw"):
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        boxes = plots.gate_heatmap(counts, list("导航到"))
    # A CJK font matplotlib knows is found by itself, among the installed ones.
    monkeypatch.setattr(font_manager.fontManager, "ttflist", list(latin))
    font_manager.fontManager.addfont(cjk_font())
    assert plots.font_for("导航到: units > 0.8").get_file() == cjk_font()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        drawn = plots.gate_heatmap(counts, list("导航到"))
    assert not np.array_equal(plots.png_to_array(drawn), plots.png_to_array(boxes))
    # The glyphs are real: the drawn characters differ from one another.
    glyphs = [
        plots.png_to_array(plots.gate_heatmap({"input": [1]}, [character], font=cjk_font())) for character in "导航"
    ]
    assert not np.array_equal(*glyphs)
    assert plots.font_for("plain ascii") is None


@pytest.mark.slow
def test_importing_tfmetric_needs_no_viz_extra():
    # matplotlib, Pillow, scikit-learn and TensorBoard load only when a picture or file needs them.
    blocked = ["matplotlib", "PIL", "sklearn", "tensorboard"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import tfmetric as tfm\n"
        "tfm.callbacks.EmbeddingSnapshots([[0.0]], [0], 'logs'); tfm.callbacks.GateActivations('lstm', [[1]], 'logs')\n"
        "try:\n"
        "    tfm.plots.sprite([[[0]]])\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "pip install 'tfmetric[viz]'" in result.stdout


def test_gate_activations_bad_arguments(tmp_path):
    model, tokens = text_model()
    callback = tfm.callbacks.GateActivations("encoder", tokens, tmp_path, tokens=[["a"], ["b"], ["c"]])
    callback.set_model(model)
    with pytest.raises(ValueError, match="Sample 0 has 8 unmasked steps but 1 tokens"):
        callback.export(0)
    with pytest.raises(ValueError, match="threshold"):
        tfm.callbacks.GateActivations("encoder", tokens, tmp_path, threshold=1.5)


def test_gate_activations_of_a_sequential_model_and_a_subclassed_one(tmp_path):
    keras.utils.set_random_seed(0)
    padded = np.array([[1, 2, 3, 0], [4, 5, 6, 7]])
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(10, 4, mask_zero=True),
            keras.layers.Bidirectional(keras.layers.LSTM(3), name="encoder"),
        ]
    )
    model.compile(optimizer="adam", loss=tfm.BatchHardTriplet())
    callback = tfm.callbacks.GateActivations("encoder", padded, tmp_path, threshold=0.3)
    model.fit(padded, np.array([0, 1]), epochs=1, verbose=0, callbacks=[callback])
    rows = (tmp_path / "gates" / "epoch-0001" / "counts.tsv").read_text().splitlines()
    assert [row.split("\t")[:3] for row in rows[1:]] == [
        ["0", "0", "0"],
        ["0", "1", "1"],
        ["0", "2", "2"],
        ["1", "0", "0"],
        ["1", "1", "1"],
        ["1", "2", "2"],
        ["1", "3", "3"],
    ]

    class Encoder(keras.Model):
        def __init__(self):
            super().__init__()
            self.embedding = keras.layers.Embedding(10, 4)
            self.lstm = keras.layers.LSTM(3)

        def call(self, x):
            return self.lstm(self.embedding(x))

    subclassed = Encoder()
    subclassed(padded)
    callback = tfm.callbacks.GateActivations(subclassed.lstm, padded, tmp_path)
    callback.set_model(subclassed)
    with pytest.raises(ValueError, match="subclassed model, call tfm.lstm_gates"):
        callback.export(0)


# --- PCA snapshots ----------------------------------------------------------


def principal_directions(embeddings):
    _, _, right = np.linalg.svd(embeddings - embeddings.mean(axis=0), full_matrices=False)
    return right[:2]


@pytest.mark.parametrize("basis", ["first", "last"])
def test_embedding_snapshots_film_in_a_fixed_basis(tmp_path, basis):
    keras.utils.set_random_seed(0)
    x, y = clustered()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5)])
    before = model.predict(x, verbose=0)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=tfm.BatchHardTriplet(margin=0.5))
    callback = tfm.callbacks.EmbeddingSnapshots(x, y, tmp_path, every_n_epochs=2, basis=basis)
    model.fit(x, y, epochs=4, verbose=0, callbacks=[callback])
    after = model.predict(x, verbose=0)
    with Image.open(tmp_path / "embeddings.gif") as film:
        assert film.n_frames == 3  # before training, after epochs 2 and 4
    saved = np.load(tmp_path / "embeddings_pca.npz")
    assert saved["epochs"].tolist() == [-1, 1, 3]
    # The basis is the PCA of the embeddings before (or after) training...
    want = principal_directions(before if basis == "first" else after)
    np.testing.assert_allclose(np.abs(saved["axes"] @ want.T), np.eye(2), atol=1e-5)
    # ...and every frame is projected on it.
    for frame, embeddings in ((0, before), (-1, after)):
        np.testing.assert_allclose(saved["points"][frame], (embeddings - saved["mean"]) @ saved["axes"].T, atol=1e-4)
    assert [step for step, _ in logged(tmp_path)["embeddings/pca"]] == [1, 3]
    with pytest.raises(ValueError, match="basis"):
        tfm.callbacks.EmbeddingSnapshots(x, y, tmp_path, basis="middle")


def test_snapshots_of_one_dimensional_embeddings(tmp_path):
    x, y = clustered(n=12)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss=tfm.BatchHardTriplet())
    model.fit(x, y, epochs=1, verbose=0, callbacks=[tfm.callbacks.EmbeddingSnapshots(x, y, tmp_path)])
    saved = np.load(tmp_path / "embeddings_pca.npz")
    assert saved["points"].shape == (2, 12, 2) and np.all(saved["points"][:, :, 1] == 0)
