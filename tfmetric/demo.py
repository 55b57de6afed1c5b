"""`tfmetric demo`: a short, real training run that shows what tfmetric gives.

Learns a 32-dimensional, L2-normalised embedding of scikit-learn's bundled 8×8
digits (no download; `--dataset fashion_mnist` reads Debian's
`dataset-fashion-mnist` where installed, `--data-dir` any copy of the IDX
files, else MNIST/Fashion-MNIST download through `keras.datasets`) with
P×K batches and an online-mined loss, writes a TensorBoard log directory (the
projector with thumbnails, a PCA film of the held-out embeddings, retrieval
metrics every epoch), prints the held-out 1-NN accuracy and recall@1
before and after training, and ends with lookups: an index of the held-out
embeddings (`tfm.search.Index`, calibrated, saved beside the logs) answering
a few training pictures.
"""

import os

import keras
import numpy as np

from tfmetric.data import pk_sampler
from tfmetric.datasets import load
from tfmetric.evaluation import retrieval_metrics
from tfmetric.losses.registry import LOSSES, PROXY_LOSSES
from tfmetric.metrics import ActiveTripletFraction
from tfmetric.search import Index


def build_loss(key, num_classes, embedding_dim, margin):
    """The demo's loss `key`; `margin` applies to the losses whose margin is on distances."""
    if key in PROXY_LOSSES:
        return PROXY_LOSSES[key].build(num_classes, embedding_dim)
    return LOSSES[key].build(margin=margin)


def nearest_neighbour_accuracy(reference, reference_labels, queries, query_labels):
    """Share of queries whose nearest reference point (Euclidean) has their label."""
    metrics = retrieval_metrics(queries, query_labels, reference, reference_labels, k=(1,), nmi=False)
    return metrics["precision@1"]


def embedding_network(inputs, dimensions, normalize=True, name="embedding"):
    """The demo's and the comparison's encoder: a small MLP."""
    layers = [keras.Input((inputs,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(dimensions)]
    if normalize:
        layers.append(keras.layers.UnitNormalization())
    return keras.Sequential(layers, name=name)


def watchers(log_dir, x_test, y_test, image_shape):
    """Callbacks writing what TensorBoard shows of the held-out data under `log_dir`."""
    from tfmetric import callbacks

    return [
        callbacks.RetrievalEvaluation(x_test, y_test, k=(1, 5), log_dir=os.path.join(log_dir, "retrieval")),
        callbacks.EmbeddingProjector(
            os.path.join(log_dir, "projector"), x_test, labels=y_test, images=x_test.reshape(-1, *image_shape)
        ),
        callbacks.EmbeddingSnapshots(x_test, y_test, os.path.join(log_dir, "pca"), basis="last"),
    ]


def run(
    loss="batch_hard",
    epochs=15,
    margin=0.5,
    seed=0,
    dataset="digits",
    log_dir=None,
    verbose=1,
    limit=None,
    data_dir=None,
):
    """Trains, reports, and returns the figures as a dict.

    `loss` is a key of `tfm.losses.registry.LOSSES` or `PROXY_LOSSES`; `margin` applies to
    the losses whose margin is on distances. `log_dir` defaults to `tfmetric-logs/demo-<dataset>-<loss>`; `limit` keeps
    the first examples of each split (for quick runs); `data_dir` is where MNIST's or Fashion-MNIST's IDX
    files are (see `tfm.datasets.load`: a system copy or a download otherwise).
    """
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test), image_shape = load(dataset, seed, limit=limit, data_dir=data_dir)
    log_dir = log_dir or os.path.join("tfmetric-logs", f"demo-{dataset}-{loss}")
    model = embedding_network(x_train.shape[1], 32, name=f"{dataset}_embedding")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=build_loss(loss, int(y_train.max()) + 1, 32, margin),
        metrics=[ActiveTripletFraction(margin=margin)],
    )

    def measure():
        train, test = model.predict(x_train, verbose=0), model.predict(x_test, verbose=0)
        return {
            "accuracy": nearest_neighbour_accuracy(train, y_train, test, y_test),
            "recall@1": retrieval_metrics(test, y_test, k=(1,), nmi=False)["recall@1"],
        }

    before = measure()
    print(f"{dataset}: {len(y_train)} training, {len(y_test)} held-out examples; loss {loss}, margin {margin}")
    # 8 classes × 8 examples per batch: every anchor has positives. The
    # sampler reshuffles every epoch itself.
    batches = pk_sampler(x_train, y_train, p=8, k=8, seed=seed)
    history = model.fit(
        batches, epochs=epochs, shuffle=False, verbose=verbose, callbacks=watchers(log_dir, x_test, y_test, image_shape)
    ).history["loss"]
    after = measure()
    print()
    print(f"{'held-out':<28}{'before':>8}{'after':>8}")
    print(f"{'1-NN accuracy (train as ref.)':<28}{before['accuracy']:>8.3f}{after['accuracy']:>8.3f}")
    print(f"{'recall@1 (leave-one-out)':<28}{before['recall@1']:>8.3f}{after['recall@1']:>8.3f}")
    print(f"Training loss: {history[0]:.4f} (first epoch) -> {history[-1]:.4f} (last epoch)")
    print(f"Projector, PCA film and retrieval metrics written to {log_dir}; look at them with:")
    print(f"  tensorboard --logdir {log_dir}")
    index = lookups(model, x_test, y_test, x_train, y_train, log_dir)
    return {"loss": history, "before": before, "after": after, "log_dir": log_dir, "model": model, "index": index}


def lookups(model, x_test, y_test, x_train, y_train, log_dir, shown=5, k=5):
    """Indexes the held-out examples, calibrates a match threshold, and looks up a training example per class."""
    index = Index(model)
    index.add(x=x_test, labels=y_test, verbose=0)
    # Leave-one-out on the index itself: each held-out example against the others.
    calibration = index.calibrate(exclude_self=True)
    path = os.path.join(log_dir, "index.npz")
    index.save(path)
    print()
    print(f"An index of the {len(index)} held-out embeddings (tfm.search.Index, saved to {path}):")
    print(
        f"a match is within distance {calibration.threshold:.3f} (best F1, leave-one-out: "
        f"precision {calibration.precision:.3f}, recall {calibration.recall:.3f})"
    )
    chosen = [int((y_train == label).argmax()) for label in sorted(set(y_train.tolist()))[:shown]]
    names = [f"#{i} (label {y_train[i]})" for i in chosen] + ["random pixels"]
    # A picture of no class: the open-set case a threshold is for.
    noise = np.random.default_rng(0).permutation(x_train[chosen[0]])
    queries = np.concatenate([x_train[chosen], noise[None]])
    found = index.search(x=queries, k=k, verbose=0)
    matches = index.match(x=queries, verbose=0)
    print(f"{'training example':<22}{'match':>7}   {k} nearest held-out: label (distance)")
    for row, name in enumerate(names):
        nearest = zip(found.labels[row], found.distances[row])
        neighbours = "  ".join(f"{label} ({distance:.2f})" for label, distance in nearest)
        answer = str(matches.labels[row]) if matches.matched[row] else "unknown"
        print(f"{name:<22}{answer:>7}   {neighbours}")
    return index
