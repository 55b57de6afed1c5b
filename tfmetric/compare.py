"""`tfmetric compare`: softmax vs siamese vs triplet vs online mining, in 2-D.

The siamese/triplet study, on the bundled digits (or MNIST/Fashion-MNIST
online): one small encoder with a 2-D output, trained in each of `METHODS` —

- softmax: a classifier; its penultimate (2-D) layer is the embedding;
- softmax + center loss: the same, with `CenterLoss` on the embedding;
- siamese: `PairContrastive` on random pairs, half similar (offline);
- triplet: `TripletLoss` on random triplets (offline);
- every loss class of `tfm.losses.registry.LOSSES` once (its main
  configuration), mined online from P×K batches;
- cross-batch memory: `Contrastive` mined against the last 256 embeddings;
- every loss with class vectors of `tfm.losses.registry.PROXY_LOSSES`, on
  plain shuffled batches (they need no positives in a batch). They learn
  directions, so their embeddings are compared by cosine (L2-normalised
  before the metrics).

For each it reports the held-out 1-NN accuracy (training set as reference),
precision@1 and MAP@R (leave-one-out among held-out points), and draws the
2-D held-out embeddings.
"""

import functools
import os

import keras
import numpy as np

from tfmetric.data import pk_sampler, random_pairs, random_triplets
from tfmetric.datasets import load
from tfmetric.demo import embedding_network, nearest_neighbour_accuracy
from tfmetric.distances import l2_normalize
from tfmetric.evaluation import retrieval_metrics
from tfmetric.layers import PairDistance
from tfmetric.losses import CenterLoss, Contrastive, CrossBatchMemory, PairContrastive, TripletLoss
from tfmetric.losses.registry import LOSSES, PROXY_LOSSES
from tfmetric.plots import scatter

# In a free 2-D space, a margin of 1 leaves the classes room.
MARGIN = 1.0
ONLINE = {
    **{entry.title: functools.partial(entry.build, margin=MARGIN) for entry in LOSSES.values() if not entry.variant},
    "cross-batch memory": lambda: CrossBatchMemory(Contrastive(margin=MARGIN), memory_size=256, embedding_dim=2),
}
# The weight λ of the center loss next to the softmax loss (the paper's range).
CENTER_WEIGHT = 0.1
PROXIES = {entry.title: entry for entry in PROXY_LOSSES.values()}
METHODS = ("softmax", "softmax + center loss", "siamese (random pairs)", "triplet (random triplets)", *ONLINE, *PROXIES)


def _optimizer():
    return keras.optimizers.Adam(1e-3)


def train_softmax(encoder, x, y, epochs, seed, verbose):
    classes = int(y.max()) + 1
    classifier = keras.Sequential([encoder, keras.layers.Dense(classes)])
    classifier.compile(_optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    classifier.fit(x, y, batch_size=64, epochs=epochs, verbose=verbose)


def train_softmax_center(encoder, x, y, epochs, seed, verbose):
    classes = int(y.max()) + 1
    inputs = keras.Input(x.shape[1:])
    embedding = encoder(inputs)
    logits = keras.layers.Dense(classes)(embedding)
    model = keras.Model(inputs, [logits, embedding])
    model.compile(
        _optimizer(),
        [keras.losses.SparseCategoricalCrossentropy(from_logits=True), CenterLoss(classes, embedding.shape[-1])],
        loss_weights=[1.0, CENTER_WEIGHT],
    )
    model.fit(x, (y, y), batch_size=64, epochs=epochs, verbose=verbose)


def train_siamese(encoder, x, y, epochs, seed, verbose):
    left, right = keras.Input(x.shape[1:]), keras.Input(x.shape[1:])
    siamese = keras.Model([left, right], PairDistance()([encoder(left), encoder(right)]))
    siamese.compile(_optimizer(), PairContrastive(margin=MARGIN))
    # Fresh random pairs every epoch, as many as examples.
    for epoch in range(epochs):
        first, second, similar = random_pairs(y, len(y), seed=seed + epoch)
        siamese.fit(
            [x[first], x[second]], similar, batch_size=64, epochs=epoch + 1, initial_epoch=epoch, verbose=verbose
        )


def train_triplet(encoder, x, y, epochs, seed, verbose):
    towers = [keras.Input(x.shape[1:]) for _ in range(3)]
    stacked = keras.layers.Lambda(lambda parts: keras.ops.stack(parts, axis=1))([encoder(t) for t in towers])
    triplet = keras.Model(towers, stacked)
    triplet.compile(_optimizer(), TripletLoss(margin=MARGIN))
    for epoch in range(epochs):
        anchors, positives, negatives = random_triplets(y, len(y), seed=seed + epoch)
        triplet.fit(
            [x[anchors], x[positives], x[negatives]],
            np.zeros(len(y)),
            batch_size=64,
            epochs=epoch + 1,
            initial_epoch=epoch,
            verbose=verbose,
        )


def train_online(loss):
    def train(encoder, x, y, epochs, seed, verbose):
        encoder.compile(_optimizer(), loss())
        encoder.fit(pk_sampler(x, y, p=8, k=8, seed=seed), epochs=epochs, shuffle=False, verbose=verbose)

    return train


def train_proxy(entry):
    def train(encoder, x, y, epochs, seed, verbose):
        encoder.compile(_optimizer(), entry.build(int(y.max()) + 1, encoder.output_shape[-1]))
        encoder.fit(x, y, batch_size=64, epochs=epochs, verbose=verbose)

    return train


TRAINERS = {
    "softmax": train_softmax,
    "softmax + center loss": train_softmax_center,
    "siamese (random pairs)": train_siamese,
    "triplet (random triplets)": train_triplet,
    **{name: train_online(loss) for name, loss in ONLINE.items()},
    **{name: train_proxy(entry) for name, entry in PROXIES.items()},
}


def run(dataset="digits", epochs=20, seed=0, out_dir=None, methods=METHODS, verbose=0, limit=None):
    """Trains every method, prints the table, saves one figure per method; returns the rows."""
    unknown = [method for method in methods if method not in TRAINERS]
    if unknown:
        raise ValueError(f"Unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}.")
    (x_train, y_train), (x_test, y_test), _ = load(dataset, seed, limit=limit)
    out_dir = out_dir or os.path.join("tfmetric-logs", f"compare-{dataset}")
    os.makedirs(out_dir, exist_ok=True)
    print(f"{dataset}: {len(y_train)} training, {len(y_test)} held-out examples; 2-D embeddings, {epochs} epochs")
    header = f"{'method':<28}{'1-NN acc.':>10}{'P@1':>8}{'MAP@R':>8}"
    rows = []
    for method in methods:
        keras.utils.set_random_seed(seed)
        encoder = embedding_network(x_train.shape[1], 2, normalize=False, name="encoder")
        TRAINERS[method](encoder, x_train, y_train, epochs, seed, verbose)
        train, test = encoder.predict(x_train, verbose=0), encoder.predict(x_test, verbose=0)
        if method in PROXIES:
            train, test = (keras.ops.convert_to_numpy(l2_normalize(points)) for points in (train, test))
        metrics = retrieval_metrics(test, y_test, k=(1,), nmi=False)
        row = {
            "method": method,
            "accuracy": nearest_neighbour_accuracy(train, y_train, test, y_test),
            "precision@1": metrics["precision@1"],
            "map@r": metrics["map@r"],
            "figure": os.path.join(out_dir, _file_name(method) + ".png"),
        }
        with open(row["figure"], "wb") as file:
            title = f"{method}: held-out {dataset}, 1-NN {row['accuracy']:.3f}"
            file.write(scatter(test, y_test, title, axis_labels=("embedding 1", "embedding 2")))
        if not rows:
            print(header)
            print("-" * len(header))
        print(f"{method:<28}{row['accuracy']:>10.3f}{row['precision@1']:>8.3f}{row['map@r']:>8.3f}")
        rows.append(row)
    print(f"Figures of the held-out embeddings in {out_dir}")
    return rows


def _file_name(method):
    return "".join(character if character.isalnum() else "_" for character in method).strip("_").replace("__", "_")
