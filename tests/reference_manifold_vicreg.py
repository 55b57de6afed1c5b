"""Brute-force NumPy references (float64, loops) of the manifold loss and VICReg.

Neither loss mines pairs from labels, so neither fits `reference._Rectangle`:
the manifold loss compares every example with learned proxies through a
random walk over the whole batch, VICReg compares two views of the batch.
Both return a `reference.Reference`: `grad` is d loss / d x, `ref_grad`
d loss / d (the proxies, or the second view), both by central differences
of the float64 brute force; `kink` is how close the inputs are to a point
where the loss is not differentiable.

`REFERENCES` is empty: these losses are not in `tfm.losses.registry.LOSSES`
(the shared tests of losses mined from labels do not apply).
"""

import numpy as np

from reference import Reference


def _unit(v):
    norm = np.sqrt(np.sum(np.square(v)))
    return v / norm if norm > 0 else np.zeros_like(v)


def _central_differences(f, a, h=1e-6):
    grad = np.zeros_like(a)
    for index in np.ndindex(a.shape):
        up, down = a.copy(), a.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (f(up) - f(down)) / (2 * h)
    return grad


# ---------------------------------------------------------------- manifold loss


def random_walk(x, w, alpha):
    """`F`, the random walk's limit over the nodes [x; w], by iterating `F ← α S̄ F + (1 − α) I`.

    (The iteration is the walk itself: it checks the closed form `(1 − α)(I − αS̄)⁻¹`
    tfmetric computes.) Also returns the nodes' cosines.
    """
    nodes = [_unit(v) for v in np.concatenate([x, w], axis=0)]
    m = len(nodes)
    cosine = np.zeros((m, m))
    weights = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            cosine[i, j] = nodes[i] @ nodes[j]
            if i != j:
                weights[i, j] = np.exp(max(cosine[i, j], 0.0) / 0.5)
    degree = [sum(weights[i]) for i in range(m)]
    normalized = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            if degree[i] > 0 and degree[j] > 0:
                normalized[i, j] = weights[i, j] / np.sqrt(degree[i] * degree[j])
    walk = (1 - alpha) * np.eye(m)
    for _ in range(100000):
        step = alpha * normalized @ walk + (1 - alpha) * np.eye(m)
        if np.max(np.abs(step - walk)) < 1e-15:
            break
        walk = step
    return step, cosine


def _hinge(scores, own, margin):
    """`(log(1 + Σ_{k≠own, t≥0} e^t), the t's)` of one example's scores."""
    total, excesses = 0.0, []
    for k, score in enumerate(scores):
        if k == own:
            continue
        t = score - scores[own] + margin
        excesses.append(t)
        if t >= 0:
            total += np.exp(t)
    return np.log1p(total), excesses


def manifold_losses(x, ids, w, lambda_c=1.0, alpha=0.8, margin=5e-4):
    """`(per-example losses, hinge kink, kink)`: the closest `t` to 0 (where the loss jumps), and that or
    the closest cosine to 0 (the clamp: a kink of the gradient only)."""
    n = len(x)
    walk, cosine = random_walk(x, w, alpha)
    losses, kink = [], np.inf
    for i in range(n):
        intrinsic, t_int = _hinge([walk[i, n + k] for k in range(len(w))], ids[i], margin)
        contexts = [_unit(walk[i]) @ _unit(walk[n + k]) for k in range(len(w))]
        context, t_ctx = _hinge(contexts, ids[i], margin)
        if lambda_c == np.inf:
            losses.append(context)
            t_int = []
        else:
            losses.append(intrinsic + lambda_c * context)
            t_ctx = t_ctx if lambda_c > 0 else []
        kink = min([kink] + [abs(t) for t in t_int + t_ctx])
    off_diagonal = ~np.eye(len(cosine), dtype=bool)
    clamp = float(np.min(np.abs(cosine[off_diagonal]))) if off_diagonal.any() else np.inf
    return np.array(losses), kink, min(kink, clamp)


def manifold(x, ids, w, lambda_c=1.0, alpha=0.8, margin=5e-4, sample_weight=None):
    """The manifold loss: the weighted mean of the examples' losses, with gradients for x and the proxies w."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    ids = np.asarray(ids).reshape(-1)
    weights = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, np.float64).reshape(-1)
    options = {"lambda_c": lambda_c, "alpha": alpha, "margin": margin}

    def loss_of(xx, ww):
        losses, _, _ = manifold_losses(xx, ids, ww, **options)
        return float(np.sum(weights * losses) / np.sum(weights)) if np.sum(weights) else 0.0

    per_anchor, _, kink = manifold_losses(x, ids, w, **options)
    return Reference(
        loss=loss_of(x, w),
        grad=_central_differences(lambda xx: loss_of(xx, w), x),
        per_anchor=per_anchor,
        kink=kink,
        weighted_sum=float(np.sum(weights * per_anchor)),
        ref_grad=_central_differences(lambda ww: loss_of(x, ww), w),
    )


# ---------------------------------------------------------------- VICReg


def _spread(z, eps):
    """`(mean_d max(0, 1 − √(var_d + eps)), Σ_{d≠e} cov_de² / D, min_d |1 − std_d|)` of one view."""
    n, dim = z.shape
    dof = max(n - 1, 1)
    mean = [sum(z[i, d] for i in range(n)) / n for d in range(dim)]
    cov = np.zeros((dim, dim))
    for d in range(dim):
        for e in range(dim):
            cov[d, e] = sum((z[i, d] - mean[d]) * (z[i, e] - mean[e]) for i in range(n)) / dof
    stds = [np.sqrt(cov[d, d] + eps) for d in range(dim)]
    hinge = sum(max(0.0, 1.0 - s) for s in stds) / dim
    off = sum(cov[d, e] ** 2 for d in range(dim) for e in range(dim) if d != e) / dim
    return hinge, off, min(abs(1.0 - s) for s in stds)


def vicreg_losses(x, ref_x, invariance_lambda=25.0, variance_mu=25.0, covariance_v=1.0, eps=1e-4):
    """`(per-example losses, kink)`: λ·mean_d (x_i − x'_i)² plus the batch's variance and covariance terms."""
    hinge, off, kink = _spread(x, eps)
    ref_hinge, ref_off, ref_kink = _spread(ref_x, eps)
    shared = variance_mu * (hinge + ref_hinge) / 2 + covariance_v * (off + ref_off)
    losses = [invariance_lambda * np.mean([(a - b) ** 2 for a, b in zip(x[i], ref_x[i])]) + shared
              for i in range(len(x))]
    return np.array(losses), min(kink, ref_kink)


def vicreg(x, ref_x, invariance_lambda=25.0, variance_mu=25.0, covariance_v=1.0, eps=1e-4, sample_weight=None):
    """VICReg: the weighted mean of the per-example losses; `grad`, `ref_grad` for the two views."""
    x, ref_x = np.asarray(x, np.float64), np.asarray(ref_x, np.float64)
    weights = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, np.float64).reshape(-1)
    options = {"invariance_lambda": invariance_lambda, "variance_mu": variance_mu, "covariance_v": covariance_v,
               "eps": eps}

    def loss_of(a, b):
        losses, _ = vicreg_losses(a, b, **options)
        return float(np.sum(weights * losses) / np.sum(weights))

    per_anchor, kink = vicreg_losses(x, ref_x, **options)
    return Reference(
        loss=loss_of(x, ref_x),
        grad=_central_differences(lambda a: loss_of(a, ref_x), x),
        per_anchor=per_anchor,
        kink=kink,
        weighted_sum=float(np.sum(weights * per_anchor)),
        ref_grad=_central_differences(lambda b: loss_of(x, b), ref_x),
    )


# Not in `LOSSES`: nothing for the shared tests (tests/registry.py).
REFERENCES = {}
