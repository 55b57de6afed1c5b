"""What the watching callbacks cost per export, against embedding the same data once.

    python benchmarks/callbacks.py

An embedding model (Dense 64 → 128 → 32, unit-normalised) and a Bi-LSTM text
encoder (Embedding 1 000 × 32 with mask_zero → Bidirectional(LSTM 64)). For n
held-out points, each callback's epoch-end work is timed (median of repeats,
after one warm-up) and divided by the time of `model.predict` on the same
points, measured in the same run: `× predict` is what an export costs in
units of the inference it cannot avoid.
"""

import argparse
import os
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import tfmetric as tfm


def median_seconds(work, repeats):
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def embedding_rows(n, repeats, log_dir):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 64)).astype("float32")
    y = rng.integers(0, 10, size=n)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(32),
            keras.layers.UnitNormalization(),
        ]
    )
    callbacks = {
        "RetrievalEvaluation": tfm.callbacks.RetrievalEvaluation(x, y, k=(1, 5), log_dir=os.path.join(log_dir, "r")),
        "EmbeddingProjector": tfm.callbacks.EmbeddingProjector(os.path.join(log_dir, "p"), x, labels=y, images=images),
        "EmbeddingSnapshots": tfm.callbacks.EmbeddingSnapshots(x, y, os.path.join(log_dir, "s")),
    }
    for callback in callbacks.values():
        callback.set_model(model)
    callbacks["EmbeddingSnapshots"].on_train_begin()
    base = median_seconds(lambda: model.predict(x, batch_size=256, verbose=0), repeats)
    rows = [("model.predict", n, base)]
    for name, callback in callbacks.items():
        rows.append((name, n, median_seconds(lambda: callback.on_epoch_end(0, {}), repeats)))
    return rows, base


def gate_rows(samples, repeats, log_dir):
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 21, size=samples)
    padded = np.zeros((samples, 20), "int32")
    for row, length in enumerate(lengths):
        padded[row, :length] = rng.integers(1, 1000, size=length)
    inputs = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(1000, 32, mask_zero=True)(inputs)
    model = keras.Model(inputs, keras.layers.Bidirectional(keras.layers.LSTM(64), name="encoder")(embedded))
    base = median_seconds(lambda: model.predict(padded, verbose=0), repeats)
    callback = tfm.callbacks.GateActivations("encoder", padded, log_dir)
    callback.set_model(model)
    return [
        ("model.predict", samples, base),
        ("GateActivations", samples, median_seconds(lambda: callback.export(0), repeats)),
    ], base


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"Keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} CPUs")
    print(f"{'work':<22}{'n':>7}{'ms':>11}{'× predict':>11}")
    print("-" * 51)
    with tempfile.TemporaryDirectory() as log_dir:
        for size in args.sizes:
            rows, base = embedding_rows(size, args.repeats, os.path.join(log_dir, str(size)))
            for name, n, seconds in rows:
                print(f"{name:<22}{n:>7}{seconds * 1e3:>11.1f}{seconds / base:>11.2f}")
        rows, base = gate_rows(3, args.repeats, os.path.join(log_dir, "gates"))
        for name, n, seconds in rows:
            label = name + " (text)" if name == "model.predict" else name
            print(f"{label:<22}{n:>7}{seconds * 1e3:>11.1f}{seconds / base:>11.2f}")


if __name__ == "__main__":
    main()
