"""Brute-force NumPy references, float64, written as loops over pairs and triplets.

Each loss reference returns `Reference(loss, grad, per_anchor, kink, weighted_sum)`:
`grad` is d(loss)/d(embeddings), from the loss's derivative with respect to
every distance chained through the distance by hand; `kink` is how close the
inputs are to a point where the loss is not differentiable (a hinge at 0, a
tie in a max/min/selection), so that tests compare gradients only away from
those points.
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class Reference:
    loss: float
    grad: np.ndarray
    per_anchor: np.ndarray
    kink: float
    weighted_sum: float


def _normalized(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1), 0.0)


def distance_matrix(x, distance, normalize=False):
    x = np.asarray(x, np.float64)
    if normalize or distance == "cosine":
        x = _normalized(x)
    n = len(x)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            diff = x[i] - x[j]
            if distance == "euclidean":
                d[i, j] = np.sqrt(diff @ diff)
            elif distance == "squared_euclidean":
                d[i, j] = diff @ diff
            elif distance == "dot":
                d[i, j] = x[i] @ x[j]
            else:
                d[i, j] = max(1.0 - x[i] @ x[j], 0.0)
    return d


def chain_distance_gradient(x, distance, normalize, dloss_dd):
    """d(loss)/d(x) from d(loss)/d(d[i, j]) for every pair, by hand ("dot": similarities)."""
    x = np.asarray(x, np.float64)
    normalized = normalize or distance == "cosine"
    z = _normalized(x) if normalized else x
    grad_z = np.zeros_like(z)
    n = len(z)
    for i in range(n):
        for j in range(n):
            g = dloss_dd[i, j]
            if i == j or g == 0:
                continue
            diff = z[i] - z[j]
            if distance == "euclidean":
                norm = np.sqrt(diff @ diff)
                if norm == 0:
                    continue
                grad_z[i] += g * diff / norm
                grad_z[j] -= g * diff / norm
            elif distance == "squared_euclidean":
                grad_z[i] += g * 2 * diff
                grad_z[j] -= g * 2 * diff
            elif distance == "dot":
                grad_z[i] += g * z[j]
                grad_z[j] += g * z[i]
            else:
                if 1.0 - z[i] @ z[j] <= 0:
                    continue
                grad_z[i] -= g * z[j]
                grad_z[j] -= g * z[i]
    if not normalized:
        return grad_z
    return _through_normalization(x, z, grad_z)


def _through_normalization(x, z, grad_z):
    """d/dx from d/dz, z the L2-normalised rows of x."""
    grad_x = np.zeros_like(x)
    for i in range(len(x)):
        norm = np.linalg.norm(x[i])
        if norm > 0:
            grad_x[i] = (grad_z[i] - (grad_z[i] @ z[i]) * z[i]) / norm
    return grad_x


def _masks(labels):
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    positives = [[p for p in range(n) if p != a and labels[p] == labels[a]] for a in range(n)]
    negatives = [[q for q in range(n) if labels[q] != labels[a]] for a in range(n)]
    return positives, negatives


def _start(x, labels, distance, normalize, sample_weight):
    """Distances, positives, negatives, weights and empty accumulators."""
    d = distance_matrix(x, distance, normalize)
    positives, negatives = _masks(labels)
    n = len(d)
    weights = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64).reshape(-1)
    return d, positives, negatives, weights, np.zeros(n), np.zeros(n), np.zeros((n, n))


def near_coincident(x, distance, normalize, gradient_d):
    """A kink measure for Euclidean distances near 0 that the loss depends on.

    The Euclidean distance is not differentiable at 0, and near it float32's
    Gram expansion errs by ~sqrt(eps) ≈ 3e-4 in d, so the gradient
    direction (x_i − x_j) / d is accurate to 1e-3 only beyond d ≈ 0.3.
    """
    if distance != "euclidean":
        return np.inf
    d = distance_matrix(x, distance, normalize)
    used = (gradient_d != 0) & ~np.eye(len(d), dtype=bool)
    return float(d[used].min()) / 300 if used.any() else np.inf


def _finish(x, distance, normalize, numerators, denominators, gradient_d, weights, kink, weighted=False):
    """Weighted mean over terms, its gradient, and the per-anchor losses.

    `gradient_d[i, j]` is weighted here by row i's weight, unless `weighted`
    says each entry already carries the weight of the anchor whose term it
    comes from (terms that also move other rows' distances).
    """
    kink = min(kink, near_coincident(x, distance, normalize, gradient_d))
    total = float(np.sum(weights * denominators))
    loss = float(np.sum(weights * numerators)) / total if total else 0.0
    row_weights = np.ones_like(weights) if weighted else weights
    dloss_dd = gradient_d * (row_weights[:, None] / total) if total else np.zeros_like(gradient_d)
    per_anchor = np.where(denominators > 0, numerators / np.where(denominators > 0, denominators, 1), 0.0)
    gradient = chain_distance_gradient(x, distance, normalize, dloss_dd)
    return Reference(loss, gradient, per_anchor, kink, float(np.sum(weights * numerators)))


def batch_hard(x, labels, margin=1.0, soft=False, distance="euclidean", normalize=False, sample_weight=None):
    d, positives, negatives, weights, numerators, denominators, gradient_d = _start(
        x, labels, distance, normalize, sample_weight
    )
    kink = np.inf
    for a in range(len(d)):
        if not positives[a] or not negatives[a]:
            continue
        hardest_p = max(positives[a], key=lambda p: d[a, p])
        hardest_n = min(negatives[a], key=lambda q: d[a, q])
        for p in positives[a]:
            if p != hardest_p:
                kink = min(kink, d[a, hardest_p] - d[a, p])
        for q in negatives[a]:
            if q != hardest_n:
                kink = min(kink, d[a, q] - d[a, hardest_n])
        gap = d[a, hardest_p] - d[a, hardest_n]
        if soft:
            value = np.logaddexp(0.0, gap)
            slope = 1.0 / (1.0 + np.exp(-gap))
        else:
            value = max(gap + margin, 0.0)
            slope = float(gap + margin > 0)
            kink = min(kink, abs(gap + margin))
        numerators[a], denominators[a] = value, 1.0
        gradient_d[a, hardest_p] += slope
        gradient_d[a, hardest_n] -= slope
    return _finish(x, distance, normalize, numerators, denominators, gradient_d, weights, kink)


def batch_all(x, labels, margin=1.0, distance="euclidean", normalize=False, average="nonzero", sample_weight=None):
    d, positives, negatives, weights, numerators, denominators, gradient_d = _start(
        x, labels, distance, normalize, sample_weight
    )
    kink = np.inf
    for a in range(len(d)):
        for p in positives[a]:
            for q in negatives[a]:
                value = d[a, p] - d[a, q] + margin
                kink = min(kink, abs(value))
                if average == "all":
                    denominators[a] += 1
                if value > 0:
                    numerators[a] += value
                    gradient_d[a, p] += 1
                    gradient_d[a, q] -= 1
                    if average == "nonzero":
                        denominators[a] += 1
    return _finish(x, distance, normalize, numerators, denominators, gradient_d, weights, kink)


def semi_hard(x, labels, margin=1.0, distance="euclidean", normalize=False, sample_weight=None):
    d, positives, negatives, weights, numerators, denominators, gradient_d = _start(
        x, labels, distance, normalize, sample_weight
    )
    kink = np.inf
    for a in range(len(d)):
        if not negatives[a]:
            continue
        for p in positives[a]:
            beyond = [q for q in negatives[a] if d[a, q] > d[a, p]]
            chosen = min(beyond, key=lambda q: d[a, q]) if beyond else max(negatives[a], key=lambda q: d[a, q])
            for q in negatives[a]:
                kink = min(kink, abs(d[a, q] - d[a, p]))
                if q != chosen:
                    kink = min(kink, abs(d[a, q] - d[a, chosen]))
            value = d[a, p] - d[a, chosen] + margin
            kink = min(kink, abs(value))
            denominators[a] += 1
            if value > 0:
                numerators[a] += value
                gradient_d[a, p] += 1
                gradient_d[a, chosen] -= 1
    return _finish(x, distance, normalize, numerators, denominators, gradient_d, weights, kink)


def active_triplet_fraction(x, labels, margin=1.0, distance="euclidean", normalize=False):
    d = distance_matrix(x, distance, normalize)
    positives, negatives = _masks(labels)
    active = valid = 0
    for a in range(len(d)):
        for p in positives[a]:
            for q in negatives[a]:
                valid += 1
                active += d[a, p] - d[a, q] + margin > 0
    return active / valid if valid else 0.0


def contrastive(x, labels, margin=1.0, distance="euclidean", normalize=False, negatives="all", sample_weight=None):
    """Over unordered pairs i < j; a pair weighs `w_i + w_j`."""
    d = distance_matrix(x, distance, normalize)
    labels = np.asarray(labels).reshape(-1)
    n = len(d)
    weights = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64).reshape(-1)
    positive_pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]
    negative_pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if labels[i] != labels[j]]
    kink = np.inf
    if negatives == "hard":
        negative_pairs.sort(key=lambda pair: d[pair])
        keep = len(positive_pairs)
        if 0 < keep < len(negative_pairs):
            kink = d[negative_pairs[keep]] - d[negative_pairs[keep - 1]]
        negative_pairs = negative_pairs[:keep]
    numerators, denominators, gradient_d = np.zeros(n), np.zeros(n), np.zeros((n, n))
    for pairs, is_positive in ((positive_pairs, True), (negative_pairs, False)):
        for i, j in pairs:
            if is_positive:
                value, slope = d[i, j] ** 2, 2 * d[i, j]
            else:
                gap = max(margin - d[i, j], 0.0)
                value, slope = gap**2, -2 * gap
            for anchor in (i, j):
                numerators[anchor] += value
                denominators[anchor] += 1
            gradient_d[i, j] += (weights[i] + weights[j]) * slope
    negative_gradient = np.zeros_like(gradient_d)
    for i, j in negative_pairs:
        negative_gradient[i, j] = gradient_d[i, j]
    # d² is smooth at 0 (its gradient 2(x_i − x_j) has no direction to lose).
    kink = min(kink, near_coincident(x, distance, normalize, negative_gradient))
    total = float(np.sum(weights * denominators))  # = Σ over pairs of w_i + w_j
    weighted_sum = float(np.sum(weights * numerators))
    loss = weighted_sum / total if total else 0.0
    gradient = chain_distance_gradient(x, distance, normalize, gradient_d / total if total else gradient_d * 0)
    per_anchor = np.where(denominators > 0, numerators / np.where(denominators > 0, denominators, 1), 0.0)
    return Reference(loss, gradient, per_anchor, kink, weighted_sum)


def margin(
    x, labels, margin=0.2, beta=1.2, nu=0.0, normalize=True, negative_counts=None, class_beta=None, sample_weight=None
):
    """Over ordered pairs; `negative_counts[a, n]` repeats the negative term (a, n)."""
    d, positives, negatives, weights, numerators, denominators, gradient_d = _start(
        x, labels, "euclidean", normalize, sample_weight
    )
    labels = np.asarray(labels).reshape(-1)
    kink = np.inf
    for a in range(len(d)):
        beta_a = beta + (class_beta[labels[a]] if class_beta is not None else 0.0)
        terms = [(p, 1, +1) for p in positives[a]]
        terms += [(q, 1 if negative_counts is None else negative_counts[a, q], -1) for q in negatives[a]]
        for other, count, sign in terms:
            if count == 0:
                continue
            value = margin + sign * (d[a, other] - beta_a)
            kink = min(kink, abs(value))
            numerators[a] += count * (max(value, 0.0) + nu * beta_a)
            if value > 0:
                denominators[a] += count
                gradient_d[a, other] += count * sign
    return _finish(x, "euclidean", normalize, numerators, denominators, gradient_d, weights, kink)


def lifted_structure(x, labels, margin=1.0, distance="euclidean", normalize=False, sample_weight=None):
    """Over ordered positive pairs (a, p): `relu(J_ap)² / 2`, J by its definition."""
    d, positives, negatives, weights, numerators, denominators, gradient_d = _start(
        x, labels, distance, normalize, sample_weight
    )
    for a in range(len(d)):
        for p in positives[a]:
            denominators[a] += 1
            # Σ over the negatives of a and of p, each exp(m − d).
            entries = [(a, q) for q in negatives[a]] + [(p, q) for q in negatives[p]]
            if not entries:
                continue
            exponents = np.array([margin - d[i, q] for i, q in entries])
            top = exponents.max()
            shares = np.exp(exponents - top)
            value = top + np.log(shares.sum()) + d[a, p]
            if value <= 0:
                continue
            numerators[a] += value**2 / 2
            # The term of anchor a also moves distances of row p: weight
            # the gradient by a's weight here, not by the row's.
            gradient_d[a, p] += weights[a] * value
            for (i, q), share in zip(entries, shares / shares.sum()):
                gradient_d[i, q] -= weights[a] * value * share
    return _finish(x, distance, normalize, numerators, denominators, gradient_d, weights, np.inf, weighted=True)


# ---------------------------------------------------------------- softmax and similarity losses


def _lse(values):
    values = np.asarray(values, np.float64)
    top = values.max()
    return top + np.log(np.exp(values - top).sum())


def _softmax(values):
    values = np.asarray(values, np.float64)
    shares = np.exp(values - values.max())
    return shares / shares.sum()


def _softplus(v):
    return np.logaddexp(0.0, v)


def _sigmoid(v):
    return 0.5 * (1 + np.tanh(v / 2))


def npairs(x, labels, normalize=False, targets=None, sample_weight=None):
    """Anchor a: softmax over every other example; target ∝ `targets[a]` (default: its positives)."""
    n = len(x)
    s, positives, negatives, weights, numerators, denominators, gradient_s = _start(
        x, np.zeros(n) if targets is not None else labels, "dot", normalize, sample_weight
    )
    for a in range(n):
        others = [j for j in range(n) if j != a]
        share = np.array([0.0 if targets is None and j not in positives[a] else 1.0 for j in others])
        if targets is not None:
            share = np.array([targets[a, j] for j in others], np.float64)
        if share.sum() == 0:
            continue
        share = share / share.sum()
        logits = np.array([s[a, j] for j in others])
        numerators[a] = _lse(logits) - share @ logits
        denominators[a] = 1
        for j, slope in zip(others, _softmax(logits) - share):
            gradient_s[a, j] += slope
    return _finish(x, "dot", normalize, numerators, denominators, gradient_s, weights, np.inf)


def npairs_multilabel(x, multi_hot, normalize=False, sample_weight=None):
    multi_hot = np.asarray(multi_hot, np.float64)
    overlaps = np.array([[multi_hot[i] @ multi_hot[j] for j in range(len(x))] for i in range(len(x))])
    return npairs(x, None, normalize, overlaps, sample_weight)


def tfa_npairs(labels, similarity):
    """TF Addons' npairs_loss by its definition: rows of anchors, columns of positives."""
    labels = np.asarray(labels).reshape(-1)
    losses = []
    for i in range(len(labels)):
        share = (labels == labels[i]).astype(np.float64)
        losses.append(_lse(similarity[i]) - share @ similarity[i] / share.sum())
    return float(np.mean(losses))


def multi_similarity(x, labels, alpha=2.0, beta=50.0, base=0.5, epsilon=None, normalize=True, sample_weight=None):
    s, positives, negatives, weights, numerators, denominators, gradient_s = _start(
        x, labels, "dot", normalize, sample_weight
    )
    kink = np.inf
    for a in range(len(s)):
        kept_p, kept_n = positives[a], negatives[a]
        if epsilon is not None:
            hardest_p = min((s[a, p] for p in kept_p), default=np.inf)
            hardest_n = max((s[a, q] for q in kept_n), default=-np.inf)
            kept_n = [q for q in negatives[a] if s[a, q] + epsilon > hardest_p]
            kept_p = [p for p in positives[a] if s[a, p] - epsilon < hardest_n]
            kink = min([kink] + [abs(s[a, q] + epsilon - hardest_p) for q in negatives[a]])
            kink = min([kink] + [abs(s[a, p] - epsilon - hardest_n) for p in positives[a]])
        denominators[a] = 1
        for kept, scale in ((kept_p, -alpha), (kept_n, beta)):
            if not kept:
                continue
            exponents = np.array([scale * (s[a, j] - base) for j in kept])
            numerators[a] += _lse(np.append(exponents, 0.0)) / abs(scale)
            shares = _softmax(np.append(exponents, 0.0))[:-1]
            for j, share in zip(kept, shares):
                gradient_s[a, j] += share * np.sign(scale)
    return _finish(x, "dot", normalize, numerators, denominators, gradient_s, weights, kink)


def circle(x, labels, margin=0.4, gamma=80.0, normalize=True, sample_weight=None):
    s, positives, negatives, weights, numerators, denominators, gradient_s = _start(
        x, labels, "dot", normalize, sample_weight
    )
    for a in range(len(s)):
        if not positives[a] or not negatives[a]:
            continue
        slope_p = [-gamma * max(1 + margin - s[a, p], 0.0) for p in positives[a]]
        slope_n = [gamma * max(s[a, q] + margin, 0.0) for q in negatives[a]]
        logits_p = [k * (s[a, p] - (1 - margin)) for k, p in zip(slope_p, positives[a])]
        logits_n = [k * (s[a, q] - margin) for k, q in zip(slope_n, negatives[a])]
        total = _lse(logits_p) + _lse(logits_n)
        numerators[a], denominators[a] = _softplus(total), 1
        outer = _sigmoid(total)
        for js, slopes, logits in ((positives[a], slope_p, logits_p), (negatives[a], slope_n, logits_n)):
            for j, k, share in zip(js, slopes, _softmax(logits)):
                gradient_s[a, j] += outer * share * k
    return _finish(x, "dot", normalize, numerators, denominators, gradient_s, weights, np.inf)


def binomial_deviance(x, labels, alpha=2.0, threshold=0.5, cost=25.0, normalize=True, sample_weight=None):
    s, positives, negatives, weights, numerators, denominators, gradient_s = _start(
        x, labels, "dot", normalize, sample_weight
    )
    for a in range(len(s)):
        if not positives[a] or not negatives[a]:
            continue
        denominators[a] = 1
        for js, scale in ((positives[a], -alpha), (negatives[a], alpha * cost)):
            for j in js:
                numerators[a] += _softplus(scale * (s[a, j] - threshold)) / len(js)
                gradient_s[a, j] += scale * _sigmoid(scale * (s[a, j] - threshold)) / len(js)
    return _finish(x, "dot", normalize, numerators, denominators, gradient_s, weights, np.inf)


def soft_nearest_neighbor(
    x, labels, temperature=1.0, distance="squared_euclidean", normalize=False, sample_weight=None
):
    d, positives, negatives, weights, numerators, denominators, gradient_d = _start(
        x, labels, distance, normalize, sample_weight
    )
    for a in range(len(d)):
        if not positives[a]:
            continue
        candidates = positives[a] + negatives[a]
        logits = np.array([-d[a, j] / temperature for j in candidates])
        own = logits[: len(positives[a])]
        numerators[a], denominators[a] = _lse(logits) - _lse(own), 1
        shares = _softmax(logits)
        shares[: len(own)] -= _softmax(own)
        for j, share in zip(candidates, shares):
            gradient_d[a, j] -= share / temperature
    return _finish(x, distance, normalize, numerators, denominators, gradient_d, weights, np.inf)


def nca(x, labels, softmax_scale=1.0, distance="squared_euclidean", normalize=True, sample_weight=None):
    return soft_nearest_neighbor(x, labels, 1.0 / softmax_scale, distance, normalize, sample_weight)


def center(x, labels, centers, sample_weight=None):
    """½‖x_i − c_{y_i}‖², mean over the batch; gradients for x and for the centres."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels).reshape(-1)
    weights = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    per_example = np.array([0.5 * np.sum((x[i] - centers[labels[i]]) ** 2) for i in range(len(x))])
    total = weights.sum()
    grad = np.array([weights[i] * (x[i] - centers[labels[i]]) for i in range(len(x))]) / total
    grad_centers = np.zeros_like(centers, dtype=np.float64)
    for i in range(len(x)):
        grad_centers[labels[i]] -= grad[i]
    return Reference(
        float(weights @ per_example / total), grad, per_example, np.inf, float(weights @ per_example)
    ), grad_centers
