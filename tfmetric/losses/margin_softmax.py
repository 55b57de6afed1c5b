"""Margin-softmax losses: a softmax over cosines to learned class vectors, with a margin on the true class.

ArcFace, CosFace, SphereFace, L-Softmax, sub-centre ArcFace and the
normalised softmax (NormFace) train the embeddings as the features of a
softmax classifier whose weights are one learned vector per class
(`loss.proxies`, see `tfm.losses.proxy`). The logit of class `j` grows with
`cos θ_j`, `θ_j` the angle between the embedding and class `j`'s vector;
the true class's logit is lowered by a margin — added to the angle
(ArcFace), subtracted from the cosine (CosFace), multiplying the angle
(SphereFace, L-Softmax) — so that the loss is small only when an embedding
is closer to its own class's vector than to any other by that margin, and
the classes end up separated by angular gaps. They need no positive pairs
in the batch and cost one `(N, D) × (D, C)` product. The pure functions
(`arcface(labels, embeddings, proxies)`, ...) take the class vectors,
`(C, D)` with row `c` for class `c` (`(C, k, D)` for sub-centres), and
return each example's loss; `loss.logits(embeddings)` gives the scores
without the margin, for use as a classifier.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from tfmetric.distances import inner_products
from tfmetric.losses.proxy import (
    ProxyLoss,
    check_proxies,
    class_cross_entropy,
    cosine_to_proxies,
    nan_outside_classes,
    pick_class,
    proxy_inputs,
    unit_rows,
)

__all__ = [
    "ArcFace",
    "CosFace",
    "LargeMarginSoftmax",
    "NormalizedSoftmax",
    "SphereFace",
    "SubCenterArcFace",
    "arcface",
    "arcface_terms",
    "cosface",
    "cosface_terms",
    "large_margin_softmax",
    "large_margin_softmax_terms",
    "margin_softmax_terms",
    "normalized_softmax",
    "normalized_softmax_terms",
    "sphereface",
    "sphereface_terms",
    "subcenter_arcface",
    "subcenter_arcface_terms",
]

# sin θ is computed as sqrt(max(1 − cos² θ, _TINY)): its derivative
# −cos θ / sin θ stays finite where cos θ = ±1 (and beyond, by rounding).
_TINY = 1e-12


# ---------------------------------------------------------------- argument checks


def _check_scale(scale, name="scale"):
    if not (math.isfinite(float(scale)) and float(scale) > 0):
        raise ValueError(f"{name} must be a positive number; received {scale}.")
    return float(scale)


def _check_angular_margin(margin):
    if not (math.isfinite(float(margin)) and 0 <= float(margin) < math.pi):
        raise ValueError(
            f"margin must lie in [0, π) radians; received {margin} (PyTorch Metric Learning takes degrees: "
            f"its 28.6 is 0.5 here)."
        )
    return float(margin)


def _check_finite_margin(margin):
    if not math.isfinite(float(margin)):
        raise ValueError(f"margin must be a finite number; received {margin}.")
    return float(margin)


def _check_angle_multiplier(margin):
    if isinstance(margin, bool) or not float(margin).is_integer() or float(margin) < 1:
        raise ValueError(f"margin multiplies the angle: it must be an integer >= 1; received {margin}.")
    return int(margin)


# ---------------------------------------------------------------- shared math


def _row_norms(x):
    """`‖x_i‖` of every row, without overflow (rows are divided by their largest entry first) and
    with a zero gradient at zero rows."""
    row_max = ops.stop_gradient(ops.max(ops.abs(x), axis=-1))
    row_max = ops.where(row_max > 0, row_max, ops.ones_like(row_max))
    square_sum = ops.sum(ops.square(x / row_max[..., None]), axis=-1)
    positive = square_sum > 0
    root = ops.sqrt(ops.where(positive, square_sum, ops.ones_like(square_sum)))
    return ops.where(positive, row_max * root, ops.zeros_like(square_sum))


def _class_cosines(embeddings, proxies):
    """`(N, C)` cosines to the class vectors; with `(C, k, D)` vectors, each class's largest of its k.

    The largest of k: a product per sub-centre and their elementwise
    maximum (the first of tied sub-centres takes the gradient). The maximum
    over the last axis of an `(N, C, k)` view, whose gradient divides with
    broadcasting, took half of sub-centre ArcFace's time at N = 256 without
    XLA.
    """
    if len(proxies.shape) != 3:
        return cosine_to_proxies(embeddings, proxies)
    unit, vectors = unit_rows(embeddings, proxies)
    vectors = ops.reshape(vectors, proxies.shape)
    per_class = proxies.shape[1]
    # A selection, not `ops.maximum`, which makes float32 of float64 under PyTorch.
    return functools.reduce(
        lambda best, other: ops.where(other > best, other, best),
        [inner_products(unit, vectors[:, j]) for j in range(per_class)],
    )


def margin_softmax_terms(class_ids, cosine, target_logit, logit_scale):
    """Softmax cross-entropies of the logits `logit_scale · cos θ_j`, with `target_logit(cos θ_y)` for the true class.

    Args:
        class_ids: `(N,)` int class ids.
        cosine: `(N, C)` cosines to the class vectors.
        target_logit: Function of the `(N,)` true-class cosines.
        logit_scale: A number, or a tensor broadcasting to `(N, C)`.

    Returns:
        `(losses, ones)`, both `(N,)`: `log(1 + Σ_{j≠y} exp(z_j − z_y))`
        for the logits `z` (`class_cross_entropy`), exact where the loss is tiny.

    The true class's cosine and logit are vectors picked from the rows
    (`pick_class`), not passes over the matrix that select its column.
    """
    scale = ops.convert_to_tensor(logit_scale, cosine.dtype)
    # A per-row `(N, 1)` or per-entry `(N, C)` scale has the true class's entry picked too.
    scale_of_target = pick_class(scale, class_ids) if len(scale.shape) == 2 else scale
    own = target_logit(pick_class(cosine, class_ids)) * scale_of_target
    losses = class_cross_entropy(cosine * scale, class_ids, own)
    return losses, ops.ones_like(losses)


def _additive_angular_margin(margin):
    """`cos θ ↦ cos(θ + m)` for `θ ≤ π − m`, `cos θ − m sin m` beyond (insightface's and PML's choice)."""
    cos_m, sin_m = math.cos(margin), math.sin(margin)

    def target_logit(cosine):
        sine_squared = 1.0 - ops.square(cosine)
        sine = ops.sqrt(ops.where(sine_squared > _TINY, sine_squared, ops.full_like(sine_squared, _TINY)))
        # θ ≤ π − m  ⟺  cos θ ≥ cos(π − m) = −cos m.
        return ops.where(cosine >= -cos_m, cosine * cos_m - sine * sin_m, cosine - margin * sin_m)

    return target_logit


def _multiplicative_angular_margin(margin):
    """`cos θ ↦ ψ(θ) = (−1)^k cos(mθ) − 2k`, `k = ⌊mθ/π⌋`: decreasing in θ, `cos(mθ)` where `mθ ≤ π`."""

    def target_logit(cosine):
        # cos(mθ) = T_m(cos θ), the Chebyshev polynomial: T_0 = 1, T_1 = c,
        # T_{n+1} = 2c T_n − T_{n−1} (the paper's multiple-angle formula,
        # computed stably); a polynomial, so its gradient is finite everywhere.
        previous, current = ops.ones_like(cosine), cosine
        for _ in range(margin - 1):
            previous, current = current, 2.0 * cosine * current - previous
        # k is a constant for the gradient (piecewise constant); no gradient
        # reaches arccos, whose derivative is infinite at ±1.
        theta = ops.arccos(ops.clip(ops.stop_gradient(cosine), -1.0, 1.0))
        k = ops.floor(theta / (math.pi / margin))
        sign = 1.0 - 2.0 * (k - 2.0 * ops.floor(k / 2.0))
        return sign * current - 2.0 * k

    return target_logit


def _per_example(terms, labels, embeddings, proxies, rank=2, **options):
    ids, embeddings, proxies = proxy_inputs(labels, embeddings, proxies, rank)
    losses, _ = terms(ids, embeddings, proxies, **options)
    return nan_outside_classes(losses, ids, proxies.shape[0])


# ---------------------------------------------------------------- term functions


def arcface_terms(class_ids, embeddings, proxies, margin=0.5, scale=64.0):
    """Per-example ArcFace losses: logits `s·cos(θ_y + m)` for the true class, `s·cos θ_j` for the others."""
    margin, scale = _check_angular_margin(margin), _check_scale(scale)
    check_proxies(embeddings, proxies, 2)
    return margin_softmax_terms(class_ids, _class_cosines(embeddings, proxies), _additive_angular_margin(margin), scale)


def subcenter_arcface_terms(class_ids, embeddings, proxies, margin=0.5, scale=64.0):
    """Per-example sub-centre ArcFace losses: ArcFace on each class's largest cosine over its k vectors."""
    margin, scale = _check_angular_margin(margin), _check_scale(scale)
    check_proxies(embeddings, proxies, 3)
    return margin_softmax_terms(class_ids, _class_cosines(embeddings, proxies), _additive_angular_margin(margin), scale)


def cosface_terms(class_ids, embeddings, proxies, margin=0.35, scale=64.0):
    """Per-example CosFace losses: logits `s·(cos θ_y − m)` for the true class, `s·cos θ_j` for the others."""
    margin, scale = _check_finite_margin(margin), _check_scale(scale)
    check_proxies(embeddings, proxies, 2)
    return margin_softmax_terms(class_ids, _class_cosines(embeddings, proxies), lambda cosine: cosine - margin, scale)


def sphereface_terms(class_ids, embeddings, proxies, margin=4, scale=1.0):
    """Per-example SphereFace (A-Softmax) losses: logits `s·‖x‖·ψ(θ_y)`, `s·‖x‖·cos θ_j` for the others."""
    margin, scale = _check_angle_multiplier(margin), _check_scale(scale)
    check_proxies(embeddings, proxies, 2)
    logit_scale = scale * _row_norms(embeddings)[:, None]
    return margin_softmax_terms(
        class_ids, _class_cosines(embeddings, proxies), _multiplicative_angular_margin(margin), logit_scale
    )


def large_margin_softmax_terms(class_ids, embeddings, proxies, margin=4, scale=1.0):
    """Per-example L-Softmax losses: logits `s·‖x‖·‖W_y‖·ψ(θ_y)`, `s·‖x‖·‖W_j‖·cos θ_j` for the others."""
    margin, scale = _check_angle_multiplier(margin), _check_scale(scale)
    check_proxies(embeddings, proxies, 2)
    logit_scale = scale * _row_norms(embeddings)[:, None] * _row_norms(ops.cast(proxies, embeddings.dtype))[None, :]
    return margin_softmax_terms(
        class_ids, _class_cosines(embeddings, proxies), _multiplicative_angular_margin(margin), logit_scale
    )


def normalized_softmax_terms(class_ids, embeddings, proxies, temperature=0.05):
    """Per-example normalised-softmax losses: logits `cos θ_j / T` for every class."""
    temperature = _check_scale(temperature, "temperature")
    check_proxies(embeddings, proxies, 2)
    cosine = _class_cosines(embeddings, proxies)
    return margin_softmax_terms(class_ids, cosine, lambda target_cosine: target_cosine, 1.0 / temperature)


# ---------------------------------------------------------------- pure functions


def arcface(labels, embeddings, proxies, *, margin=0.5, scale=64.0):
    """Per-example ArcFace losses (the math of `ArcFace`).

    Args:
        labels: Class ids `(N,)`, `0 … C − 1`.
        embeddings: `(N, D)` embeddings (any scale: only their directions count).
        proxies: `(C, D)` class vectors, row `c` for class `c`.
        margin: The additive angular margin `m`, in radians.
        scale: The scale `s` of the logits.

    Returns:
        The `(N,)` losses, float32 (float64 for float64 embeddings).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> proxies = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> embeddings = np.array([[2.0, 0.0], [0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.arcface([0, 1], embeddings, proxies, scale=4.0)]
    [0.0294, 1.1317]
    """
    return _per_example(arcface_terms, labels, embeddings, proxies, margin=margin, scale=scale)


def subcenter_arcface(labels, embeddings, proxies, *, margin=0.5, scale=64.0):
    """Per-example sub-centre ArcFace losses (the math of `SubCenterArcFace`).

    The arguments are those of `arcface`, but `proxies` is
    `(C, k, D)`: `k` vectors per class, of which each example meets the
    closest.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> proxies = np.array([[[1.0, 0.0], [0.0, -1.0]], [[0.0, 1.0], [-1.0, 0.0]]])
    >>> embeddings = np.array([[0.0, -1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.subcenter_arcface([0, 1], embeddings, proxies, scale=4.0)]
    [0.0294, 0.0171]
    """
    return _per_example(subcenter_arcface_terms, labels, embeddings, proxies, rank=3, margin=margin, scale=scale)


def cosface(labels, embeddings, proxies, *, margin=0.35, scale=64.0):
    """Per-example CosFace losses (the math of `CosFace`); arguments as `arcface`, `margin` on the cosine.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> proxies = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> embeddings = np.array([[2.0, 0.0], [0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.cosface([0, 1], embeddings, proxies, scale=4.0)]
    [0.0716, 1.0375]
    """
    return _per_example(cosface_terms, labels, embeddings, proxies, margin=margin, scale=scale)


def sphereface(labels, embeddings, proxies, *, margin=4, scale=1.0):
    """Per-example SphereFace losses (the math of `SphereFace`); `margin` the integer angle multiplier.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> proxies = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> embeddings = np.array([[2.0, 0.0], [0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.sphereface([0, 1], embeddings, proxies)]
    [0.1269, 1.6552]
    """
    return _per_example(sphereface_terms, labels, embeddings, proxies, margin=margin, scale=scale)


def large_margin_softmax(labels, embeddings, proxies, *, margin=4, scale=1.0):
    """Per-example L-Softmax losses (the math of `LargeMarginSoftmax`); arguments as `sphereface`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> proxies = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> embeddings = np.array([[2.0, 0.0], [0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.large_margin_softmax([0, 1], embeddings, proxies)]
    [0.1269, 2.3832]
    """
    return _per_example(large_margin_softmax_terms, labels, embeddings, proxies, margin=margin, scale=scale)


def normalized_softmax(labels, embeddings, proxies, *, temperature=0.05):
    """Per-example normalised-softmax losses (the math of `NormalizedSoftmax`).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> proxies = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> embeddings = np.array([[2.0, 0.0], [0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.normalized_softmax([0, 1], embeddings, proxies, temperature=0.5)]
    [0.1269, 0.513]
    """
    return _per_example(normalized_softmax_terms, labels, embeddings, proxies, temperature=temperature)


# ---------------------------------------------------------------- classes


def _initializer(class_name, **config):
    # A configuration, not an instance: every loss draws its own vectors.
    return {"class_name": class_name, "config": config}


@keras.saving.register_keras_serializable(package="tfmetric")
class ArcFace(ProxyLoss):
    r"""ArcFace, the additive angular margin loss (Deng et al. 2019, "ArcFace:
    Additive Angular Margin Loss for Deep Face Recognition").

    With `θ_j` the angle between embedding `x_i` and the vector of class `j`,
    and `y` the class of `x_i`:

    $$ z_y = s \cos(\theta_y + m) \quad \big(s\,(\cos\theta_y - m \sin m) \text{ where } \theta_y > \pi - m\big) $$

    $$ z_j = s \cos\theta_j \quad (j \ne y) $$

    $$ \ell_i = -\log \mathrm{softmax}(z)_y = \log\Big(1 + \sum_{j \ne y} \exp(z_j - z_y)\Big) $$

    $$ \text{loss} = \text{the mean of } \ell_i \text{ over the batch} $$

    Beyond `θ_y = π − m`, `cos(θ_y + m)` would grow again with the angle:
    the paper's code (insightface) and PyTorch Metric Learning switch to
    `cos θ_y − m·sin m` there, and so does this loss. Defaults: the paper's
    `m = 0.5` rad, `s = 64`. The class vectors start as `N(0, 0.01²)`
    entries, as in insightface (they are normalised: only their directions
    count).

    Compared with PyTorch Metric Learning's `ArcFaceLoss`: `margin` is in
    radians (PML takes degrees; its default 28.6° ≈ 0.5 rad); values and
    gradients are otherwise the same, except that the gradient here stays
    finite where an embedding is parallel to a class vector (PML's `acos`
    has an infinite derivative there), and PML initialises the class vectors
    with `N(0, 1)` entries.

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        margin: The additive angular margin `m`, in radians, in `[0, π)`.
        scale: The scale `s` of the logits.
        proxy_lr_multiplier, proxy_initializer, reduction, name: As
            `tfm.losses.ProxyLoss`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> loss = tfm.ArcFace(num_classes=2, embedding_dim=2, scale=4.0)
    >>> loss.set_proxies(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> round(float(loss(np.array([0, 1]), np.array([[2.0, 0.0], [0.6, 0.8]]))), 4)
    0.5806
    >>> np.asarray(loss.predict_classes(np.array([[0.6, 0.8], [3.0, 1.0]]))).tolist()
    [1, 0]
    """

    default_initializer = _initializer("RandomNormal", stddev=0.01)

    def __init__(
        self,
        num_classes,
        embedding_dim,
        margin=0.5,
        scale=64.0,
        proxy_lr_multiplier=1.0,
        proxy_initializer=None,
        reduction="sum_over_batch_size",
        name="arcface",
    ):
        self.margin = _check_angular_margin(margin)
        self.scale = _check_scale(scale)
        super().__init__(
            num_classes,
            embedding_dim,
            proxy_lr_multiplier=proxy_lr_multiplier,
            proxy_initializer=proxy_initializer,
            reduction=reduction,
            name=name,
        )

    def proxy_terms(self, class_ids, embeddings, proxies):
        return arcface_terms(class_ids, embeddings, proxies, self.margin, self.scale)

    def similarities(self, embeddings, proxies):
        """`s·cos θ_j`, the logits without margin."""
        return self.scale * _class_cosines(embeddings, proxies)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "scale": self.scale})
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class SubCenterArcFace(ProxyLoss):
    r"""Sub-centre ArcFace (Deng et al. 2020, "Sub-center ArcFace: Boosting
    Face Recognition by Large-scale Noisy Web Faces").

    Each class has `k` vectors (`loss.proxies` is `(C, k, D)`); an example's
    cosine to a class is its largest cosine to that class's `k` vectors
    (the first of equal ones takes the gradient, as PML's `max`), and the
    loss is `ArcFace` on those cosines:

    $$ \cos\theta_j = \max_{p = 1 \ldots k} \cos(x_i, W_{j,p}) $$

    $$ z_y = s \cos(\theta_y + m) \quad \big(s\,(\cos\theta_y - m \sin m) \text{ where } \theta_y > \pi - m\big) $$

    $$ z_j = s \cos\theta_j \quad (j \ne y) $$

    $$ \ell_i = -\log \mathrm{softmax}(z)_y, \quad \text{loss} = \text{the mean of } \ell_i \text{ over the batch} $$

    Noisy examples of a class gather around non-dominant sub-centres instead
    of pulling the dominant one: `outliers` finds them (the paper drops them
    and retrains with `k = 1`). Defaults: `k = 3`, `m = 0.5` rad, `s = 64`
    (the paper's); the class vectors start as `N(0, 0.01²)` entries, as in
    insightface.

    Compared with PyTorch Metric Learning's `SubCenterArcFaceLoss`: the
    margin and `outliers`' threshold are in radians (PML: degrees),
    `outliers` lists the outliers in increasing order (PML: class by class),
    and the class vectors start as in insightface (PML: `N(0, 1)`);
    otherwise as `ArcFace`.

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        centers_per_class: The number `k` of vectors (sub-centres) per class.
        margin: The additive angular margin `m`, in radians, in `[0, π)`.
        scale: The scale `s` of the logits.
        proxy_lr_multiplier, proxy_initializer, reduction, name: As
            `tfm.losses.ProxyLoss`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> loss = tfm.SubCenterArcFace(num_classes=2, embedding_dim=2, centers_per_class=2, scale=4.0)
    >>> loss.set_proxies(np.array([[[1.0, 0.0], [0.0, -1.0]], [[0.0, 1.0], [-1.0, 0.0]]]))
    >>> round(float(loss(np.array([0, 1]), np.array([[0.0, -1.0], [-0.6, 0.8]]))), 4)
    0.0233
    >>> outliers, dominant = loss.outliers(np.array([[1.0, 0.1], [1.0, -0.1], [0.0, -1.0]]), np.array([0, 0, 0]))
    >>> outliers.tolist(), dominant.tolist()
    ([2], [[1.0, 0.0], [nan, nan]])
    """

    default_initializer = _initializer("RandomNormal", stddev=0.01)

    def __init__(
        self,
        num_classes,
        embedding_dim,
        centers_per_class=3,
        margin=0.5,
        scale=64.0,
        proxy_lr_multiplier=1.0,
        proxy_initializer=None,
        reduction="sum_over_batch_size",
        name="subcenter_arcface",
    ):
        self.margin = _check_angular_margin(margin)
        self.scale = _check_scale(scale)
        super().__init__(
            num_classes,
            embedding_dim,
            centers_per_class=centers_per_class,
            proxy_lr_multiplier=proxy_lr_multiplier,
            proxy_initializer=proxy_initializer,
            reduction=reduction,
            name=name,
        )

    def proxy_terms(self, class_ids, embeddings, proxies):
        return subcenter_arcface_terms(class_ids, embeddings, proxies, self.margin, self.scale)

    def similarities(self, embeddings, proxies):
        """`s·cos θ_j`, each class's largest cosine over its sub-centres: the logits without margin."""
        return self.scale * _class_cosines(embeddings, proxies)

    def outliers(self, embeddings, labels, threshold=np.radians(75)):
        """The examples far from their class's dominant sub-centre, and those centres.

        A class's dominant sub-centre is the one most of its examples are
        closest to (by cosine; the first on ties). An example is an outlier
        when its angle to its class's dominant sub-centre exceeds
        `threshold`, i.e. its cosine is below `cos(threshold)` (PyTorch
        Metric Learning's `get_outliers`, whose threshold is in degrees).

        Args:
            embeddings: `(N, D)` embeddings.
            labels: Their class ids `(N,)`.
            threshold: The angle, in radians (default 75°).

        Returns:
            `(outlier_indices, dominant_centers)` as NumPy arrays: the
            indices of the outliers in increasing order, and the `(C, D)`
            dominant sub-centres (NaN rows for the classes without example).
        """
        if not 0 <= float(threshold) <= math.pi:
            raise ValueError(f"threshold is an angle in [0, π] radians; received {threshold}.")
        embeddings, ids = self._inputs(labels, embeddings)
        x = np.asarray(ops.convert_to_numpy(embeddings), "float64")
        y = np.asarray(ops.convert_to_numpy(ids)).astype("int64")
        centers = self.proxy_values()
        num_classes, k = centers.shape[:2]

        def unit(v):
            norms = np.linalg.norm(v, axis=-1, keepdims=True)
            return v / np.where(norms > 0, norms, 1.0)

        cosine = np.einsum("nd,nkd->nk", unit(x), unit(centers.astype("float64"))[y])  # own class's sub-centres
        counts = np.zeros((num_classes, k), "int64")
        np.add.at(counts, (y, np.argmax(cosine, axis=1)), 1)
        dominant = np.argmax(counts, axis=1)
        present = counts.sum(axis=1) > 0
        dominant_centers = np.where(present[:, None], centers[np.arange(num_classes), dominant], np.nan)
        outliers = np.flatnonzero(cosine[np.arange(len(y)), dominant[y]] < math.cos(float(threshold)))
        return outliers, dominant_centers

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "scale": self.scale})
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class CosFace(ProxyLoss):
    r"""CosFace, the large margin cosine loss (Wang et al. 2018, "CosFace:
    Large Margin Cosine Loss for Deep Face Recognition").

    $$ z_y = s\,(\cos\theta_y - m), \quad z_j = s \cos\theta_j \quad (j \ne y) $$

    $$ \ell_i = -\log \mathrm{softmax}(z)_y, \quad \text{loss} = \text{the mean of } \ell_i \text{ over the batch} $$

    Defaults: `m = 0.35`, `s = 64` (the paper's). A negative margin (Liu et
    al. 2020, "Negative Margin Matters") is accepted. The authors released
    no code: the class vectors start as in PyTorch Metric Learning,
    `N(0, 1)` entries (they are normalised: only their directions count).
    Same values and gradients as PyTorch Metric Learning's `CosFaceLoss`.

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        margin: The cosine margin `m`.
        scale: The scale `s` of the logits.
        proxy_lr_multiplier, proxy_initializer, reduction, name: As
            `tfm.losses.ProxyLoss`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> loss = tfm.CosFace(num_classes=2, embedding_dim=2, scale=4.0)
    >>> loss.set_proxies(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> round(float(loss(np.array([0, 1]), np.array([[2.0, 0.0], [0.6, 0.8]]))), 4)
    0.5546
    """

    default_initializer = _initializer("RandomNormal", stddev=1.0)

    def __init__(
        self,
        num_classes,
        embedding_dim,
        margin=0.35,
        scale=64.0,
        proxy_lr_multiplier=1.0,
        proxy_initializer=None,
        reduction="sum_over_batch_size",
        name="cosface",
    ):
        self.margin = _check_finite_margin(margin)
        self.scale = _check_scale(scale)
        super().__init__(
            num_classes,
            embedding_dim,
            proxy_lr_multiplier=proxy_lr_multiplier,
            proxy_initializer=proxy_initializer,
            reduction=reduction,
            name=name,
        )

    def proxy_terms(self, class_ids, embeddings, proxies):
        return cosface_terms(class_ids, embeddings, proxies, self.margin, self.scale)

    def similarities(self, embeddings, proxies):
        """`s·cos θ_j`, the logits without margin."""
        return self.scale * _class_cosines(embeddings, proxies)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "scale": self.scale})
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class SphereFace(ProxyLoss):
    r"""SphereFace, the angular softmax (A-Softmax) loss (Liu et al. 2017,
    "SphereFace: Deep Hypersphere Embedding for Face Recognition").

    The class vectors are normalised, the embeddings are not: with the
    integer margin `m` multiplying the true class's angle,

    $$ z_y = s\, \lVert x_i \rVert\, \psi(\theta_y), \quad z_j = s\, \lVert x_i \rVert \cos\theta_j \quad (j \ne y) $$

    $$ \ell_i = -\log \mathrm{softmax}(z)_y, \quad \text{loss} = \text{the mean of } \ell_i \text{ over the batch} $$

    $$ \psi(\theta) = (-1)^k \cos(m\theta) - 2k, \quad k = \lfloor m\theta / \pi \rfloor \in \{0, \ldots, m\} $$

    `ψ` equals `cos(mθ)` for `θ ≤ π/m` and keeps decreasing beyond;
    `cos(mθ)` is the multiple-angle polynomial in `cos θ`.

    Defaults: `m = 4` (the paper's), `s = 1`. The class vectors start as in
    the paper's Caffe model (`xavier`: uniform in `±√(3/D)`). As in PyTorch
    Metric Learning's `SphereFaceLoss`, whose values and gradients this
    loss reproduces, the paper's training-time annealing (the logit
    `(λ·cos θ_y + ψ(θ_y)) / (1 + λ)` with λ decaying from 1000 to 5) is not
    applied: the margin acts in full from the first step, which can slow
    the start of training (a smaller `m` helps).

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        margin: The angle multiplier `m`, an integer ≥ 1 (1: no margin).
        scale: A factor `s` on the logits.
        proxy_lr_multiplier, proxy_initializer, reduction, name: As
            `tfm.losses.ProxyLoss`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> loss = tfm.SphereFace(num_classes=2, embedding_dim=2)
    >>> loss.set_proxies(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> round(float(loss(np.array([0, 1]), np.array([[2.0, 0.0], [0.6, 0.8]]))), 4)
    0.8911
    """

    default_initializer = _initializer("VarianceScaling", scale=1.0, mode="fan_out", distribution="uniform")

    def __init__(
        self,
        num_classes,
        embedding_dim,
        margin=4,
        scale=1.0,
        proxy_lr_multiplier=1.0,
        proxy_initializer=None,
        reduction="sum_over_batch_size",
        name="sphereface",
    ):
        self.margin = _check_angle_multiplier(margin)
        self.scale = _check_scale(scale)
        super().__init__(
            num_classes,
            embedding_dim,
            proxy_lr_multiplier=proxy_lr_multiplier,
            proxy_initializer=proxy_initializer,
            reduction=reduction,
            name=name,
        )

    def proxy_terms(self, class_ids, embeddings, proxies):
        return sphereface_terms(class_ids, embeddings, proxies, self.margin, self.scale)

    def similarities(self, embeddings, proxies):
        """`s·‖x‖·cos θ_j`, the logits without margin."""
        return self.scale * _row_norms(embeddings)[:, None] * _class_cosines(embeddings, proxies)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "scale": self.scale})
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class LargeMarginSoftmax(ProxyLoss):
    r"""L-Softmax, the large-margin softmax loss (Liu et al. 2016,
    "Large-Margin Softmax Loss for Convolutional Neural Networks").

    A softmax over the plain products `W_j·x_i = ‖W_j‖‖x_i‖ cos θ_j`, the
    true class's angle multiplied by the integer margin `m`:

    $$ z_y = s\, \lVert W_y \rVert\, \lVert x_i \rVert\, \psi(\theta_y),
        \quad z_j = s\, \lVert W_j \rVert\, \lVert x_i \rVert \cos\theta_j \quad (j \ne y) $$

    $$ \ell_i = -\log \mathrm{softmax}(z)_y, \quad \text{loss} = \text{the mean of } \ell_i \text{ over the batch} $$

    $$ \psi(\theta) = (-1)^k \cos(m\theta) - 2k, \quad k = \lfloor m\theta / \pi \rfloor \in \{0, \ldots, m\} $$

    `ψ` equals `cos(mθ)` for `θ ≤ π/m` and keeps decreasing beyond;
    `cos(mθ)` is the multiple-angle polynomial in `cos θ`.

    Defaults: `m = 4`, `s = 1`. The class vectors start as in the paper's
    Caffe models (`msra`: `N(0, 2/D)` entries). As in PyTorch Metric
    Learning's `LargeMarginSoftmaxLoss`, whose values and gradients this
    loss reproduces, the paper's training-time annealing (the logit
    `(λ·‖W_y‖‖x‖cos θ_y + ‖W_y‖‖x‖ψ(θ_y)) / (1 + λ)` with λ decaying from
    1000) is not applied. The logits grow with the norms of the embeddings
    and class vectors: beyond about `1e38` in float32 (norms of about
    `1e18` each) they overflow.

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        margin: The angle multiplier `m`, an integer ≥ 1 (1: the plain
            softmax on `W·x`, without bias).
        scale: A factor `s` on the logits.
        proxy_lr_multiplier, proxy_initializer, reduction, name: As
            `tfm.losses.ProxyLoss`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> loss = tfm.LargeMarginSoftmax(num_classes=2, embedding_dim=2)
    >>> loss.set_proxies(np.array([[1.0, 0.0], [0.0, 2.0]]))
    >>> round(float(loss(np.array([0, 1]), np.array([[2.0, 0.0], [0.6, 0.8]]))), 4)
    1.2551
    """

    default_initializer = _initializer(
        "VarianceScaling", scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )

    def __init__(
        self,
        num_classes,
        embedding_dim,
        margin=4,
        scale=1.0,
        proxy_lr_multiplier=1.0,
        proxy_initializer=None,
        reduction="sum_over_batch_size",
        name="large_margin_softmax",
    ):
        self.margin = _check_angle_multiplier(margin)
        self.scale = _check_scale(scale)
        super().__init__(
            num_classes,
            embedding_dim,
            proxy_lr_multiplier=proxy_lr_multiplier,
            proxy_initializer=proxy_initializer,
            reduction=reduction,
            name=name,
        )

    def proxy_terms(self, class_ids, embeddings, proxies):
        return large_margin_softmax_terms(class_ids, embeddings, proxies, self.margin, self.scale)

    def similarities(self, embeddings, proxies):
        """`s·‖x‖·‖W_j‖·cos θ_j = s·W_j·x`, the logits without margin."""
        norms = _row_norms(embeddings)[:, None] * _row_norms(ops.cast(proxies, embeddings.dtype))[None, :]
        return self.scale * norms * _class_cosines(embeddings, proxies)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "scale": self.scale})
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class NormalizedSoftmax(ProxyLoss):
    r"""The normalised softmax loss (NormFace: Wang et al. 2017, "NormFace:
    L2 Hypersphere Embedding for Face Verification"; Zhai & Wu 2019,
    "Classification is a Strong Baseline for Deep Metric Learning").

    A softmax over the cosines to the class vectors, at temperature `T`,
    without margin:

    $$ z_j = \cos\theta_j / T $$

    $$ \ell_i = -\log \mathrm{softmax}(z)_y, \quad \text{loss} = \text{the mean of } \ell_i \text{ over the batch} $$

    Default `T = 0.05` (Zhai & Wu's); NormFace's scale `s` is `1/T`. The
    class vectors start as in Zhai & Wu's code, uniform in `±1/√D` (they are
    normalised: only their directions count). Same values and gradients as
    PyTorch Metric Learning's `NormalizedSoftmaxLoss` (which starts from
    `N(0, 1)` entries).

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        temperature: The temperature `T`.
        proxy_lr_multiplier, proxy_initializer, reduction, name: As
            `tfm.losses.ProxyLoss`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> loss = tfm.NormalizedSoftmax(num_classes=2, embedding_dim=2, temperature=0.5)
    >>> loss.set_proxies(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> round(float(loss(np.array([0, 1]), np.array([[2.0, 0.0], [0.6, 0.8]]))), 4)
    0.32
    """

    default_initializer = _initializer("VarianceScaling", scale=1.0 / 3.0, mode="fan_out", distribution="uniform")

    def __init__(
        self,
        num_classes,
        embedding_dim,
        temperature=0.05,
        proxy_lr_multiplier=1.0,
        proxy_initializer=None,
        reduction="sum_over_batch_size",
        name="normalized_softmax",
    ):
        self.temperature = _check_scale(temperature, "temperature")
        super().__init__(
            num_classes,
            embedding_dim,
            proxy_lr_multiplier=proxy_lr_multiplier,
            proxy_initializer=proxy_initializer,
            reduction=reduction,
            name=name,
        )

    def proxy_terms(self, class_ids, embeddings, proxies):
        return normalized_softmax_terms(class_ids, embeddings, proxies, self.temperature)

    def similarities(self, embeddings, proxies):
        """`cos θ_j / T`, the logits."""
        return _class_cosines(embeddings, proxies) / self.temperature

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config
