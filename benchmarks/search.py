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

Last, the approximate engines (`tfm.search.IVF`, `tfm.search.HNSW`: faiss
behind `Index.search`) at their default settings: 10 000 new points from
the same distribution searching the N for their 10 nearest, seconds to build
the index and to search, and their recall of the exact neighbours; on the
standard normal points (the hard case: no clusters to exploit) and on
clustered ones (1 000 class centres, each point 0.25 from its own in every
dimension, as trained embeddings cluster by class).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import tfmetric as tfm


def points(n, dim, classes, seed=0, spread=None):
    """Standard normal points with random labels; or, given a `spread`, points that
    many standard deviations around their class's standard normal centre."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    if spread is None:
        return rng.normal(size=(n, dim)).astype("float32"), labels
    centres = np.random.default_rng(classes).normal(size=(classes, dim))
    return (centres[labels] + spread * rng.normal(size=(n, dim))).astype("float32"), labels


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
    approximate(args)


def approximate(args):
    """Build and search seconds and recall@k of the faiss engines against the exact search."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        print("approximate engines: skipped, faiss is not installed (pip install 'tfmetric[search]')")
        return
    print()
    recall_column = f"recall@{args.k}"
    print(f"{'engine (10 000 queries)':<30}{'N':>9}{'build s':>10}{'search s':>10}{'speed-up':>10}{recall_column:>11}")
    print("-" * 80)
    for spread, kind in ((None, "normal"), (0.25, "clustered")):
        for n in args.sizes:
            references, _ = points(n, args.dim, args.classes, spread=spread)
            queries, _ = points(10_000, args.dim, args.classes, seed=1, spread=spread)
            exact_seconds, (_, exact) = timed(lambda: tfm.search.nearest_neighbours(queries, references, args.k))
            print(f"{'exact, ' + kind:<30}{n:>9}{0:>10.2f}{exact_seconds:>10.2f}{1:>10.2f}{1:>11.4f}")
            for engine in (tfm.search.IVF(), tfm.search.HNSW()):
                build_seconds, _ = timed(lambda: engine.build(references, "euclidean"))
                search_seconds, (_, found) = timed(lambda: engine.search(queries, args.k))
                speed_up = exact_seconds / search_seconds
                recalled = tfm.search.recall(found, exact)
                settings = repr(engine).replace(", build_breadth=80", "").replace(", seed=0", "")
                print(f"{settings:<30}{n:>9}{build_seconds:>10.2f}{search_seconds:>10.2f}{speed_up:>10.2f}{recalled:>11.4f}")


if __name__ == "__main__":
    main()
