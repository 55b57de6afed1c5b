"""Brute-force NumPy references, float64, written as loops over pairs and triplets.

Queries against a reference
---------------------------
Every loss reference mines N queries (`x`, `labels`) against R reference
rows (`ref_x`, `ref_labels`): the distances form an N×R rectangle
`d[a, r]`, from query a to reference row r.

- Without a reference (`ref_x=None`), the reference is the batch itself and
  the diagonal is removed: the square in-batch losses, whose values and
  gradients are those of the losses mined from a batch against itself.
- `remove_diagonal` (None: True without a reference, False with one): when
  True, reference row r == a is never a positive or a negative of query a
  (the convention: the queries sit first in the reference, as in
  reference = [batch; memory]).
- positives(a): the reference rows with query a's label, negatives(a): the
  reference rows with another label; either without row a when the diagonal
  is removed (a row always has its own label anyway, for single labels).
- `multi_label=True`: the labels are `(N, C)` and `(R, C)` multi-hot 0/1
  matrices; r is a positive of a when they share at least one label
  (`y[a] @ ry[r] > 0`), a negative when they share none. An example without
  any label is a negative of every row.
- Each loss's formula for a row is that of the square loss, running over the
  reference columns. Special cases: contrastive (every entry of the
  rectangle is a term of its query; "hard" keeps the closest negative
  entries) and lifted structure (the negatives of a positive reference row
  are taken among the queries), in their docstrings; the margin loss takes a
  β per query.
- A term of query a is weighted by query a's sample weight.
- A query's loss, `per_anchor[a]`, is the sum of its terms divided by their
  count (0 without a term); the loss is `Σ_a w_a·sum_a / Σ_a w_a·count_a`.

Each loss reference returns a `Reference`: `loss`, `per_anchor`,
`weighted_sum` (`Σ_a w_a·sum_a`), and gradients from the derivatives with
respect to every distance chained through the distance by hand:

- `grad`: d(loss)/d(x); without a reference, through both of the batch's
  roles (query and reference row), the gradient of the square loss;
- `ref_grad`: d(loss)/d(ref_x), None without a reference;
- `per_query_grad`, `per_query_ref_grad`: the gradients of `Σ_a per_anchor[a]`
  with respect to x and to ref_x (the latter None without a reference, the
  former then through both roles).

The term counts are constant where the losses are differentiable. `kink` is
how close the inputs are to a point where the loss is not differentiable (a
hinge at 0, a tie in a max/min/selection), so that tests compare gradients
only away from those points.
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
    ref_grad: np.ndarray = None
    per_query_grad: np.ndarray = None
    per_query_ref_grad: np.ndarray = None


def _normalized(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1), 0.0)


def _rows(x, distance, normalize):
    """x as float64, L2-normalised where the distance works on normalised rows."""
    x = np.asarray(x, np.float64)
    return _normalized(x) if normalize or distance == "cosine" else x


def _distance(u, v, distance):
    diff = u - v
    if distance == "euclidean":
        return np.sqrt(diff @ diff)
    if distance == "squared_euclidean":
        return diff @ diff
    if distance == "dot":
        return u @ v
    return max(1.0 - u @ v, 0.0)


def _distance_gradient(u, v, distance):
    """(d/du, d/dv) of the distance from u to v; zeros where it has none (coincident, clamped)."""
    diff = u - v
    if distance == "euclidean":
        norm = np.sqrt(diff @ diff)
        if norm == 0:
            return np.zeros_like(u), np.zeros_like(v)
        return diff / norm, -diff / norm
    if distance == "squared_euclidean":
        return 2 * diff, -2 * diff
    if distance == "dot":
        return v, u
    if 1.0 - u @ v <= 0:
        return np.zeros_like(u), np.zeros_like(v)
    return -v, -u


def distance_matrix(x, distance, normalize=False, ref_x=None):
    """Distances ("dot": similarities) from the rows of x to those of `ref_x`, `(N, R)`.

    Without `ref_x`: the `(N, N)` matrix of x, with a zero diagonal.
    """
    z = _rows(x, distance, normalize)
    square = ref_x is None
    zr = z if square else _rows(ref_x, distance, normalize)
    d = np.zeros((len(z), len(zr)))
    for i in range(len(z)):
        for j in range(len(zr)):
            if square and i == j:
                continue
            d[i, j] = _distance(z[i], zr[j], distance)
    return d


def chain_distance_gradient(x, distance, normalize, dloss_dd, ref_x=None):
    """d(loss)/d(x) from d(loss)/d(d[i, j]) for every pair, by hand ("dot": similarities).

    Without `ref_x`, `dloss_dd` is `(N, N)` over the pairs of x (its diagonal
    ignored) and the gradient is x's; with it, `dloss_dd` is `(N, R)` from
    the rows of x to those of `ref_x` and the result is
    `(d(loss)/d(x), d(loss)/d(ref_x))`.
    """
    x = np.asarray(x, np.float64)
    square = ref_x is None
    ref_x = x if square else np.asarray(ref_x, np.float64)
    normalized = normalize or distance == "cosine"
    z, zr = _rows(x, distance, normalize), _rows(ref_x, distance, normalize)
    grad_z, grad_zr = np.zeros_like(z), np.zeros_like(zr)
    for i in range(len(z)):
        for j in range(len(zr)):
            g = dloss_dd[i, j]
            if (square and i == j) or g == 0:
                continue
            along_u, along_v = _distance_gradient(z[i], zr[j], distance)
            grad_z[i] += g * along_u
            grad_zr[j] += g * along_v
    if square:
        grad_z = grad_z + grad_zr
        return _through_normalization(x, z, grad_z) if normalized else grad_z
    if not normalized:
        return grad_z, grad_zr
    return _through_normalization(x, z, grad_z), _through_normalization(ref_x, zr, grad_zr)


def _through_normalization(x, z, grad_z):
    """d/dx from d/dz, z the L2-normalised rows of x."""
    grad_x = np.zeros_like(x)
    for i in range(len(x)):
        norm = np.linalg.norm(x[i])
        if norm > 0:
            grad_x[i] = (grad_z[i] - (grad_z[i] @ z[i]) * z[i]) / norm
    return grad_x


def near_coincident(x, distance, normalize, gradient_d, ref_x=None):
    """A kink measure for Euclidean distances near 0 that the loss depends on.

    The Euclidean distance is not differentiable at 0, and near it float32's
    Gram expansion errs by ~sqrt(eps) ≈ 3e-4 in d, so the gradient
    direction (x_i − x_j) / d is accurate to 1e-3 only beyond d ≈ 0.3.
    `gradient_d`: `(N, N)` over the pairs of x (diagonal ignored), or
    `(N, R)` from x to `ref_x`.
    """
    if distance != "euclidean":
        return np.inf
    d = distance_matrix(x, distance, normalize, ref_x)
    used = gradient_d != 0
    if ref_x is None:
        used &= ~np.eye(len(d), dtype=bool)
    return float(d[used].min()) / 300 if used.any() else np.inf


class _Rectangle:
    """N queries mined against R reference rows: distances, masks, and the terms' accumulators.

    A loss fills, for every query a, `numerators[a]` (the sum of its terms),
    `denominators[a]` (their count) and `gradient_d[a]`, the `(N, R)`
    derivatives of `numerators[a]` with respect to every distance `d[i, j]`
    (row a only, except for terms that also move other queries' distances).
    """

    def __init__(self, x, labels, distance, normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label):
        self.x = np.asarray(x, np.float64)
        self.square = ref_x is None
        if self.square:
            if ref_labels is not None:
                raise ValueError("ref_labels without ref_x")
            ref_x, ref_labels = self.x, labels
        elif ref_labels is None:
            raise ValueError("ref_x without ref_labels")
        self.ref_x = np.asarray(ref_x, np.float64)
        self.distance, self.normalize = distance, normalize
        if remove_diagonal is None:
            remove_diagonal = self.square
        n, r = len(self.x), len(self.ref_x)
        self.n = n
        self.d = distance_matrix(self.x, distance, normalize, self.ref_x)
        if multi_label:
            y = np.asarray(labels, np.float64).reshape(n, -1)
            ry = np.asarray(ref_labels, np.float64).reshape(r, -1)
            same = [[y[a] @ ry[j] > 0 for j in range(r)] for a in range(n)]
        else:
            y, ry = np.asarray(labels).reshape(-1), np.asarray(ref_labels).reshape(-1)
            same = [[y[a] == ry[j] for j in range(r)] for a in range(n)]
        kept = [[not (remove_diagonal and a == j) for j in range(r)] for a in range(n)]
        self.positives = [[j for j in range(r) if kept[a][j] and same[a][j]] for a in range(n)]
        self.negatives = [[j for j in range(r) if kept[a][j] and not same[a][j]] for a in range(n)]
        self.weights = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64).reshape(-1)
        self.numerators, self.denominators = np.zeros(n), np.zeros(n)
        self.gradient_d = np.zeros((n, n, r))

    def _chain(self, dloss_dd):
        """(d/dx, d/d ref_x); without a reference (d/dx through both roles, None)."""
        grad, ref_grad = chain_distance_gradient(self.x, self.distance, self.normalize, dloss_dd, self.ref_x)
        return (grad + ref_grad, None) if self.square else (grad, ref_grad)

    def finish(self, kink, coincident=None):
        """The `Reference` of the filled accumulators.

        `coincident`: the entries whose Euclidean distance must stay away
        from 0 for the gradient to be defined (default: every entry the loss
        depends on).
        """
        used = np.any(self.gradient_d != 0, axis=0) if coincident is None else coincident
        kink = min(kink, near_coincident(self.x, self.distance, self.normalize, used, self.ref_x))
        weights, numerators, denominators = self.weights, self.numerators, self.denominators
        total = float(np.sum(weights * denominators))
        weighted_sum = float(np.sum(weights * numerators))
        loss = weighted_sum / total if total else 0.0
        has_terms = denominators > 0
        per_anchor = np.where(has_terms, numerators / np.where(has_terms, denominators, 1), 0.0)
        dloss_dd = np.einsum("a,aij->ij", weights / total if total else 0 * weights, self.gradient_d)
        grad, ref_grad = self._chain(dloss_dd)
        inverse_counts = np.where(has_terms, 1 / np.where(has_terms, denominators, 1), 0.0)
        per_query_grad, per_query_ref_grad = self._chain(np.einsum("a,aij->ij", inverse_counts, self.gradient_d))
        return Reference(loss, grad, per_anchor, kink, weighted_sum, ref_grad, per_query_grad, per_query_ref_grad)


def batch_hard(
    x,
    labels,
    margin=1.0,
    soft=False,
    distance="euclidean",
    normalize=False,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    b = _Rectangle(x, labels, distance, normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    d = b.d
    kink = np.inf
    for a in range(b.n):
        positives, negatives = b.positives[a], b.negatives[a]
        if not positives or not negatives:
            continue
        hardest_p = max(positives, key=lambda p: d[a, p])
        hardest_n = min(negatives, key=lambda q: d[a, q])
        for p in positives:
            if p != hardest_p:
                kink = min(kink, d[a, hardest_p] - d[a, p])
        for q in negatives:
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
        b.numerators[a], b.denominators[a] = value, 1.0
        b.gradient_d[a, a, hardest_p] += slope
        b.gradient_d[a, a, hardest_n] -= slope
    return b.finish(kink)


def batch_all(
    x,
    labels,
    margin=1.0,
    distance="euclidean",
    normalize=False,
    average="nonzero",
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    b = _Rectangle(x, labels, distance, normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    d = b.d
    kink = np.inf
    for a in range(b.n):
        for p in b.positives[a]:
            for q in b.negatives[a]:
                value = d[a, p] - d[a, q] + margin
                kink = min(kink, abs(value))
                if average == "all":
                    b.denominators[a] += 1
                if value > 0:
                    b.numerators[a] += value
                    b.gradient_d[a, a, p] += 1
                    b.gradient_d[a, a, q] -= 1
                    if average == "nonzero":
                        b.denominators[a] += 1
    return b.finish(kink)


def semi_hard(
    x,
    labels,
    margin=1.0,
    distance="euclidean",
    normalize=False,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    b = _Rectangle(x, labels, distance, normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    d = b.d
    kink = np.inf
    for a in range(b.n):
        negatives = b.negatives[a]
        if not negatives:
            continue
        for p in b.positives[a]:
            beyond = [q for q in negatives if d[a, q] > d[a, p]]
            chosen = min(beyond, key=lambda q: d[a, q]) if beyond else max(negatives, key=lambda q: d[a, q])
            for q in negatives:
                kink = min(kink, abs(d[a, q] - d[a, p]))
                if q != chosen:
                    kink = min(kink, abs(d[a, q] - d[a, chosen]))
            value = d[a, p] - d[a, chosen] + margin
            kink = min(kink, abs(value))
            b.denominators[a] += 1
            if value > 0:
                b.numerators[a] += value
                b.gradient_d[a, a, p] += 1
                b.gradient_d[a, a, chosen] -= 1
    return b.finish(kink)


def active_triplet_fraction(x, labels, margin=1.0, distance="euclidean", normalize=False):
    d = distance_matrix(x, distance, normalize)
    labels = np.asarray(labels).reshape(-1)
    n = len(d)
    positives = [[p for p in range(n) if p != a and labels[p] == labels[a]] for a in range(n)]
    negatives = [[q for q in range(n) if labels[q] != labels[a]] for a in range(n)]
    active = valid = 0
    for a in range(n):
        for p in positives[a]:
            for q in negatives[a]:
                valid += 1
                active += d[a, p] - d[a, q] + margin > 0
    return active / valid if valid else 0.0


def contrastive(
    x,
    labels,
    margin=1.0,
    distance="euclidean",
    normalize=False,
    negatives="all",
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """Every entry (a, r) of the rectangle is a term of query a: `d²` if positive, `relu(m − d)²` if negative.

    `negatives="hard"` keeps as many negative entries as the rectangle has
    positive entries, those with the smallest d; entries tied at the cut
    share the count left equally (each a fraction of a term, in the loss
    sum and in the count). In the square, every unordered pair appears
    twice, once from either side: the mean over unordered pairs, a pair
    weighing `w_i + w_j`.
    """
    b = _Rectangle(x, labels, distance, normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    d = b.d
    positive_entries = [(a, r) for a in range(b.n) for r in b.positives[a]]
    negative_entries = [(a, r) for a in range(b.n) for r in b.negatives[a]]
    kept = {entry: 1.0 for entry in negative_entries}
    kink = np.inf
    if negatives == "hard":
        ordered = sorted(negative_entries, key=lambda entry: d[entry])
        keep = len(positive_entries)
        if keep == 0:
            kept = {}
        elif keep < len(ordered):
            kink = d[ordered[keep]] - d[ordered[keep - 1]]
            cut = d[ordered[keep - 1]]
            below = [entry for entry in ordered if d[entry] < cut]
            tied = [entry for entry in ordered if d[entry] == cut]
            kept = {entry: 1.0 for entry in below}
            kept.update({entry: (keep - len(below)) / len(tied) for entry in tied})
    for a, r in positive_entries:
        b.numerators[a] += d[a, r] ** 2
        b.denominators[a] += 1
        b.gradient_d[a, a, r] += 2 * d[a, r]
    coincident = np.zeros(d.shape, bool)
    for (a, r), share in kept.items():
        gap = max(margin - d[a, r], 0.0)
        b.numerators[a] += share * gap**2
        b.denominators[a] += share
        b.gradient_d[a, a, r] -= share * 2 * gap
        # d² is smooth at 0 (its gradient 2(x_i − x_j) has no direction to lose); the hinge is not.
        coincident[a, r] = gap > 0
    return b.finish(kink, coincident)


def margin(
    x,
    labels,
    margin=0.2,
    beta=1.2,
    nu=0.0,
    normalize=True,
    negative_counts=None,
    class_beta=None,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """Over the entries of the rectangle; `negative_counts[a, r]` repeats the negative term (a, r).

    `beta`: a float, or a β per query; `class_beta[c]` adds to the β of the
    queries of class c.
    """
    b = _Rectangle(x, labels, "euclidean", normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    d = b.d
    betas = np.broadcast_to(np.asarray(beta, np.float64), (b.n,))
    kink = np.inf
    for a in range(b.n):
        beta_a = betas[a] + (class_beta[np.asarray(labels).reshape(-1)[a]] if class_beta is not None else 0.0)
        terms = [(p, 1, +1) for p in b.positives[a]]
        terms += [(q, 1 if negative_counts is None else negative_counts[a, q], -1) for q in b.negatives[a]]
        for other, count, sign in terms:
            if count == 0:
                continue
            value = margin + sign * (d[a, other] - beta_a)
            kink = min(kink, abs(value))
            b.numerators[a] += count * (max(value, 0.0) + nu * beta_a)
            if value > 0:
                b.denominators[a] += count
                b.gradient_d[a, a, other] += count * sign
    return b.finish(kink)


def lifted_structure(
    x,
    labels,
    margin=1.0,
    distance="euclidean",
    normalize=False,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """Over query a's positive reference rows r: `relu(J_ar)² / 2`, J by its definition.

    `J_ar = log(Σ_{k ∈ neg(a)} exp(m − d[a, k]) + Σ_{q: r ∈ neg(q)} exp(m − d[q, r])) + d[a, r]`:
    the negatives of reference row r are taken among the queries (column r
    of the rectangle). In the square, d and the masks are symmetric: the
    negatives of a and of p on either side.
    """
    b = _Rectangle(x, labels, distance, normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    d = b.d
    for a in range(b.n):
        for r in b.positives[a]:
            b.denominators[a] += 1
            entries = [(a, k) for k in b.negatives[a]] + [(q, r) for q in range(b.n) if r in b.negatives[q]]
            if not entries:
                continue
            exponents = np.array([margin - d[entry] for entry in entries])
            top = exponents.max()
            shares = np.exp(exponents - top)
            value = top + np.log(shares.sum()) + d[a, r]
            if value <= 0:
                continue
            b.numerators[a] += value**2 / 2
            # Query a's term also moves distances of other queries' rows.
            b.gradient_d[a, a, r] += value
            for (i, j), share in zip(entries, shares / shares.sum()):
                b.gradient_d[a, i, j] -= value * share
    return b.finish(np.inf)


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


def npairs(
    x,
    labels,
    normalize=False,
    targets=None,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """Query a: softmax over its candidates, target ∝ `targets[a]` (default: its positives).

    The candidates are a's positives and negatives (in the square, every
    other example); with `targets` (`(N, R)`, or `(N, N)` without a
    reference), every reference row but a removed diagonal, and the labels
    are not read.
    """
    if targets is not None:
        labels, multi_label = np.zeros(len(x)), False
        ref_labels = None if ref_x is None else np.zeros(len(ref_x))
    b = _Rectangle(x, labels, "dot", normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = b.d
    for a in range(b.n):
        candidates = sorted(b.positives[a] + b.negatives[a])
        if targets is None:
            share = np.array([1.0 if j in b.positives[a] else 0.0 for j in candidates])
        else:
            share = np.array([targets[a, j] for j in candidates], np.float64)
        if share.sum() == 0:
            continue
        share = share / share.sum()
        logits = np.array([s[a, j] for j in candidates])
        b.numerators[a] = _lse(logits) - share @ logits
        b.denominators[a] = 1
        for j, slope in zip(candidates, _softmax(logits) - share):
            b.gradient_d[a, a, j] += slope
    return b.finish(np.inf)


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


def multi_similarity(
    x,
    labels,
    alpha=2.0,
    beta=50.0,
    base=0.5,
    epsilon=None,
    normalize=True,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    b = _Rectangle(x, labels, "dot", normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = b.d
    kink = np.inf
    for a in range(b.n):
        positives, negatives = b.positives[a], b.negatives[a]
        kept_p, kept_n = positives, negatives
        if epsilon is not None:
            hardest_p = min((s[a, p] for p in positives), default=np.inf)
            hardest_n = max((s[a, q] for q in negatives), default=-np.inf)
            kept_n = [q for q in negatives if s[a, q] + epsilon > hardest_p]
            kept_p = [p for p in positives if s[a, p] - epsilon < hardest_n]
            kink = min([kink] + [abs(s[a, q] + epsilon - hardest_p) for q in negatives])
            kink = min([kink] + [abs(s[a, p] - epsilon - hardest_n) for p in positives])
        b.denominators[a] = 1
        for kept, scale in ((kept_p, -alpha), (kept_n, beta)):
            if not kept:
                continue
            exponents = np.array([scale * (s[a, j] - base) for j in kept])
            b.numerators[a] += _lse(np.append(exponents, 0.0)) / abs(scale)
            shares = _softmax(np.append(exponents, 0.0))[:-1]
            for j, share in zip(kept, shares):
                b.gradient_d[a, a, j] += share * np.sign(scale)
    return b.finish(kink)


def circle(
    x,
    labels,
    margin=0.4,
    gamma=80.0,
    normalize=True,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    b = _Rectangle(x, labels, "dot", normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = b.d
    for a in range(b.n):
        positives, negatives = b.positives[a], b.negatives[a]
        if not positives or not negatives:
            continue
        slope_p = [-gamma * max(1 + margin - s[a, p], 0.0) for p in positives]
        slope_n = [gamma * max(s[a, q] + margin, 0.0) for q in negatives]
        logits_p = [k * (s[a, p] - (1 - margin)) for k, p in zip(slope_p, positives)]
        logits_n = [k * (s[a, q] - margin) for k, q in zip(slope_n, negatives)]
        total = _lse(logits_p) + _lse(logits_n)
        b.numerators[a], b.denominators[a] = _softplus(total), 1
        outer = _sigmoid(total)
        for js, slopes, logits in ((positives, slope_p, logits_p), (negatives, slope_n, logits_n)):
            for j, k, share in zip(js, slopes, _softmax(logits)):
                b.gradient_d[a, a, j] += outer * share * k
    return b.finish(np.inf)


def binomial_deviance(
    x,
    labels,
    alpha=2.0,
    threshold=0.5,
    cost=25.0,
    normalize=True,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    b = _Rectangle(x, labels, "dot", normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = b.d
    for a in range(b.n):
        positives, negatives = b.positives[a], b.negatives[a]
        if not positives or not negatives:
            continue
        b.denominators[a] = 1
        for js, scale in ((positives, -alpha), (negatives, alpha * cost)):
            for j in js:
                b.numerators[a] += _softplus(scale * (s[a, j] - threshold)) / len(js)
                b.gradient_d[a, a, j] += scale * _sigmoid(scale * (s[a, j] - threshold)) / len(js)
    return b.finish(np.inf)


def soft_nearest_neighbor(
    x,
    labels,
    temperature=1.0,
    distance="squared_euclidean",
    normalize=False,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    b = _Rectangle(x, labels, distance, normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    d = b.d
    for a in range(b.n):
        positives = b.positives[a]
        if not positives:
            continue
        candidates = positives + b.negatives[a]
        logits = np.array([-d[a, j] / temperature for j in candidates])
        own = logits[: len(positives)]
        b.numerators[a], b.denominators[a] = _lse(logits) - _lse(own), 1
        shares = _softmax(logits)
        shares[: len(own)] -= _softmax(own)
        for j, share in zip(candidates, shares):
            b.gradient_d[a, a, j] -= share / temperature
    return b.finish(np.inf)


def nca(
    x,
    labels,
    softmax_scale=1.0,
    distance="squared_euclidean",
    normalize=True,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """The soft nearest neighbour loss at temperature `1 / softmax_scale`."""
    return soft_nearest_neighbor(
        x,
        labels,
        1.0 / softmax_scale,
        distance,
        normalize,
        sample_weight,
        ref_x=ref_x,
        ref_labels=ref_labels,
        remove_diagonal=remove_diagonal,
        multi_label=multi_label,
    )


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
