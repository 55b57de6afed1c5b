"""The manifold loss (Aziere & Todorovic 2019): an N-pair hinge on random-walk similarities to proxies.

The batch and `K` learned proxies form one graph, `M = N + K` nodes joined
by `exp(2·max(cos, 0))`. A random walk on it with restart probability
`1 − α` converges to `F = (1 − α)(I − α S̄)⁻¹`, with `S̄ = D^{-1/2} S D^{-1/2}`
the symmetrically normalised graph: `F[i, j]` is how much of node `i`'s
similarity reaches node `j` along all paths of the graph — a similarity
along the data's manifold, not along straight lines. Each example is pulled
towards its proxy and pushed from the others, in two ways: by these
manifold similarities (the "intrinsic" loss), and by the cosine between its
row of `F` and a proxy's row of `F` (the "context" loss: same neighbours,
same manifold).

The random walk needs the whole `(M, M)` graph and its inverse: memory
`O((N + K)²)` and time `O((N + K)³)` per batch, more than the `(N, K)`
scores of the other proxy losses — the closed form of the walk is the
loss's math, nothing smaller gives it.
"""

import keras
import numpy as np
from keras import ops

from tfmetric.distances import inner_products, l2_normalize
from tfmetric.losses.base import row_logsumexp
from tfmetric.losses.proxy import ProxyLoss, class_mask, cosine_to_proxies, nan_outside_classes, proxy_inputs

__all__ = ["Manifold", "manifold", "manifold_similarities", "manifold_terms", "meta_class_table"]


def _check_arguments(lambda_c, alpha, margin):
    if not float(lambda_c) >= 0:
        raise ValueError(f"lambda_c must be a non-negative number (or inf); received {lambda_c!r}.")
    if not 0 <= float(alpha) < 1:
        raise ValueError(
            f"alpha must lie in [0, 1) (at 1 the random walk never restarts and I − αS̄ is singular); "
            f"received {alpha!r}."
        )
    if not np.isfinite(float(margin)):
        raise ValueError(f"margin must be a finite number; received {margin!r}.")


def manifold_similarities(embeddings, proxies, alpha=0.8):
    """The converged random walk over the batch and the proxies.

    Args:
        embeddings: `(N, D)`.
        proxies: `(K, D)`.
        alpha: The probability `α` that the walk goes on (`1 − α`: it
            restarts), in `[0, 1)`.

    Returns:
        `(F_e, F_p)`: the rows of `F = (1 − α)(I − α S̄)⁻¹` of the examples,
        `(N, N + K)`, and of the proxies, `(K, N + K)`; columns in the order
        examples, then proxies. `S[i, j] = exp(2·max(cos(v_i, v_j), 0))`
        off the diagonal, 0 on it (PML's `exp(cos / 0.5)`), and
        `S̄ = D^{-1/2} S D^{-1/2}` with `D` its row sums.
    """
    proxies = ops.cast(proxies, embeddings.dtype)
    num_proxies = proxies.shape[0]
    nodes = l2_normalize(ops.concatenate([embeddings, proxies], axis=0))
    cosine = inner_products(nodes, nodes)
    size = ops.shape(cosine)[0]
    eye = ops.eye(size, dtype=cosine.dtype)
    weights = ops.exp(2.0 * ops.maximum(cosine, ops.zeros_like(cosine)))
    weights = ops.where(eye > 0, ops.zeros_like(weights), weights)
    # Every off-diagonal weight is >= 1, so a degree is 0 only for a lone node.
    degree = ops.sum(weights, axis=1)
    scale = 1.0 / ops.sqrt(ops.where(degree > 0, degree, ops.ones_like(degree)))
    normalized = scale[:, None] * weights * scale[None, :]
    walk = (1.0 - alpha) * ops.inv(eye - alpha * normalized)
    return walk[:-num_proxies], walk[-num_proxies:]


def _hinge_terms(scores, own, margin):
    """`log(1 + Σ_{k ≠ own, t_k ≥ 0} exp(t_k))` of every row, `t_k = scores_k − scores_own + margin`."""
    own_score = ops.sum(ops.where(own, scores, ops.zeros_like(scores)), axis=1)
    excess = scores - own_score[:, None] + margin
    active = ops.logical_and(ops.logical_not(own), excess >= 0)
    return row_logsumexp(excess, active, add_one=True)


def manifold_terms(proxy_ids, embeddings, proxies, lambda_c=1.0, alpha=0.8, margin=5e-4):
    """Each example's manifold loss, `(N,)`, and a count of 1 each.

    `proxy_ids[i]` is the proxy (meta-class) of example i; an id out of
    `[0, K)` gives the example no own proxy (the callers make its loss NaN).
    `lambda_c = inf` keeps the context loss alone.
    """
    _check_arguments(lambda_c, alpha, margin)
    lambda_c, alpha = float(lambda_c), float(alpha)
    num_proxies = proxies.shape[0]
    walk_e, walk_p = manifold_similarities(embeddings, proxies, alpha)
    own = class_mask(proxy_ids, num_proxies)
    # The manifold similarities of every example to every proxy.
    context = _hinge_terms(inner_products(l2_normalize(walk_e), l2_normalize(walk_p)), own, margin)
    if lambda_c == float("inf"):
        losses = context
    else:
        losses = _hinge_terms(walk_e[:, -num_proxies:], own, margin) + lambda_c * context
    return losses, ops.ones_like(losses)


def manifold(labels, embeddings, proxies, *, lambda_c=1.0, alpha=0.8, margin=5e-4):
    """Per-example manifold losses (the math of `Manifold`).

    Args:
        labels: Proxy (meta-class) ids `(N,)`, `0 … K − 1`: PML's
            `indices_tuple`. (The class `Manifold` maps class ids to them.)
        embeddings: Embeddings `(N, D)`.
        proxies: The proxies `(K, D)`.
        lambda_c: The weight `λ_C` of the context loss; `inf`: the context
            loss alone.
        alpha: The random walk's `α`, in `[0, 1)`.
        margin: The margin `m`.

    Returns:
        The `(N,)` losses `ℓ_int + λ_C ℓ_ctx` (see `Manifold`); their mean is
        PML's `ManifoldLoss`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> proxies = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> embeddings = np.array([[1.0, 0.1], [0.2, 1.0], [0.9, 0.0]])
    >>> [round(float(v), 4) for v in tfm.losses.manifold([0, 1, 1], embeddings, proxies)]
    [0.0, 0.0, 1.5382]
    """
    ids, embeddings, proxies = proxy_inputs(labels, embeddings, proxies, rank=2)
    losses, _ = manifold_terms(ids, embeddings, proxies, lambda_c, alpha, margin)
    return nan_outside_classes(losses, ids, proxies.shape[0])


def meta_class_table(num_classes, K=None, partition_seed=0):
    """The proxy of every class, `(num_classes,)` int32: a fixed random partition into `K` meta-classes.

    `K = None` (or `num_classes`): class c has proxy c. Otherwise the
    classes, shuffled by `partition_seed`, are dealt to the `K` proxies in
    turn, so that every proxy gets `⌊C/K⌋` or `⌈C/K⌉` classes.
    """
    num_classes = int(num_classes)
    if K is None or int(K) == num_classes:
        return np.arange(num_classes, dtype="int32")
    order = np.random.default_rng(int(partition_seed)).permutation(num_classes)
    table = np.empty(num_classes, dtype="int32")
    table[order] = np.arange(num_classes) % int(K)
    return table


@keras.saving.register_keras_serializable(package="tfmetric")
class Manifold(ProxyLoss):
    r"""The manifold loss (Aziere & Todorovic 2019, "Ensemble Deep Manifold
    Similarity Learning using Hard Proxies", CVPR,
    https://openaccess.thecvf.com/content_CVPR_2019/papers/Aziere_Ensemble_Deep_Manifold_Similarity_Learning_Using_Hard_Proxies_CVPR_2019_paper.pdf).

    The N examples and the K proxies are the nodes of a graph (see
    `tfm.losses.manifold`); `F = (1 − α)(I − α S̄)⁻¹` is the converged random
    walk on it. With `p(i)` example i's proxy, `F_ik` its manifold
    similarity to proxy k and `c_ik = cos(F_i, F_k)` the cosine of their rows
    of `F`:

    $$ \ell_{\text{int}}(i) = \log\Big(1 + \sum_{k \ne p(i),\ t \ge 0} \exp(t)\Big), \quad t = F_{ik} - F_{i p(i)}
        + m $$

    $$ \ell_{\text{ctx}}(i) = \text{the same with } c_{ik} \text{ in place of } F_{ik} $$

    $$ \text{loss} = \text{the mean over } i \text{ of } \ell_{\text{int}}(i) + \lambda_C\, \ell_{\text{ctx}}(i) $$

    A proxy term counts only where it is within the margin of (or above)
    the example's own proxy (`t ≥ 0`): the loss jumps by up to `log 2` per
    term where `t` crosses 0, and its gradient comes from the terms that
    count, as in PyTorch Metric Learning (PML) and the paper's N-pair form.

    Proxies and labels. The paper (after Xuan et al. 2018) splits the
    classes at random into `K` meta-classes, one proxy each; PML's
    `ManifoldLoss` takes no labels and, without `indices_tuple`, draws each
    example's proxy at random at every call. Here the labels are class ids
    and a fixed random partition (`meta_class_table`, from
    `partition_seed`) gives their proxies; `K = None` (default) is one proxy
    per class (PML's default is `K = 50` random meta-classes). PML's
    values with `indices_tuple = ids` are this loss's with
    `num_classes = K` and labels `ids`, or the pure function `manifold`.
    `lambda_c = inf` is the context loss alone, as PML's docstring says
    (PML itself then returns inf or NaN).

    `logits` (and `predict_classes`) score an embedding by its cosine to the
    proxy of each class (the walk needs a batch); classes that share a
    proxy share a score.

    The loss is per example, so a `sample_weight` weights examples; but
    every example's loss depends on the whole batch through the walk.
    Memory `O((N + K)²)`, time `O((N + K)³)`: the walk's closed form inverts
    an `(N + K) × (N + K)` matrix (in float32 for half-precision inputs).
    Initialisation: a standard normal, as PML (only directions matter).

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        K: Number of proxies (meta-classes), at most `num_classes`; `None`:
            one per class.
        lambda_c: Weight `λ_C` of the context loss (≥ 0, or `inf` for the
            context loss alone).
        alpha: The random walk's `α` in `[0, 1)`: how much similarity each
            node passes on to its neighbours.
        margin: The margin `m`.
        partition_seed: Seed of the classes' partition into meta-classes
            (used only when `K < num_classes`; an ensemble gives each
            learner its own).
        proxy_lr_multiplier: Train the proxies at this multiple of the
            optimizer's learning rate (`tfm.losses.proxy`).
        proxy_initializer: A Keras initializer for the proxies; `None` for
            the one above.
        reduction: `"sum_over_batch_size"` (the mean above, weighted by
            `sample_weight`), `"sum"`, or `None` for each example's loss.
        name: Optional name of the loss.

    Example:

    >>> import numpy as np, keras
    >>> import tfmetric as tfm
    >>> loss = tfm.Manifold(num_classes=2, embedding_dim=2)
    >>> loss.set_proxies(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> embeddings = np.array([[1.0, 0.1], [0.2, 1.0], [0.9, 0.0]])
    >>> round(float(loss(np.array([0, 1, 1]), embeddings)), 4)
    0.5127
    >>> [int(c) for c in keras.ops.convert_to_numpy(loss.predict_classes(embeddings))]
    [0, 1, 0]
    """

    def __init__(
        self,
        num_classes,
        embedding_dim,
        K=None,
        lambda_c=1.0,
        alpha=0.8,
        margin=5e-4,
        partition_seed=0,
        proxy_lr_multiplier=1.0,
        proxy_initializer=None,
        reduction="sum_over_batch_size",
        name="manifold",
    ):
        _check_arguments(lambda_c, alpha, margin)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be positive; received {num_classes}.")
        if K is not None and not 1 <= int(K) <= int(num_classes):
            raise ValueError(
                f"K (the number of proxies) must lie in [1, num_classes = {num_classes}]; received {K!r}."
            )
        if proxy_initializer is None:
            proxy_initializer = keras.initializers.RandomNormal(stddev=1.0)
        num_proxies = int(num_classes) if K is None else int(K)
        # The base class holds one vector per "class": here, per proxy.
        super().__init__(
            num_proxies,
            embedding_dim,
            proxy_lr_multiplier=proxy_lr_multiplier,
            proxy_initializer=proxy_initializer,
            reduction=reduction,
            name=name,
        )
        self.num_classes = int(num_classes)
        self.K = None if K is None else int(K)
        self.lambda_c = float(lambda_c)
        self.alpha = float(alpha)
        self.margin = float(margin)
        self.partition_seed = int(partition_seed)
        self.meta_classes = meta_class_table(self.num_classes, self.K, self.partition_seed)

    def _proxy_ids(self, class_ids):
        # Clipped first: a gather out of range is an error on TensorFlow's
        # CPU; the base class makes those examples' losses NaN.
        clipped = ops.clip(ops.cast(class_ids, "int32"), 0, self.num_classes - 1)
        return ops.take(ops.convert_to_tensor(self.meta_classes), clipped, axis=0)

    def proxy_terms(self, class_ids, embeddings, proxies):
        return manifold_terms(self._proxy_ids(class_ids), embeddings, proxies, self.lambda_c, self.alpha, self.margin)

    def similarities(self, embeddings, proxies):
        """`(N, num_classes)`: the cosine of each embedding to the proxy of each class."""
        return ops.take(cosine_to_proxies(embeddings, proxies), ops.convert_to_tensor(self.meta_classes), axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "K": self.K,
                "lambda_c": self.lambda_c,
                "alpha": self.alpha,
                "margin": self.margin,
                "partition_seed": self.partition_seed,
            }
        )
        return config
