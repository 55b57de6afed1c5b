"""Where a loss spends its time without XLA: its TensorFlow kernels, largest first.

Without XLA every operation of a loss is a kernel of its own; the ratios of
`losses.py` say how much a loss costs, this script says on what. The loss's
forward + backward (with respect to the embeddings, as in `losses.py`) runs
as a `tf.function` under TensorFlow's profiler; each kernel's time is the
median over rounds of its mean per call, in ms and as a multiple of the
distance matrix's whole forward + backward (traced the same way, in turn
with the loss). Kernels inside the slot loops are summed over their
iterations. (A TF1-style graph session, this script's earlier way, is not
what the losses run in: there `!=` between tensors compares the objects,
so the masks kept their diagonal.) The kernels' times add up to more than the wall time where
two run at once.

    python benchmarks/kernels.py batch_all_nonzero --k 16
    python benchmarks/kernels.py smooth_ap histogram --top 8

The names are `tfm.losses.registry.LOSSES`' (built with their defaults);
batches are P×K, D = 128, float32.
"""

import argparse
import collections
import glob
import os
import statistics
import tempfile

from timing import pk_batch

from tfmetric.losses.registry import LOSSES

BASELINE = "distance matrix"


def _xspace(logdir):
    """The profiler's trace in `logdir`, an `XSpace` proto."""
    try:
        from tsl.profiler.protobuf import xplane_pb2
    except ImportError:  # older TensorFlow wheels keep it under their own name
        from tensorflow.tsl.profiler.protobuf import xplane_pb2

    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    return space


def traced_kernels(call, runs):
    """`{kernel: mean ms per call}` over `runs` calls of `call` under TensorFlow's profiler, and their total.

    The kernels are the events of the host's compute threads, named
    `op name:op type` by the profiler (the executor's own bookkeeping left out).
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(runs):
            call()
        tf.profiler.experimental.stop()
        space = _xspace(logdir)
    per_kernel = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                label = plane.event_metadata[event.metadata_id].name
                name, _, kind = label.rpartition(":")
                if name and "::" not in label:
                    per_kernel[f"{name} [{kind}]"] += event.duration_ps / 1e9 / runs
    return dict(per_kernel), sum(per_kernel.values())


def profile(names, n, k, runs):
    """`{name: (kernels, total ms)}` for the distance matrix and each loss, each a `tf.function` without XLA."""
    import tensorflow as tf

    import tfmetric as tfm

    x, y = (tf.constant(value) for value in pk_batch(n, k, 128))
    calls = {}
    for name in (BASELINE, *names):
        objective = LOSSES[name].build() if name != BASELINE else None

        @tf.function
        def step(x, y, objective=objective):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = objective(y, x) if objective else tf.reduce_sum(tfm.distances.pairwise_distance(x))
            return tape.gradient(value, x)

        calls[name] = lambda step=step: step(x, y).numpy()
        for _ in range(3):
            calls[name]()
    # Rounds in turn, as in the other scripts: a busy spell touches every function alike.
    rounds = {name: [] for name in calls}
    for _ in range(max(1, runs // 5)):
        for name, call in calls.items():
            rounds[name].append(traced_kernels(call, min(runs, 5)))
    result = {}
    for name, measured in rounds.items():
        kernels = collections.defaultdict(list)
        for means, _ in measured:
            for kernel, ms in means.items():
                kernels[kernel].append(ms)
        missing = len(measured)
        result[name] = (
            {kernel: statistics.median(times + [0.0] * (missing - len(times))) for kernel, times in kernels.items()},
            statistics.median(total for _, total in measured),
        )
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
