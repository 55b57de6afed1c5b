"""Proxy losses of deep metric learning: ProxyNCA, Proxy Anchor, SoftTriple and P2SGrad.

Each compares the embeddings with learned class vectors (`tfm.losses.proxy`)
instead of with each other: ProxyNCA a softmax over the distances to them,
Proxy Anchor a log-sum-exp over the batch for every class vector, SoftTriple a
softmax over classes of `k` centres each, P2SGrad a squared error of the
cosines. Notation: `x̂` an L2-normalised embedding, `p̂_c` (`ŵ_{c,t}`) the
L2-normalised vector (t-th centre) of class `c`, `s(x, p)` their cosine, `y_i`
the class of example `i`, `C` the number of classes. Every loss comes as a
pure function of `(labels, embeddings, proxies)` and a class that owns the
vectors; the scores are one `(N, D) × (D, C·k)` product (nothing of size
`N·C·D`; `tfm.distances.inner_products`, which keeps float64 on PyTorch),
computed in float32 (float64 stays float64) and finite for zero,
huge and half-precision inputs.
"""

import keras
import numpy as np
from keras import ops

from tfmetric.distances import inner_products, l2_normalize, matmul
from tfmetric.labels import in_class_range
from tfmetric.losses.base import check_positive, check_sample_weight, divide_or_zero, row_logsumexp
from tfmetric.losses.proxy import (
    ProxyLoss,
    class_cross_entropy,
    class_mask,
    cosine_to_proxies,
    nan_outside_classes,
    pick_class,
    proxy_class_scores,
    proxy_inputs,
)

__all__ = [
    "P2SGrad",
    "ProxyAnchor",
    "ProxyNCA",
    "SoftTriple",
    "UnitNormUniform",
    "p2sgrad",
    "p2sgrad_cosines",
    "p2sgrad_terms",
    "proxy_anchor",
    "proxy_anchor_terms",
    "proxy_nca",
    "proxy_nca_logits",
    "proxy_nca_terms",
    "soft_triple",
    "soft_triple_regularizer",
    "soft_triple_similarities",
    "soft_triple_terms",
]

# The ε of SoftTriple's official code, under the square root of its regulariser.
SOFT_TRIPLE_EPSILON = 1e-5


# ---------------------------------------------------------------- shared helpers


def _check_non_negative(name, value):
    if not float(value) >= 0 or float(value) == float("inf"):
        raise ValueError(f"{name} must be a non-negative number; received {value!r}.")


# ---------------------------------------------------------------- ProxyNCA


def proxy_nca_logits(embeddings, proxies, temperature=1.0):
    """`(N, C)` scores `−‖x̂_i − p̂_c‖² / T` (zero vectors stay zero before the distance)."""
    x = l2_normalize(embeddings)
    p = l2_normalize(ops.cast(proxies, embeddings.dtype))
    squared = (
        ops.sum(ops.square(x), axis=1)[:, None]
        + ops.sum(ops.square(p), axis=1)[None, :]
        - 2.0 * inner_products(x, p)
    )
    # Rounding can leave coincident unit vectors a hair below 0.
    squared = ops.where(squared > 0, squared, ops.zeros_like(squared))
    return -squared / temperature


def proxy_nca_terms(class_ids, embeddings, proxies, temperature=1.0):
    """Per-example ProxyNCA losses `−log softmax_c(−‖x̂_i − p̂_c‖² / T)_{y_i}`, and a count of 1 each."""
    check_positive("temperature", temperature)
    losses = class_cross_entropy(proxy_nca_logits(embeddings, proxies, temperature), class_ids)
    return losses, ops.ones_like(losses)


def proxy_nca(labels, embeddings, proxies, *, temperature=1.0):
    """Per-example ProxyNCA losses (the math of `ProxyNCA`).

    Args:
        labels: Class ids `(N,)`, `0 … C − 1`.
        embeddings: Embeddings `(N, D)`.
        proxies: Class vectors `(C, D)`, row `c` for class `c`.
        temperature: The temperature `T` (PML's `softmax_scale` is `1 / T`).

    Returns:
        The `(N,)` losses `−log softmax_c(−‖x̂_i − p̂_c‖² / T)_{y_i}`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> proxies = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> embeddings = np.array([[2.0, 0.0], [1.0, 1.0]])
    >>> [round(float(v), 4) for v in tfm.losses.proxy_nca([0, 1], embeddings, proxies)]
    [0.1269, 0.6931]
    """
    ids, embeddings, proxies = proxy_inputs(labels, embeddings, proxies, rank=2)
    losses, _ = proxy_nca_terms(ids, embeddings, proxies, temperature)
    return nan_outside_classes(losses, ids, proxies.shape[0])


@keras.saving.register_keras_serializable(package="tfmetric")
class ProxyNCA(ProxyLoss):
    r"""ProxyNCA (Movshovitz-Attias et al. 2017, "No Fuss Distance Metric
    Learning using Proxies"), with the temperature of ProxyNCA++ (Teh et al.
    2020, "ProxyNCA++: Revisiting and Revitalizing Proxy Neighborhood
    Component Analysis").

    $$ p_{ic} = \mathrm{softmax}_c\big(-\lVert \hat x_i - \hat p_c \rVert^2 / T\big) $$

    $$ \ell_i = -\log p_{i, y_i} $$

    $$ \text{loss} = \text{the mean of } \ell_i \text{ over the batch} $$

    Embeddings and class vectors are L2-normalised. As in ProxyNCA++ and
    PyTorch Metric Learning (PML), the softmax's denominator includes the
    example's own class (the 2017 paper leaves it out, so that its loss can
    be negative). ProxyNCA++ uses `T = 1/9`; `T = 1` (default) is the
    original loss and PML's default (`softmax_scale = 1 / T`).

    Computed as a log-softmax: PML takes the log of the probability and
    leaves out of its mean the examples whose probability underflows to
    exactly 0 (very small `T`, an example far from its class); here they
    keep their finite, large loss. Otherwise the values are PML's
    `ProxyNCALoss` (its default `LpDistance(power=2)`).

    Initialisation: normal with standard deviation 1/8, as ProxyNCA++'s
    code (PML draws from a standard normal; the direction, all the loss
    sees, is uniform either way, but smaller vectors move faster).

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        temperature: The temperature `T`.
        proxy_lr_multiplier: Train the class vectors at this multiple of the
            optimizer's learning rate (`tfm.losses.proxy`).
        proxy_initializer: A Keras initializer for the class vectors; `None`
            for the one above.
        reduction: `"sum_over_batch_size"` (the mean above, weighted by
            `sample_weight`), `"sum"`, or `None` for each example's loss.
        name: Optional name of the loss.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> loss = tfm.ProxyNCA(num_classes=2, embedding_dim=2, temperature=1 / 9)
    >>> loss.set_proxies(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> round(float(loss(np.array([0, 1]), np.array([[2.0, 0.5], [1.0, 1.0]]))), 4)
    0.3466
    """

    def __init__(
        self,
        num_classes,
        embedding_dim,
        temperature=1.0,
        proxy_lr_multiplier=1.0,
        proxy_initializer=None,
        reduction="sum_over_batch_size",
        name="proxy_nca",
    ):
        check_positive("temperature", temperature)
        if proxy_initializer is None:
            proxy_initializer = keras.initializers.RandomNormal(stddev=0.125)
        super().__init__(
            num_classes,
            embedding_dim,
            proxy_lr_multiplier=proxy_lr_multiplier,
            proxy_initializer=proxy_initializer,
            reduction=reduction,
            name=name,
        )
        self.temperature = float(temperature)

    def proxy_terms(self, class_ids, embeddings, proxies):
        return proxy_nca_terms(class_ids, embeddings, proxies, self.temperature)

    def similarities(self, embeddings, proxies):
        """`−‖x̂ − p̂_c‖² / T`, the softmax's logits."""
        return proxy_nca_logits(embeddings, proxies, self.temperature)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config


# ---------------------------------------------------------------- Proxy Anchor


def proxy_anchor_terms(class_ids, embeddings, proxies, margin=0.1, alpha=32.0, sample_weight=None):
    """Proxy Anchor's terms of every class vector, each `(C,)`.

    Returns:
        `(positive_terms, negative_terms, has_positive)`:
        `log(1 + Σ_{x∈X_p⁺} w_x e^{−α(s(x,p)−δ)})`,
        `log(1 + Σ_{x∈X_p⁻} w_x e^{α(s(x,p)+δ)})` and whether `p` has a
        positive of non-zero weight in the batch. A log-sum-exp over the
        batch axis of the `(N, C)` cosines; a weight enters as `log w` in
        the exponent, and examples of weight 0 are left out.
    """
    check_positive("alpha", alpha)
    _check_non_negative("margin", margin)
    num_classes = ops.shape(proxies)[0]
    # Class-major `(C, N)` cosines and masks: each class vector's log-sum-exps are row ones, no transposes.
    cosine = cosine_to_proxies(embeddings, proxies, class_major=True)
    positive = class_mask(class_ids, num_classes, class_major=True)
    pull = -alpha * (cosine - margin)
    push = alpha * (cosine + margin)
    if sample_weight is None:
        positive_kept, negative_kept, invalid = positive, ops.logical_not(positive), None
    else:
        weights = check_sample_weight(sample_weight, ops.zeros_like(cosine[0]))
        kept = ops.not_equal(weights, 0)[None, :]
        # log w of the kept examples; the others are masked out (no log 0).
        log_weights = ops.log(ops.where(ops.not_equal(weights, 0), weights, ops.ones_like(weights)))[None, :]
        positive_kept = ops.logical_and(positive, kept)
        negative_kept = ops.logical_and(ops.logical_not(positive), kept)
        pull, push = pull + log_weights, push + log_weights
        # A negative weight has no log: the loss is NaN, not silently something else.
        invalid = ops.any(weights < 0)
    positive_terms = row_logsumexp(pull, positive_kept, add_one=True)
    negative_terms = row_logsumexp(push, negative_kept, add_one=True)
    has_positive = ops.any(positive_kept, axis=1)
    if invalid is not None:
        positive_terms = ops.where(invalid, ops.full_like(positive_terms, float("nan")), positive_terms)
    return positive_terms, negative_terms, has_positive


def _proxy_anchor_loss(class_ids, embeddings, proxies, margin, alpha, sample_weight):
    positive_terms, negative_terms, has_positive = proxy_anchor_terms(
        class_ids, embeddings, proxies, margin, alpha, sample_weight
    )
    dtype = positive_terms.dtype
    num_classes = ops.shape(proxies)[0]
    loss = divide_or_zero(ops.sum(positive_terms), ops.sum(ops.cast(has_positive, dtype))) + ops.sum(
        negative_terms
    ) / ops.cast(num_classes, dtype)
    # Any id that could not be checked (XLA, a JAX trace) and is no class makes the loss NaN.
    valid = ops.all(in_class_range(class_ids, num_classes))
    return ops.where(valid, loss, ops.full_like(loss, float("nan")))


def proxy_anchor(labels, embeddings, proxies, *, margin=0.1, alpha=32.0, sample_weight=None):
    """The Proxy Anchor loss of a batch (the math of `ProxyAnchor`): a scalar.

    The loss is a sum over the class vectors, not over the examples, so
    there is no per-example loss.

    Args:
        labels: Class ids `(N,)`, `0 … C − 1`.
        embeddings: Embeddings `(N, D)`.
        proxies: Class vectors `(C, D)`, row `c` for class `c`.
        margin: The margin `δ`.
        alpha: The scale `α`.
        sample_weight: Optional non-negative weights `(N,)`: each multiplies
            its example's exponential terms (weight 0 leaves the example
            out, also of `P⁺`).

    Returns:
        The scalar loss.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> proxies = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> embeddings = np.array([[1.0, 0.0], [0.6, 0.8]])
    >>> round(float(tfm.losses.proxy_anchor([0, 1], embeddings, proxies)), 4)
    12.82
    """
    ids, embeddings, proxies = proxy_inputs(labels, embeddings, proxies, rank=2)
    return _proxy_anchor_loss(ids, embeddings, proxies, margin, alpha, sample_weight)


@keras.saving.register_keras_serializable(package="tfmetric")
class ProxyAnchor(ProxyLoss):
    r"""Proxy Anchor (Kim et al. 2020, "Proxy Anchor Loss for Deep Metric
    Learning").

    $$ \text{loss} = \frac{1}{|P^+|} \sum_{p \in P^+} \log\Big(1
        + \sum_{x \in X_p^+} e^{-\alpha (s(x, p) - \delta)}\Big) + \frac{1}{C} \sum_p \log\Big(1
        + \sum_{x \in X_p^-} e^{\alpha (s(x, p) + \delta)}\Big) $$

    with `s` the cosine similarity, `X_p⁺` (`X_p⁻`) the examples of (not
    of) class `p`, `P⁺` the class vectors with a positive in the batch.
    Every class vector is an anchor that pulls its examples and pushes the
    others, each weighted by its hardness. The loss is a sum over class
    vectors, not examples: it is only reduced one way (`reduction` must be
    `"sum_over_batch_size"`, the value above; `"sum"` and `None` are
    refused, since there is no per-example loss to sum or return, and
    `call` returns the loss itself). A `sample_weight` multiplies its
    example's exponential terms (a log-weight in the exponent); weight 0
    leaves the example out, of `P⁺` too. The log-sum-exps are stable:
    `α = 32` with cosines near ±1 does not overflow.

    The paper trains the class vectors at 100 times the learning rate of the
    network: pass `proxy_lr_multiplier=100` for that (default 1).
    Initialisation as the paper's code: `kaiming_normal_(mode="fan_out")` of
    PyTorch on the `(C, D)` tensor, a normal of standard deviation `√(2/C)`.

    The values are PyTorch Metric Learning's `ProxyAnchorLoss`, with its
    `DivisorReducer`. PML takes weights only from a miner, and adds
    `weight − 1` to the exponents rather than `log weight` (so weight 0
    does not remove an example there).

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        margin: The margin `δ`.
        alpha: The scale `α`.
        proxy_lr_multiplier: Train the class vectors at this multiple of the
            optimizer's learning rate (`tfm.losses.proxy`).
        proxy_initializer: A Keras initializer for the class vectors; `None`
            for the one above.
        reduction: `"sum_over_batch_size"` only (see above).
        name: Optional name of the loss.

    Example:

    >>> import numpy as np, keras
    >>> import tfmetric as tfm
    >>> loss = tfm.ProxyAnchor(num_classes=2, embedding_dim=2, proxy_lr_multiplier=100)
    >>> loss.set_proxies(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> round(float(loss(np.array([0, 1]), np.array([[1.0, 0.0], [0.6, 0.8]]))), 4)
    12.82
    >>> [int(c) for c in keras.ops.convert_to_numpy(loss.predict_classes(np.array([[0.1, 0.9]])))]
    [1]
    """

    def __init__(
        self,
        num_classes,
        embedding_dim,
        margin=0.1,
        alpha=32.0,
        proxy_lr_multiplier=1.0,
        proxy_initializer=None,
        reduction="sum_over_batch_size",
        name="proxy_anchor",
    ):
        if reduction != "sum_over_batch_size":
            raise ValueError(
                "Proxy Anchor's loss is a sum over class vectors, not over examples: it takes only "
                f"reduction='sum_over_batch_size' (the loss of the batch); received reduction={reduction!r}."
            )
        _check_non_negative("margin", margin)
        check_positive("alpha", alpha)
        if proxy_initializer is None:
            # Keras' fan_in of a (C, D) tensor is C: PyTorch's fan_out of it.
            proxy_initializer = keras.initializers.VarianceScaling(
                scale=2.0, mode="fan_in", distribution="untruncated_normal"
            )
        super().__init__(
            num_classes,
            embedding_dim,
            proxy_lr_multiplier=proxy_lr_multiplier,
            proxy_initializer=proxy_initializer,
            reduction=reduction,
            name=name,
        )
        self.margin = float(margin)
        self.alpha = float(alpha)

    def reduce(self, class_ids, embeddings, proxies, sample_weight=None):
        """The loss of the batch (NaN if a label that could not be checked is no class id)."""
        return _proxy_anchor_loss(class_ids, embeddings, proxies, self.margin, self.alpha, sample_weight)

    def call(self, y_true, y_pred):
        """The loss of the batch: Proxy Anchor has no per-example loss."""
        embeddings, ids = self._inputs(y_true, y_pred)
        return self.reduce(ids, embeddings, self.class_vectors())

    def proxy_terms(self, class_ids, embeddings, proxies):
        raise NotImplementedError("Proxy Anchor is a sum over class vectors: it has no per-example terms.")

    def similarities(self, embeddings, proxies):
        """The cosine similarities `s(x, p_c)`."""
        return cosine_to_proxies(embeddings, proxies)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "alpha": self.alpha})
        return config


# ---------------------------------------------------------------- SoftTriple


def soft_triple_similarities(embeddings, proxies, gamma=0.1):
    """`(N, C)` relaxed similarities `S_ic = Σ_t softmax_t(x̂ᵀŵ_{c,t} / γ) x̂ᵀŵ_{c,t}`."""
    check_positive("gamma", gamma)
    num_classes = ops.shape(proxies)[0]
    cosine = proxy_class_scores(cosine_to_proxies(embeddings, proxies), num_classes)
    if proxies.shape[1] == 1:
        return cosine[:, :, 0]
    weights = ops.softmax(cosine / gamma, axis=-1)
    return ops.sum(weights * cosine, axis=-1)


def soft_triple_terms(class_ids, embeddings, proxies, scale=20.0, gamma=0.1, margin=0.01):
    """Per-example SoftTriple losses, cross-entropies of `λ(S_ic − δ·[c = y_i])`, and a count of 1 each."""
    check_positive("scale", scale)
    _check_non_negative("margin", margin)
    similarity = soft_triple_similarities(embeddings, proxies, gamma)
    # The margin on the true class's logit only, a vector.
    own = scale * (pick_class(similarity, class_ids) - margin)
    losses = class_cross_entropy(scale * similarity, class_ids, own)
    return losses, ops.ones_like(losses)


def soft_triple_regularizer(proxies):
    """SoftTriple's regulariser of the centres, without `τ`: a scalar.

    `Σ_c Σ_{t<t'} √(2 + ε − 2 ŵ_{c,t}ᵀŵ_{c,t'}) / (C·k·(k − 1))`, `ε = 1e-5`,
    as the official code: the distances between a class's normalised
    centres, whose sum the regulariser shrinks to merge redundant centres.
    0 for `k = 1`; the `ε` keeps the gradient finite at coincident centres.
    """
    num_classes, centers = proxies.shape[0], proxies.shape[1]
    if centers is None or num_classes is None:
        raise ValueError("soft_triple_regularizer needs class vectors of known shape (C, k, D).")
    if centers < 2:
        return ops.zeros((), proxies.dtype)
    unit = l2_normalize(proxies)
    similarity = ops.einsum("ctd,cud->ctu", unit, unit)  # (C, k, k)
    squared = 2.0 + SOFT_TRIPLE_EPSILON - 2.0 * similarity
    squared = ops.where(squared > SOFT_TRIPLE_EPSILON, squared, ops.full_like(squared, SOFT_TRIPLE_EPSILON))
    pairs = ops.convert_to_tensor(np.triu(np.ones((1, centers, centers), bool), k=1))
    distances = ops.where(pairs, ops.sqrt(squared), ops.zeros_like(squared))
    return ops.sum(distances) / float(num_classes * centers * (centers - 1))


def soft_triple(labels, embeddings, proxies, *, scale=20.0, gamma=0.1, margin=0.01):
    """Per-example SoftTriple losses (the math of `SoftTriple`, without its regulariser).

    Args:
        labels: Class ids `(N,)`, `0 … C − 1`.
        embeddings: Embeddings `(N, D)`.
        proxies: Class centres `(C, k, D)`, block `c` for class `c`.
        scale: The scale `λ` (PML's `la`).
        gamma: The temperature `γ` of the softmax over a class's centres.
        margin: The margin `δ`.

    Returns:
        The `(N,)` losses `−log softmax_c(λ(S_ic − δ·[c = y_i]))_{y_i}`;
        `tfm.losses.proxy_metric.soft_triple_regularizer` is the
        regulariser that `SoftTriple` adds.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> proxies = np.array([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [-1.0, 0.0]]])
    >>> embeddings = np.array([[0.8, 0.6], [0.0, 1.0]])
    >>> [round(float(v), 4) for v in tfm.losses.soft_triple([0, 1], embeddings, proxies)]
    [0.0016, 0.022]
    """
    ids, embeddings, proxies = proxy_inputs(labels, embeddings, proxies, rank=3)
    losses, _ = soft_triple_terms(ids, embeddings, proxies, scale, gamma, margin)
    return nan_outside_classes(losses, ids, proxies.shape[0])


@keras.saving.register_keras_serializable(package="tfmetric")
class SoftTriple(ProxyLoss):
    r"""SoftTriple (Qian et al. 2019, "SoftTriple Loss: Deep Metric Learning
    Without Triplet Sampling").

    $$ S_{ic} = \sum_t \mathrm{softmax}_t\big(\hat x_i^\top \hat w_{c,t} / \gamma\big)\, \hat x_i^\top \hat w_{c,t} $$

    $$ \ell_i = -\log \mathrm{softmax}_c\big(\lambda\,(S_{ic} - \delta\, [c = y_i])\big)_{y_i} $$

    $$ R = \sum_c \sum_{t < t'} \sqrt{2 + \varepsilon - 2\, \hat w_{c,t}^\top \hat w_{c,t'}} \Big/ \big(C k (k
        - 1)\big), \quad \varepsilon = 10^{-5} $$

    $$ \text{loss} = \text{the mean of } \ell_i \text{ over the batch} + \tau R $$

    Each class has `k = centers_per_class` centres; an example's similarity
    to a class is a soft maximum over them. `R`, with the normalisation of
    the paper's official code, pulls a class's centres together so that
    redundant ones merge (0 for `k = 1`). `R` is added to every example's
    loss, so that the mean (the default reduction) is the loss above, each
    example's loss (`reduction=None`) averages to it, and `"sum"` sums
    `ℓ_i + τR`.

    The paper's defaults: `λ = 20`, `γ = 0.1`, `τ = 0.2`, `δ = 0.01`,
    `k = 10`. Initialisation as the official code (and PML's):
    `kaiming_uniform_(a=√5)` of PyTorch on the `(D, C·k)` matrix, a uniform
    on `±1/√(C·k)`.

    PyTorch Metric Learning's `SoftTripleLoss` has no `τ` (its `la` is
    `scale`): with `tau=0` the values are its values; PML normalises the
    embeddings, as here (the official code expects normalised ones).

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        centers_per_class: The number `k` of centres per class; the class
            vectors have shape `(num_classes, k, embedding_dim)`.
        scale: The scale `λ`.
        gamma: The temperature `γ` of the softmax over a class's centres.
        margin: The margin `δ`.
        tau: The weight `τ` of the regulariser (0: none).
        proxy_lr_multiplier: Train the centres at this multiple of the
            optimizer's learning rate (`tfm.losses.proxy`).
        proxy_initializer: A Keras initializer for the centres; `None` for
            the one above.
        reduction: `"sum_over_batch_size"` (the mean above, weighted by
            `sample_weight`), `"sum"`, or `None` for each example's loss.
        name: Optional name of the loss.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> loss = tfm.SoftTriple(num_classes=2, embedding_dim=2, centers_per_class=2)
    >>> loss.set_proxies(np.array([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [-1.0, 0.0]]]))
    >>> round(float(loss(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))), 4)
    0.1264
    """

    def __init__(
        self,
        num_classes,
        embedding_dim,
        centers_per_class=10,
        scale=20.0,
        gamma=0.1,
        margin=0.01,
        tau=0.2,
        proxy_lr_multiplier=1.0,
        proxy_initializer=None,
        reduction="sum_over_batch_size",
        name="soft_triple",
    ):
        if centers_per_class is None:
            raise ValueError("SoftTriple needs centers_per_class, a positive integer.")
        check_positive("scale", scale)
        check_positive("gamma", gamma)
        _check_non_negative("margin", margin)
        _check_non_negative("tau", tau)
        if proxy_initializer is None:
            # Keras' fan_in of a (C, k, D) tensor is C·k, PyTorch's of the (D, C·k) matrix.
            proxy_initializer = keras.initializers.VarianceScaling(
                scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
            )
        super().__init__(
            num_classes,
            embedding_dim,
            centers_per_class=centers_per_class,
            proxy_lr_multiplier=proxy_lr_multiplier,
            proxy_initializer=proxy_initializer,
            reduction=reduction,
            name=name,
        )
        self.scale = float(scale)
        self.gamma = float(gamma)
        self.margin = float(margin)
        self.tau = float(tau)

    def proxy_terms(self, class_ids, embeddings, proxies):
        losses, counts = soft_triple_terms(class_ids, embeddings, proxies, self.scale, self.gamma, self.margin)
        if self.tau > 0:
            losses = losses + self.tau * soft_triple_regularizer(ops.cast(proxies, losses.dtype))
        return losses, counts

    def similarities(self, embeddings, proxies):
        """`λ·S_ic`, the softmax's logits without the margin."""
        return self.scale * soft_triple_similarities(embeddings, proxies, self.gamma)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "gamma": self.gamma, "margin": self.margin, "tau": self.tau})
        return config


# ---------------------------------------------------------------- P2SGrad


def _unit_rows_fixed_norm(vectors):
    """`w / ‖w‖` row by row, the norm a constant for the gradient (zero rows stay zero).

    The gradient is that of `w` scaled by `1/‖w‖`, without the projection
    of a normalisation: what PML's in-place renormalisation amounts to.
    Dividing by the largest entry first keeps huge rows from overflowing.
    """
    row_max = ops.stop_gradient(ops.max(ops.abs(vectors), axis=-1, keepdims=True))
    scaled = vectors / ops.where(row_max > 0, row_max, ops.ones_like(row_max))
    square_sum = ops.stop_gradient(ops.sum(ops.square(scaled), axis=-1, keepdims=True))
    return scaled / ops.sqrt(ops.where(square_sum > 0, square_sum, ops.ones_like(square_sum)))


def p2sgrad_cosines(embeddings, proxies):
    """`(N, C)` cosines `x̂_iᵀŵ_c`, clipped to [−1, 1]; the class vectors' norms are constants for the gradient."""
    unit = _unit_rows_fixed_norm(ops.cast(proxies, embeddings.dtype))
    cosine = inner_products(l2_normalize(embeddings), unit)
    # where, not clip: the gradient passes at ±1 on every backend, as PyTorch's clamp.
    cosine = ops.where(cosine > 1, ops.ones_like(cosine), cosine)
    return ops.where(cosine < -1, -ops.ones_like(cosine), cosine)


def p2sgrad_terms(class_ids, embeddings, proxies):
    """Per-example P2SGrad losses `mean_c (cos θ_ic − [c = y_i])²`, and a count of 1 each.

    Where the `(N, C)` cosines cost more than the `(D, D)` Gram matrix of
    the class vectors (`_p2sgrad_by_gram`), the loss comes from that.
    """
    num_classes, dim = proxies.shape[0], proxies.shape[-1]
    if _gram_is_cheaper(embeddings.shape[0], num_classes, dim):
        losses = _p2sgrad_by_gram(class_ids, embeddings, proxies)
    else:
        cosine = p2sgrad_cosines(embeddings, proxies)
        target = ops.cast(class_mask(class_ids, num_classes), cosine.dtype)
        losses = ops.mean(ops.square(cosine - target), axis=1)
    return losses, ops.ones_like(losses)


def _gram_is_cheaper(num_examples, num_classes, dim):
    """Whether `_p2sgrad_by_gram`'s products (forward + backward) take fewer multiplications than the cosines'.

    The cosines and their gradient are three `N·C·D` products; the Gram
    route three `N·D²` and two `C·D²`. A batch size not known when traced
    keeps the cosines.
    """
    if num_examples is None or num_classes is None or dim is None:
        return False
    return dim * dim * (3 * num_examples + 2 * num_classes) < 3 * num_examples * num_classes * dim


def _p2sgrad_by_gram(class_ids, embeddings, proxies):
    """P2SGrad's losses without the cosines: `(x̂ᵀGx̂ − 2 x̂ᵀŵ_y + 1) / C`, `G = Σ_c ŵ_c ŵ_cᵀ`.

    With one target per example, `Σ_c (cos θ_ic − [c = y_i])² = Σ_c cos²
    θ_ic − 2 cos θ_iy + 1`, and `Σ_c cos² θ_ic = x̂_iᵀ G x̂_i`. The products
    are `(N, D)·(D, D)` and `(C, D)ᵀ·(C, D)`, never `(N, C)`: for many
    classes (C > D) a fraction of the work and no `(N, C)` memory.

    The cosines are not clipped to [−1, 1]: a cosine beyond them only by
    rounding changes the sum at that rounding's level, and its gradient is
    not cut (PML's clamp cuts it there). 16-bit inputs are computed in
    float32, whose rounding the sum of C squares needs.
    """
    dtype = keras.backend.standardize_dtype(embeddings.dtype)
    work = "float32" if dtype in ("float16", "bfloat16") else dtype
    num_classes = proxies.shape[0]
    unit = _unit_rows_fixed_norm(ops.cast(proxies, work))
    examples = ops.cast(l2_normalize(embeddings), work)
    gram = matmul(ops.transpose(unit), unit)
    squares = ops.sum(matmul(examples, gram) * examples, axis=1)
    # Ids out of range clipped, as `pick_class` does: `nan_outside_classes` marks them afterwards.
    ids = ops.clip(ops.cast(class_ids, "int32"), 0, num_classes - 1)
    own = ops.sum(examples * ops.take(unit, ids, axis=0), axis=1)
    # Never below 0 but by rounding: a loss of 0 stays 0.
    losses = (squares - 2.0 * own + 1.0) * (1.0 / num_classes)
    return ops.cast(ops.where(losses > 0, losses, ops.zeros_like(losses)), dtype)


def p2sgrad(labels, embeddings, proxies):
    """Per-example P2SGrad losses (the math of `P2SGrad`).

    Args:
        labels: Class ids `(N,)`, `0 … C − 1`.
        embeddings: Embeddings `(N, D)`.
        proxies: Class vectors `(C, D)`, row `c` for class `c`.

    Returns:
        The `(N,)` losses `mean_c (cos θ_ic − [c = y_i])²`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> proxies = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> embeddings = np.array([[3.0, 4.0], [0.0, -1.0]])
    >>> [round(float(v), 4) for v in tfm.losses.p2sgrad([0, 1], embeddings, proxies)]
    [0.4, 2.0]
    """
    ids, embeddings, proxies = proxy_inputs(labels, embeddings, proxies, rank=2)
    losses, _ = p2sgrad_terms(ids, embeddings, proxies)
    return nan_outside_classes(losses, ids, proxies.shape[0])


@keras.saving.register_keras_serializable(package="tfmetric")
class UnitNormUniform(keras.initializers.RandomUniform):
    """Entries uniform on [−1, 1], then every vector (along the last axis) scaled to unit norm.

    P2SGrad's initialisation in PyTorch Metric Learning.

    Args:
        seed: An integer, `None` or a `keras.random.SeedGenerator`, as
            Keras' random initializers take.
    """

    def __init__(self, seed=None):
        super().__init__(minval=-1.0, maxval=1.0, seed=seed)

    def __call__(self, shape, dtype=None):
        values = super().__call__(shape, dtype=dtype)
        norms = ops.sqrt(ops.sum(ops.square(values), axis=-1, keepdims=True))
        return values / ops.where(norms > 0, norms, ops.ones_like(norms))

    def get_config(self):
        return {"seed": super().get_config()["seed"]}


@keras.saving.register_keras_serializable(package="tfmetric")
class P2SGrad(ProxyLoss):
    r"""P2SGrad (Zhang et al. 2019, "P2SGrad: Refined Gradients for
    Optimizing Deep Face Models"), as PyTorch Metric Learning computes it.

    $$ \cos\theta_{ic} = \mathrm{clip}\big(\hat x_i^\top w_c / \lVert w_c \rVert, -1, 1\big) $$

    $$ \ell_i = \frac{1}{C} \sum_c \big(\cos\theta_{ic} - [c = y_i]\big)^2 $$

    $$ \text{loss} = \text{the mean of } \ell_i \text{ over the batch} $$

    The paper replaces the gradient of margin-softmax losses by that of
    the cosines towards their targets 1 (own class) and 0 (the others):
    the gradient of this squared error (Eq. 11), free of scale and margin
    hyperparameters. As in PML, `‖w_c‖` is a constant for the gradient:
    PML renormalises its weights in place at every call, so the gradient
    reaches them as that of unit vectors, without the projection a
    normalisation would add. Here the vectors are not rewritten; the
    gradient is scaled by `1/‖w_c‖` instead, which is PML's exactly while
    they have unit norm. Examples are fully normalised (`x̂`, with the
    projection), and zero embeddings or class vectors have cosine 0 where
    PML gives NaN.

    With one target per example the sum is `x̂ᵀGx̂ − 2 cos θ_iy + 1`, `G =
    Σ_c ŵ_c ŵ_cᵀ` the `(D, D)` Gram matrix of the class vectors. Where
    that takes fewer multiplications than the `(N, C)` cosines (many
    classes: `D²(3N + 2C) < 3NCD`, a batch size known when traced), the
    loss comes from `G`, with neither the cosines' time nor their memory;
    a cosine beyond ±1 only by rounding is then not clipped (its change to
    the loss is at that rounding's level).

    Initialisation as PML: uniform on [−1, 1], every class vector scaled to
    unit norm (`UnitNormUniform`). PML's constructor takes
    `(descriptors_dim, num_classes)`, in the other order.

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        proxy_lr_multiplier: Train the class vectors at this multiple of the
            optimizer's learning rate (`tfm.losses.proxy`).
        proxy_initializer: A Keras initializer for the class vectors; `None`
            for the one above.
        reduction: `"sum_over_batch_size"` (the mean above, weighted by
            `sample_weight`), `"sum"`, or `None` for each example's loss.
        name: Optional name of the loss.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> loss = tfm.P2SGrad(num_classes=2, embedding_dim=2)
    >>> loss.set_proxies(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> round(float(loss(np.array([0, 1]), np.array([[3.0, 4.0], [0.0, -1.0]]))), 4)
    1.2
    """

    def __init__(
        self,
        num_classes,
        embedding_dim,
        proxy_lr_multiplier=1.0,
        proxy_initializer=None,
        reduction="sum_over_batch_size",
        name="p2sgrad",
    ):
        if proxy_initializer is None:
            proxy_initializer = UnitNormUniform()
        super().__init__(
            num_classes,
            embedding_dim,
            proxy_lr_multiplier=proxy_lr_multiplier,
            proxy_initializer=proxy_initializer,
            reduction=reduction,
            name=name,
        )

    def proxy_terms(self, class_ids, embeddings, proxies):
        return p2sgrad_terms(class_ids, embeddings, proxies)

    def similarities(self, embeddings, proxies):
        """The cosines `cos θ_ic`."""
        return p2sgrad_cosines(embeddings, proxies)
