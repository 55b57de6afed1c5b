"""Brute-force NumPy references of the histogram family: histogram loss, dynamic soft margin.

Loops over pairs and triplets in float64, on `reference._Rectangle` (queries
against reference rows, `remove_diagonal`, `multi_label`, sample weights),
with the gradients chained by hand from d(loss)/d(matrix entry).

Both losses are piecewise: their histograms are linear between nodes, and
the dynamic soft margin's weight steps at its bins' edges. `kink` is the
distance of the nearest value (similarity, triplet margin) to a node or an
edge, times 100: the tests' threshold of 1e-3 then keeps values 1e-5 away
from one, a hundred times float32's error on a cosine similarity or on a
distance between unit vectors (the kinks of the Euclidean distance at 0
are counted as for every loss).
"""

import math

import numpy as np

from reference import _Rectangle

KINK_SCALE = 100.0


def histogram(
    x,
    labels,
    num_bins=None,
    delta=None,
    normalize=True,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """The histogram loss (Ustinova & Lempitsky 2016) as a mean over the negative pairs.

    The positive pairs' similarities make the histogram `h⁺` on the nodes
    `−1 + rΔ`; each kept negative pair (a, n) is a term of query a worth
    `Φ(s_an)`, the cumulative `h⁺` interpolated at its similarity. A pair
    (a, j) is kept when query a has a positive and a negative, or reference
    row j is a positive of some query and a negative of another.
    """
    if delta is None:
        delta = 2 / (100 if num_bins is None else num_bins)
    num_nodes = math.ceil(2 / delta - 1e-9) + 1
    b = _Rectangle(x, labels, "dot", normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = b.d
    n, r = s.shape
    row_active = [bool(b.positives[a]) and bool(b.negatives[a]) for a in range(n)]
    column_active = [
        any(j in b.positives[a] for a in range(n)) and any(j in b.negatives[a] for a in range(n)) for j in range(r)
    ]
    kept_positive = [(a, j) for a in range(n) for j in b.positives[a] if row_active[a] or column_active[j]]
    kept_negative = [[j for j in b.negatives[a] if row_active[a] or column_active[j]] for a in range(n)]

    def node(value):
        """(lower node, share of the upper node, d share / d value)."""
        clipped = min(max(value, -1.0), 1.0)
        scaled = (clipped + 1.0) / delta
        lower = min(int(math.floor(scaled)), num_nodes - 2)
        return lower, scaled - lower, (1.0 / delta if -1.0 < value < 1.0 else 0.0)

    kink = np.inf
    density = np.zeros(num_nodes)
    for a, j in kept_positive:
        lower, share, _ = node(s[a, j])
        density[lower] += 1 - share
        density[lower + 1] += share
    if kept_positive:
        density /= len(kept_positive)
    cumulative = np.cumsum(density)
    used = kept_positive + [(a, j) for a in range(n) for j in kept_negative[a]]
    for a, j in used:
        scaled = (s[a, j] + 1.0) / delta
        kink = min(kink, abs(scaled - round(scaled)) * delta * KINK_SCALE)
    for a in range(n):
        for j in kept_negative[a]:
            lower, share, slope = node(s[a, j])
            b.numerators[a] += (1 - share) * cumulative[lower] + share * cumulative[lower + 1]
            b.denominators[a] += 1
            # Through the pair's own place in the positive histogram ...
            b.gradient_d[a, a, j] += slope * (cumulative[lower + 1] - cumulative[lower])
            # ... and through the histogram: moving a positive pair up takes
            # 1/(|P|Δ) from Φ at its lower node.
            for i, k in kept_positive:
                lower_ik, _, slope_ik = node(s[i, k])
                weight = (1 - share) * (lower == lower_ik) + share * (lower + 1 == lower_ik)
                b.gradient_d[a, i, k] -= slope_ik * weight / len(kept_positive)
    return b.finish(kink)


def dynamic_soft_margin(
    x,
    labels,
    min_val=-2.0,
    num_bins=10,
    momentum=0.01,
    histogram=None,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """The dynamic soft margin loss (Zhang & Rusinkiewicz 2019), one call from the running `histogram`.

    Triplet (a, p, n) has the margin `t = d_ap − d_an` (Euclidean distances
    of the L2-normalised rows); the batch's margins update the histogram
    (node k at `min_val + kΔ`; each margin, clipped to the nodes, splits its
    unit between the two nodes around it); the new histogram is
    `normalise((1 − m)·h + m·contributions)` (m = 1 when `h` is all zero);
    each triplet is a term `CDF[bin(t)]·t` of its anchor. Returns the
    `Reference` and the new histogram.
    """
    b = _Rectangle(x, labels, "euclidean", True, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    d = b.d
    n = b.n
    delta = 2 * abs(min_val) / num_bins
    edges = [min_val + k * delta for k in range(num_bins + 1)]
    triplets = [(a, p, q, d[a, p] - d[a, q]) for a in range(n) for p in b.positives[a] for q in b.negatives[a]]
    contributions = np.zeros(num_bins)
    interval = {}
    for a, p, q, t in triplets:
        clipped = min(max(t, edges[0]), edges[num_bins - 1])
        lower = min(int(math.floor((clipped - min_val) / delta)), num_bins - 2)
        share = (clipped - edges[lower]) / delta
        contributions[lower] += 1 - share
        contributions[lower + 1] += share
        interval[a, p, q] = (lower, edges[0] < t < edges[num_bins - 1])
    previous = np.zeros(num_bins) if histogram is None else np.asarray(histogram, np.float64)
    rate = momentum if previous.sum() != 0 else 1.0
    mixed = (1 - rate) * previous + rate * contributions
    new = mixed / mixed.sum() if triplets else previous
    cdf = np.cumsum(new)
    kink = np.inf
    # bin_sums[a][k]: the sum of anchor a's margins in weight bin k.
    bin_sums = np.zeros((n, num_bins))
    for a, p, q, t in triplets:
        k = min(max(int(math.floor((t - min_val) / delta)), 0), num_bins - 1)
        kink = min([kink] + [abs(t - edge) * KINK_SCALE for edge in edges])
        b.numerators[a] += cdf[k] * t
        b.denominators[a] += 1
        b.gradient_d[a, a, p] += cdf[k]
        b.gradient_d[a, a, q] -= cdf[k]
        bin_sums[a, k] += t
    if triplets:
        # Moving margin t_s up moves mass from its lower node to the next:
        # CDF at that node drops by rate / (Z Δ).
        scale = rate / (mixed.sum() * delta)
        for c, p, q, _ in triplets:
            lower, inside = interval[c, p, q]
            if not inside:
                continue
            for a in range(n):
                b.gradient_d[a, c, p] -= scale * bin_sums[a, lower]
                b.gradient_d[a, c, q] += scale * bin_sums[a, lower]
    return b.finish(kink), new


def dynamic_soft_margin_first_call(x, labels, min_val=-2.0, num_bins=10, momentum=0.01, sample_weight=None, **kw):
    """The `Reference` of a fresh loss's first call (its histogram starts all zero)."""
    return dynamic_soft_margin(x, labels, min_val, num_bins, momentum, None, sample_weight, **kw)[0]


REFERENCES = {"histogram": histogram, "dynamic_soft_margin": dynamic_soft_margin_first_call}
