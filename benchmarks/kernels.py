"""Where a loss spends its time without XLA: its TensorFlow kernels, largest first.

Without XLA every operation of a loss is a kernel of its own; the ratios of
`losses.py` say how much a loss costs, this script says on what. The loss's
forward + backward (with respect to the embeddings, as in `losses.py`) runs
in a TensorFlow graph session with full tracing; each kernel's time is the
median over the traced runs, in ms and as a multiple of the distance
matrix's whole forward + backward (traced the same way, in turn with the
loss). Kernels inside the slot loops (`while/`) are summed over their
iterations. The kernels' times add up to more than the wall time where
two run at once.

    python benchmarks/kernels.py batch_all_nonzero --k 16
    python benchmarks/kernels.py smooth_ap histogram --top 8

The names are `tfm.losses.registry.LOSSES`' (built with their defaults);
batches are P×K, D = 128, float32.
"""

import argparse
import collections
import os
import statistics

from timing import pk_batch

from tfmetric.losses.registry import LOSSES

BASELINE = "distance matrix"


def traced_kernels(session, fetch, feed, runs):
    """`{kernel: median ms per run}` over `runs` traced runs, and the median total."""
    import tensorflow as tf

    per_kernel = collections.defaultdict(list)
    totals = []
    for _ in range(runs):
        metadata = tf.compat.v1.RunMetadata()
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        session.run(fetch, feed, options=options, run_metadata=metadata)
        this_run = collections.Counter()
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:
                # A loop's kernel runs once per iteration under one name: summed.
                kind = node.timeline_label.split("=")[-1].split("(")[0].strip() or node.node_name
                this_run[f"{node.node_name} [{kind}]"] += node.all_end_rel_micros / 1000
        for kernel, ms in this_run.items():
            per_kernel[kernel].append(ms)
        totals.append(sum(this_run.values()))
    medians = {kernel: statistics.median(times + [0.0] * (runs - len(times))) for kernel, times in per_kernel.items()}
    return medians, statistics.median(totals)


def profile(names, n, k, runs):
    """`{name: (kernels, total ms)}` for the distance matrix and each loss, from one graph each."""
    import tensorflow as tf

    import tfmetric as tfm

    x_value, y_value = pk_batch(n, k, 128)
    graphs = {}
    for name in (BASELINE, *names):
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, (n, 128))
            y = tf.constant(y_value)
            if name == BASELINE:
                value = tf.reduce_sum(tfm.distances.pairwise_distance(x))
            else:
                value = LOSSES[name].build()(y, x)
            (gradient,) = tf.gradients(value, [x])
            session = tf.compat.v1.Session(graph=graph)
            session.run(tf.compat.v1.global_variables_initializer())
        for _ in range(3):
            session.run(gradient, {x: x_value})
        graphs[name] = (session, gradient, {x: x_value})
    # Rounds in turn, as in the other scripts: a busy spell touches every graph alike.
    rounds = {name: [] for name in graphs}
    for _ in range(max(1, runs // 5)):
        for name, (session, gradient, feed) in graphs.items():
            rounds[name].append(traced_kernels(session, gradient, feed, min(runs, 5)))
    result = {}
    for name, measured in rounds.items():
        kernels = collections.defaultdict(list)
        for medians, _ in measured:
            for kernel, ms in medians.items():
                kernels[kernel].append(ms)
        result[name] = (
            {kernel: statistics.median(times) for kernel, times in kernels.items()},
            statistics.median(total for _, total in measured),
        )
    for session, _, _ in graphs.values():
        session.close()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("losses", nargs="+", choices=sorted(LOSSES), metavar="LOSS", help="registry names")
    parser.add_argument("--size", type=int, default=1024, help="N (default 1024)")
    parser.add_argument("--k", type=int, default=4, help="examples per class (default 4)")
    parser.add_argument("--runs", type=int, default=20, help="traced runs per graph (default 20)")
    parser.add_argument("--top", type=int, default=15, help="kernels shown per loss (default 15)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    result = profile(args.losses, args.size, args.k, args.runs)
    _, baseline = result[BASELINE]
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, N={args.size}, K={args.k}, D=128, float32, "
          "forward+backward, no XLA; × = ms ÷ the distance matrix's kernels' total")
    print(f"{BASELINE}: kernels' total {baseline:.2f} ms")
    for name in args.losses:
        kernels, total = result[name]
        print(f"\n{name}: kernels' total {total:.2f} ms ({total / baseline:.2f} ×)")
        print(f"{'kernel':70s} {'ms':>7s} {'×':>6s}")
        print("-" * 85)
        for kernel, ms in sorted(kernels.items(), key=lambda item: -item[1])[: args.top]:
            print(f"{kernel[-70:]:70s} {ms:7.2f} {ms / baseline:6.2f}")


if __name__ == "__main__":
    main()
