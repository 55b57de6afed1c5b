"""VICReg (Bardes, Ponce & LeCun 2022): variance-invariance-covariance regularisation of two views.

A self-supervised loss: no labels. A batch of N inputs is seen twice (two
augmentations), giving two `(N, D)` batches of embeddings `Z` and `Z'` whose
rows correspond. The loss pulls each pair of rows together (invariance),
keeps every dimension's spread over the batch at a standard deviation of at
least 1 in each view (variance: no collapse to a point), and decorrelates
the dimensions within each view (covariance: no collapse to a line).

Through `model.compile` / `model.fit`, the model outputs both views side by
side, `(N, 2·D)` (see `VICReg`), and the labels are ignored.
"""

import keras
from keras import ops
from keras.backend import standardize_dtype

from tfmetric.distances import as_embeddings, matmul
from tfmetric.distribute import scale_for_replicas
from tfmetric.losses.base import reduce_anchor_terms

__all__ = ["VICReg", "split_views", "vicreg", "vicreg_terms"]


def _check_weights(invariance_lambda, variance_mu, covariance_v, eps):
    for name, value in (
        ("invariance_lambda", invariance_lambda),
        ("variance_mu", variance_mu),
        ("covariance_v", covariance_v),
    ):
        if not 0 <= float(value) < float("inf"):
            raise ValueError(f"{name} must be a finite non-negative number; received {value!r}.")
    if not 0 < float(eps) < float("inf"):
        raise ValueError(
            f"eps must be a finite positive number (the gradient of √(variance + eps) is infinite at a constant "
            f"dimension otherwise); received {eps!r}."
        )


def split_views(y_pred):
    """The two views `(N, D)`, `(N, D)` of a model's output `(N, 2·D)` (first half, second half)."""
    views = as_embeddings(y_pred)
    width = views.shape[-1]
    if width is None or width % 2:
        raise ValueError(
            "VICReg takes the two views' embeddings side by side, an output of shape (batch_size, 2 * "
            f"embedding_dim); received shape {tuple(views.shape)}."
        )
    return views[:, : width // 2], views[:, width // 2 :]


def _two_views(embeddings, ref_embeddings):
    first, second = as_embeddings(embeddings), as_embeddings(ref_embeddings)
    dtype = "float64" if "float64" in (standardize_dtype(first.dtype), standardize_dtype(second.dtype)) else "float32"
    first, second = ops.cast(first, dtype), ops.cast(second, dtype)
    if first.shape[-1] is not None and second.shape[-1] is not None and first.shape[-1] != second.shape[-1]:
        raise ValueError(f"The two views have embeddings of sizes {first.shape[-1]} and {second.shape[-1]}.")
    if first.shape[0] is not None and second.shape[0] is not None and first.shape[0] != second.shape[0]:
        raise ValueError(f"The two views have {first.shape[0]} and {second.shape[0]} rows; each row is one input.")
    return first, second


def _spread(view, eps):
    """`(Σ_d max(0, 1 − √(var_d + eps)) / D, Σ_{d ≠ e} cov_de² / D)` of one view."""
    count = ops.cast(ops.shape(view)[0], view.dtype)
    dim = ops.cast(ops.shape(view)[1], view.dtype)
    # Sums ÷ counts, not ops.mean: Keras' PyTorch mean computes float64 in float32.
    safe_count = ops.maximum(count, ops.ones_like(count))
    centered = view - ops.sum(view, axis=0, keepdims=True) / safe_count
    # The unbiased estimates (N − 1); one row has no spread: 0, not 0/0.
    dof = ops.maximum(count - 1.0, ops.ones_like(count))
    covariance = matmul(ops.transpose(centered), centered) / dof
    variance = ops.sum(ops.square(centered), axis=0) / dof
    std = ops.sqrt(variance + eps)
    hinge = ops.sum(ops.relu(1.0 - std)) / dim
    # Masked, not Σ cov² − Σ var²: that difference cancels catastrophically.
    diagonal = ops.eye(ops.shape(covariance)[0], dtype=covariance.dtype) > 0
    off_diagonal = ops.sum(ops.square(ops.where(diagonal, ops.zeros_like(covariance), covariance)))
    return hinge, off_diagonal / dim


def vicreg_terms(embeddings, ref_embeddings, invariance_lambda=25.0, variance_mu=25.0, covariance_v=1.0, eps=1e-4):
    """VICReg's three weighted parts: `(invariance (N,), variance (), covariance ())`.

    `invariance[i] = λ · mean_d (z_id − z'_id)²`;
    `variance = μ · (v(Z) + v(Z')) / 2`, `v(Z) = mean_d max(0, 1 − √(Var(z_d) + ε))`;
    `covariance = ν · (c(Z) + c(Z'))`, `c(Z) = Σ_{d≠e} Cov(Z)_de² / D`.
    Variances and covariances are unbiased (÷ (N − 1)); a batch of one has
    none (0).
    """
    _check_weights(invariance_lambda, variance_mu, covariance_v, eps)
    first, second = _two_views(embeddings, ref_embeddings)
    dim = ops.cast(ops.shape(first)[1], first.dtype)
    invariance = float(invariance_lambda) * ops.sum(ops.square(first - second), axis=1) / dim
    hinge, off_diagonal = _spread(first, float(eps))
    ref_hinge, ref_off_diagonal = _spread(second, float(eps))
    variance = float(variance_mu) * (hinge + ref_hinge) / 2.0
    covariance = float(covariance_v) * (off_diagonal + ref_off_diagonal)
    return invariance, variance, covariance


def vicreg(embeddings, ref_embeddings, *, invariance_lambda=25.0, variance_mu=25.0, covariance_v=1.0, eps=1e-4):
    """Per-example VICReg losses (the math of `VICReg`).

    Args:
        embeddings: The first view's embeddings `(N, D)`.
        ref_embeddings: The second view's `(N, D)`: row i is the same input
            as row i of `embeddings`.
        invariance_lambda, variance_mu, covariance_v: The weights `λ`, `μ`,
            `ν`.
        eps: The `ε` under the standard deviation's square root (> 0).

    Returns:
        The `(N,)` losses: example i's invariance term plus the batch's
        variance and covariance terms (the same for every example), so that
        their mean is PML's `VICRegLoss` (see `vicreg_terms`).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> z = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])  # two correlated dimensions
    >>> [round(float(v), 4) for v in tfm.losses.vicreg(z, z + 0.1)]
    [2.25, 2.25, 2.25]
    """
    invariance, variance, covariance = vicreg_terms(
        embeddings, ref_embeddings, invariance_lambda, variance_mu, covariance_v, eps
    )
    return invariance + variance + covariance


@keras.saving.register_keras_serializable(package="tfmetric")
class VICReg(keras.losses.Loss):
    r"""VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-
    Covariance Regularization for Self-Supervised Learning", ICLR,
    https://arxiv.org/abs/2105.04906).

    $$ \text{loss} = \lambda\, s(Z, Z') + \mu\, \big[v(Z) + v(Z')\big] / 2 + \nu\, \big[c(Z) + c(Z')\big] $$

    $$ s(Z, Z') = \mathrm{mean}_i\, \mathrm{mean}_d\, (z_{id} - z'_{id})^2 $$

    $$ v(Z) = \mathrm{mean}_d \max\big(0, 1 - \sqrt{\mathrm{Var}(z_d) + \varepsilon}\big) $$

    $$ c(Z) = \sum_{d \ne e} \mathrm{Cov}(Z)_{de}^2 / D $$

    with `Z`, `Z'` the `(N, D)` embeddings of two views of the same N inputs
    (row i of each is input i) and unbiased variances and covariances over
    the batch. The defaults are the paper's and PyTorch Metric Learning's
    (PML), whose `VICRegLoss` this reproduces. The paper writes the variance
    term `μ·[v(Z) + v(Z')]`; its official code and PML halve it (the mean
    of the two views), as here.

    With Keras: the model outputs the two views side by side, `(N, 2·D)`
    (first `D` columns: view 1), e.g. one shared encoder applied to both
    augmentations and `keras.layers.Concatenate()`; `y_true` is ignored, so
    `model.fit(x)` without `y` works (or pass any `y`). A `sample_weight`
    weights the examples' invariance terms (the loss is the weighted mean of
    `vicreg`'s per-example losses): it scales nothing in the variance and
    covariance terms, which are properties of the whole batch. Under a
    `tf.distribute` strategy, each replica computes them on its own share of
    the batch.

    A batch of one example has no spread: its variances and covariances are
    0 (PML divides 0 by 0 and returns NaN), so the loss is finite and the
    variance term at its largest. Half-precision inputs are computed in
    float32.

    Args:
        invariance_lambda: The weight `λ` of the invariance term.
        variance_mu: The weight `μ` of the variance term.
        covariance_v: The weight `ν` of the covariance term.
        eps: The `ε` under the square root (> 0).
        reduction: `"sum_over_batch_size"` (the loss above, weighted by
            `sample_weight`), `"sum"`, or `None` for each example's loss.
        name: Optional name of the loss.

    Example:

    >>> import numpy as np, keras
    >>> import tfmetric as tfm
    >>> z = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    >>> loss = tfm.VICReg()
    >>> round(float(loss(None, np.concatenate([z, z + 0.1], axis=1))), 4)  # 25 · 0.1² + 2 · (2 · 1² / 2)
    2.25
    >>> encoder = keras.Sequential([keras.layers.Dense(8)])
    >>> first, second = keras.Input((4,)), keras.Input((4,))
    >>> both = keras.layers.Concatenate()([encoder(first), encoder(second)])
    >>> model = keras.Model([first, second], both)
    >>> model.compile("adam", tfm.VICReg())
    >>> x = np.random.default_rng(0).normal(size=(32, 4))
    >>> history = model.fit([x, x + 0.1], epochs=1, verbose=0)
    """

    def __init__(
        self,
        invariance_lambda=25.0,
        variance_mu=25.0,
        covariance_v=1.0,
        eps=1e-4,
        reduction="sum_over_batch_size",
        name="vicreg",
    ):
        _check_weights(invariance_lambda, variance_mu, covariance_v, eps)
        super().__init__(name=name, reduction=reduction)
        self.invariance_lambda = float(invariance_lambda)
        self.variance_mu = float(variance_mu)
        self.covariance_v = float(covariance_v)
        self.eps = float(eps)

    def _losses(self, y_pred):
        first, second = split_views(y_pred)
        return vicreg(
            first,
            second,
            invariance_lambda=self.invariance_lambda,
            variance_mu=self.variance_mu,
            covariance_v=self.covariance_v,
            eps=self.eps,
        )

    def __call__(self, y_true, y_pred, sample_weight=None):
        # y_true is ignored (None when `fit` has no y); Keras' Loss.__call__
        # would convert it.
        with keras.name_scope(self.name):
            losses = self._losses(y_pred)
            loss = reduce_anchor_terms(losses, ops.ones_like(losses), sample_weight, self.reduction)
            return scale_for_replicas(loss, self.reduction)

    def call(self, y_true, y_pred):
        """Each example's loss (`vicreg`)."""
        return self._losses(y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "invariance_lambda": self.invariance_lambda,
                "variance_mu": self.variance_mu,
                "covariance_v": self.covariance_v,
                "eps": self.eps,
            }
        )
        return config
