"""Brute-force NumPy references of the softmax family (`tfm.losses.info_nce`): SupCon, NT-Xent, instance.

Loops over queries and their positive pairs, float64, on the similarity
rectangle of `reference._Rectangle` ("dot": dot products of the rows,
L2-normalised with `normalize`), so that reference sets, a removed
diagonal and multi-hot labels follow the conventions of `reference.py`.
Each term's derivative with respect to every similarity is written out by
hand and chained to the embeddings by `_Rectangle.finish`.
"""

import numpy as np

from reference import _lse, _Rectangle, _softmax


def supcon(
    x,
    labels,
    temperature=0.1,
    normalize=True,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """Query a: `−mean_{p∈P(a)} log softmax_{r∈P(a)∪Q(a)}(s_ar/τ)_p`, one term; none without a positive."""
    b = _Rectangle(x, labels, "dot", normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = b.d
    for a in range(b.n):
        positives = b.positives[a]
        if not positives:
            continue
        candidates = positives + b.negatives[a]
        logits = np.array([s[a, j] / temperature for j in candidates])
        b.numerators[a] = np.mean([_lse(logits) - logits[i] for i in range(len(positives))])
        b.denominators[a] = 1
        shares = _softmax(logits)
        for i, j in enumerate(candidates):
            target = 1.0 / len(positives) if i < len(positives) else 0.0
            b.gradient_d[a, a, j] += (shares[i] - target) / temperature
    return b.finish(np.inf)


def ntxent(
    x,
    labels,
    temperature=0.07,
    normalize=True,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """Pair (a, p), a term of query a: `−log softmax([s_ap, s_an for n∈Q(a)] / τ)_0` (0 without a negative)."""
    b = _Rectangle(x, labels, "dot", normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = b.d
    for a in range(b.n):
        negatives = b.negatives[a]
        for p in b.positives[a]:
            b.denominators[a] += 1
            if not negatives:
                continue
            columns = [p] + negatives
            logits = np.array([s[a, j] / temperature for j in columns])
            b.numerators[a] += _lse(logits) - logits[0]
            shares = _softmax(logits)
            shares[0] -= 1.0
            for j, share in zip(columns, shares):
                b.gradient_d[a, a, j] += share / temperature
    return b.finish(np.inf)


def instance(
    x,
    labels,
    gamma=64.0,
    normalize=True,
    sample_weight=None,
    *,
    ref_x=None,
    ref_labels=None,
    remove_diagonal=None,
    multi_label=False,
):
    """Query a: `−log Σ_{p∈P(a)} softmax_{r∈P(a)∪Q(a)}(γ s_ar)_p`, one term; none without a positive."""
    b = _Rectangle(x, labels, "dot", normalize, sample_weight, ref_x, ref_labels, remove_diagonal, multi_label)
    s = b.d
    for a in range(b.n):
        positives = b.positives[a]
        if not positives:
            continue
        candidates = positives + b.negatives[a]
        logits = np.array([gamma * s[a, j] for j in candidates])
        own = logits[: len(positives)]
        b.numerators[a], b.denominators[a] = _lse(logits) - _lse(own), 1
        shares = _softmax(logits)
        shares[: len(own)] -= _softmax(own)
        for j, share in zip(candidates, shares):
            b.gradient_d[a, a, j] += gamma * share
    return b.finish(np.inf)


def pml_instance(x, labels, gamma=64.0):
    """PyTorch Metric Learning's `InstanceLoss` by its definition, not tfmetric's.

    Row a of `γ·cos(x, x)` (all N columns, its own included) is the logits
    of a cross-entropy whose target column is the rank of a's label among
    the batch's distinct labels; the mean over the rows.
    """
    x = np.asarray(x, np.float64)
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    ranks = np.searchsorted(np.unique(labels), labels)
    losses = []
    for a in range(len(z)):
        logits = np.array([gamma * (z[a] @ z[j]) for j in range(len(z))])
        losses.append(_lse(logits) - logits[ranks[a]])
    return float(np.mean(losses))


REFERENCES = {"supcon": supcon, "ntxent": ntxent, "instance": instance}
