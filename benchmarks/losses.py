"""Forward+backward time and peak memory of the in-batch losses.

Every time is divided by the forward+backward time of the Euclidean distance
matrix alone (`tfm.distances.pairwise_distance`), measured in the same run, so the ratios mean the same on a fast or a slow, busy machine.
Each (loss, N, jit) cell runs in its own process so that its peak resident
memory is its own.

    python benchmarks/losses.py                 # N = 256, 1024, 4096
    python benchmarks/losses.py --sizes 1024 --k 8
    python benchmarks/losses.py --losses Contrastive "MarginLoss all"

MarginLoss normalises the embeddings first (its default); the distance
matrix it is compared with does not.

Batches are P×K: N/K classes of K examples, D = 128, float32.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

LOSSES = {
    "distance matrix": None,
    "BatchHardTriplet": "BatchHardTriplet(margin=0.2)",
    "BatchAllTriplet": "BatchAllTriplet(margin=0.2)",
    "SemiHardTriplet": "SemiHardTriplet(margin=0.2)",
    "Contrastive": "Contrastive(margin=1.0)",
    "Contrastive hard": "Contrastive(margin=1.0, negatives='hard')",
    "MarginLoss all": "MarginLoss(sampling='all')",
    "MarginLoss dw": "MarginLoss(seed=0)",
}


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(loss_name, n, k, dim, jit, min_seconds):
    """Runs in a child process: times one cell and reports its memory."""
    import numpy as np
    import tensorflow as tf

    import tfmetric as tfm

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(n, dim)).astype("float32"))
    y = tf.constant(np.repeat(np.arange(n // k), k).astype("int64"))
    spec = LOSSES[loss_name]
    if spec is None:
        def objective(y, x):
            return tf.reduce_sum(tfm.distances.pairwise_distance(x))
    else:
        objective = eval("tfm." + spec)

    @tf.function(jit_compile=jit)
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = objective(y, x)
        return value, tape.gradient(value, x)

    baseline = _rss_mb()
    step(x, y)[1].numpy()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_seconds and len(times) < 50):
        t0 = time.perf_counter()
        step(x, y)[1].numpy()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms": 1e3 * statistics.median(times), "peak_mb": peak, "extra_mb": peak - baseline}


def run_cell(loss_name, n, k, dim, jit, min_seconds):
    cmd = [sys.executable, __file__, "--cell", json.dumps([loss_name, n, k, dim, jit, min_seconds])]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


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
                r = run_cell(name, n, args.k, args.dim, jit, args.min_seconds)
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
