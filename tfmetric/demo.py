"""`tfmetric demo`: a short, real training run on data that needs no download.

Learns a 32-dimensional embedding of scikit-learn's bundled 8×8 digits with an
online-mined loss (a triplet loss by default) and reports the 1-nearest-neighbour accuracy of the
held-out digits before and after training.
"""

import functools

import numpy as np

from tfmetric.data import pk_sampler
from tfmetric.losses import (
    BatchAllTriplet,
    BatchHardTriplet,
    Contrastive,
    MarginLoss,
    SemiHardTriplet,
)
from tfmetric.metrics import ActiveTripletFraction

LOSSES = {
    "batch_hard": BatchHardTriplet,
    "batch_all": BatchAllTriplet,
    "semi_hard": SemiHardTriplet,
    "contrastive": Contrastive,
    "contrastive_hard": functools.partial(Contrastive, negatives="hard"),
    "margin": functools.partial(MarginLoss, learn_beta=True),
}


def load_digits_split(seed):
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the install
        raise SystemExit(
            "The demo uses scikit-learn's bundled digits: pip install 'tfmetric[viz]'"
        ) from error
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(y))
    split = int(0.8 * len(y))
    return (x[order[:split]], y[order[:split]]), (x[order[split:]], y[order[split:]])


def nearest_neighbour_accuracy(reference, reference_labels, queries, query_labels):
    from sklearn.neighbors import KNeighborsClassifier

    classifier = KNeighborsClassifier(n_neighbors=1).fit(reference, reference_labels)
    return float(classifier.score(queries, query_labels))


def watchers(log_dir, x_test, y_test):
    """Callbacks writing what TensorBoard shows of the held-out digits under `log_dir`."""
    import os

    from tfmetric import callbacks

    return [
        callbacks.RetrievalEvaluation(x_test, y_test, k=(1, 5), log_dir=os.path.join(log_dir, "retrieval")),
        callbacks.EmbeddingProjector(
            os.path.join(log_dir, "projector"), x_test, labels=y_test, images=x_test.reshape(-1, 8, 8)
        ),
        callbacks.EmbeddingSnapshots(x_test, y_test, os.path.join(log_dir, "pca"), basis="last"),
    ]


def run(loss="batch_hard", epochs=15, margin=0.5, seed=0, verbose=2, log_dir=None):
    import keras

    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed)
    model = keras.Sequential(
        [
            keras.Input((x_train.shape[1],)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(32),
            keras.layers.UnitNormalization(),
        ],
        name="digits_embedding",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=LOSSES[loss](margin=margin),
        metrics=[ActiveTripletFraction(margin=margin)],
    )

    def accuracy():
        return nearest_neighbour_accuracy(
            model.predict(x_train, verbose=0), y_train, model.predict(x_test, verbose=0), y_test
        )

    before = accuracy()
    print(f"Digits: {len(y_train)} training, {len(y_test)} held-out images; loss {loss}, margin {margin}")
    print(f"1-NN accuracy of held-out digits before training: {before:.3f}")
    # 8 digits × 8 examples per batch: every anchor has positives.
    batches = pk_sampler(x_train, y_train, p=8, k=8, seed=seed)
    # The sampler shuffles every epoch itself.
    callbacks = [] if log_dir is None else watchers(log_dir, x_test, y_test)
    history = model.fit(batches, epochs=epochs, shuffle=False, verbose=verbose, callbacks=callbacks).history["loss"]
    after = accuracy()
    print(f"1-NN accuracy of held-out digits after training:  {after:.3f}")
    print(f"Training loss: {history[0]:.4f} (first epoch) -> {history[-1]:.4f} (last epoch)")
    if log_dir is not None:
        print(f"Projector, PCA film and retrieval metrics in {log_dir}: tensorboard --logdir {log_dir}")
    return {"loss": history, "accuracy_before": before, "accuracy_after": after}
