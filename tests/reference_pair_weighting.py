"""Brute-force NumPy references of `tfm.losses.pair_weighting` (float64, loops over pairs).

Conventions of `reference.py` (queries against reference rows,
`remove_diagonal`, `multi_label`, sample weights). The angular loss depends
on the products of two reference rows (`x_p · x_n`), which are not entries
of the query × reference rectangle: its gradients are accumulated with
respect to the normalised rows directly and chained through the
normalisation by hand. The global losses (intra-pair variance,
threshold-consistent margin) give every query the whole value as its one
term.
"""

import numpy as np

import reference
from reference import Reference, _Rectangle, _through_normalization


def _lse_with_one(values):
    """`log(1 + Σ exp(values))` and the softmax weights of `values` (the 1 included in the normaliser)."""
    values = np.append(np.asarray(values, np.float64), 0.0)
    top = values.max()
    total = np.exp(values - top).sum()
    return top + np.log(total), (np.exp(values - top) / total)[:-1]


def angular(x, labels, alpha=40.0, sample_weight=None, *, ref_x=None, ref_labels=None, remove_diagonal=None,
            multi_label=False):
    b = _Rectangle(x, labels, "dot", True, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    z = reference._normalized(b.x)
    zr = z if b.square else reference._normalized(b.ref_x)
    t2 = np.tan(np.radians(alpha)) ** 2
    n, r, dim = len(z), len(zr), z.shape[1]
    # Per query a: d(numerators[a]) / d(z), d / d(zr).
    grad_z, grad_zr = np.zeros((n, n, dim)), np.zeros((n, r, dim))
    for a in range(n):
        negatives = b.negatives[a]
        for p in b.positives[a]:
            b.denominators[a] += 1
            if not negatives:
                continue
            logits = [4 * t2 * (z[a] + zr[p]) @ zr[q] - 2 * (1 + t2) * z[a] @ zr[p] for q in negatives]
            value, shares = _lse_with_one(logits)
            b.numerators[a] += value
            for q, share in zip(negatives, shares):
                grad_z[a, a] += share * (4 * t2 * zr[q] - 2 * (1 + t2) * zr[p])
                grad_zr[a, p] += share * (4 * t2 * zr[q] - 2 * (1 + t2) * z[a])
                grad_zr[a, q] += share * 4 * t2 * (z[a] + zr[p])
    return _finish_vectors(b, z, zr, grad_z, grad_zr, np.inf)


def _finish_vectors(b, z, zr, grad_z, grad_zr, kink):
    """`Reference` from per-query gradients with respect to the normalised rows."""
    weights, numerators, denominators = b.weights, b.numerators, b.denominators
    total = float(np.sum(weights * denominators))
    weighted_sum = float(np.sum(weights * numerators))
    loss = weighted_sum / total if total else 0.0
    has_terms = denominators > 0
    per_anchor = np.where(has_terms, numerators / np.where(has_terms, denominators, 1), 0.0)

    def chain(coefficients):
        gz = np.einsum("a,aid->id", coefficients, grad_z)
        gzr = np.einsum("a,aid->id", coefficients, grad_zr)
        if b.square:
            return _through_normalization(b.x, z, gz + gzr), None
        return _through_normalization(b.x, z, gz), _through_normalization(b.ref_x, zr, gzr)

    grad, ref_grad = chain(weights / total if total else 0 * weights)
    inverse_counts = np.where(has_terms, 1 / np.where(has_terms, denominators, 1), 0.0)
    per_query_grad, per_query_ref_grad = chain(inverse_counts)
    return Reference(loss, grad, per_anchor, kink, weighted_sum, ref_grad, per_query_grad, per_query_ref_grad)


def tuplet_margin(x, labels, margin=5.73, scale=64.0, sample_weight=None, *, ref_x=None, ref_labels=None,
                  remove_diagonal=None, multi_label=False):
    b = _Rectangle(x, labels, "dot", True, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = b.d
    m = np.radians(margin)
    kink = np.inf
    for a in range(b.n):
        negatives = b.negatives[a]
        for p in b.positives[a]:
            b.denominators[a] += 1
            if not negatives:
                continue
            c = s[a, p]
            sine = np.sqrt(max(1 - c * c, 0.0))
            # arccos is not differentiable at ±1, and near them float32's rounding of
            # the cosine reaches the gradient through 1/sin² θ.
            kink = min(kink, sine * sine)
            target = np.cos(np.arccos(np.clip(c, -1, 1)) - m)
            value, shares = _lse_with_one([scale * (s[a, q] - target) for q in negatives])
            b.numerators[a] += value
            slope = np.cos(m) - c * np.sin(m) / sine if sine > 0 else 0.0
            for q, share in zip(negatives, shares):
                b.gradient_d[a, a, q] += share * scale
                b.gradient_d[a, a, p] -= share * scale * slope
    return b.finish(kink)


def intra_pair_variance(x, labels, pos_eps=0.01, neg_eps=0.01, sample_weight=None, *, ref_x=None,
                        ref_labels=None, remove_diagonal=None, multi_label=False):
    b = _Rectangle(x, labels, "dot", True, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = b.d
    pairs = {
        "pos": [(a, p) for a in range(b.n) for p in b.positives[a]],
        "neg": [(a, q) for a in range(b.n) for q in b.negatives[a]],
    }
    value, gradient = 0.0, np.zeros(s.shape)
    for kind, eps in (("pos", pos_eps), ("neg", neg_eps)):
        found = pairs[kind]
        if not found:
            continue
        mean = np.mean([s[i, j] for i, j in found])
        # hinge h = (1 − ε) μ − s for positives, s − (1 + ε) μ for negatives;
        # the loss is the mean of relu(h)², whose derivative is 2 relu(h) dh.
        factor = (1 - eps) if kind == "pos" else -(1 + eps)
        sign = -1.0 if kind == "pos" else 1.0
        for i, j in found:
            h = factor * mean + sign * s[i, j]
            if h <= 0:
                continue
            value += h * h / len(found)
            slope = 2 * h / len(found)
            gradient[i, j] += slope * sign
            for row, column in found:  # through the mean
                gradient[row, column] += slope * factor / len(found)
    return _global(b, value, gradient, np.inf)


def _global(b, value, gradient, kink):
    for a in range(b.n):
        b.numerators[a], b.denominators[a] = value, 1.0
        b.gradient_d[a] = gradient
    return b.finish(kink)


def threshold_consistent_margin(x, labels, lambda_plus=1.0, lambda_minus=1.0, margin_plus=0.9, margin_minus=0.5,
                                sample_weight=None, *, ref_x=None, ref_labels=None, remove_diagonal=None,
                                multi_label=False):
    b = _Rectangle(x, labels, "dot", True, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = b.d
    value, gradient, kink = 0.0, np.zeros(s.shape), np.inf
    low = [(a, p) for a in range(b.n) for p in b.positives[a] if s[a, p] <= margin_plus]
    high = [(a, q) for a in range(b.n) for q in b.negatives[a] if s[a, q] >= margin_minus]
    for a in range(b.n):
        kink = min([kink] + [abs(s[a, p] - margin_plus) for p in b.positives[a]])
        kink = min([kink] + [abs(s[a, q] - margin_minus) for q in b.negatives[a]])
    for found, weight, margin, sign in ((low, lambda_plus, margin_plus, -1.0), (high, lambda_minus, margin_minus, 1.0)):
        for i, j in found:
            value += weight * sign * (s[i, j] - margin) / len(found)
            gradient[i, j] += weight * sign / len(found)
    return _global(b, value, gradient, kink)


REFERENCES = {
    "angular": angular,
    "tuplet_margin": tuplet_margin,
    "intra_pair_variance": intra_pair_variance,
    "threshold_consistent_margin": threshold_consistent_margin,
}
