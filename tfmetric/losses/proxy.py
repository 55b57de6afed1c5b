"""Losses that learn a vector per class (proxies): the base class and what its subclasses share.

Instead of mining pairs in the batch, these losses compare every embedding
with `num_classes` learned class vectors — one per class, or `k` per class
(sub-centres) — so a batch needs no positives and the cost is `O(N·C·D)`
whatever the batch holds. The vectors are one Keras variable,
`loss.proxies`, of shape `(num_classes, D)` or `(num_classes, k, D)` (row or
block `c` belongs to class `c`), kept in the loss's `LossState`: it joins
the model in `model.compile`, so `model.fit` trains it with the model's own
optimizer and every Keras persistence path saves and restores it with the
optimizer's state (`tfm.losses.state`). It is float32 under mixed precision.

A subclass implements `proxy_terms(class_ids, embeddings, proxies)` — the
`(loss_sums, term_counts)` of every example, as the in-batch losses do —
and `similarities(embeddings, proxies)`, the `(N, C)` class scores without
margin that `logits` and `predict_classes` serve at inference. A loss that
is not a sum over examples (Proxy Anchor: a sum over proxies) overrides
`reduce` instead of `proxy_terms`. Nothing of size `N·C·D` is formed: the
scores are one `(N, D) × (D, C·k)` product.

`proxy_lr_multiplier = m` trains the class vectors at `m` times the
learning rate, with any optimizer: the variable holds `vectors / m`, the
loss uses `m × variable` and passes the gradient through unscaled, so every
step the optimizer takes on the variable moves the vectors `m` times as far
— for SGD (with momentum), Adam, RMSprop alike, where scaling the gradient
would be undone by Adam's normalisation. Only decoupled weight decay
(AdamW's) still acts at the base rate.
"""

import keras
from keras import ops

from tfmetric.distances import as_embeddings, inner_products, l2_normalize
from tfmetric.distribute import scale_for_replicas
from tfmetric.labels import class_ids, in_class_range
from tfmetric.losses.base import reduce_anchor_terms, shifted_exponentials
from tfmetric.losses.state import LossState
from tfmetric.mining import row_pick

__all__ = [
    "ProxyLoss",
    "check_proxies",
    "class_cross_entropy",
    "class_mask",
    "cosine_to_proxies",
    "nan_outside_classes",
    "pick_class",
    "proxy_class_scores",
    "proxy_inputs",
    "unit_rows",
]


def check_proxies(embeddings, proxies, rank):
    """Raises ValueError unless `proxies` has `rank` axes (2: `(C, D)`, 3: `(C, k, D)`) of the embeddings' size."""
    if len(proxies.shape) != rank:
        layout = "(num_classes, embedding_dim)" if rank == 2 else "(num_classes, centers_per_class, embedding_dim)"
        raise ValueError(f"Class vectors must have shape {layout}; received shape {tuple(proxies.shape)}.")
    if embeddings.shape[-1] is not None and proxies.shape[-1] is not None and embeddings.shape[-1] != proxies.shape[-1]:
        raise ValueError(f"Embeddings of size {embeddings.shape[-1]} for class vectors of size {proxies.shape[-1]}.")


def proxy_inputs(labels, embeddings, proxies, rank):
    """`(class_ids, embeddings, proxies)` of a pure function: checked, the vectors in the embeddings' dtype."""
    embeddings = as_embeddings(embeddings)
    proxies = ops.cast(ops.convert_to_tensor(proxies), embeddings.dtype)
    check_proxies(embeddings, proxies, rank)
    return class_ids(labels, proxies.shape[0], embeddings), embeddings, proxies


def class_mask(class_ids, num_classes, class_major=False):
    """`(N, C)` booleans: column `c` marks the examples of class `c` (an id out of range marks none).

    `class_major`: the `(C, N)` transpose, made as such (no transpose).
    """
    ids, classes = ops.cast(class_ids, "int32"), ops.arange(num_classes, dtype="int32")
    # ops.equal, not ==: in a TensorFlow 1-style graph a tensor's == is Python's `is`.
    if class_major:
        return ops.equal(classes[:, None], ids[None, :])
    return ops.equal(ids[:, None], classes[None, :])


def class_cross_entropy(logits, class_ids, own=None):
    """Each row's `−log softmax(z)_y` for its class y: `log(1 + Σ_{j≠y} exp(z_j − z_y))`.

    `logits` are the `(N, C)` class scores; `own`, the `(N,)` true-class
    logits where a margin makes them differ from `logits[i, y_i]` (whose
    column is then not read), else `pick_class(logits, class_ids)`. Exact where
    the loss is tiny (`log1p`), stable for large logits, 0 for a row
    without other classes. The gradient is written out, `∂ℓ/∂z_j =
    exp(z_j − z_y − ℓ)` (0 at the true class's column) and `∂ℓ/∂z_y =
    −(1 − e^(−ℓ))`: one pass over the logits where autodiff took a dozen
    through the shifts and masks, and no pass selects the true column.
    """
    if own is None:
        own = pick_class(logits, class_ids)
    return _cross_entropy(logits, own, ops.cast(class_mask(class_ids, logits.shape[1]), logits.dtype))


def pick_class(values, class_ids):
    """`values[i, y_i]` of every row, `(N,)`: a vector picked from the rows, not a pass over the matrix.

    An id out of range is clipped to a column (`nan_outside_classes` marks
    its loss); an `(N, 1)` column of per-row values gives its one entry.
    """
    return row_pick(values, ops.clip(ops.cast(class_ids, "int32"), 0, values.shape[1] - 1))


def _cross_entropy(logits, own, target_ones):
    # The mask is an argument: JAX's custom gradients cannot close over the
    # tracers of an enclosing trace.
    @ops.custom_gradient
    def cross_entropy(logits, own, target_ones):
        exps, total, shift = shifted_exponentials(logits - own[:, None], target_ones < 0.5, add_one=True)
        # Unshifted, every term is <= 1 = exp(0) (or the row is empty): log1p keeps tiny losses exact.
        losses = ops.where(shift > 0, shift + ops.log(total + ops.exp(-shift)), ops.log1p(total))

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, logits.dtype)
            # exp(v − ℓ) from the forward pass's exp(v − shift) (ℓ ≥ shift: no overflow);
            # exp(−∞) = 0 at the true class.
            others = exps * (upstream * ops.exp(shift - losses))[:, None]
            return others, upstream * ops.expm1(-losses), ops.zeros_like(target_ones)

        return losses, gradient

    return cross_entropy(logits, own, target_ones)


def nan_outside_classes(losses, class_ids, num_classes):
    """`losses`, NaN for the examples whose label is no class id (possible only where it was not checked)."""
    return ops.where(in_class_range(class_ids, num_classes), losses, ops.full_like(losses, float("nan")))


def cosine_to_proxies(embeddings, proxies, class_major=False):
    """Cosine similarities `(N, C·k)` of the embeddings to every class vector, flattened class-major.

    `proxies` is `(C, D)` or `(C, k, D)`; zero vectors give cosine 0.
    `class_major`: the `(C·k, N)` transpose, from the product's operands in
    that order (no transpose), for losses that reduce over each class
    vector's examples.
    """
    unit, flat = unit_rows(embeddings, proxies)
    return inner_products(flat, unit) if class_major else inner_products(unit, flat)


def unit_rows(embeddings, proxies):
    """The unit embeddings and unit class vectors `(C·k, D)` (flattened class-major, in the embeddings' type)."""
    flat = l2_normalize(ops.reshape(ops.cast(proxies, embeddings.dtype), (-1, proxies.shape[-1])))
    return l2_normalize(embeddings), flat


def proxy_class_scores(scores, num_classes):
    """`(N, C, k)` view of `(N, C·k)` scores (class-major), for losses with k vectors per class."""
    return ops.reshape(scores, (ops.shape(scores)[0], num_classes, -1))


class _Scaled(keras.initializers.Initializer):
    """An initializer's values divided by `divisor` (the variable holds vectors / m)."""

    def __init__(self, initializer, divisor):
        self.initializer = initializer
        self.divisor = divisor

    def __call__(self, shape, dtype=None):
        values = self.initializer(shape, dtype=dtype)
        return values if self.divisor == 1 else values / self.divisor


class ProxyLoss(keras.losses.Loss):
    """Base class of the losses that learn class vectors (see `tfm.losses.proxy`).

    Args:
        num_classes: Number of classes; labels are the class ids
            `0 … num_classes − 1`.
        embedding_dim: Size of the embeddings.
        centers_per_class: `None` for one vector per class, shape
            `(num_classes, embedding_dim)`; an integer `k` for `k` per class,
            shape `(num_classes, k, embedding_dim)`.
        proxy_lr_multiplier: Train the class vectors at this multiple of the
            optimizer's learning rate (see the module docstring).
        proxy_initializer: A Keras initializer for the class vectors; `None`
            for the paper's (each loss documents it).
        reduction: `"sum_over_batch_size"` (the mean over examples, weighted
            by `sample_weight`), `"sum"`, or `None` for each example's loss.
        name: Optional name of the loss.
    """

    # Subclasses name their paper's initialisation.
    default_initializer = "random_normal"

    def __init__(
        self,
        num_classes,
        embedding_dim,
        centers_per_class=None,
        proxy_lr_multiplier=1.0,
        proxy_initializer=None,
        reduction="sum_over_batch_size",
        name=None,
    ):
        super().__init__(reduction=reduction, name=name)
        if int(num_classes) < 1 or int(embedding_dim) < 1:
            raise ValueError(
                f"num_classes and embedding_dim must be positive; received {num_classes} and {embedding_dim}."
            )
        if centers_per_class is not None and int(centers_per_class) < 1:
            raise ValueError(f"centers_per_class must be positive; received {centers_per_class}.")
        if not float(proxy_lr_multiplier) > 0:
            raise ValueError(f"proxy_lr_multiplier must be positive; received {proxy_lr_multiplier}.")
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.centers_per_class = None if centers_per_class is None else int(centers_per_class)
        self.proxy_lr_multiplier = float(proxy_lr_multiplier)
        self.proxy_initializer = keras.initializers.get(
            self.default_initializer if proxy_initializer is None else proxy_initializer
        )
        shape = (self.num_classes,) + (() if self.centers_per_class is None else (self.centers_per_class,))
        self.state = LossState(name=f"{self.name}_state")
        self.state.proxies = self.state.add_weight(
            shape=shape + (self.embedding_dim,),
            initializer=_Scaled(self.proxy_initializer, self.proxy_lr_multiplier),
            name="proxies",
        )

    @property
    def proxies(self):
        """The Keras variable of the class vectors (divided by `proxy_lr_multiplier`, 1 by default)."""
        return self.state.proxies

    def class_vectors(self):
        """The class vectors as the loss uses them: `proxy_lr_multiplier × loss.proxies`.

        The gradient reaches the variable unscaled, which is what makes the
        multiplier a learning-rate multiplier under any optimizer.
        """
        proxies = ops.convert_to_tensor(self.state.proxies)
        multiplier = self.proxy_lr_multiplier
        if multiplier == 1:
            return proxies
        return proxies + ops.stop_gradient(proxies * (multiplier - 1.0))

    def proxy_values(self):
        """The current class vectors as a NumPy array."""
        return keras.ops.convert_to_numpy(self.state.proxies) * self.proxy_lr_multiplier

    def set_proxies(self, values):
        """Sets the class vectors (e.g. to another library's trained weights), whatever the multiplier."""
        values = ops.convert_to_tensor(values, "float32")
        if tuple(values.shape) != tuple(self.state.proxies.shape):
            raise ValueError(
                f"Class vectors of shape {tuple(values.shape)} for a loss whose vectors have shape "
                f"{tuple(self.state.proxies.shape)}."
            )
        self.state.proxies.assign(values / self.proxy_lr_multiplier)

    def _embeddings(self, y_pred):
        embeddings = as_embeddings(y_pred)
        if embeddings.shape[-1] is not None and embeddings.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"Embeddings of size {embeddings.shape[-1]} for class vectors of size {self.embedding_dim}."
            )
        return embeddings

    def _inputs(self, y_true, y_pred):
        embeddings = self._embeddings(y_pred)
        return embeddings, class_ids(y_true, self.num_classes, embeddings)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras' Loss.__call__ would cast the labels to float first.
        self.state.attach(self)
        with keras.name_scope(self.name):
            embeddings, ids = self._inputs(y_true, y_pred)
            loss = self.reduce(ids, embeddings, self.class_vectors(), sample_weight)
            return scale_for_replicas(loss, self.reduction)

    def reduce(self, class_ids, embeddings, proxies, sample_weight=None):
        """The loss of the batch: each example's terms, reduced as `reduction` says.

        An example whose label is not a class id (possible only where it
        could not be checked: under XLA or a JAX trace) gets a NaN loss.
        """
        loss_sums, term_counts = self.proxy_terms(class_ids, embeddings, proxies)
        loss_sums = nan_outside_classes(loss_sums, class_ids, self.num_classes)
        return reduce_anchor_terms(loss_sums, term_counts, sample_weight, self.reduction)

    def call(self, y_true, y_pred):
        """Each example's loss."""
        embeddings, ids = self._inputs(y_true, y_pred)
        loss_sums, term_counts = self.proxy_terms(ids, embeddings, self.class_vectors())
        return reduce_anchor_terms(loss_sums, term_counts, None, None)

    def proxy_terms(self, class_ids, embeddings, proxies):
        """`(loss_sums, term_counts)`, both `(N,)`: each example's loss terms against the class vectors."""
        raise NotImplementedError

    def similarities(self, embeddings, proxies):
        """`(N, num_classes)` class scores without margin (the classifier's logits)."""
        raise NotImplementedError

    def logits(self, embeddings):
        """The class scores `(N, num_classes)` of embeddings, for use as a classifier.

        What the loss's softmax (or its closest analogue) sees at training,
        without the margin: take `softmax` for probabilities.
        """
        return self.similarities(self._embeddings(embeddings), self.class_vectors())

    def predict_classes(self, embeddings):
        """The class id of the highest score of each embedding, `(N,)` int32."""
        return ops.cast(ops.argmax(self.logits(embeddings), axis=-1), "int32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "embedding_dim": self.embedding_dim,
                "proxy_lr_multiplier": self.proxy_lr_multiplier,
                "proxy_initializer": keras.initializers.serialize(self.proxy_initializer),
            }
        )
        if self.centers_per_class is not None:
            config["centers_per_class"] = self.centers_per_class
        return config
