"""Brute-force NumPy references (float64, loops) of the generalised lifted structure and SNR contrastive losses.

The conventions (queries against reference rows, `remove_diagonal`,
`multi_label`, sample weights, `kink`, the gradients) are those of
`reference.py`'s module docstring.
"""

import numpy as np

from reference import Reference, _lse, _normalized, _Rectangle, _softmax, _through_normalization


def generalized_lifted_structure(
    x,
    labels,
    neg_margin=1.0,
    pos_margin=0.0,
    distance="euclidean",
    normalize=True,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """Every query is one term: `relu(lse_p(d[a, p] − m₊) + lse_n(m₋ − d[a, n]))`.

    An empty side adds 0 (PyTorch Metric Learning's masked log-sum-exp);
    a query with neither has loss 0 and still counts.
    """
    b = _Rectangle(x, labels, distance, normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    d = b.d
    kink = np.inf
    for a in range(b.n):
        b.denominators[a] = 1.0
        sides = [(b.positives[a], +1.0), (b.negatives[a], -1.0)]
        if not (b.positives[a] or b.negatives[a]):
            continue
        inner = 0.0
        for columns, sign in sides:
            if columns:
                exponents = np.array([sign * d[a, j] - (pos_margin if sign > 0 else -neg_margin) for j in columns])
                inner += _lse(exponents)
        kink = min(kink, abs(inner))
        if inner <= 0:
            continue
        b.numerators[a] = inner
        for columns, sign in sides:
            if columns:
                exponents = np.array([sign * d[a, j] - (pos_margin if sign > 0 else -neg_margin) for j in columns])
                for j, share in zip(columns, _softmax(exponents)):
                    b.gradient_d[a, a, j] += sign * share
    return b.finish(kink)


# ---------------------------------------------------------------- signal-to-noise ratio


def _centred(rows):
    return rows - rows.mean(axis=1, keepdims=True)


def snr_matrix(x, normalize=True, ref_x=None):
    """`d[i, j] = var(r_j − x_i) / var(x_i)` by its definition (`np.var`), with tfmetric's floor.

    The floor: a query's variance below 1e-12 times the square of the
    largest centred entry of queries and reference is taken as that.
    Returns `(d, floored)`, `floored[i]` whether query i's variance is floored.
    """
    z = _normalized(np.asarray(x, np.float64)) if normalize else np.asarray(x, np.float64)
    zr = z if ref_x is None else (_normalized(np.asarray(ref_x, np.float64)) if normalize else np.asarray(ref_x))
    largest = max(np.abs(_centred(z)).max(initial=0.0), np.abs(_centred(zr)).max(initial=0.0))
    floor = 1e-12 * largest**2 / z.shape[1]
    d = np.zeros((len(z), len(zr)))
    floored = np.zeros(len(z), bool)
    for i in range(len(z)):
        signal = np.var(z[i])
        if signal < floor or signal == 0:
            signal, floored[i] = floor if floor > 0 else 1e-12, True
        for j in range(len(zr)):
            if ref_x is None and i == j:
                continue
            d[i, j] = np.var(zr[j] - z[i]) / signal
    return d, floored


def _snr_chain(x, normalize, dloss_dd, ref_x=None):
    """(d/dx, d/d ref_x) from d(loss)/d(d[i, j]), by hand; without a reference (d/dx through both roles, None)."""
    x = np.asarray(x, np.float64)
    square = ref_x is None
    ref_x = x if square else np.asarray(ref_x, np.float64)
    z = _normalized(x) if normalize else x
    zr = _normalized(ref_x) if normalize else ref_x
    d, floored = snr_matrix(x, normalize, None if square else ref_x)
    c, cr = _centred(z), _centred(zr)
    largest = max(np.abs(c).max(initial=0.0), np.abs(cr).max(initial=0.0))
    grad_c, grad_cr = np.zeros_like(c), np.zeros_like(cr)
    for i in range(len(z)):
        signal = c[i] @ c[i]
        if floored[i]:
            signal = 1e-12 * largest**2 if largest > 0 else 1e-12
        for j in range(len(zr)):
            g = dloss_dd[i, j]
            if (square and i == j) or g == 0:
                continue
            noise = cr[j] - c[i]
            grad_cr[j] += g * 2 * noise / signal
            grad_c[i] += g * -2 * noise / signal
            if not floored[i]:
                grad_c[i] += g * -2 * d[i, j] * c[i] / signal
    # Centring is a symmetric projection.
    grad_z, grad_zr = _centred(grad_c), _centred(grad_cr)
    if square:
        grad_z = grad_z + grad_zr
        return (_through_normalization(x, z, grad_z) if normalize else grad_z), None
    if not normalize:
        return grad_z, grad_zr
    return _through_normalization(x, z, grad_z), _through_normalization(ref_x, zr, grad_zr)


def signal_to_noise_ratio_contrastive(
    x,
    labels,
    pos_margin=0.0,
    neg_margin=1.0,
    normalize=True,
    zero_mean_weight=0.0,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """`L = Σ_pos relu(d − m₊) / #(> 0) + Σ_neg relu(m₋ − d) / #(> 0)` over the entries of the rectangle.

    Every query's term is `L + λ|Σ_k x_ak|`, one term per query: the loss is
    `L + λ Σ_a w_a |Σ_k x_ak| / Σ_a w_a`.
    """
    b = _Rectangle(
        x, labels, "squared_euclidean", False, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label
    )
    d, _ = snr_matrix(x, normalize, ref_x)
    kink = np.inf
    dvalue_dd = np.zeros_like(d)
    value = 0.0
    for entries, term, sign in (
        ([(a, r) for a in range(b.n) for r in b.positives[a]], lambda v: v - pos_margin, +1.0),
        ([(a, r) for a in range(b.n) for r in b.negatives[a]], lambda v: neg_margin - v, -1.0),
    ):
        active = []
        for entry in entries:
            t = term(d[entry])
            kink = min(kink, abs(t))
            if t > 0:
                active.append((entry, t))
        if active:
            value += sum(t for _, t in active) / len(active)
            for entry, _ in active:
                dvalue_dd[entry] += sign / len(active)
    x64 = np.asarray(x, np.float64)
    sums = x64.sum(axis=1)
    if zero_mean_weight:
        kink = min(kink, np.abs(sums).min())
    per_anchor = value + zero_mean_weight * np.abs(sums)
    weights = b.weights
    total = weights.sum()
    loss = float(weights @ per_anchor / total) if total else 0.0
    grad, ref_grad = _snr_chain(x64, normalize, dvalue_dd, ref_x)
    sign_rows = zero_mean_weight * np.sign(sums)[:, None] * np.ones_like(x64)
    n = b.n
    per_query_grad = n * grad + sign_rows
    per_query_ref_grad = None if ref_grad is None else n * ref_grad
    grad = grad + (weights / total)[:, None] * sign_rows if total else 0 * grad
    return Reference(
        loss,
        grad,
        per_anchor,
        kink,
        float(weights @ per_anchor),
        ref_grad,
        per_query_grad,
        per_query_ref_grad,
    )


REFERENCES = {
    "generalized_lifted_structure": generalized_lifted_structure,
    "signal_to_noise_ratio_contrastive": signal_to_noise_ratio_contrastive,
}
