"""Forward+backward time and peak memory of the in-batch losses.

Every time is divided by the forward+backward time of the Euclidean distance
matrix alone (`tfm.distances.pairwise_distance`), measured in the same run, so
the ratios mean the same on a fast or a slow, busy machine.
Each (loss, N, jit) cell runs in its own process so that its peak resident
memory is its own.

    python benchmarks/losses.py                 # N = 256, 1024, 4096
    python benchmarks/losses.py --sizes 1024 --k 8
    python benchmarks/losses.py --losses Contrastive "MarginLoss all"

MarginLoss, MultiSimilarity, Circle, BinomialDeviance and NCA normalise the
embeddings first (their default); the distance matrix they are compared with
does not. XBM(Contrastive) mines each batch against a full memory of 1024
earlier embeddings: the wrapped loss runs on N + 1024 rows.

Batches are P×K: N/K classes of K examples, D = 128, float32.
"""

import argparse
import json
import os
import sys

from timing import pk_batch, rss_mb, run_cell, tensorflow_step, time_calls

LOSSES = {
    "distance matrix": None,
    "BatchHardTriplet": "BatchHardTriplet(margin=0.2)",
    "BatchAllTriplet": "BatchAllTriplet(margin=0.2)",
    "SemiHardTriplet": "SemiHardTriplet(margin=0.2)",
    "LiftedStructure": "LiftedStructure(margin=1.0)",
    "Contrastive": "Contrastive(margin=1.0)",
    "Contrastive hard": "Contrastive(margin=1.0, negatives='hard')",
    "MarginLoss all": "MarginLoss(sampling='all')",
    "MarginLoss dw": "MarginLoss(seed=0)",
    "NPairs": "NPairs()",
    "MultiSimilarity": "MultiSimilarity()",
    "MultiSimilarity ε": "MultiSimilarity(epsilon=0.1)",
    "Circle": "Circle()",
    "BinomialDeviance": "BinomialDeviance()",
    "SoftNearestNeighbor": "SoftNearestNeighbor()",
    "NCA": "NCA()",
    "CenterLoss": "CenterLoss(num_classes=N, embedding_dim=D)",
    "XBM(Contrastive)": "CrossBatchMemory(tfm.Contrastive(margin=1.0), memory_size=1024)",
}


def build_loss(name, n=None, dim=None):
    """The tfmetric loss benchmarked as `name` (the other benchmarks use these too); N, D: for CenterLoss."""
    import tfmetric as tfm

    return eval("tfm." + LOSSES[name], {"tfm": tfm, "N": n, "D": dim})


def measure(loss_name, n, k, dim, jit, min_seconds):
    """Runs in a child process: times one cell and reports its memory."""
    import tensorflow as tf

    import tfmetric as tfm

    x, y = (tf.constant(array) for array in pk_batch(n, k, dim))
    if LOSSES[loss_name] is None:

        def objective(y, x):
            return tf.reduce_sum(tfm.distances.pairwise_distance(x))
    else:
        objective = build_loss(loss_name, n, dim)
    return time_calls(tensorflow_step(objective, x, y, jit), min_seconds, baseline_mb=rss_mb())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--k", type=int, default=4, help="examples per class (K of P×K)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--losses", nargs="+", choices=list(LOSSES), default=list(LOSSES))
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(measure(*json.loads(args.cell))))
        return

    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, D={args.dim}, K={args.k}, float32, forward+backward")
    header = f"{'loss':<20}{'N':>6}{'jit':>6}{'ms':>10}{'× dist':>9}{'peak MB':>10}{'+MB':>8}"
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        for jit in (False, True):
            reference = None
            for name in ["distance matrix"] + [name for name in args.losses if name != "distance matrix"]:
                r = run_cell(sys.executable, __file__, [name, n, args.k, args.dim, jit, args.min_seconds])
                if "error" in r:
                    print(f"{name:<20}{n:>6}{str(jit):>6}  error: {r['error']}")
                    continue
                reference = reference or r["ms"]
                print(
                    f"{name:<20}{n:>6}{str(jit):>6}{r['ms']:>10.2f}{r['ms'] / reference:>9.2f}"
                    f"{r['peak_mb']:>10.0f}{r['extra_mb']:>8.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
