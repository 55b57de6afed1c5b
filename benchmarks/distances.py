"""The distance matrix against the bare matrix product it is built on.

Forward + backward of `tfm.distances.pairwise_distance(x)` (and its
squared and cosine forms), each divided by the forward + backward of
`x @ xᵀ` alone, the floor every distance matrix pays. The objective is
`Σ W ∘ D` with a fixed random `W`, so that the incoming gradient is a full
matrix (a plain sum would let a compiler simplify the product's gradient),
and each step returns the objective's value with its gradient, as a
training step does: the gradient of `x @ xᵀ` alone does not need the
product (`(W + Wᵀ) x`), and a step returning only the gradient let
TensorFlow and XLA drop it, timing the bare product's backward pass
alone (two products against the distance matrix's three; runs before
2026-12-07). The calls alternate, round after round, so that each ratio compares times
measured next to each other; the medians are shown.

    python benchmarks/distances.py                      # N = 1024, 4096
    python benchmarks/distances.py --sizes 256 --dim 64
"""

import argparse
import os
import statistics
import time

import numpy as np

MATRICES = ("x @ xᵀ", "euclidean", "squared_euclidean", "cosine")


def steps(jit):
    """Every matrix's step: `(x, weights) ↦ (Σ W ∘ M(x), its gradient with respect to x)` as NumPy values."""
    import tensorflow as tf

    import tfmetric as tfm

    def objective(matrix):
        @tf.function(jit_compile=jit)
        def step(x, weights):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = tf.reduce_sum(matrix(x) * weights)
            return value, tape.gradient(value, x)

        return lambda x, weights: tuple(result.numpy() for result in step(x, weights))

    made = {"x @ xᵀ": objective(lambda x: tf.matmul(x, x, transpose_b=True))}
    for distance in MATRICES[1:]:
        made[distance] = objective(lambda x, distance=distance: tfm.distances.pairwise_distance(x, distance))
    return made


def measure(n, dim, jit, min_seconds):
    """Median milliseconds of each matrix's step, the calls alternating."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(n, dim)).astype("float32"))
    weights = tf.constant(rng.uniform(size=(n, n)).astype("float32"))
    made = steps(jit)
    for step in made.values():
        step(x, weights)
    times = {name: [] for name in made}
    start = time.perf_counter()
    while len(times["x @ xᵀ"]) < 5 or time.perf_counter() - start < min_seconds:
        for name, step in made.items():
            begin = time.perf_counter()
            step(x, weights)
            times[name].append(time.perf_counter() - begin)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    args = parser.parse_args()

    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, D={args.dim}, float32, forward+backward")
    header = f"{'matrix':<20}{'N':>6}{'jit':>6}{'ms':>10}{'× x @ xᵀ':>10}"
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        for jit in (False, True):
            times = measure(n, args.dim, jit, args.min_seconds)
            for name, ms in times.items():
                print(f"{name:<20}{n:>6}{str(jit):>6}{ms:>10.2f}{ms / times['x @ xᵀ']:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
