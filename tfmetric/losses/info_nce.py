"""Softmax losses over the batch's similarities, the positives as targets: SupCon, NT-Xent, instance loss.

Each query `a` scores every other reference row `r` (the batch itself by
default) by its similarity `s(a, r)` (`tfm.distances.pairwise_similarity`:
cosine by default), scaled by `1/τ` (a temperature) or `γ` (a scale), and
the softmax over those rows should put its mass on the query's positives
`P(a)` rather than on its negatives `Q(a)`. The three losses differ in how
several positives share the target:

- `SupCon`: the mean over the positives of `−log softmax`, each positive a
  target of its own, the denominator over all other rows;
- `NTXent`: one term per positive pair, its denominator the pair's
  positive and the anchor's negatives only (the other positives stay out);
- `Instance`: `−log` of the softmax mass of all the positives together
  (the probability of the query's own class).

A query without a positive has no term and is left out of the mean.
Everything is computed row by row on the `(N, R)` rectangle, in log space
(`_row_logsumexp`): no `N·R·R` tensor, no overflow for small temperatures.
"""

import keras
from keras import ops

from tfmetric.distances import runs_op_by_op
from tfmetric.losses.base import (
    SimilarityLoss,
    check_positive,
    masked_row_mean,
    masked_rows,
    row_logsumexp,
    similarity_loss,
)
from tfmetric.mining import mask_row_counts


def _row_logsumexp(values, mask):
    """Row-wise `log Σ_{mask} exp(values)`, 0 for rows with an empty mask (`base.row_logsumexp`'s convention).

    Also exact where XLA computes `values` twice, once for the row's
    maximum and once for the exponentials, rounded apart (a scale that is
    not a power of two, folded into the matrix product in one fusion and
    not in the other): at logits of 1e31 (raw dot products of huge
    embeddings) one ulp is 1e24, and `base.row_logsumexp` then returns ±inf.
    Here the exponents are capped at 0 and the sum raised to at least 1
    (values only; the gradients pass unchanged), which changes nothing
    where the two agree (the largest term is exactly exp(0) = 1).
    """
    if runs_op_by_op():
        # Nothing computes `values` twice: the base's, its gradient written out.
        return row_logsumexp(values, mask)
    masked, shift, _ = masked_rows(values, mask)
    exponents = masked - shift[:, None]
    # The caps move values only, never gradients (a recomputed maximum a
    # rounding error above or below the shift keeps its gradient).
    exponents = exponents - ops.stop_gradient(ops.maximum(exponents, ops.zeros_like(exponents)))
    total = ops.sum(ops.exp(exponents), axis=1)
    total = total + ops.stop_gradient(ops.maximum(1.0 - total, ops.zeros_like(total)))
    return shift + ops.log(total)


def _negatives_share(logits, own, negative):
    """`log(1 + Σ_{Q(a)} e^{logits} / e^{own})` per row, 0 for rows without a negative.

    The positive and negative masks are disjoint, so with `own` the
    log-sum over the positives, `own` plus this is the log-sum over both:
    computed as a softplus, it keeps its precision when it is tiny.
    """
    has_negative = ops.any(negative, axis=1)
    share = ops.softplus(_row_logsumexp(logits, negative) - own)
    return ops.where(has_negative, share, ops.zeros_like(share))


def supcon_terms(similarity, positive, negative, temperature=0.1):
    """Per-query supervised contrastive losses and whether the query has a positive.

    `ℓ_a = −mean_{p∈P(a)} log( e^{s_ap/τ} / Σ_{r∈P(a)∪Q(a)} e^{s_ar/τ} )
         = logsumexp_{r∈P(a)∪Q(a)}(s_ar/τ) − mean_{p∈P(a)} s_ap/τ`.

    Returns:
        `(losses, has_positive)`, both `(N,)`: queries without a positive
        have no term.
    """
    check_positive("temperature", temperature)
    logits = similarity / temperature
    has_positive = ops.any(positive, axis=1)
    own = _row_logsumexp(logits, positive)
    # logsumexp over P ∪ Q = own + softplus(others − own): no cancellation
    # of two large log-sums when the negatives' share is small.
    losses = own - masked_row_mean(logits, positive) + _negatives_share(logits, own, negative)
    return ops.where(has_positive, losses, ops.zeros_like(losses)), ops.cast(has_positive, similarity.dtype)


def ntxent_terms(similarity, positive, negative, temperature=0.07):
    """Per-query sums of NT-Xent losses over the query's positive pairs, and their number.

    Pair `(a, p)`: `ℓ_ap = −log( e^{s_ap/τ} / (e^{s_ap/τ} + Σ_{n∈Q(a)} e^{s_an/τ}) )
    = softplus(logsumexp_{n∈Q(a)}(s_an/τ) − s_ap/τ)`, 0 when `a` has no
    negative.

    Returns:
        `(loss_sums, positive_counts)`, both `(N,)`: the mean over terms is
        the mean over positive pairs.
    """
    check_positive("temperature", temperature)
    logits = similarity / temperature
    has_negative = ops.any(negative, axis=1)
    against = _row_logsumexp(logits, negative)
    pair_losses = ops.softplus(against[:, None] - logits)
    scored = ops.logical_and(positive, has_negative[:, None])
    loss_sums = ops.sum(ops.where(scored, pair_losses, ops.zeros_like(pair_losses)), axis=1)
    return loss_sums, mask_row_counts(positive, similarity.dtype)


def instance_terms(similarity, positive, negative, gamma=64.0):
    """Per-query instance losses and whether the query has a positive.

    `ℓ_a = −log( Σ_{p∈P(a)} e^{γ s_ap} / Σ_{r∈P(a)∪Q(a)} e^{γ s_ar} )`.

    Returns:
        `(losses, has_positive)`, both `(N,)`: queries without a positive
        have no term.
    """
    check_positive("gamma", gamma)
    logits = gamma * similarity
    has_positive = ops.any(positive, axis=1)
    losses = _negatives_share(logits, _row_logsumexp(logits, positive), negative)
    return ops.where(has_positive, losses, ops.zeros_like(losses)), ops.cast(has_positive, similarity.dtype)


def supcon(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    temperature=0.1,
    normalize=True,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query supervised contrastive losses (the math of `SupCon`), 0 for queries without a positive.

    Args:
        labels: Class ids `(N,)` of the queries (or, with `multi_label`,
            0/1 rows `(N, C)`).
        embeddings: Query embeddings `(N, D)`.
        ref_labels, ref_embeddings: Optional reference `(R,)`, `(R, D)`;
            each query is compared with these R rows only: O(N·R).
        remove_diagonal: Whether reference row a is query a itself (the
            queries come first in the reference); `None`: only without a
            reference.
        temperature, normalize, multi_label: As `SupCon`.
        miner: A `tfm.miners` miner that narrows the pairs first; `None`:
            all of them.

    Returns:
        The `(N,)` per-query losses.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.supcon([0, 0, 0, 1], embeddings, temperature=0.5)]
    [1.0333, 0.8271, 1.6271, 0.0]
    """
    return similarity_loss(
        supcon_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        temperature=temperature,
    )


def ntxent(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    temperature=0.07,
    normalize=True,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query NT-Xent losses (the math of `NTXent`): each query's mean over its positive pairs, 0 without one.

    The arguments are those of `tfm.losses.supcon` and `NTXent`. The class's
    loss is the mean over all positive pairs; this function's values are
    each query's own mean.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.ntxent([0, 0, 0, 1], embeddings, temperature=0.5)]
    [0.1612, 0.2236, 1.3485, 0.0]
    """
    return similarity_loss(
        ntxent_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        temperature=temperature,
    )


def instance(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    gamma=64.0,
    normalize=True,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query instance losses (the math of `Instance`), 0 for queries without a positive.

    The arguments are those of `tfm.losses.supcon` and `Instance`.
    PyTorch Metric Learning's `InstanceLoss` (each example its own target,
    the batch as its own reference with the diagonal kept) is
    `instance(ids, x, ids, x)` with all-distinct `ids`: the reference keeps
    every row, so each query's positive is its own row.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.instance([0, 0, 0, 1], embeddings, gamma=2.0)]
    [0.0494, 0.1141, 0.7638, 0.0]
    """
    return similarity_loss(
        instance_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        gamma=gamma,
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class SupCon(SimilarityLoss):
    r"""Supervised contrastive loss (Khosla et al. 2020, "Supervised
    Contrastive Learning", https://arxiv.org/abs/2004.11362), the paper's
    `L^sup_out`.

    Every positive of an anchor is a target of the softmax over all the
    anchor's other rows, and the anchor averages over its positives:

    $$ \ell_a = -\frac{1}{|P(a)|} \sum_{p \in P(a)} \log
        \frac{\exp(s(a, p) / \tau)}{\sum_{r \in P(a) \cup Q(a)} \exp(s(a, r) / \tau)} $$

    $$ \text{loss} = \text{the mean of } \ell_a \text{ over the anchors with a positive} $$

    Anchors without a positive have no term. Same values as PyTorch Metric
    Learning's `SupConLoss` (`AvgNonZeroReducer`: the mean over the anchors
    whose loss is above 0), except in batches without any negative pair (one
    class), where PML returns 0 and tfmetric the formula's value
    (`log |P(a)|` for identical embeddings), and for an anchor whose only
    other row is one positive (loss exactly 0: tfmetric counts it in the
    mean, PML leaves it out).

    Args:
        temperature: The temperature `τ` (PML's default 0.1; the paper uses
            0.1 too).
        normalize: Cosine similarities (default), or raw dot products.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's loss.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.
        miner: A `tfm.miners` miner that narrows the pairs the loss looks
            at; `None` (default): all of them.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 0, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.SupCon(temperature=0.5)(labels, embeddings)), 4)
    1.1625
    """

    faster_under_xla = True
    compiles_terms_alone = True
    terms_alone_from = 1024

    def __init__(
        self,
        temperature=0.1,
        normalize=True,
        reduction="sum_over_batch_size",
        name="supcon",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(normalize, reduction, name, cross_replica, multi_label, miner)
        self.temperature = check_positive("temperature", temperature)

    def similarity_terms(self, similarity, positive, negative):
        return supcon_terms(similarity, positive, negative, self.temperature)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class NTXent(SimilarityLoss):
    r"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR
    (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations", https://arxiv.org/abs/2002.05709), also called InfoNCE.

    One term per positive pair `(a, p)`: the softmax of the pair against the
    anchor's negatives only:

    $$ \ell_{ap} = -\log \frac{\exp(s(a, p) / \tau)}{\exp(s(a, p) / \tau) + \sum_{n \in Q(a)} \exp(s(a, n) / \tau)} $$

    $$ \text{loss} = \text{the mean of } \ell_{ap} \text{ over all positive pairs} $$

    A pair whose anchor has no negative scores 0 (it still counts in the
    mean, as in PML); anchors without a positive have no term. Same values
    as PyTorch Metric Learning's `NTXentLoss` (its `MeanReducer` over the
    positive pairs).

    Self-supervised use: `y_true` holds the id of the source example, so
    that the views of one image share an id and are each other's positives,
    every other row a negative. Any ids distinct within the batch do (the
    position in the batch, say). Feed each batch with the views stacked
    along the batch axis and the ids repeated, e.g. from a generator that
    augments each batch twice:

    >>> import keras, numpy as np, tfmetric as tfm
    >>> rng = np.random.default_rng(0)
    >>> images = rng.normal(size=(64, 8)).astype("float32")
    >>> def two_views(batch_size=16):
    ...     while True:
    ...         for start in range(0, len(images), batch_size):
    ...             batch = images[start:start + batch_size]
    ...             views = [batch + 0.1 * rng.normal(size=batch.shape) for _ in range(2)]
    ...             ids = np.arange(len(batch))
    ...             yield np.concatenate(views).astype("float32"), np.concatenate([ids, ids])
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=tfm.NTXent(temperature=0.5))
    >>> history = model.fit(two_views(), steps_per_epoch=4, epochs=2, shuffle=False, verbose=0)
    >>> bool(np.isfinite(history.history["loss"][-1]))
    True

    (With arrays instead of a generator, interleave the views,
    `x = np.stack([view_1, view_2], axis=1).reshape(-1, dim)`,
    `y = np.repeat(ids, 2)`, and fit with an even `batch_size` and
    `shuffle=False`, so that no batch splits an image's views.)

    Args:
        temperature: The temperature `τ` (PML's default 0.07; SimCLR uses
            0.1 to 0.5).
        normalize: Cosine similarities (default), or raw dot products.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's loss.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.
        miner: A `tfm.miners` miner that narrows the pairs the loss looks
            at; `None` (default): all of them.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 0, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.NTXent(temperature=0.5)(labels, embeddings)), 4)
    0.5777
    """

    faster_under_xla = True
    compiles_terms_alone = True
    terms_alone_from = 1024

    def __init__(
        self,
        temperature=0.07,
        normalize=True,
        reduction="sum_over_batch_size",
        name="ntxent",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(normalize, reduction, name, cross_replica, multi_label, miner)
        self.temperature = check_positive("temperature", temperature)

    def similarity_terms(self, similarity, positive, negative):
        return ntxent_terms(similarity, positive, negative, self.temperature)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class Instance(SimilarityLoss):
    r"""Instance loss (Zheng et al. 2020, "Dual-Path Convolutional Image-Text
    Embeddings with Instance Loss", https://arxiv.org/abs/1711.05535), in
    batch.

    The paper classifies every image and every caption into its instance
    (one class per image and its captions). In a batch, the other rows are
    the classifier: the query's probability of its own class is the softmax
    mass, at scale `γ`, of the rows that share its label:

    $$ \ell_a = -\log \frac{\sum_{p \in P(a)} \exp(\gamma\, s(a, p))}{\sum_{r \in P(a) \cup Q(a)} \exp(\gamma\,
        s(a, r))} $$

    $$ \text{loss} = \text{the mean of } \ell_a \text{ over the anchors with a positive} $$

    Anchors without a positive have no term. With image and text embeddings
    stacked along the batch axis and the instance ids repeated as `y_true`,
    each image's positives are its captions and each caption's its image.
    (This is NCA on cosine similarities: `NCA(softmax_scale=γ/2)`, whose
    squared distances of unit vectors are `2 − 2s`, has the same values.)

    Differs from PyTorch Metric Learning's `InstanceLoss`, which takes the
    cross-entropy of `γ s(a, ·)` over all N columns of the batch, its own
    included, with column `k` as the target, `k` the rank of `a`'s label
    among the batch's distinct labels. That target is query a's own column
    only when the labels are `0, …, N−1` in batch order (or increasing and
    distinct); with repeated labels it is some example, often of another
    class. The two agree in that case: `tfm.losses.instance(ids, x, ids, x)`
    (the batch as its own reference, the diagonal kept, so that each query
    is its own and only positive) is PML's per-example loss, and its mean
    is PML's value. Reference sets and `multi_label` work as for the other
    losses; PML supports neither.

    Args:
        gamma: The scale `γ` of the cosine similarities (PML's default 64;
            the paper's classifier has no scale).
        normalize: Cosine similarities (default), or raw dot products.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's loss.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.
        miner: A `tfm.miners` miner that narrows the pairs the loss looks
            at; `None` (default): all of them.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 0, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.Instance(gamma=2.0)(labels, embeddings)), 4)
    0.3091
    """

    faster_under_xla = True
    compiles_terms_alone = True
    terms_alone_from = 1024

    def __init__(
        self,
        gamma=64.0,
        normalize=True,
        reduction="sum_over_batch_size",
        name="instance",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(normalize, reduction, name, cross_replica, multi_label, miner)
        self.gamma = check_positive("gamma", gamma)

    def similarity_terms(self, similarity, positive, negative):
        return instance_terms(similarity, positive, negative, self.gamma)

    def get_config(self):
        config = super().get_config()
        config["gamma"] = self.gamma
        return config
