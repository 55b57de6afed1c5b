"""Exact k-nearest-neighbour search: tfmetric against faiss' IndexFlatL2, and retrieval_metrics.

    python benchmarks/search.py

N points in 32 dimensions (standard normal, 1 000 classes), every point
searching all the others (leave-one-out) for its 10 nearest. faiss (`pip
install faiss-cpu`; skipped with a message when absent) searches 11 and
drops the point itself, in the same run on the same data; `faiss / tfm` is
its time divided by ours (above 1: tfmetric is faster). `agree` is the share
of queries whose neighbour lists are the same, a list that differs only by
the order of neighbours at equal float32 distances counting as the same.
Then `retrieval_metrics(k=(1, 5, 10))` on the same points; before this
search existed it took 180-235 s for 100 000 points on a 2-core machine.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import tfmetric as tfm


def points(n, dim, classes, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype("float32"), rng.integers(0, classes, size=n)


def timed(work):
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def faiss_neighbours(x, k):
    """faiss' exact neighbours of every point but itself, or None without faiss."""
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    distances, indices = index.search(x, k + 1)
    # The point itself is usually first, but a duplicate at distance 0 may
    # come before it: drop it wherever it is.
    own = indices == np.arange(len(x))[:, None]
    own[own.sum(axis=1) == 0, -1] = True
    keep = ~own
    return distances[keep].reshape(len(x), k), indices[keep].reshape(len(x), k)


def agreement(ours, theirs, their_distances):
    """Share of queries with the same neighbours, up to the order among equal float32 distances."""
    same = (ours == theirs).all(axis=1)
    for row in np.flatnonzero(~same):
        # Points tied with faiss' k-th distance may be kept or not: only those
        # strictly nearer must be among ours.
        nearer = their_distances[row] < their_distances[row, -1]
        same[row] = set(theirs[row][nearer]) <= set(ours[row])
    return float(same.mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    print(f"NumPy {np.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"{'work':<30}{'N':>9}{'seconds':>10}{'faiss / tfm':>13}{'agree':>8}{'precision@1':>13}")
    print("-" * 83)
    for n in args.sizes:
        x, y = points(n, args.dim, args.classes)
        seconds, (_, ours) = timed(lambda: tfm.search.nearest_neighbours(x, x, args.k, exclude_self=True))
        theirs_seconds, theirs = timed(lambda: faiss_neighbours(x, args.k))
        ours_p1 = float((y[ours[:, 0]] == y).mean())
        if theirs is None:
            print(f"{'tfm.search (exact)':<30}{n:>9}{seconds:>10.2f}{'-':>13}{'-':>8}{ours_p1:>13.4f}")
            print(f"{'faiss IndexFlatL2':<30}{n:>9}   skipped: faiss is not installed (pip install faiss-cpu)")
        else:
            their_distances, their_indices = theirs
            agree = agreement(ours, their_indices, their_distances)
            ratio = theirs_seconds / seconds
            their_p1 = float((y[their_indices[:, 0]] == y).mean())
            print(f"{'tfm.search (exact)':<30}{n:>9}{seconds:>10.2f}{ratio:>13.2f}{agree:>8.4f}{ours_p1:>13.4f}")
            print(f"{'faiss IndexFlatL2':<30}{n:>9}{theirs_seconds:>10.2f}{'':>13}{'':>8}{their_p1:>13.4f}")
        seconds, metrics = timed(lambda: tfm.evaluation.retrieval_metrics(x, y, k=(1, 5, 10), nmi=False))
        name = "retrieval_metrics(k=1,5,10)"
        print(f"{name:<30}{n:>9}{seconds:>10.2f}{'':>13}{'':>8}{metrics['precision@1']:>13.4f}")
    print("retrieval_metrics before tfm.search: 180-235 s for N = 100 000 (issue 21, same machine)")


if __name__ == "__main__":
    main()
