"""The Bi-LSTM study of notebook 03: one encoder, three losses, held-out precision@1 over seeds.

A character-level Bi-LSTM encodes Chinese requests and is trained three
ways: a batch-hard triplet loss on its encodings (P×K batches), and
cross-entropy or the multi-class hinge through a Dense head on the
encodings. Each is scored the same way, by the encodings alone: the share
of held-out texts whose nearest training text (Euclidean distance between
encodings) has their label.

    python -c "from tfmetric import intent_study; intent_study.run('assistant_intents')"
"""

import os

import keras
import numpy as np

from tfmetric.callbacks import EmbeddingSnapshots, GateActivations
from tfmetric.data import pk_sampler
from tfmetric.datasets import text
from tfmetric.evaluation import retrieval_metrics
from tfmetric.losses import BatchHardTriplet, MulticlassHinge

__all__ = ["LOSSES", "run"]

LOSSES = ("triplet", "cross-entropy", "hinge")

# The P×K batches of the triplet loss, per corpus. navigation: both classes,
# 32 each. assistant_intents: all 8 intents, 8 each (batch 64, as the other
# losses). chatterbot: its smallest topics keep 3 training lines, and
# `pk_sampler` leaves out a class with fewer than k examples (and, each
# epoch, the remainder of a class after whole groups of k); k = 2 keeps
# every topic in play and wastes at most one line per topic per epoch, at
# the price of one positive per anchor. p = 8 of the 17 topics.
_CORPORA = {
    "navigation": {"load": lambda: text.navigation_queries() + (("other", "navigation"),), "p": 2, "k": 32},
    "assistant_intents": {"load": text.assistant_intents, "p": 8, "k": 8},
    "chatterbot": {"load": text.chatterbot_chinese, "p": 8, "k": 2},
}


def run(
    corpus="assistant_intents",
    losses=LOSSES,
    seeds=3,
    epochs=10,
    held_out=0.25,
    log_dir=None,
    gates=True,
    queries=None,
    verbose=0,
):
    """Trains the Bi-LSTM with each loss for each seed; prints and returns the table.

    Args:
        corpus: "navigation", "assistant_intents" or "chatterbot" (see
            `tfm.datasets`), or a `(texts, labels, class_names)` triple; the
            P×K batches of a triple are `p = min(8, classes)`, `k = 2`.
        losses: Some of "triplet", "cross-entropy", "hinge".
        seeds: How many seeds (0, 1, ...), or the seeds. A seed fixes the
            held-out split and the training (`keras.utils.set_random_seed`).
        epochs: Training epochs per run.
        held_out: The share of each class held out (at least one text of
            each class stays in training and, from classes of 2 or more, at
            least one is held out).
        log_dir: Where to write, for the first seed, each loss's gate
            heatmaps (`<log_dir>/<loss>/gates/`) and PCA film of the
            held-out encodings (`<log_dir>/<loss>/embeddings.gif`); `None`
            writes nothing.
        gates: Write the gate heatmaps (with `log_dir`).
        queries: Texts whose gates to draw; default the first held-out text
            of the first three classes.
        verbose: Passed to `fit`.

    Returns:
        One dict per loss: `loss`, `precision@1` (per seed), `mean`, `std`
        (sample standard deviation over seeds, 0 for one seed), and, for the
        first seed with `log_dir`, `gates` (heatmap paths) and `film` (GIF
        path), else `None`.
    """
    unknown = set(losses) - set(LOSSES)
    if unknown:
        raise ValueError(f"Unknown losses {sorted(unknown)}; choose among {LOSSES}.")
    if isinstance(corpus, str):
        if corpus not in _CORPORA:
            raise ValueError(
                f"Unknown corpus {corpus!r}; choose among {sorted(_CORPORA)} or pass (texts, labels, names)."
            )
        settings = _CORPORA[corpus]
        texts, labels, names = settings["load"]()
        p, k = settings["p"], settings["k"]
    else:
        texts, labels, names = corpus
        p, k = min(8, len(names)), 2
    labels = np.asarray(labels, "int64")
    # 0 pads (and is masked), 1 stands for a character the corpus lacks.
    vocabulary = {character: index + 2 for index, character in enumerate(sorted(set("".join(texts))))}

    def encode(batch):
        width = max(map(len, batch))
        return np.array([[vocabulary.get(c, 1) for c in line] + [0] * (width - len(line)) for line in batch], "int32")

    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    rows = {loss: {"loss": loss, "precision@1": [], "gates": None, "film": None} for loss in losses}
    for run_index, seed in enumerate(seeds):
        train, test = _stratified_split(labels, held_out, seed)
        x_train, x_test = encode([texts[i] for i in train]), encode([texts[i] for i in test])
        if queries is None:
            queries = [texts[test[labels[test] == label][0]] for label in np.unique(labels[test])[:3]]
        for loss in losses:
            keras.utils.set_random_seed(seed)
            directory = os.path.join(log_dir, loss) if log_dir is not None and run_index == 0 else None
            callbacks = []
            if directory is not None:
                callbacks.append(EmbeddingSnapshots(x_test, labels[test], directory, layer="encoder"))
                if gates:
                    tokens = [list(query) for query in queries]
                    callbacks.append(
                        GateActivations("encoder", encode(queries), directory, tokens=tokens, every_n_epochs=epochs)
                    )
            model, encoder = _bilstm(len(vocabulary) + 2, len(names), head=loss != "triplet")
            if loss == "triplet":
                objective = BatchHardTriplet(margin=1.0)
                # The sampler plans its own batches: fit must not shuffle them.
                data = dict(x=pk_sampler(x_train, labels[train], p=p, k=k, seed=seed), shuffle=False)
            else:
                cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
                objective = cross_entropy if loss == "cross-entropy" else MulticlassHinge(margin=1.0)
                data = dict(x=x_train, y=labels[train], batch_size=64)
            model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=objective)
            model.fit(**data, epochs=epochs, verbose=verbose, callbacks=callbacks)
            metrics = retrieval_metrics(
                encoder.predict(x_test, verbose=0),
                labels[test],
                encoder.predict(x_train, verbose=0),
                labels[train],
                k=(1,),
                nmi=False,
            )
            rows[loss]["precision@1"].append(float(metrics["precision@1"]))
            if directory is not None:
                rows[loss]["film"] = os.path.join(directory, "embeddings.gif")
                if gates:
                    frames = os.path.join(directory, "gates", f"epoch-{epochs:04d}")
                    rows[loss]["gates"] = [os.path.join(frames, f"sample-{i:03d}.png") for i in range(len(queries))]
    for row in rows.values():
        values = np.array(row["precision@1"])
        row["mean"], row["std"] = float(values.mean()), float(values.std(ddof=1) if len(values) > 1 else 0.0)
    print(f"{len(names)} classes, {len(train)} training / {len(test)} held-out texts, {epochs} epochs")
    print(f"{'loss':<14}| precision@1 mean ± std over {len(seeds)} seeds (per-seed values)")
    for row in rows.values():
        per_seed = ", ".join(f"{value:.3f}" for value in row["precision@1"])
        print(f"{row['loss']:<14}| {row['mean']:.3f} ± {row['std']:.3f} ({per_seed})")
    return list(rows.values())


def _stratified_split(labels, held_out, seed):
    """Training and held-out indices, the same share of every class held out."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(len(members) - 1, max(1, round(held_out * len(members))))
        test += members[:count].tolist()
        train += members[count:].tolist()
    return np.sort(train), np.sort(test)


def _bilstm(vocabulary_size, num_classes, head):
    """The model to train (with a Dense head on the encodings, or without) and its encoder."""
    inputs = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(vocabulary_size, 32, mask_zero=True)(inputs)
    encoded = keras.layers.Bidirectional(keras.layers.LSTM(32), name="encoder")(embedded)
    outputs = keras.layers.Dense(num_classes)(encoded) if head else encoded
    return keras.Model(inputs, outputs), keras.Model(inputs, encoded)
