"""Brute-force NumPy miners: loops over pairs and triplets, sets of index tuples.

Each reference takes the miner's `(N, R)` matrix (a distance, or with
`inverted` a similarity, larger = closer) and the boolean masks of the
candidate positive and negative pairs, and returns the mined pairs
`({(a, p)}, {(a, n)})` or triplets `{(a, p, n)}`. The arithmetic is done in
the matrix's own dtype (NumPy float32 scalars round as the backends do), so
that the masks can be compared exactly. `AngularMiner` needs the
embeddings: its reference computes in float64 and also returns how close
each triplet's angle is to the threshold.
"""

import math

import numpy as np


def _pairs(mask):
    return {(int(a), int(r)) for a, r in zip(*np.nonzero(mask))}


def _oriented(matrix, inverted):
    return -matrix if inverted else matrix


def all_triplets(positive, negative):
    return {(a, p, n) for a, p in _pairs(positive) for n in np.nonzero(negative[a])[0].tolist()}


def pairs_to_triplets(positive_pairs, negative_pairs):
    """PML's `convert_to_triplets` as a set: every mined (a, p) with every mined (a, n)."""
    return {(a, p, n) for a, p in positive_pairs for b, n in negative_pairs if a == b}


def triplets_to_pairs(triplets):
    """PML's `convert_to_pairs` as sets."""
    return {(a, p) for a, p, _ in triplets}, {(a, n) for a, _, n in triplets}


def pair_margin(matrix, positive, negative, pos_margin=0.2, neg_margin=0.8, inverted=False):
    pos, neg = set(), set()
    for a, p in _pairs(positive):
        if (matrix[a, p] < pos_margin) if inverted else (matrix[a, p] > pos_margin):
            pos.add((a, p))
    for a, n in _pairs(negative):
        if (matrix[a, n] > neg_margin) if inverted else (matrix[a, n] < neg_margin):
            neg.add((a, n))
    return pos, neg


def multi_similarity(matrix, positive, negative, epsilon=0.1, inverted=True):
    pos, neg = set(), set()
    dtype = matrix.dtype.type
    for a in range(matrix.shape[0]):
        positives = np.nonzero(positive[a])[0].tolist()
        negatives = np.nonzero(negative[a])[0].tolist()
        if not positives or not negatives:
            continue
        if inverted:
            hardest_negative = max(matrix[a, n] for n in negatives)
            hardest_positive = min(matrix[a, p] for p in positives)
            pos |= {(a, p) for p in positives if matrix[a, p] - dtype(epsilon) < hardest_negative}
            neg |= {(a, n) for n in negatives if matrix[a, n] + dtype(epsilon) > hardest_positive}
        else:
            hardest_negative = min(matrix[a, n] for n in negatives)
            hardest_positive = max(matrix[a, p] for p in positives)
            pos |= {(a, p) for p in positives if matrix[a, p] + dtype(epsilon) > hardest_negative}
            neg |= {(a, n) for n in negatives if matrix[a, n] - dtype(epsilon) < hardest_positive}
    return pos, neg


def _first_best(values, columns, largest):
    """The first column of the largest (smallest) value, or None."""
    best = None
    for c in columns:
        if best is None or (values[c] > values[best] if largest else values[c] < values[best]):
            best = c
    return best


def batch_easy_hard(matrix, positive, negative, pos_strategy="easy", neg_strategy="semihard",
                    allowed_pos_range=None, allowed_neg_range=None, inverted=False):
    d = _oriented(matrix, inverted)

    def allowed(a, c, value_range):
        return value_range is None or value_range[0] <= matrix[a, c] <= value_range[1]

    pos, neg = set(), set()
    for a in range(matrix.shape[0]):
        positives = [p for p in np.nonzero(positive[a])[0].tolist() if allowed(a, p, allowed_pos_range)]
        negatives = [n for n in np.nonzero(negative[a])[0].tolist() if allowed(a, n, allowed_neg_range)]
        p_best = n_best = None
        pos_largest = pos_strategy in ("hard", "semihard")
        neg_largest = neg_strategy == "easy"
        if pos_strategy == "semihard":
            n_best = _first_best(d[a], negatives, neg_largest)
            if n_best is not None:
                p_best = _first_best(d[a], [p for p in positives if d[a, p] < d[a, n_best]], pos_largest)
        elif neg_strategy == "semihard":
            p_best = _first_best(d[a], positives, pos_largest)
            if p_best is not None:
                n_best = _first_best(d[a], [n for n in negatives if d[a, n] > d[a, p_best]], neg_largest)
        else:
            p_best = _first_best(d[a], positives, pos_largest)
            n_best = _first_best(d[a], negatives, neg_largest)
        if pos_strategy == "all" and neg_strategy == "all":
            continue
        if pos_strategy == "all":
            if n_best is not None:
                neg.add((a, n_best))
        elif neg_strategy == "all":
            if p_best is not None:
                pos.add((a, p_best))
        elif p_best is not None and n_best is not None:
            pos.add((a, p_best))
            neg.add((a, n_best))
    if pos_strategy == "all":
        pos = _pairs(positive)
    if neg_strategy == "all":
        neg = _pairs(negative)
    return pos, neg


def triplet_margin(matrix, positive, negative, margin=0.2, type_of_triplets="all", inverted=False):
    dtype = matrix.dtype.type
    margin = dtype(margin)
    mined = set()
    for a, p, n in all_triplets(positive, negative):
        m = matrix[a, p] - matrix[a, n] if inverted else matrix[a, n] - matrix[a, p]
        if type_of_triplets == "easy":
            keep = m > margin
        else:
            keep = m <= margin
            if type_of_triplets == "hard":
                keep = keep and m <= 0
            elif type_of_triplets == "semihard":
                keep = keep and m > 0
        if keep:
            mined.add((a, p, n))
    return mined


def semi_hard(matrix, positive, negative, inverted=False):
    d = _oriented(matrix, inverted)
    mined = set()
    for a, p in _pairs(positive):
        negatives = np.nonzero(negative[a])[0].tolist()
        if not negatives:
            continue
        beyond = [n for n in negatives if d[a, n] > d[a, p]]
        n = _first_best(d[a], beyond, largest=False) if beyond else _first_best(d[a], negatives, largest=True)
        mined.add((a, p, n))
    return mined


def angular(x, ref_x, positive, negative, angle=20.0, normalize=False):
    """The triplets with an angle above `angle` (degrees), and each triplet's |angle − threshold| (radians)."""
    x = np.asarray(x, np.float64)
    ref_x = x if ref_x is None else np.asarray(ref_x, np.float64)

    def unit(v):
        norm = np.linalg.norm(v)
        return v / norm if normalize and norm > 0 else v

    threshold = math.radians(angle)
    mined, closeness = set(), {}
    for a, p, n in all_triplets(positive, negative):
        ap = np.linalg.norm(unit(x[a]) - unit(ref_x[p]))
        nc = np.linalg.norm(unit(ref_x[n]) - (unit(x[a]) + unit(ref_x[p])) / 2)
        value = math.pi / 2 if nc == 0 and ap > 0 else (math.atan(ap / (2 * nc)) if nc > 0 else float("nan"))
        closeness[(a, p, n)] = abs(value - threshold) if value == value else 0.0
        if value > threshold:
            mined.add((a, p, n))
    return mined, closeness


def hdc(matrix, positive, negative, filter_percentage=0.5, inverted=False):
    d = _oriented(matrix, inverted)

    def keep(pairs, largest):
        count = math.ceil(filter_percentage * len(pairs))
        # Stable: ties keep the row-major order of the pairs.
        ordered = sorted(sorted(pairs), key=lambda pair: -d[pair] if largest else d[pair])
        return set(ordered[:count])

    return keep(_pairs(positive), True), keep(_pairs(negative), False)


def triplet_loss(x, triplets, margin, distance="euclidean", normalize=False, average="all"):
    """Mean of `relu(d(a, p) − d(a, n) + margin)` over a set of triplets (over those > 0 for "nonzero")."""
    from reference import distance_matrix

    d = distance_matrix(x, distance, normalize)
    values = [max(d[a, p] - d[a, n] + margin, 0.0) for a, p, n in triplets]
    counted = values if average == "all" else [v for v in values if v > 0]
    return sum(values) / len(counted) if counted else 0.0


def histogram_bins(matrix, mask, num_bins):
    """`UniformHistogramMiner`'s bins, a loop in float64: `{(a, r): bin}` over the pairs of `mask`.

    Also returns each pair's distance to the nearest inner bin edge (in units
    of a bin's width): float32 may put a pair that close to an edge in the
    neighbouring bin.
    """
    pairs = _pairs(mask)
    if not pairs:
        return {}, {}
    values = {pair: float(matrix[pair]) for pair in pairs}
    low, high = min(values.values()), max(values.values())
    bins, closeness = {}, {}
    for pair, value in values.items():
        if high == low or num_bins == 1:
            bins[pair], closeness[pair] = num_bins - 1, math.inf
            continue
        scaled = (value - low) / (high - low) * num_bins
        bins[pair] = min(int(math.floor(scaled)), num_bins - 1)
        nearest = min(max(round(scaled), 1), num_bins - 1)
        closeness[pair] = abs(scaled - nearest) if 0 < value - low and value < high else math.inf
    return bins, closeness


# The miners are not losses: no loss reference to add to the registry's.
REFERENCES = {}
