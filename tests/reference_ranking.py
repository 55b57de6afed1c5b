"""Brute-force NumPy references of the ranking losses (FastAP, Smooth-AP, PNP, ranked list).

Loops over each query's reference rows (and pairs of them), float64, on the
`reference._Rectangle` of queries against reference rows; the gradients are
the derivatives with respect to every distance or similarity, by hand.
"""

import numpy as np

from reference import _Rectangle

UNIT_RANGE = {"squared_euclidean": 4.0, "euclidean": 2.0, "cosine": 2.0}
# A loss whose value or gradient jumps where a distance crosses a point
# (a bin's centre, a selection boundary) is compared only when every
# distance is at least 1e-5 from such a point (float32's distances err by
# ~1e-6): `kink` = 100 × the smallest gap, against the tests' 1e-3.
KINK_SCALE = 100.0


def _sigmoid(v):
    return 0.5 * (1 + np.tanh(v / 2))


def fast_ap(
    x,
    labels,
    num_bins=10,
    distance="squared_euclidean",
    normalize=True,
    max_distance=None,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """Query a: `1 − 1/|P| Σ_k h⁺_k H⁺_k / H_k` over its positives' and candidates' soft histograms."""
    b = _Rectangle(x, labels, distance, normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    d = b.d
    top = UNIT_RANGE[distance] if max_distance is None else max_distance
    delta = top / num_bins
    centres = [k * delta for k in range(num_bins + 1)]
    kink = np.inf
    for a in range(b.n):
        positives, negatives = b.positives[a], b.negatives[a]
        if not positives:
            continue
        h_pos = np.zeros(num_bins + 1)
        h_all = np.zeros(num_bins + 1)
        for j in positives + negatives:
            for k, c in enumerate(centres):
                kink = min(kink, KINK_SCALE * abs(d[a, j] - c))
                weight = max(1 - abs(d[a, j] - c) / delta, 0.0)
                h_all[k] += weight
                if j in positives:
                    h_pos[k] += weight
        cum_pos, cum_all = np.cumsum(h_pos), np.cumsum(h_all)
        ap = 0.0
        d_hpos = np.zeros(num_bins + 1)  # d(Σ_k h⁺_k H⁺_k / H_k) / d h⁺_l
        d_hneg = np.zeros(num_bins + 1)  # ... / d h⁻_l
        for k in range(num_bins + 1):
            if cum_all[k] == 0:
                continue
            ap += h_pos[k] * cum_pos[k] / cum_all[k]
            d_hpos[k] += cum_pos[k] / cum_all[k]
            for m in range(k + 1):
                d_hpos[m] += h_pos[k] / cum_all[k] - h_pos[k] * cum_pos[k] / cum_all[k] ** 2
                d_hneg[m] -= h_pos[k] * cum_pos[k] / cum_all[k] ** 2
        b.numerators[a], b.denominators[a] = 1 - ap / len(positives), 1.0
        for j in positives + negatives:
            slope = d_hpos if j in positives else d_hneg
            for k, c in enumerate(centres):
                if abs(d[a, j] - c) < delta:
                    b.gradient_d[a, a, j] -= slope[k] * -np.sign(d[a, j] - c) / delta / len(positives)
    return b.finish(kink)


def _rank_terms(s, a, p, others, temperature):
    """`Σ_{j in others, j≠p} σ((s_aj − s_ap)/τ)` and its slopes `{j: d/ds_aj}` (p's slope included)."""
    total, slopes = 0.0, {p: 0.0}
    for j in others:
        if j == p:
            continue
        value = _sigmoid((s[a, j] - s[a, p]) / temperature)
        total += value
        slope = value * (1 - value) / temperature
        slopes[j] = slopes.get(j, 0.0) + slope
        slopes[p] -= slope
    return total, slopes


def smooth_ap(
    x,
    labels,
    temperature=0.01,
    normalize=True,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """Query a: `1 − 1/|P| Σ_p rank⁺(p) / rank(p)` with sigmoid ranks."""
    b = _Rectangle(x, labels, "dot", normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = b.d
    for a in range(b.n):
        positives, negatives = b.positives[a], b.negatives[a]
        if not positives:
            continue
        ap = 0.0
        for p in positives:
            above_pos, slopes_pos = _rank_terms(s, a, p, positives, temperature)
            above_all, slopes_all = _rank_terms(s, a, p, positives + negatives, temperature)
            rank_pos, rank = 1 + above_pos, 1 + above_all
            ap += rank_pos / rank
            for j, slope in slopes_pos.items():
                b.gradient_d[a, a, j] -= slope / rank / len(positives)
            for j, slope in slopes_all.items():
                b.gradient_d[a, a, j] += rank_pos * slope / rank**2 / len(positives)
        b.numerators[a], b.denominators[a] = 1 - ap / len(positives), 1.0
    return b.finish(np.inf)


def _pnp_f(n, variant, b, alpha):
    """f(n) and f'(n) of a PNP variant."""
    if variant == "O":
        return n, 1.0
    if variant == "Ds":
        return np.log1p(n), 1 / (1 + n)
    if variant == "Dq":
        return (1 + n) ** -alpha, -alpha * (1 + n) ** (-alpha - 1)
    if variant == "Iu":
        return (1 + n) * np.log1p(n), np.log1p(n) + 1
    return (b * n - np.log1p(b * n)) / b**2, n / (1 + b * n)


def pnp(
    x,
    labels,
    b=2.0,
    alpha=1.0,
    anneal=0.01,
    variant="O",
    normalize=True,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """Query a: `1/|P| Σ_p f(n(p))`, n(p) the sigmoid count of negatives before p ("Dq": 1 − that)."""
    r = _Rectangle(x, labels, "dot", normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = r.d
    sign = -1.0 if variant == "Dq" else 1.0
    for a in range(r.n):
        positives, negatives = r.positives[a], r.negatives[a]
        if not positives:
            continue
        total = 0.0
        for p in positives:
            before, slopes = _rank_terms(s, a, p, negatives, anneal)
            value, derivative = _pnp_f(before, variant, b, alpha)
            total += value
            for j, slope in slopes.items():
                r.gradient_d[a, a, j] += sign * derivative * slope / len(positives)
        mean = total / len(positives)
        r.numerators[a], r.denominators[a] = (1 - mean if variant == "Dq" else mean), 1.0
    return r.finish(np.inf)


def ranked_list(
    x,
    labels,
    margin=0.4,
    Tn=10.0,
    imbalance=0.5,
    alpha=None,
    Tp=0.0,
    distance="euclidean",
    normalize=True,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """Query a: `(1 − λ)·Σ w_p (d − c) / (Σ w_p + ε) + λ·Σ w_n (α − d) / (Σ w_n + ε)` over the violators."""
    b = _Rectangle(x, labels, distance, normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    d = b.d
    alpha = 1 + margin / 2 if alpha is None else alpha
    lower = alpha - margin
    kink = np.inf
    for a in range(b.n):
        positives, negatives = b.positives[a], b.negatives[a]
        epsilon = 1e-5 * (1 + len(positives) + len(negatives))
        b.denominators[a] = 1.0
        for p in positives:
            kink = min(kink, KINK_SCALE * abs(d[a, p] - lower))
        for q in negatives:
            kink = min(kink, KINK_SCALE * abs(d[a, q] - alpha))
        groups = [
            ([p for p in positives if d[a, p] > lower], Tp, +1.0, 1 - imbalance),
            ([q for q in negatives if d[a, q] < alpha], Tn, -1.0, imbalance),
        ]
        for chosen, temperature, sign, share in groups:
            # value v_j = sign (d_j − c_j) ≥ 0, weight w_j = exp(T v_j); c the boundary.
            boundary = lower if sign > 0 else alpha
            values = np.array([sign * (d[a, j] - boundary) for j in chosen])
            weights = np.exp(temperature * values)
            top = weights @ values
            bottom = weights.sum() + epsilon
            b.numerators[a] += share * top / bottom
            for j, v, w in zip(chosen, values, weights):
                # d/dv_j of top/bottom, then dv_j/dd = sign.
                slope = (w + temperature * w * v) / bottom - top * temperature * w / bottom**2
                b.gradient_d[a, a, j] += share * sign * slope
    return b.finish(kink)


REFERENCES = {"fast_ap": fast_ap, "smooth_ap": smooth_ap, "pnp": pnp, "ranked_list": ranked_list}
