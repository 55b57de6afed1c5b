"""Exact k-nearest-neighbour search in blocks: `nearest_neighbours`.

The search is exact, and its order is that of `tfm.evaluation.retrieval_metrics`:
distances are rounded to a grid 1e-12 of the data's scale, in float64, so
that equal distances compare equal, and ties go to the lower reference index.
It streams blocks of queries against blocks of references (memory bounded by
the block size, not by N × M) at the speed of a float32 matrix product: a
float32 pass keeps each query's nearest few, a float64 pass re-ranks them,
and a query whose candidates might miss a neighbour (within float32's
proven error of the k-th: ties, near-duplicates) is searched again with
every reference that float32 cannot rule out.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tfmetric.distances import check_distance

__all__ = ["nearest_neighbours"]

# Queries and references per block: the 1024 × 2048 float32 scores (8 MiB)
# are scanned while still in the processor's cache.
DEFAULT_BLOCK_SIZE = (1024, 2048)
# Candidates kept beyond k, so that the float32 pass can prove it missed no
# neighbour without a second look for almost every query.
_SPARE_CANDIDATES = 4
# The references a first look samples to set each query's bar for candidates.
_PILOT_SIZE = 2048
# From how many candidates per query a pilot pays (measured: 10 % slower at
# 14, as fast at 44, 25 % faster at 139).
_PILOTED_CANDIDATES = 48
# The bar aims at this many times `kept` references below it: more costs
# candidates, fewer makes more queries fall short of `kept` and start again.
_PILOT_MARGIN = 4
# Pairs whose exact keys a second look computes at once (about 32 MiB).
_PAIRS_AT_ONCE = 2**20
# Distances equal up to this share of the data's scale are ties.
_RELATIVE_GRID = 1e-12
# float32's unit roundoff, doubled for safety: a float32 score of D terms is
# within (D + 8) × this × (|q| + |r|)² of the exact one (Higham's γ_D bound
# on the dot product, plus the rounding of the inputs and of the norms).
_FLOAT32_ERROR = 2.0**-23



def nearest_neighbours(queries, references, k, distance="euclidean", exclude_self=False, block_size=DEFAULT_BLOCK_SIZE):
    """The exact `k` nearest references of every query, nearest first.

    Ties (distances equal up to 1e-12 of `max(|q|², max |r|²)`, or of 1 for
    the cosine distance) go to the lower reference index, so the answer is
    reproducible, and the same whatever the block size.

    Args:
        queries: `(N, D)` embeddings.
        references: `(M, D)` embeddings.
        k: How many neighbours; more than there are references gives them all
            (`min(k, M)` columns, `min(k, M - 1)` with `exclude_self`).
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"` (1 - cos).
        exclude_self: Query i is reference i and is not its own neighbour
            (leave-one-out); needs N == M.
        block_size: Queries and references per block, an integer for both or
            a pair `(queries, references)`: memory grows with their product,
            never with N × M.

    Returns:
        `(distances, indices)`: `(N, k)` float64 and int64.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> x = np.array([[0.0], [1.0], [3.0], [4.0]])
    >>> distances, indices = tfm.search.nearest_neighbours(x, x, k=2, exclude_self=True)
    >>> indices.tolist(), distances.tolist()
    ([[1, 2], [0, 2], [3, 1], [2, 1]], [[1.0, 3.0], [1.0, 2.0], [1.0, 2.0], [1.0, 3.0]])
    """
    queries, references = _as_matrix(queries, "queries"), _as_matrix(references, "references")
    if queries.shape[1] != references.shape[1]:
        raise ValueError(
            f"queries have {queries.shape[1]} dimensions and references {references.shape[1]}; they must match."
        )
    if exclude_self and len(queries) != len(references):
        raise ValueError(
            f"exclude_self pairs query i with reference i: {len(queries)} queries against {len(references)} references."
        )
    return _nearest_neighbours(
        queries,
        references,
        _check_k(k),
        check_distance(distance),
        np.arange(len(queries)) if exclude_self else None,
        _check_block_size(block_size),
    )


def _nearest_neighbours(queries, references, k, distance, self_indices, block_size, consume=None):
    """`nearest_neighbours` after the checks; `self_indices[i]` is the reference query i skips (or None).

    With `consume`, nothing is returned: `consume(rows, distances, indices)`
    receives each block of queries' answer as it is found (from several
    threads at once, for disjoint rows), so that a caller that reduces the
    neighbours (`retrieval_metrics`) holds one block's at a time.
    """
    query_block, reference_block = block_size
    available = len(references) - (0 if self_indices is None else 1)
    k = min(k, available)
    answer = None
    if consume is None:
        answer = np.empty((len(queries), max(k, 0))), np.empty((len(queries), max(k, 0)), np.int64)

        def consume(rows, block_distances, block_indices):
            answer[0][rows], answer[1][rows] = block_distances, block_indices

    if k <= 0 or len(queries) == 0:
        return answer
    space = _FastSpace(queries, references, distance)
    kept = min(k + _SPARE_CANDIDATES, available)

    def search_block(start):
        rows = np.arange(start, min(start + query_block, len(queries)))
        own = None if self_indices is None else self_indices[rows]
        block_distances = np.empty((len(rows), k))
        block_indices = np.empty((len(rows), k), np.int64)
        scores, candidates = _float32_pass(space, rows, own, kept, reference_block)
        threshold = space.threshold(rows, np.partition(scores, k - 1, axis=1)[:, k - 1])
        # A dropped reference scored at least the largest kept score: above the
        # threshold, every reference that can still be a neighbour was kept.
        settled = (scores.max(axis=1) > threshold) | (kept == available)
        keys, order = _exact_order(space, rows[settled], candidates[settled], k)
        block_distances[settled] = space.distances(keys)
        block_indices[settled] = order
        # Few queries at a time: with many ties every pair may need its exact key.
        rows_at_once = max(1, _PAIRS_AT_ONCE // reference_block)
        unsettled = np.flatnonzero(~settled)
        for first in range(0, len(unsettled), rows_at_once):
            chosen = unsettled[first : first + rows_at_once]
            own_chosen = None if own is None else own[chosen]
            keys, order = _search_within(space, rows[chosen], own_chosen, threshold[chosen], k, reference_block)
            block_distances[chosen] = space.distances(keys)
            block_indices[chosen] = order
        consume(rows, block_distances, block_indices)

    starts = range(0, len(queries), query_block)
    workers = min(len(starts), os.cpu_count() or 1)
    blas_limits = _blas_thread_limits() if workers > 1 else None
    if blas_limits is None:
        for start in starts:
            search_block(start)
    else:
        # One BLAS thread per block, the blocks spread over the cores: a
        # multi-threaded BLAS wakes and parks its threads for every block's
        # small product and spins between them, starving the scans (three
        # times slower on two cores).
        with blas_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            list(pool.map(search_block, starts))
    return answer


class _FastSpace:
    """The float32 operands of the fast pass and the exact float64 distance.

    Scores are `q' · r'` with `q' = [q, 1]` and `r' = [-2 r, |r|²]` (the data
    centred on the references' mean and scaled by a power of two, so that
    float32 neither overflows nor loses the digits of distant data), or
    `-q̂ · r̂` for the cosine distance: a query's scores are its distances
    up to a constant, in one matrix product.
    """

    def __init__(self, queries, references, distance):
        self.distance = distance
        if distance == "cosine":
            query_units, reference_units = _unit_rows(queries), _unit_rows(references)
            self.query_coordinates, self.reference_coordinates = query_units.T.copy(), reference_units.T.copy()
            query_part, reference_part = query_units.astype(np.float32), reference_units.astype(np.float32)
            self.query_operand, self.reference_operand = query_part, -reference_part
            self.grid = np.full(len(queries), _RELATIVE_GRID)
            scaled_grid = self.grid
        else:
            self.query_coordinates = np.asarray(queries, np.float64).T.copy()
            # Integer or float32 references stay so (converted exactly when used).
            self.reference_coordinates = references.T.copy()
            centre = references.mean(axis=0, dtype=np.float64)
            query_part, reference_part = queries - centre, references - centre
            largest = max(np.abs(query_part).max(initial=0.0), np.abs(reference_part).max(initial=0.0))
            unit = 2.0 ** np.frexp(largest)[1] if largest > 0 else 1.0
            query_part = (query_part / unit).astype(np.float32)
            reference_part = (reference_part / unit).astype(np.float32)
            reference_squares = _squared_norms(reference_part).astype(np.float32)[:, None]
            self.query_operand = np.hstack([query_part, np.ones((len(queries), 1), np.float32)])
            self.reference_operand = np.hstack([-2 * reference_part, reference_squares])
            scale = np.maximum(_squared_norms(queries), _squared_norms(references).max(initial=0.0))
            self.grid = np.maximum(scale, np.finfo(float).tiny) * _RELATIVE_GRID
            scaled_grid = self.grid / unit**2
        query_lengths = np.sqrt(_squared_norms(query_part))
        longest_reference = np.sqrt(_squared_norms(reference_part).max(initial=0.0))
        error = (queries.shape[1] + 8) * _FLOAT32_ERROR * (query_lengths + longest_reference) ** 2
        # The k-th candidate's exact distance is within one error of its
        # score, a neighbour's score within another, plus the rounding grid.
        self.margin = 2 * error + 2 * scaled_grid

    def threshold(self, rows, kth_scores):
        return kth_scores.astype(np.float64) + self.margin[rows]

    def exact_keys(self, rows, columns):
        """The float64 sort keys of queries `rows` `(P,)` against references `columns` `(P, C)`.

        The distances snapped to the grid, summed one dimension at a time
        (over the coordinates stored dimension by dimension, a gather each)
        so that a pair's key is the same whichever pass or block computes it.
        """
        total = np.zeros(columns.shape)
        term = np.empty(columns.shape)
        gathered = np.empty(columns.shape, self.reference_coordinates.dtype)
        for query_values, reference_values in zip(self.query_coordinates, self.reference_coordinates):
            np.take(reference_values, columns, out=gathered)
            if self.distance == "cosine":
                np.multiply(query_values[rows, None], gathered, out=term)
            else:
                np.subtract(query_values[rows, None], gathered, out=term)
                term *= term
            total += term
        if self.distance == "cosine":
            total = 1.0 - total
        step = self.grid[rows, None]
        return np.maximum(np.round(total / step) * step, 0.0)

    def distances(self, keys):
        return np.sqrt(keys) if self.distance == "euclidean" else keys


def _unit_rows(rows):
    rows = np.asarray(rows, np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1), 1e-300)[:, None]


def _squared_norms(rows):
    return np.einsum("ij,ij->i", rows, rows, dtype=np.float64)


def _float32_pass(space, rows, own, kept, block_size, pilot=True):
    """The `kept` smallest float32 scores of each query row and their reference indices.

    Only references scoring below a row's bar are candidates. The bar starts
    from a pilot sample of the references (`_pilot_bars`), so that few more
    than `kept` pass it; a row left with fewer than `kept` candidates (its
    sample was unluckily near) is searched again without one. New
    candidates are appended to a buffer twice as wide as `kept`; a row is
    cut back to its `kept` best (and its bar lowered) only when its buffer is
    full, so that the kept ones are not partitioned again for every block.
    """
    count = len(rows)
    queries = space.query_operand[rows]
    capacity = 2 * kept
    buffer_scores = np.full((count, capacity), np.inf, np.float32)
    buffer_indices = np.full((count, capacity), -1, np.int64)
    filled = np.zeros(count, np.int64)
    references = space.reference_operand
    bar = _pilot_bars(queries, references, own, kept) if pilot else None
    piloted = bar is not None
    if not piloted:
        bar = np.full((count, 1), np.inf, np.float32)
    for start, width, scores in _scored_blocks(queries, references, own, block_size):
        if not piloted and start == 0 and width > kept:
            # Every row takes its first candidates from this block: a dense
            # selection beats the scatter below (at most one score is +inf).
            best = np.argpartition(scores, kept - 1, axis=1)[:, :kept]
            buffer_scores[:, :kept] = np.take_along_axis(scores, best, axis=1)
            buffer_indices[:, :kept] = best
            filled[:] = kept
            bar[:, 0] = buffer_scores[:, :kept].max(axis=1)
            continue
        hits = np.flatnonzero(scores < bar)
        if not len(hits):
            continue
        hit_rows, hit_columns = np.divmod(hits, width)
        hit_scores, hit_columns = scores.ravel()[hits], hit_columns + start
        counts = np.bincount(hit_rows, minlength=count)
        rank = np.arange(len(hits)) - (np.cumsum(counts) - counts)[hit_rows]
        full = filled + counts > capacity
        if full.any():
            merging = full[hit_rows]
            _cut_back(buffer_scores, buffer_indices, bar, kept, np.flatnonzero(full), counts,
                      hit_rows[merging], rank[merging], hit_scores[merging], hit_columns[merging])
            filled[full] = kept
            appending = ~merging
            hit_rows, rank = hit_rows[appending], rank[appending]
            hit_scores, hit_columns = hit_scores[appending], hit_columns[appending]
        position = filled[hit_rows] + rank
        buffer_scores[hit_rows, position] = hit_scores
        buffer_indices[hit_rows, position] = hit_columns
        filled[~full] += counts[~full]
    best = np.argpartition(buffer_scores, kept - 1, axis=1)[:, :kept]
    scores = np.take_along_axis(buffer_scores, best, axis=1)
    candidates = np.take_along_axis(buffer_indices, best, axis=1)
    short = np.flatnonzero(filled < kept)
    if piloted and len(short):
        own_short = None if own is None else own[short]
        scores[short], candidates[short] = _float32_pass(space, rows[short], own_short, kept, block_size, pilot=False)
    return scores, candidates


def _pilot_bars(queries, references, own, kept):
    """Each query's bar for candidates, `(N, 1)`: a score about `_PILOT_MARGIN × kept` references are below.

    The j-th smallest score against a fixed random sample of the references,
    j chosen so that as many references are below it on average; None when
    a pilot would not pay (few candidates, few references). Not a bound: the
    caller checks that `kept` references passed it.
    """
    total = len(references)
    wanted = _PILOT_MARGIN * kept * _PILOT_SIZE / total
    # Few candidates are cheaper kept from the first block of references.
    if kept < _PILOTED_CANDIDATES or wanted >= kept or total <= _PILOT_SIZE:
        return None
    sample = np.sort(np.random.default_rng(0).choice(total, _PILOT_SIZE, replace=False))
    scores = queries @ references[sample].T
    if own is not None:
        position = np.minimum(np.searchsorted(sample, own), _PILOT_SIZE - 1)
        inside = np.flatnonzero(sample[position] == own)
        scores[inside, position[inside]] = np.inf
    rank = max(1, int(np.ceil(wanted)))
    return np.partition(scores, rank - 1, axis=1)[:, rank - 1 : rank]


def _cut_back(buffer_scores, buffer_indices, bar, kept, full_rows, counts, hit_rows, rank, hit_scores, hit_columns):
    """Keeps the `kept` best of full rows' buffers and their new hits, and lowers their bar."""
    capacity = buffer_scores.shape[1]
    slot = np.empty(len(counts), np.int64)
    slot[full_rows] = np.arange(len(full_rows))
    merged_scores = np.full((len(full_rows), capacity + counts[full_rows].max()), np.inf, np.float32)
    merged_indices = np.full(merged_scores.shape, -1, np.int64)
    merged_scores[:, :capacity] = buffer_scores[full_rows]
    merged_indices[:, :capacity] = buffer_indices[full_rows]
    merged_scores[slot[hit_rows], capacity + rank] = hit_scores
    merged_indices[slot[hit_rows], capacity + rank] = hit_columns
    best = np.argpartition(merged_scores, kept - 1, axis=1)[:, :kept]
    buffer_scores[full_rows] = np.inf
    buffer_indices[full_rows] = -1
    buffer_scores[full_rows, :kept] = np.take_along_axis(merged_scores, best, axis=1)
    buffer_indices[full_rows, :kept] = np.take_along_axis(merged_indices, best, axis=1)
    bar[full_rows, 0] = buffer_scores[full_rows, :kept].max(axis=1)


def _scored_blocks(queries, references, own, block_size):
    """`(start, width, scores)` per block of references: the float32 scores, each query's own reference masked."""
    for start in range(0, len(references), block_size):
        width = min(block_size, len(references) - start)
        scores = queries @ references[start : start + width].T
        if own is not None:
            _mask_self(scores, own, start, width)
        yield start, width, scores


def _mask_self(scores, own, start, width):
    """Sets each query's score against itself to +inf."""
    inside = (own >= start) & (own < start + width)
    scores[np.flatnonzero(inside), own[inside] - start] = np.inf


def _exact_order(space, rows, candidates, k):
    """The k best candidates of each row by (exact key, index): their keys and indices."""
    keys = space.exact_keys(rows, candidates)
    order = np.lexsort((candidates, keys), axis=1)[:, :k]
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(candidates, order, axis=1)


def _search_within(space, rows, own, threshold, k, block_size):
    """Exact k nearest of `rows` among every reference whose float32 score is within `threshold`.

    For the rare queries whose float32 candidates could not be proven
    complete. Streams the references again, keeping an exact running top-k,
    so memory stays bounded however many references tie.
    """
    bound = np.nextafter(threshold.astype(np.float32), np.float32(np.inf))[:, None]
    queries = space.query_operand[rows]
    kept_rows = np.empty(0, np.int64)
    kept_keys = np.empty(0)
    kept_columns = np.empty(0, np.int64)
    references = space.reference_operand
    for start, _, scores in _scored_blocks(queries, references, own, block_size):
        local_rows, columns = np.nonzero(scores <= bound)
        columns = columns + start
        keys = space.exact_keys(rows[local_rows], columns[:, None])[:, 0]
        local_rows = np.concatenate([kept_rows, local_rows])
        keys = np.concatenate([kept_keys, keys])
        columns = np.concatenate([kept_columns, columns])
        order = np.lexsort((columns, keys, local_rows))
        local_rows, keys, columns = local_rows[order], keys[order], columns[order]
        first = np.searchsorted(local_rows, local_rows, side="left")
        keep = np.arange(len(local_rows)) - first < k
        kept_rows, kept_keys, kept_columns = local_rows[keep], keys[keep], columns[keep]
    return kept_keys.reshape(len(rows), k), kept_columns.reshape(len(rows), k)


def _blas_thread_limits():
    """threadpoolctl's `threadpool_limits` (a dependency of scikit-learn), or None: then one thread searches."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits


def _as_matrix(values, name):
    array = np.asarray(values)
    if array.ndim != 2 or array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real (N, D) matrix; received shape {array.shape}, dtype {array.dtype}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} hold NaN or infinite values.")
    return array


def _check_k(k):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; received {k!r}.")
    return int(k)


def _check_block_size(block_size):
    sizes = (block_size, block_size) if isinstance(block_size, (int, np.integer)) else tuple(block_size)
    if len(sizes) != 2 or not all(isinstance(size, (int, np.integer)) and size >= 1 for size in sizes):
        raise ValueError(
            f"block_size must be a positive integer or a pair (queries, references) of them; received {block_size!r}."
        )
    return int(sizes[0]), int(sizes[1])
