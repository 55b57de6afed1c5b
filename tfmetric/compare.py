"""`tfmetric compare`: every loss on one encoder, several seeds, two protocols.

The siamese/triplet study, grown to every loss of the package. One small
encoder is trained once per method and seed —

- baselines: raw pixels (cosine), the untrained encoder, softmax (its
  penultimate layer is the embedding), softmax + center loss;
- siamese: `PairContrastive` on random pairs, half similar (offline);
- triplet: `TripletLoss` on random triplets (offline);
- every loss class of `tfm.losses.registry.LOSSES` once (its main
  configuration), mined online from P×K batches;
- cross-batch memory: `Contrastive` mined against the last 256 embeddings;
- every loss with class vectors of `tfm.losses.registry.PROXY_LOSSES`, on
  plain shuffled batches (they need no positives in a batch);

— and measured by retrieval (precision@1, recall@4, MAP@R; leave-one-out
among the evaluation examples), as mean ± standard deviation over the seeds.
The protocol says what is retrieved (`tfm.datasets.protocol_split`): `open`
(train on half the classes, retrieve among the unseen half) or `closed`
(held-out examples of the training classes).

In 2-D (the classic figures, one per method) the embeddings are free and the
margins on distances are 1; in more dimensions they are L2-normalised, every
loss keeps its default margin, and everything is compared by cosine. Losses
with class vectors learn directions: their embeddings are always compared by
cosine.
"""

import os
import time

import keras
import numpy as np

# The methods by title, as the command line offers them (the titles of the registry's entries).
from tfmetric.choices import BASELINES, ENCODERS, METHODS
from tfmetric.data import pk_sampler, random_pairs, random_triplets
from tfmetric.datasets import load, protocol_split
from tfmetric.evaluation import retrieval_metrics
from tfmetric.layers import PairDistance
from tfmetric.losses import CenterLoss, Contrastive, CrossBatchMemory, PairContrastive, TripletLoss
from tfmetric.losses.registry import LOSSES, PROXY_LOSSES
from tfmetric.plots import scatter

# In a free 2-D space, a margin of 1 leaves the classes room.
MARGIN_2D = 1.0
ONLINE = {
    **{entry.title: entry for entry in LOSSES.values() if not entry.variant},
    "cross-batch memory": None,
}
# The weight λ of the center loss next to the softmax loss (the paper's range).
CENTER_WEIGHT = 0.1
PROXIES = {entry.title: entry for entry in PROXY_LOSSES.values()}
METRICS = ("precision@1", "recall@4", "map@r")
BATCH_SIZE = 64


def encoder_network(kind, input_size, image_shape, dimensions, augment=False, name="encoder"):
    """The study's encoder from flat pixels: `"mlp"` (one hidden layer of 128) or `"cnn"`.

    The CNN (three 3×3 convolutions of 32, 64, 64 filters, max-pooled twice,
    flattened: where a shape is matters) suits 28×28 images; `augment` adds random shifts (±2
    pixels) and horizontal flips, active in training only.
    """
    layers = keras.layers
    if kind == "mlp":
        stack = [layers.Dense(128, activation="relu")]
    elif kind == "cnn":
        stack = [layers.Reshape((*image_shape, 1))]
        if augment:
            shift = 2 / image_shape[0]
            stack += [layers.RandomTranslation(shift, shift, fill_mode="constant"), layers.RandomFlip("horizontal")]
        for filters in (32, 64):
            stack += [layers.Conv2D(filters, 3, padding="same", activation="relu"), layers.MaxPooling2D()]
        stack += [layers.Conv2D(64, 3, padding="same", activation="relu"), layers.Flatten()]
    else:
        raise ValueError(f"Unknown encoder {kind!r}; choose one of {', '.join(ENCODERS)}.")
    return keras.Sequential([keras.Input((input_size,)), *stack, layers.Dense(dimensions)], name=name)


def _optimizer():
    return keras.optimizers.Adam(1e-3)


def _num_classes(y):
    return int(y.max()) + 1


def train_nothing(encoder, x, y, epochs, seed, verbose):
    pass


def train_softmax(encoder, x, y, epochs, seed, verbose):
    classifier = keras.Sequential([encoder, keras.layers.Dense(_num_classes(y))])
    classifier.compile(_optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    classifier.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=verbose)


def train_softmax_center(encoder, x, y, epochs, seed, verbose):
    inputs = keras.Input(x.shape[1:])
    embedding = encoder(inputs)
    logits = keras.layers.Dense(_num_classes(y))(embedding)
    model = keras.Model(inputs, [logits, embedding])
    model.compile(
        _optimizer(),
        [
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            CenterLoss(_num_classes(y), embedding.shape[-1]),
        ],
        loss_weights=[1.0, CENTER_WEIGHT],
    )
    model.fit(x, (y, y), batch_size=BATCH_SIZE, epochs=epochs, verbose=verbose)


def _margins(encoder):
    """Distance margins: 1 in a free 2-D space, else each loss's own default."""
    return {"margin": MARGIN_2D} if encoder.output_shape[-1] == 2 else {}


def _normalized(encoder):
    if encoder.output_shape[-1] == 2:
        return encoder
    return keras.Sequential([encoder, keras.layers.UnitNormalization()])


def train_siamese(encoder, x, y, epochs, seed, verbose):
    left, right = keras.Input(x.shape[1:]), keras.Input(x.shape[1:])
    embed = _normalized(encoder)
    siamese = keras.Model([left, right], PairDistance()([embed(left), embed(right)]))
    siamese.compile(_optimizer(), PairContrastive(**_margins(encoder)))
    # Fresh random pairs every epoch, as many as examples.
    for epoch in range(epochs):
        first, second, similar = random_pairs(y, len(y), seed=seed + epoch)
        siamese.fit(
            [x[first], x[second]],
            similar,
            batch_size=BATCH_SIZE,
            epochs=epoch + 1,
            initial_epoch=epoch,
            verbose=verbose,
        )


def train_triplet(encoder, x, y, epochs, seed, verbose):
    towers = [keras.Input(x.shape[1:]) for _ in range(3)]
    embed = _normalized(encoder)
    stacked = keras.layers.Lambda(lambda parts: keras.ops.stack(parts, axis=1))([embed(t) for t in towers])
    triplet = keras.Model(towers, stacked)
    triplet.compile(_optimizer(), TripletLoss(**_margins(encoder)))
    for epoch in range(epochs):
        anchors, positives, negatives = random_triplets(y, len(y), seed=seed + epoch)
        triplet.fit(
            [x[anchors], x[positives], x[negatives]],
            np.zeros(len(y)),
            batch_size=BATCH_SIZE,
            epochs=epoch + 1,
            initial_epoch=epoch,
            verbose=verbose,
        )


def method_loss(method, encoder, num_classes):
    """The loss an online or class-vector `method` trains `encoder` with, for `num_classes` classes."""
    if method in PROXIES:
        return PROXIES[method].build(num_classes, encoder.output_shape[-1])
    margins = _margins(encoder)
    if ONLINE[method] is None:
        return CrossBatchMemory(Contrastive(**margins), memory_size=256, embedding_dim=encoder.output_shape[-1])
    return ONLINE[method].build(**margins)


def train_online(method):
    def train(encoder, x, y, epochs, seed, verbose):
        loss = method_loss(method, encoder, _num_classes(y))
        model = _normalized(encoder)
        model.compile(_optimizer(), loss)
        # P classes × K examples, about 64 per batch, every anchor with positives.
        p = min(8, len(np.unique(y)))
        batches = pk_sampler(x, y, p=p, k=max(2, BATCH_SIZE // p), seed=seed)
        model.fit(batches, epochs=epochs, shuffle=False, verbose=verbose)

    return train


def train_proxy(method):
    def train(encoder, x, y, epochs, seed, verbose):
        encoder.compile(_optimizer(), method_loss(method, encoder, _num_classes(y)))
        encoder.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=verbose)

    return train


TRAINERS = {
    **dict.fromkeys(BASELINES, train_nothing),
    "softmax": train_softmax,
    "softmax + center loss": train_softmax_center,
    "siamese (random pairs)": train_siamese,
    "triplet (random triplets)": train_triplet,
    **{name: train_online(name) for name in ONLINE},
    **{name: train_proxy(name) for name in PROXIES},
}


def run(
    dataset="digits",
    protocol="open",
    seeds=3,
    dimensions=2,
    encoder="mlp",
    epochs=20,
    train_size=None,
    eval_size=None,
    augment=False,
    seen_classes=None,
    methods=METHODS,
    out_dir=None,
    data_dir=None,
    verbose=0,
):
    """Trains every method on every seed, prints the table, draws 2-D embeddings; returns the rows.

    Args:
        dataset: A name of `tfm.datasets.DATASETS`.
        protocol: `"open"` (train on the lower half of the classes, retrieve
            among the others) or `"closed"` (held-out examples of the same
            classes).
        seeds: Seeds 0 … seeds − 1: each draws the training subset, the
            initial weights and the batches.
        dimensions: The embedding's size; 2 draws a figure per method.
        encoder: `"mlp"` or `"cnn"` (`encoder_network`).
        epochs: Passes over the training examples.
        train_size: Train on this many examples (a random subset per seed).
        eval_size: Retrieve among this many examples (one subset for all
            seeds and methods).
        augment: Random shifts and flips (the CNN only).
        seen_classes: The classes trained on in the open protocol (default:
            the lower half of the class ids).
        methods: Names of `METHODS`.
        out_dir: Where the figures go (default `tfmetric-logs/compare-<dataset>`).
        data_dir: Where the IDX files are (see `tfm.datasets.load`).
        verbose: Keras' `fit` verbosity.

    Returns:
        One dict per method: `"method"`, each metric of `METRICS` as
        `(mean, std)`, `"runs"` (the per-seed metrics), `"seconds"` (per
        training run) and `"figure"` (2-D only, else None).
    """
    unknown = [method for method in methods if method not in TRAINERS]
    if unknown:
        raise ValueError(f"Unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}.")
    if augment and encoder != "cnn":
        raise ValueError("augment shifts and flips images: use it with encoder='cnn'.")
    train, test, image_shape = load(dataset, data_dir=data_dir)
    (x_train, y_train), (x_eval, y_eval) = protocol_split(train, test, protocol, seen_classes)
    if eval_size is not None and eval_size < len(y_eval):
        keep = np.sort(np.random.default_rng(0).choice(len(y_eval), eval_size, replace=False))
        x_eval, y_eval = x_eval[keep], y_eval[keep]
    out_dir = out_dir or os.path.join("tfmetric-logs", f"compare-{dataset}")
    if dimensions == 2:
        os.makedirs(out_dir, exist_ok=True)
    trained_on = train_size if train_size is not None and train_size < len(y_train) else len(y_train)
    print(
        f"{dataset}, {protocol} protocol: train on {trained_on} examples of classes {_classes(y_train)}, "
        f"retrieve among {len(y_eval)} of classes {_classes(y_eval)}; {encoder}{' + augmentation' if augment else ''}, "
        f"{dimensions}-D, {epochs} epochs; mean ± std over {seeds} seed{'s' * (seeds > 1)}"
    )
    header = f"{'method':<30}" + "".join(f"{name:>16}" for name in ("P@1", "R@4", "MAP@R")) + f"{'s/run':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    for method in methods:
        runs, seconds, figure = [], [], None
        for seed in range(seeds):
            start = time.perf_counter()
            embeddings, distance = _train_and_embed(
                method,
                dataset,
                seed,
                x_train,
                y_train,
                x_eval,
                image_shape,
                dimensions,
                encoder,
                epochs,
                train_size,
                augment,
                verbose,
            )
            seconds.append(time.perf_counter() - start)
            metrics = retrieval_metrics(embeddings, y_eval, k=(1, 4), nmi=False, distance=distance)
            runs.append({name: metrics[name] for name in METRICS})
            if seed == 0 and dimensions == 2 and method != "raw pixels":
                figure = os.path.join(out_dir, _file_name(method) + ".png")
                with open(figure, "wb") as file:
                    title = f"{method}: {dataset}, {protocol} protocol, P@1 {metrics['precision@1']:.3f}"
                    file.write(scatter(embeddings, y_eval, title, axis_labels=("embedding 1", "embedding 2")))
        row = {"method": method, "runs": runs, "seconds": float(np.mean(seconds)), "figure": figure}
        for name in METRICS:
            values = [run[name] for run in runs]
            row[name] = (float(np.mean(values)), float(np.std(values)))
        print(
            f"{method:<30}"
            + "".join(f"{row[name][0]:>9.3f} ±{row[name][1]:.3f}" for name in METRICS)
            + f"{row['seconds']:>8.1f}",
            flush=True,
        )
        rows.append(row)
    if dimensions == 2:
        print(f"Figures of the embeddings (first seed) in {out_dir}")
    return rows


def _train_and_embed(
    method, dataset, seed, x_train, y_train, x_eval, image_shape, dimensions, kind, epochs, train_size, augment, verbose
):
    """The evaluation examples' embeddings after training `method`, and the distance to compare them by."""
    if method == "raw pixels":
        return x_eval, "cosine"
    if train_size is not None and train_size < len(y_train):
        keep = np.random.default_rng(seed).choice(len(y_train), train_size, replace=False)
        x_train, y_train = x_train[keep], y_train[keep]
    keras.utils.set_random_seed(seed)
    encoder = encoder_network(kind, x_train.shape[1], image_shape, dimensions, augment)
    TRAINERS[method](encoder, x_train, y_train, epochs, seed, verbose)
    embeddings = _embed(encoder, x_eval)
    if method in PROXIES:
        return embeddings, "cosine"
    return embeddings, "euclidean" if dimensions == 2 else "cosine"


def _embed(encoder, x, batch_size=512):
    # Called eagerly: `predict` would trace a function per method and seed (and warn about it).
    parts = [encoder(x[start : start + batch_size], training=False) for start in range(0, len(x), batch_size)]
    return np.concatenate([keras.ops.convert_to_numpy(part) for part in parts])


def _classes(labels):
    classes = np.unique(labels)
    contiguous = len(classes) > 2 and np.array_equal(classes, np.arange(classes[0], classes[-1] + 1))
    return f"{classes[0]}–{classes[-1]}" if contiguous else ", ".join(map(str, classes))


def _file_name(method):
    return "".join(character if character.isalnum() else "_" for character in method).strip("_").replace("__", "_")
