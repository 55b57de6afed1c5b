"""What a plain slot loop costs without XLA, beside the loss that does the same math.

Issue 23 asks every in-batch loss for at most 2.5× the distance matrix's
forward + backward without XLA. Losses that visit each anchor's K − 1
positives one at a time (batch-all, semi-hard, Smooth-AP and its kin) pay
a few elementwise passes over the N × N matrix per positive, and without
XLA every TensorFlow op is a kernel and a pass of its own. Each plain loop
here is a short TensorFlow program for one loss's math, a few ops a slot,
with no care for exactness, ties or degenerate batches (which the loss
must handle): what the straightforward formulation costs. It is timed with
the distance matrix and the loss itself, the calls alternating in one
process, and all are shown as multiples of the distance matrix (the same
baseline as `losses.py`).

    python benchmarks/slot_loops.py                   # N = 1024, K = 4 and 16
    python benchmarks/slot_loops.py --k 16 --min-seconds 2

The plain loops, each including the distance matrix `D` and its gradient:

- `one pass`: `Σ exp(−D)`, one elementwise pass and a sum, the least any
  loss adds to `D`;
- `batch_all_nonzero`: for each positive slot, the hinges
  `[d_ap − D + m]₊` against the anchor's negatives, their sum and how many
  are non-zero (the average's divisor);
- `semi_hard`: for each positive slot, the smallest negative distance above
  `d_ap` (a compare, a select and a row minimum) and its hinge;
- `smooth_ap`: for each positive slot, `log(1 + Σ σ((d_ap − D) / τ))` with
  `tf.math.sigmoid` (Smooth-AP's and PNP's rank estimate);
- `searchsorted` (forward only): the sort-free count of each anchor's
  negatives below each of its positive keys, one `tf.searchsorted` of the
  N × N distances into the sorted keys, the counting with which batch-all
  replaces part of its slot loop. TensorFlow's CPU kernel searches one
  value at a time.
"""

import argparse
import os

import numpy as np
from timing import alternate, pk_batch, tensorflow_step

LOOPS = ("one pass", "batch_all_nonzero", "semi_hard", "smooth_ap", "searchsorted")
# The loss of the registry each plain loop stands beside.
LOSS_OF = {"batch_all_nonzero": "batch_all_nonzero", "semi_hard": "semi_hard", "smooth_ap": "smooth_ap",
           "searchsorted": "batch_all_nonzero"}


def positive_columns(y):
    """`(N, K − 1)` int32: the columns of each row's positives in a P×K batch (the same class, not itself)."""
    same = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    return np.stack([np.flatnonzero(row) for row in same]).astype("int32")


def loop_objectives(y, margin=1.0, temperature=0.01):
    """Each plain loop as an `objective(y, x)` for `timing.tensorflow_step` (the labels are fixed: a P×K batch)."""
    import tensorflow as tf

    import tfmetric as tfm

    columns = tf.constant(positive_columns(y))
    y = tf.constant(y)
    negatives = tf.cast(y[:, None] != y[None, :], "float32")
    # Non-negatives pushed far above every key: no mask multiply in the slot loops.
    lift = (1.0 - negatives) * 1e9

    def distances(x):
        matrix = tfm.distances.pairwise_distance(x)
        return matrix, tfm.mining.take_along_rows(matrix, columns)

    def one_pass(_, x):
        return tf.reduce_sum(tf.exp(-tfm.distances.pairwise_distance(x)))

    def batch_all(_, x):
        matrix, keys = distances(x)
        lifted = matrix + lift
        total, count = 0.0, 0.0
        for slot in range(keys.shape[1]):
            hinges = tf.nn.relu(keys[:, slot : slot + 1] + margin - lifted)
            total += tf.reduce_sum(hinges)
            count += tf.math.count_nonzero(hinges, dtype="float32")
        return total / tf.maximum(count, 1.0)

    def semi_hard(_, x):
        matrix, keys = distances(x)
        lifted = matrix + lift
        total = 0.0
        for slot in range(keys.shape[1]):
            key = keys[:, slot : slot + 1]
            above = tf.where(lifted > key, lifted, 1e9)
            total += tf.reduce_sum(tf.nn.relu(key - tf.reduce_min(above, axis=1, keepdims=True) + margin))
        return total

    def smooth_ap(_, x):
        matrix, keys = distances(x)
        scaled, keys = (matrix + lift) / temperature, keys / temperature
        total = 0.0
        for slot in range(keys.shape[1]):
            total += tf.reduce_sum(tf.math.log1p(tf.reduce_sum(tf.math.sigmoid(keys[:, slot : slot + 1] - scaled), 1)))
        return total

    def searchsorted(_, x):
        matrix, keys = distances(x)
        below = tf.searchsorted(tf.sort(keys, axis=1), matrix + lift)
        # The counts (integers: no gradient) enter the value, so that they are computed.
        return tf.reduce_sum(matrix) + tf.reduce_sum(tf.cast(below, "float32"))

    return {"one pass": one_pass, "batch_all_nonzero": batch_all, "semi_hard": semi_hard, "smooth_ap": smooth_ap,
            "searchsorted": searchsorted}


def measure(n, k, dim, jit, min_seconds, loops):
    """Milliseconds of the distance matrix, each plain loop and the loss beside it, all alternating in one process."""
    import tensorflow as tf

    import tfmetric as tfm
    from tfmetric.losses.registry import LOSSES

    x_array, y_array = pk_batch(n, k, dim)
    x, y = tf.constant(x_array), tf.constant(y_array)
    objectives = loop_objectives(y_array)
    def distance_matrix(_, x):
        return tf.reduce_sum(tfm.distances.pairwise_distance(x))

    calls = {"distance matrix": tensorflow_step(distance_matrix, x, y, jit)}
    for loop in loops:
        calls[f"plain loop {loop}"] = tensorflow_step(objectives[loop], x, y, jit)
        loss = LOSS_OF.get(loop)
        if loss and f"loss {loss}" not in calls:
            calls[f"loss {loss}"] = tensorflow_step(LOSSES[loss].build(), x, y, jit)
    times = alternate(list(calls.values()), min_seconds)
    return dict(zip(calls, times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--k", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--loops", nargs="+", choices=LOOPS, default=list(LOOPS))
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--xla", action="store_true", help="compile with XLA too (the loops are written for the graph)")
    args = parser.parse_args()

    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, N={args.size}, D={args.dim}, float32, "
          "forward+backward, the calls alternating")
    header = f"{'K':>4}{'jit':>6}  {'call':<28}{'ms':>10}{'× distance matrix':>19}"
    print(header)
    print("-" * len(header))
    for k in args.k:
        for jit in (False, True) if args.xla else (False,):
            times = measure(args.size, k, args.dim, jit, args.min_seconds, args.loops)
            for name, ms in times.items():
                print(f"{k:>4}{str(jit):>6}  {name:<28}{ms:>10.2f}{ms / times['distance matrix']:>19.2f}", flush=True)


if __name__ == "__main__":
    main()
