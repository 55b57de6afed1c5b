"""Pairwise distances between the rows of a batch of embeddings.

Every in-batch loss of tfmetric starts from the `(N, N)` matrix returned by
`pairwise_distance`. It is built from one `(N, D) x (D, N)` matrix product
(no `(N, N, D)` tensor), has an exact zero diagonal, a finite gradient where
two embeddings coincide, and is computed in at least float32.
"""

from keras import backend, ops

DISTANCES = ("euclidean", "squared_euclidean", "cosine")


def check_distance(distance):
    """Returns `distance` if it is a supported name, else raises ValueError."""
    if distance not in DISTANCES:
        raise ValueError(
            f"Unknown distance {distance!r}. Expected one of {DISTANCES} "
            "(TF Addons' 'L2', 'squared-L2' and 'angular' are 'euclidean', "
            "'squared_euclidean' and 'cosine' here)."
        )
    return distance


def computation_dtype(dtype):
    """The dtype a loss computes in: float64 stays, everything else is float32.

    Half-precision embeddings (float16, bfloat16, mixed-precision outputs)
    would lose most of their digits in the `|a|² + |b|² - 2a·b` expansion.
    """
    return "float64" if backend.standardize_dtype(dtype) == "float64" else "float32"


def as_embeddings(y_pred):
    """Converts `y_pred` to an `(N, D)` float tensor in the computation dtype."""
    x = ops.convert_to_tensor(y_pred)
    if len(x.shape) != 2:
        raise ValueError(
            "Embeddings must have shape (batch_size, embedding_dim); "
            f"received shape {tuple(x.shape)}."
        )
    return ops.cast(x, computation_dtype(x.dtype))


def l2_normalize(x):
    """Scales every row of `x` to unit L2 norm; zero rows stay zero.

    `keras.ops.normalize` (what `keras.layers.UnitNormalization` calls)
    overflows to 0 for rows above ~1e19 in float32 and has a NaN gradient on
    zero rows. Dividing each row by its largest absolute entry first (a
    constant for the gradient; the result is scale-invariant) makes the sum of
    squares lie in [1, D] for every non-zero row, so neither happens.
    """
    x = ops.convert_to_tensor(x)
    row_max = ops.stop_gradient(ops.max(ops.abs(x), axis=-1, keepdims=True))
    x = x / ops.where(row_max > 0, row_max, ops.ones_like(row_max))
    square_sum = ops.sum(ops.square(x), axis=-1, keepdims=True)
    # Non-zero rows have square_sum >= 1 (their largest entry is now ±1);
    # all-zero rows divide by 1 and stay zero, with a zero gradient.
    return x / ops.sqrt(ops.where(square_sum > 0, square_sum, ops.ones_like(square_sum)))


def _clip_at_zero(x):
    # Not `maximum`: at a tie JAX splits its gradient between both sides.
    return ops.where(x > 0, x, ops.zeros_like(x))


def _zero_diagonal(matrix):
    n = ops.shape(matrix)[0]
    return ops.where(ops.eye(n, dtype="bool"), ops.zeros_like(matrix), matrix)


def _power_of_two_scale(x):
    """1, or for entries beyond 2**±40 a power of two near their magnitude.

    Dividing by it is exact and keeps squares from overflowing or
    underflowing; it is a constant for the gradient.
    """
    magnitude = ops.stop_gradient(ops.max(ops.abs(x)))
    exponent = ops.floor(ops.log2(ops.where(magnitude > 0, magnitude, ops.ones_like(magnitude))))
    exponent = ops.where(ops.abs(exponent) > 40, exponent, ops.zeros_like(exponent))
    return ops.power(ops.full_like(exponent, 2.0), exponent)


def _scaled_squared_euclidean(x, ref=None):
    """Returns `(d2, scale)` with `scale**2 * d2` the squared distances from `x` to `ref` (or `x`).

    Distances do not change under translation, so both sets are moved to put
    the first row of `x` at the origin before the `|a|² + |b|² − 2a·b`
    expansion: the cancellation error is then relative to the spread of the
    rows, not to their distance from the origin. (The first row rather than
    the mean: subtracting a nearby float is exact, so equal distances stay
    equal.) Rows of extreme magnitude are divided by a power of two, exactly,
    so that their squares neither overflow nor underflow. Both are constants
    for the gradient, which is exact for the original input.
    """
    origin = ops.stop_gradient(x[:1])
    x = x - origin
    if ref is None:
        scale = _power_of_two_scale(x)
    else:
        ref = ref - origin
        scale = ops.maximum(_power_of_two_scale(x), _power_of_two_scale(ref))
    x = x / scale
    y = x if ref is None else ref / scale
    d2 = (
        ops.sum(ops.square(x), axis=1)[:, None]
        + ops.sum(ops.square(y), axis=1)[None, :]
        - 2.0 * ops.matmul(x, ops.transpose(y))
    )
    d2 = _clip_at_zero(d2)
    return (_zero_diagonal(d2) if ref is None else d2), scale


def _safe_sqrt(x):
    """`sqrt(x)` whose gradient is 0 instead of inf where `x == 0`."""
    positive = x > 0
    safe = ops.where(positive, x, ops.ones_like(x))
    return ops.where(positive, ops.sqrt(safe), ops.zeros_like(x))


def pairwise_distance(x, distance="euclidean", normalize=False, *, ref_embeddings=None):
    """Computes the `(N, N)` matrix of distances between the rows of `x`.

    | `distance` | value for rows a, b |
    |---|---|
    | `"euclidean"` | `‖a − b‖₂` |
    | `"squared_euclidean"` | `‖a − b‖₂²` |
    | `"cosine"` | `max(1 − cos(a, b), 0)` |

    With `ref_embeddings` `(R, D)`, the `(N, R)` rectangle of distances from
    every row of `x` to every reference row instead. The diagonal of the
    square matrix is exactly zero. The gradient is finite everywhere,
    including where two rows coincide (it is 0 there for `"euclidean"`).
    float16 and bfloat16 inputs are computed in float32; float64 stays
    float64.

    Args:
        x: Embeddings of shape `(N, D)`.
        distance: One of `"euclidean"`, `"squared_euclidean"`, `"cosine"`.
        normalize: Whether to L2-normalise the rows before the distance.
        ref_embeddings: Optional reference embeddings of shape `(R, D)`.

    Returns:
        A float tensor of shape `(N, N)`, or `(N, R)`.

    Example:

    >>> import tfmetric as tfm
    >>> d = tfm.distances.pairwise_distance([[0.0, 0.0], [3.0, 4.0]])
    >>> [[float(v) for v in row] for row in d]
    [[0.0, 5.0], [5.0, 0.0]]
    """
    check_distance(distance)
    x, ref = as_embedding_pair(x, ref_embeddings)
    if normalize or distance == "cosine":
        x = l2_normalize(x)
        ref = None if ref is None else l2_normalize(ref)
    if distance == "cosine":
        cosine = _clip_at_zero(1.0 - ops.matmul(x, ops.transpose(x if ref is None else ref)))
        return _zero_diagonal(cosine) if ref is None else cosine
    d2, scale = _scaled_squared_euclidean(x, ref)
    if distance == "squared_euclidean":
        return d2 * ops.square(scale)
    return _safe_sqrt(d2) * scale


def as_embedding_pair(x, ref):
    """`x` and `ref` (or None) as embeddings of one dtype and one size (a ValueError otherwise)."""
    x = as_embeddings(x)
    if ref is None:
        return x, None
    ref = ops.cast(as_embeddings(ref), x.dtype)
    if x.shape[-1] is not None and ref.shape[-1] is not None and x.shape[-1] != ref.shape[-1]:
        raise ValueError(
            f"Embeddings of size {x.shape[-1]} against reference embeddings of size {ref.shape[-1]}."
        )
    return x, ref


def pairwise_similarity(x, normalize=True, *, ref_embeddings=None):
    """The `(N, N)` matrix of dot products between the rows of `x`.

    With `normalize` (the default) the rows are L2-normalised first: the
    cosine similarity, in [−1, 1]. The similarity losses (`MultiSimilarity`,
    `Circle`, `BinomialDeviance`, `NPairs`) start from it, as the distance
    losses start from `pairwise_distance`. With `ref_embeddings` `(R, D)`,
    the `(N, R)` similarities to the reference rows. Computed in at least
    float32.

    Example:

    >>> import tfmetric as tfm
    >>> s = tfm.distances.pairwise_similarity([[3.0, 4.0], [0.0, 2.0]])
    >>> [[round(float(v), 2) for v in row] for row in s]
    [[1.0, 0.8], [0.8, 1.0]]
    """
    x, ref = as_embedding_pair(x, ref_embeddings)
    if normalize:
        x = l2_normalize(x)
        ref = None if ref is None else l2_normalize(ref)
    return ops.matmul(x, ops.transpose(x if ref is None else ref))


def paired_distance(a, b, distance="euclidean", normalize=False):
    """The distance between `a[i]` and `b[i]` for every i: shape `(N,)`.

    For two- and three-tower models, where each example is a pair or a
    triplet. Computed from the differences directly (no Gram expansion), with
    the same conventions as `pairwise_distance`: finite gradient where
    `a[i] == b[i]`, half precision computed in float32.

    Example:

    >>> import tfmetric as tfm
    >>> d = tfm.distances.paired_distance([[0.0, 0.0], [1.0, 1.0]], [[3.0, 4.0], [1.0, 1.0]])
    >>> [float(v) for v in d]
    [5.0, 0.0]
    """
    check_distance(distance)
    a, b = as_embeddings(a), as_embeddings(b)
    if normalize or distance == "cosine":
        a, b = l2_normalize(a), l2_normalize(b)
    if distance == "cosine":
        return _clip_at_zero(1.0 - ops.sum(a * b, axis=1))
    difference = a - b
    scale = _power_of_two_scale(difference)
    squared = ops.sum(ops.square(difference / scale), axis=1)
    if distance == "squared_euclidean":
        return squared * ops.square(scale)
    return _safe_sqrt(squared) * scale
