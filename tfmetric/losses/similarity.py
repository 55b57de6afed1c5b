"""Pair losses on cosine similarities: multi-similarity, circle, binomial deviance.

Notation: `s` is the `(N, R)` similarity matrix of the queries and the
reference, the batch itself by default (`tfm.distances.pairwise_similarity`:
cosine by default), `P(a)` the positives of query `a`, `Q(a)` its negatives.
"""

import keras
from keras import ops

from tfmetric.losses.base import (
    SimilarityLoss,
    masked_row_mean,
    row_logsumexp,
    similarity_loss,
    sparse_row_mean,
)


def multi_similarity_pairs(similarity, positive, negative, epsilon):
    """The pairs kept by the multi-similarity miner (Wang et al. 2019, §4.1).

    A negative is kept when `s(a, n) + ε > min_{p∈P(a)} s(a, p)`, a positive
    when `s(a, p) − ε < max_{n∈Q(a)} s(a, n)`: each set is compared with the
    hardest member of the other, so an anchor lacking either keeps nothing.
    """
    similarity = ops.stop_gradient(similarity)
    inf = ops.full_like(similarity, float("inf"))
    hardest_positive = ops.min(ops.where(positive, similarity, inf), axis=1)
    hardest_negative = ops.max(ops.where(negative, similarity, -inf), axis=1)
    kept_negative = ops.logical_and(negative, similarity + epsilon > hardest_positive[:, None])
    kept_positive = ops.logical_and(positive, similarity - epsilon < hardest_negative[:, None])
    return kept_positive, kept_negative


def multi_similarity_terms(similarity, positive, negative, alpha=2.0, beta=50.0, base=0.5, epsilon=None):
    """Per-anchor multi-similarity losses; every anchor counts once.

    `ℓ_a = 1/α log(1 + Σ_{p∈P(a)} e^{−α(s_ap − λ)}) + 1/β log(1 + Σ_{n∈Q(a)} e^{β(s_an − λ)})`,
    `λ = base`, over the pairs `multi_similarity_pairs` keeps when `epsilon`
    is given.

    Returns:
        `(losses, ones)`, both `(N,)`.
    """
    _check_scales(alpha, beta)
    if epsilon is not None:
        positive, negative = multi_similarity_pairs(similarity, positive, negative, epsilon)
    pull = row_logsumexp(-alpha * (similarity - base), positive, add_one=True) / alpha
    push = row_logsumexp(beta * (similarity - base), negative, add_one=True) / beta
    losses = pull + push
    return losses, ops.ones_like(losses)


def circle_terms(similarity, positive, negative, margin=0.4, gamma=80.0):
    """Per-anchor circle losses and whether the anchor has a positive and a negative.

    `ℓ_a = softplus(log Σ_{p∈P(a)} e^{−γ α_p (s_ap − Δ_p)} + log Σ_{n∈Q(a)} e^{γ α_n (s_an − Δ_n)})`
    with `α_p = relu(1 + m − s_ap)`, `α_n = relu(s_an + m)` (constants for
    the gradient), `Δ_p = 1 − m`, `Δ_n = m`.
    """
    fixed = ops.stop_gradient(similarity)
    pull = -gamma * ops.relu(1.0 + margin - fixed) * (similarity - (1.0 - margin))
    push = gamma * ops.relu(fixed + margin) * (similarity - margin)
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    losses = ops.softplus(row_logsumexp(pull, positive) + row_logsumexp(push, negative))
    return ops.where(valid, losses, ops.zeros_like(losses)), ops.cast(valid, similarity.dtype)


def binomial_deviance_terms(similarity, positive, negative, alpha=2.0, threshold=0.5, cost=25.0):
    """Per-anchor binomial deviances and whether the anchor has a positive and a negative.

    `ℓ_a = mean_{p∈P(a)} softplus(−α(s_ap − λ)) + mean_{n∈Q(a)} softplus(αC(s_an − λ))`,
    `λ = threshold`, `C = cost`.
    """
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    pull = sparse_row_mean(lambda s: ops.softplus(-alpha * (s - threshold)), similarity, positive)
    push = masked_row_mean(ops.softplus(alpha * cost * (similarity - threshold)), negative)
    losses = pull + push
    return ops.where(valid, losses, ops.zeros_like(losses)), ops.cast(valid, similarity.dtype)


def _check_scales(alpha, beta):
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"alpha and beta must be positive; received {alpha} and {beta}.")


def multi_similarity(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    alpha=2.0,
    beta=50.0,
    base=0.5,
    epsilon=None,
    normalize=True,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query multi-similarity losses (the math of `MultiSimilarity`).

    Args:
        labels: Class ids `(N,)` of the queries (or, with `multi_label`,
            0/1 rows `(N, C)`).
        embeddings: Query embeddings `(N, D)`.
        ref_labels, ref_embeddings: Optional reference `(R,)`, `(R, D)`;
            each query is compared with these R rows only: O(N·R).
        remove_diagonal: Whether reference row a is query a itself (the
            queries come first in the reference); `None`: only without a
            reference.
        alpha, beta, base, epsilon, normalize, multi_label: As `MultiSimilarity`.

    Returns:
        The `(N,)` per-query losses.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.multi_similarity([0, 0, 1, 1], embeddings)]
    [0.2187, 0.3189, 0.3189, 0.2187]
    """
    return similarity_loss(
        multi_similarity_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        alpha=alpha,
        beta=beta,
        base=base,
        epsilon=epsilon,
    )


def circle(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    margin=0.4,
    gamma=80.0,
    normalize=True,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query circle losses (the math of `Circle`), 0 for queries without a positive or a negative.

    The arguments are those of `tfm.losses.multi_similarity` and `Circle`.
    Keras' `keras.losses.circle` takes the same reference (`ref_labels`,
    `ref_embeddings`, `remove_diagonal`).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.circle([0, 0, 1, 1], embeddings)]
    [0.0001, 6.4017, 6.4017, 0.0001]
    """
    return similarity_loss(
        circle_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        margin=margin,
        gamma=gamma,
    )


def binomial_deviance(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    alpha=2.0,
    threshold=0.5,
    cost=25.0,
    normalize=True,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query binomial deviances (the math of `BinomialDeviance`), 0 for queries without a positive or a negative.

    The arguments are those of `tfm.losses.multi_similarity` and
    `BinomialDeviance`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.binomial_deviance([0, 0, 1, 1], embeddings)]
    [0.4375, 2.9408, 2.9408, 0.4375]
    """
    return similarity_loss(
        binomial_deviance_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        alpha=alpha,
        threshold=threshold,
        cost=cost,
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class MultiSimilarity(SimilarityLoss):
    r"""Multi-similarity loss (Wang et al. 2019, "Multi-Similarity Loss with
    General Pair Weighting for Deep Metric Learning").

    Each anchor weighs its pairs by their own similarity and by the others'
    (soft maxima around the threshold `λ = base`):

    $$ \ell_a = \frac{1}{\alpha} \log\Big(1 + \sum_{p \in P(a)} e^{-\alpha (s(a, p) - \lambda)}\Big)
        + \frac{1}{\beta} \log\Big(1 + \sum_{n \in Q(a)} e^{\beta (s(a, n) - \lambda)}\Big) $$

    $$ \text{loss} = \text{the mean of } \ell_a \text{ over all anchors} $$

    With `epsilon`, the paper's pair mining first keeps only the negatives
    more similar than the least similar positive minus ε, and the positives
    less similar than the most similar negative plus ε (PyTorch Metric
    Learning's `MultiSimilarityMiner`). Without it, every pair is used:
    PyTorch Metric Learning's `MultiSimilarityLoss`, same values.

    Args:
        alpha: Scale `α` of the positive pairs.
        beta: Scale `β` of the negative pairs.
        base: The threshold `λ`.
        epsilon: Margin of the pair mining; `None` (default) uses every pair.
        normalize: Cosine similarities (default), or raw dot products.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's loss.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.MultiSimilarity()(labels, embeddings)), 4)
    0.2688
    """

    faster_under_xla = True
    compiles_terms_alone = True

    def __init__(
        self,
        alpha=2.0,
        beta=50.0,
        base=0.5,
        epsilon=None,
        normalize=True,
        reduction="sum_over_batch_size",
        name="multi_similarity",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(normalize, reduction, name, cross_replica, multi_label, miner)
        _check_scales(alpha, beta)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.base = float(base)
        self.epsilon = None if epsilon is None else float(epsilon)

    def similarity_terms(self, similarity, positive, negative):
        return multi_similarity_terms(similarity, positive, negative, self.alpha, self.beta, self.base, self.epsilon)

    def get_config(self):
        config = super().get_config()
        config.update({"alpha": self.alpha, "beta": self.beta, "base": self.base, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class Circle(SimilarityLoss):
    r"""Circle loss (Sun et al. 2020, "Circle Loss: A Unified Perspective of
    Pair Similarity Optimization"), pair-based form.

    Pairs far from their optimum (`O_p = 1 + m` for positives, `O_n = −m`
    for negatives) get larger weights:

    $$ \alpha_p = \mathrm{relu}\big(1 + m - s(a, p)\big), \quad \alpha_n = \mathrm{relu}\big(s(a, n) + m\big)
        \quad \text{(no gradient)} $$

    $$ \ell_a = \mathrm{softplus}\Big(\log \sum_{p \in P(a)} e^{-\gamma \alpha_p (s(a, p) - 1 + m)}
        + \log \sum_{n \in Q(a)} e^{\gamma \alpha_n (s(a, n) - m)}\Big) $$

    $$ \text{loss} = \text{the mean of } \ell_a \text{ over the anchors with a positive and a negative} $$

    Same values as PyTorch Metric Learning's `CircleLoss` (whose
    `AvgNonZeroReducer` averages over the same anchors whenever no loss is
    exactly 0).

    Args:
        margin: The relaxation `m` (paper: 0.25 for faces and re-id, 0.4
            for fine-grained retrieval).
        gamma: The scale `γ` (paper: 256, 128, 80 respectively).
        normalize: Cosine similarities (default), or raw dot products.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's loss.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.Circle()(labels, embeddings)), 4)
    3.2009
    """

    faster_under_xla = True
    compiles_terms_alone = True

    def __init__(
        self,
        margin=0.4,
        gamma=80.0,
        normalize=True,
        reduction="sum_over_batch_size",
        name="circle",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(normalize, reduction, name, cross_replica, multi_label, miner)
        self.margin = float(margin)
        self.gamma = float(gamma)

    def similarity_terms(self, similarity, positive, negative):
        return circle_terms(similarity, positive, negative, self.margin, self.gamma)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "gamma": self.gamma})
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class BinomialDeviance(SimilarityLoss):
    r"""Binomial deviance loss (Yi et al. 2014, "Deep Metric Learning for
    Person Re-Identification").

    A logistic loss on every pair's similarity around the threshold `λ`,
    negatives scaled by the cost `C` that balances their number, each kind
    averaged per anchor (the paper's weights 1/n₊, 1/n₋):

    $$ \ell_a = \mathrm{mean}_{p \in P(a)} \log\big(1 + e^{-\alpha (s(a, p) - \lambda)}\big)
        + \mathrm{mean}_{n \in Q(a)} \log\big(1 + e^{\alpha C (s(a, n) - \lambda)}\big) $$

    $$ \text{loss} = \text{the mean of } \ell_a \text{ over the anchors with a positive and a negative} $$

    Args:
        alpha: The scale `α`.
        threshold: The threshold `λ`.
        cost: The cost `C` of the negative pairs.
        normalize: Cosine similarities (default, as in the paper), or raw
            dot products.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's loss.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.BinomialDeviance()(labels, embeddings)), 4)
    1.6892
    """

    def __init__(
        self,
        alpha=2.0,
        threshold=0.5,
        cost=25.0,
        normalize=True,
        reduction="sum_over_batch_size",
        name="binomial_deviance",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(normalize, reduction, name, cross_replica, multi_label, miner)
        self.alpha = float(alpha)
        self.threshold = float(threshold)
        self.cost = float(cost)

    def similarity_terms(self, similarity, positive, negative):
        return binomial_deviance_terms(similarity, positive, negative, self.alpha, self.threshold, self.cost)

    def get_config(self):
        config = super().get_config()
        config.update({"alpha": self.alpha, "threshold": self.threshold, "cost": self.cost})
        return config
