"""Forward+backward time and peak memory of the in-batch losses.

Every time is divided by the forward+backward time of the Euclidean distance
matrix alone (`tfm.distances.pairwise_distance`), timed in the same cell,
its calls alternating with the loss's, so the ratios mean the same on a fast
or a slow, busy machine. Each (loss, N, jit) cell runs in its own process so
that its peak resident memory is its own (the distance matrix's included).

    python benchmarks/losses.py                 # N = 256, 1024, 4096
    python benchmarks/losses.py --sizes 1024 --k 8
    python benchmarks/losses.py --losses contrastive_all margin_all
    python benchmarks/losses.py --memory 16384 --sizes 256   # the cross-batch memory
    python benchmarks/losses.py --classes 100000 --sizes 256  # the losses with class vectors
    python benchmarks/losses.py --sizes 1024 --kernels        # and the losses that compile themselves without it
    python benchmarks/losses.py --sizes 1024 --whole          # and those that compile their terms alone, whole

The losses are those of `tfm.losses.registry.LOSSES`, built with their
defaults (margin 1.0 where there is one), plus `CenterLoss` and the
cross-batch memory. The margin loss, multi-similarity, circle, binomial
deviance and NCA normalise the embeddings first (their default); the
distance matrix they are compared with does not. "xbm contrastive_all" mines
each batch against a full memory of 1024 earlier embeddings.

With `--memory M`, the rows are the wrapped contrastive, batch-hard and
multi-similarity losses (those of them `--losses` names) in a
`CrossBatchMemory` of M rows (full, D = 128), each divided by the
forward+backward time of the N × (N + M) distance rectangle alone.

With `--classes C`, the rows are the losses with class vectors
(`tfm.losses.registry.PROXY_LOSSES`) for C classes, gradients w.r.t. the
embeddings and the class vectors, each divided by the forward+backward time
of the N × C cosine matrix alone (the product every one of them starts
from); SoftTriple and sub-centre ArcFace have 10 and 3 vectors per class.

Batches are P×K: N/K classes of K examples, D = 128, float32.
"""

import argparse
import json
import os
import sys

from timing import pk_batch, rss_mb, run_cell, tensorflow_step, time_alternating, time_calls

from tfmetric.losses.registry import LOSSES as REGISTRY, PROXY_LOSSES

BASELINE = "distance matrix"
EXTRA = ("center_loss", "xbm contrastive_all")
LOSSES = (BASELINE, *REGISTRY, *EXTRA)
# With --memory: the rectangle, then the memory around these registry losses.
RECTANGLE = "rectangle N×(N+M)"
MEMORY_LOSSES = ("contrastive_all", "batch_hard", "multi_similarity")
# With --classes: the cosine matrix, then the losses with class vectors.
SCORES = "cosines N×C"


def build_loss(name, n=None, dim=None, memory=1024):
    """The tfmetric loss benchmarked as `name` (the other benchmarks use these too); N, D: for CenterLoss."""
    import tfmetric as tfm

    if name in REGISTRY:
        return REGISTRY[name].build()
    if name == "center_loss":
        return tfm.CenterLoss(num_classes=n, embedding_dim=dim)
    if name.startswith("xbm "):
        return tfm.CrossBatchMemory(REGISTRY[name.removeprefix("xbm ")].build(), memory_size=memory)
    raise ValueError(f"Unknown loss {name!r}; choose from {', '.join(LOSSES)}.")


def measure(loss_name, n, k, dim, jit, min_seconds, memory=0, classes=0, kernels=False, whole=False):
    """Runs in a child process: times one cell and reports its memory.

    `kernels`: the loss as TensorFlow's kernels, not compiled by XLA on its own (`--kernels`).
    `whole`: a loss that compiles its terms alone compiles the whole loss instead (`--whole`).
    """
    import tfmetric as tfm
    from tfmetric.losses import base

    previous = tfm.losses.compile_losses_with_xla(not kernels)
    sizes = base._TERMS_ALONE_SIZES
    if whole:
        base._TERMS_ALONE_SIZES = (0, 0)
    try:
        return _measure(loss_name, n, k, dim, jit, min_seconds, memory, classes)
    finally:
        tfm.losses.compile_losses_with_xla(previous)
        base._TERMS_ALONE_SIZES = sizes


def _measure(loss_name, n, k, dim, jit, min_seconds, memory, classes):
    import numpy as np
    import tensorflow as tf

    import tfmetric as tfm

    x, y = (tf.constant(array) for array in pk_batch(n, k, dim))
    if classes:
        return measure_classes(loss_name, x, y, classes, jit, min_seconds)
    remembered = tf.constant(np.random.default_rng(1).normal(size=(memory, dim)).astype("float32"))

    def distances(y, x):
        return tf.reduce_sum(tfm.distances.pairwise_distance(x))

    def rectangle(y, x):
        reference = tf.concat([x, tf.stop_gradient(remembered)], axis=0)
        return tf.reduce_sum(tfm.distances.pairwise_distance(x, ref_embeddings=reference))

    baseline = rectangle if memory else distances
    if loss_name in (BASELINE, RECTANGLE):
        return time_calls(tensorflow_step(baseline, x, y, jit), min_seconds, baseline_mb=rss_mb())
    objective = build_loss(loss_name, n, dim, memory or 1024)
    if isinstance(objective, tfm.CrossBatchMemory):
        # A full memory of earlier (here: random P×K) batches.
        for seed in range(1 + (memory or 1024) // n):
            past_x, past_y = pk_batch(n, k, dim, seed=seed + 1)
            objective(past_y, past_x)
    return time_alternating(
        tensorflow_step(baseline, x, y, jit), tensorflow_step(objective, x, y, jit), min_seconds, baseline_mb=rss_mb()
    )


def measure_classes(loss_name, x, y, classes, jit, min_seconds):
    """One cell of `--classes`: gradients w.r.t. the embeddings and the class vectors."""
    import tensorflow as tf

    from tfmetric.distances import l2_normalize

    baseline_mb = rss_mb()
    vectors = tf.Variable(tf.random.normal((classes, x.shape[1])))

    def scores(y, x):
        return tf.reduce_sum(tf.matmul(l2_normalize(x), l2_normalize(vectors), transpose_b=True))

    # The labels of a P×K batch, spread over all the classes.
    y = (y * 7919) % classes
    baseline = tensorflow_step(scores, x, y, jit, [vectors])
    if loss_name == SCORES:
        return time_calls(baseline, min_seconds, baseline_mb=baseline_mb)
    objective = PROXY_LOSSES[loss_name].build(classes, x.shape[1])
    step = tensorflow_step(objective, x, y, jit, [objective.proxies])
    return time_alternating(baseline, step, min_seconds, baseline_mb=baseline_mb)


def compiles_itself(name):
    """Whether the in-batch loss `name` compiles itself with XLA in graphs without it (`--kernels`)."""
    return name in REGISTRY and REGISTRY[name].loss_class.faster_under_xla


def compiles_terms_alone(name):
    """Whether the in-batch loss `name` compiles its terms alone without XLA at some batch sizes (`--whole`)."""
    return compiles_itself(name) and REGISTRY[name].loss_class.compiles_terms_alone


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--k", type=int, default=4, help="examples per class (K of P×K)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--memory", type=int, default=0, help="M: benchmark the cross-batch memory instead")
    parser.add_argument("--classes", type=int, default=0, help="C: benchmark the losses with class vectors instead")
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="also time without XLA each loss that compiles itself as TensorFlow's kernels instead "
        "(tfm.losses.compile_losses_with_xla(False)), in the row after it",
    )
    parser.add_argument(
        "--whole",
        action="store_true",
        help="also time without XLA each loss that compiles its terms alone (N = 512 to 1535) with the whole "
        "loss compiled instead, in a row [whole]",
    )
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    # The tests' smoke runs: one process instead of one per cell (each imports TensorFlow).
    parser.add_argument("--in-process", action="store_true", help="every cell in this process (memory adds up)")
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(measure(*json.loads(args.cell))))
        return

    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, D={args.dim}, K={args.k}, float32, forward+backward")
    header = f"{'loss':<24}{'N':>6}{'jit':>6}{'ms':>10}{'× dist':>9}{'peak MB':>10}{'+MB':>8}"
    print(header)
    print("-" * len(header))
    if args.classes:
        names = [SCORES, *PROXY_LOSSES]
        print(f"C = {args.classes} classes; × = time over the N × C cosine matrix's (gradients to both sides)")
    elif args.memory:
        names = [RECTANGLE] + [f"xbm {name}" for name in MEMORY_LOSSES if name in args.losses]
        print(f"cross-batch memory of M = {args.memory} rows; × = time over the N × (N + M) rectangle's")
    else:
        names = [BASELINE] + [name for name in args.losses if name != BASELINE]
    for n in args.sizes:
        for jit in (False, True):
            for name in names:
                ways = [(False, False)] + [(True, False)] * (args.kernels and not jit and compiles_itself(name))
                ways += [(False, True)] * (args.whole and not jit and compiles_terms_alone(name))
                for as_kernels, whole in ways:
                    cell = [name, n, args.k, args.dim, jit, args.min_seconds, args.memory, args.classes, as_kernels,
                            whole]
                    r = measure(*cell) if args.in_process else run_cell(sys.executable, __file__, cell)
                    label = f"{name} [kernels]" if as_kernels else f"{name} [whole]" if whole else name
                    if "error" in r:
                        print(f"{label:<24}{n:>6}{str(jit):>6}  error: {r['error']}")
                        continue
                    print(
                        f"{label:<24}{n:>6}{str(jit):>6}{r['ms']:>10.2f}{r.get('ratio', 1.0):>9.2f}"
                        f"{r['peak_mb']:>10.0f}{r['extra_mb']:>8.0f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
