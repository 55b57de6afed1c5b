"""Class vectors or pair mining? The study behind docs/proxies.md.

Trains the same small encoder (64 → 128 → 32, L2-normalised) on scikit-learn's
bundled digits with losses of both kinds, several seeds each, and measures
retrieval (precision@1 and MAP@R, leave-one-out, cosine) in two protocols:

- closed: train on every class, retrieve among held-out examples of the same
  classes;
- open: train on the digits 0–4 only, retrieve among the unseen digits 5–9
  (the protocol of metric learning's benchmarks: CUB, Cars, SOP).

Pair losses see P×K batches (8 classes × 8 examples, 5 × 8 in the open
protocol); losses with class vectors see plain shuffled batches of 64.

    python docs/proxies_study.py                  # the table in docs/proxies.md (~10 minutes on 2 cores)
    python docs/proxies_study.py --seeds 1 --epochs 2 --losses arcface batch_hard   # a smoke run
"""

import argparse
import time

import keras
import numpy as np

from tfmetric.data import pk_sampler
from tfmetric.datasets import load
from tfmetric.demo import embedding_network
from tfmetric.evaluation import retrieval_metrics
from tfmetric.losses.registry import LOSSES, PROXY_LOSSES

DEFAULT_LOSSES = (
    "semi_hard", "multi_similarity", "contrastive_hard",
    "arcface", "cosface", "normalized_softmax", "proxy_nca", "proxy_anchor", "soft_triple",
)


def split(protocol, seed):
    (x_train, y_train), (x_test, y_test), _ = load("digits", seed)
    if protocol == "closed":
        return x_train, y_train, x_test, y_test
    x, y = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
    seen = y < 5
    return x[seen], y[seen], x[~seen], y[~seen] - 5


def train_and_measure(key, protocol, seed, epochs):
    x_train, y_train, x_test, y_test = split(protocol, seed)
    keras.utils.set_random_seed(seed)
    encoder = embedding_network(x_train.shape[1], 32, name="encoder")
    classes = int(y_train.max()) + 1
    if key in PROXY_LOSSES:
        encoder.compile(keras.optimizers.Adam(1e-3), PROXY_LOSSES[key].build(classes, 32))
        encoder.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
    else:
        encoder.compile(keras.optimizers.Adam(1e-3), LOSSES[key].build(margin=0.5))
        batches = pk_sampler(x_train, y_train, p=min(8, classes), k=8, seed=seed)
        encoder.fit(batches, epochs=epochs, shuffle=False, verbose=0)
    metrics = retrieval_metrics(encoder.predict(x_test, verbose=0), y_test, k=(1,), nmi=False)
    return metrics["precision@1"], metrics["map@r"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--losses", nargs="+", choices=[*LOSSES, *PROXY_LOSSES], default=DEFAULT_LOSSES)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print(f"digits, 32-D, {args.epochs} epochs, mean ± std over {args.seeds} seeds; retrieval by cosine")
    header = f"{'loss':<28}{'kind':<14}{'closed P@1':>14}{'MAP@R':>14}{'open P@1':>14}{'MAP@R':>14}"
    print(header)
    print("-" * len(header))
    rows = {}
    # The baseline to beat: the pixels themselves (deterministic: no spread).
    cells = []
    for protocol in ("closed", "open"):
        _, _, x_test, y_test = split(protocol, 0)
        metrics = retrieval_metrics(x_test, y_test, k=(1,), nmi=False, distance="cosine")
        cells += [(metrics["precision@1"], 0.0), (metrics["map@r"], 0.0)]
    rows["raw pixels"] = cells
    print(f"{'raw pixels (cosine)':<28}{'baseline':<14}" + "".join(f"{m:>8.3f} ±{s:.3f}" for m, s in cells))
    for key in args.losses:
        entry = PROXY_LOSSES.get(key) or LOSSES[key]
        cells = []
        for protocol in ("closed", "open"):
            runs = np.array([train_and_measure(key, protocol, seed, args.epochs) for seed in range(args.seeds)])
            cells += [(runs[:, 0].mean(), runs[:, 0].std()), (runs[:, 1].mean(), runs[:, 1].std())]
        rows[key] = cells
        kind = "class vectors" if key in PROXY_LOSSES else "pairs"
        print(f"{entry.title:<28}{kind:<14}" + "".join(f"{m:>8.3f} ±{s:.3f}" for m, s in cells), flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")
    return rows


if __name__ == "__main__":
    main()
