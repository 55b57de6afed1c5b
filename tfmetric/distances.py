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
    """Scales every row of `x` (its last axis) to unit L2 norm; zero rows stay zero.

    `keras.ops.normalize` (what `keras.layers.UnitNormalization` calls)
    overflows to 0 for rows above ~1e19 in float32 and has a NaN gradient on
    zero rows. Dividing each row by its largest absolute entry first (the
    result is scale-invariant) makes the sum of squares lie in [1, D] for
    every non-zero row, so neither happens.

    The gradient is written out, `(g − y (y·g)) / ‖x‖` for the output `y`
    and the incoming gradient `g`: four passes over the rows, where autodiff
    took a dozen through the scalings. A zero row passes `g` through
    unchanged, as if its norm were 1, so that it can leave zero.
    """
    x = ops.convert_to_tensor(x)

    # Every tensor the gradient uses is made inside the function (JAX).
    @ops.custom_gradient
    def normalized(x):
        row_max = ops.max(ops.abs(x), axis=-1, keepdims=True)
        row_max = ops.where(row_max > 0, row_max, ops.ones_like(row_max))
        scaled = x / row_max
        square_sum = ops.sum(ops.square(scaled), axis=-1, keepdims=True)
        # Non-zero rows have square_sum >= 1 (their largest entry is now ±1);
        # all-zero rows divide by 1 and stay zero.
        norm = ops.sqrt(ops.where(square_sum > 0, square_sum, ops.ones_like(square_sum)))
        unit = scaled / norm

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, unit.dtype)
            along = ops.sum(unit * upstream, axis=-1, keepdims=True)
            # ‖x‖ = row_max · norm, divided by in turn: their product may overflow.
            return (upstream - unit * along) / norm / row_max

        return unit, gradient

    return normalized(x)


def matmul(a, b):
    """`a @ b` in the inputs' own float type on every backend.

    `keras.ops.matmul`, except under PyTorch: Keras' type promotion there
    turns float64 into float32 (`ops.matmul` of two float64 tensors returns
    float32), so float64 embeddings lost half their digits in every product.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> a = np.array([[1.0, 2.0]], "float32")
    >>> [[float(v) for v in row] for row in tfm.distances.matmul(a, a.T)]
    [[5.0]]
    """
    if backend.backend() == "torch":
        import torch

        a, b = ops.convert_to_tensor(a), ops.convert_to_tensor(b)
        if a.dtype == b.dtype and a.dtype in (torch.float32, torch.float64):
            return torch.matmul(a, b)
    return ops.matmul(a, b)


def row_sums(values):
    """`keras.ops.sum` over the last axis; under XLA on a host without accelerators, a product with ones.

    XLA's CPU code for a reduction of fused elementwise work runs far
    slower than its matrix-vector product: twenty row sums of comparisons
    of a `(1024, 1024)` matrix with a threshold each took 13 ms as
    reductions and 2.6 ms as products (1.8 as one product of all twenty).
    Accelerators keep `ops.sum`: their matrix units may round float32
    (TF32, bfloat16 passes).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> [float(v) for v in tfm.distances.row_sums(np.array([[1.0, 2.0], [3.0, 4.0]]))]
    [3.0, 7.0]
    """
    if not _sums_by_product():
        return ops.sum(values, axis=-1)
    width = ops.shape(values)[-1]
    products = matmul(ops.reshape(values, (-1, width)), ops.ones((width, 1), values.dtype))
    return ops.reshape(products, ops.shape(values)[:-1])


def nonnegative_row_sums(values):
    """`row_sums` of values never negative (counts, sigmoids), for an addition to follow.

    XLA on a CPU fuses an addition after a matrix-vector product into the
    product, and a product so fused reads its operand from memory instead
    of computing it in place: one more pass over the matrix, where the
    operand is a mask or a sigmoid of the matrix. A maximum with 0 between
    them, which changes no such sum, keeps the two apart (the contrastive
    loss at N = 1024 with XLA: 12.1 → 11.2–11.5 ms; Smooth-AP's `0.5 + Σσ`
    a slot: two matrices a slot fewer).
    """
    sums = row_sums(values)
    return ops.maximum(sums, ops.zeros((), sums.dtype)) if _sums_by_product() else sums


def _sums_by_product():
    """Whether `row_sums` takes products: under XLA (TensorFlow's or JAX's), with only CPUs at hand."""
    if not compiled_by_xla():
        return False
    if backend.backend() == "jax":
        import jax

        return jax.default_backend() == "cpu"
    import tensorflow as tf

    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def cumsum(x, axis):
    """`keras.ops.cumsum` in `x`'s own type on every backend.

    Under PyTorch Keras sums float64 in float32 (its type promotion makes
    float32 of a lone float64).
    """
    if backend.backend() == "torch":
        import torch

        x = ops.convert_to_tensor(x)
        if x.dtype == torch.float64:
            return torch.cumsum(x, dim=axis)
    return ops.cumsum(x, axis=axis)


def inner_products(a, b):
    """`a @ bᵀ`, `(N, R)`: the dot product of every row of `a` `(N, D)` with every row of `b` `(R, D)`.

    Under TensorFlow one product with `transpose_b`: the gradient of
    `a @ transpose(b)` transposes its `(D, R)` part back, one more kernel
    (0.1–0.2 ms on a CPU at N = 1024, D = 128). Elsewhere `matmul` (in the
    inputs' own float type). When `b` is `a` (the batch against itself),
    the Gram matrix, whose gradient `(G + Gᵀ) a` is one product where
    autodiff takes one for each side (without XLA, and under XLA up to
    N = 256; above, XLA on a CPU transposes slowly: `G a + Gᵀ a` as
    autodiff).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> a = np.array([[1.0, 2.0], [0.0, 1.0]], "float32")
    >>> b = np.array([[3.0, 4.0]], "float32")
    >>> [[float(v) for v in row] for row in tfm.distances.inner_products(a, b)]
    [[11.0], [4.0]]
    """
    if b is a:
        return _gram(a)
    return _products(a, b)


def _products(a, b):
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.matmul(a, b, transpose_b=True)
    return matmul(a, ops.transpose(b))


def _gram(x):
    """`x @ xᵀ` with its gradient written out: `(G + Gᵀ) x` for the incoming `G`."""

    @ops.custom_gradient
    def gram(x):
        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, x.dtype)
            if _two_products(x):
                return matmul(upstream, x) + matmul(ops.transpose(upstream), x)
            return matmul(upstream + ops.transpose(upstream), x)

        return _products(x, x), gradient

    return gram(x)


def _clip_at_zero(x):
    # Not `maximum`: at a tie JAX splits its gradient between both sides.
    return ops.where(x > 0, x, ops.zeros((), x.dtype))


def off_diagonal(num_rows, num_columns):
    """Boolean `(num_rows, num_columns)`: False exactly at the entries `(a, a)`."""
    rows = ops.arange(num_rows, dtype="int32")
    columns = ops.arange(num_columns, dtype="int32")
    return ops.not_equal(rows[:, None], columns[None, :])


def _zero_diagonal(matrix):
    size = ops.shape(matrix)[0]
    if tensorflow_op_by_op():
        import tensorflow as tf

        # N entries written, in place where TensorFlow may reuse the input's
        # buffer, where the selection below compares indices over the whole
        # matrix and selects over it again: two kernels each a pass over it.
        return tf.linalg.set_diag(matrix, tf.zeros([size], matrix.dtype))
    # Indices compared, and a scalar zero (XLA fuses both into the
    # selection): `ops.eye` and `zeros_like` would each be one more (N, N)
    # tensor written at every call.
    return ops.where(off_diagonal(size, size), matrix, ops.zeros((), matrix.dtype))


def _power_of_two_scale(x):
    """1, or for entries beyond 2**±40 a power of two near their magnitude.

    Dividing by it is exact and keeps squares from overflowing or
    underflowing; it is a constant for the gradient.
    """
    magnitude = ops.stop_gradient(ops.max(ops.abs(x)))
    exponent = ops.floor(ops.log2(ops.where(magnitude > 0, magnitude, ops.ones_like(magnitude))))
    exponent = ops.where(ops.abs(exponent) > 40, exponent, ops.zeros_like(exponent))
    return ops.power(ops.full_like(exponent, 2.0), exponent)


def _euclidean_matrix(x, ref, squared):
    """The `(N, N)` (or `(N, R)`) Euclidean or squared Euclidean distances, with a hand-written gradient.

    Distances do not change under translation, so both sets are moved to put
    the first row of `x` at the origin before the `|a|² + |b|² − 2a·b`
    expansion: the cancellation error is then relative to the spread of the
    rows, not to their distance from the origin. (The first row rather than
    the mean: subtracting a nearby float is exact, so equal distances stay
    equal.) Rows of extreme magnitude are divided by a power of two, exactly,
    so that their squares neither overflow nor underflow. Negative squares
    (rounding) are 0, and so is the diagonal of the square matrix.

    Autodiff would differentiate each of these passes over the `(N, N)`
    matrix; the gradient is instead written out, exact for the original
    input: with `W = G / d` (G the incoming gradient, 0 where d = 0),
    `∂/∂x_i = x_i Σ_j W_ij − (W x)_i` (W + Wᵀ for the square matrix, whose
    rows are both ends): one matrix product, as for `x @ xᵀ` itself (two
    under XLA above 256 rows, which on a CPU transposes slowly: `W x +
    Wᵀ x`; see `_two_products`). The gradient
    is 0 where two rows coincide, and on the diagonal.
    """
    # Every tensor the gradient uses is made inside the function: JAX's
    # custom gradients cannot close over the tracers of an enclosing trace.
    if ref is None:

        @ops.custom_gradient
        def matrix(x):
            moved, scale = _moved_and_scale(x)
            d2 = _squared_norms_expanded(moved, moved)
            d2 = _zero_diagonal(d2)
            out, value = _from_squares(d2, scale, squared)

            def gradient(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                upstream = ops.cast(upstream, x.dtype)
                # Row i is the first end of row i's distances and the second of column i's.
                if _two_products(x):
                    weights, factor = _pair_weights(upstream, d2, value, scale, squared)
                    sums = ops.sum(weights, axis=1) + ops.sum(weights, axis=0)
                    products = matmul(weights, moved) + matmul(ops.transpose(weights), moved)
                else:
                    weights, factor = _pair_weights(upstream + ops.transpose(upstream), d2, value, scale, squared)
                    sums = ops.sum(weights, axis=1)
                    products = matmul(weights, moved)
                return factor * (moved * sums[:, None] - products)

            return out, gradient

        return matrix(x)

    @ops.custom_gradient
    def rectangle(x, ref):
        moved, scale = _moved_and_scale(x, ref)
        moved_ref = (ref - ops.stop_gradient(x[:1])) / scale
        d2 = _squared_norms_expanded(moved, moved_ref)
        out, value = _from_squares(d2, scale, squared)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            weights, factor = _pair_weights(ops.cast(upstream, x.dtype), d2, value, scale, squared)
            grad_x = moved * ops.sum(weights, axis=1)[:, None] - matmul(weights, moved_ref)
            grad_ref = moved_ref * ops.sum(weights, axis=0)[:, None] - matmul(ops.transpose(weights), moved)
            return factor * grad_x, factor * grad_ref

        return out, gradient

    return rectangle(x, ref)


def _two_products(x):
    """Whether the gradient of `x`'s square matrix takes `G x + Gᵀ x` (two products) rather than `(G + Gᵀ) x`.

    Under XLA above `_TRANSPOSED_UPSTREAM_UP_TO` rows (or an unknown
    number): XLA on a CPU transposes an `(N, N)` matrix slowly, while a
    product reads it transposed at no cost. Without XLA, and for a small
    matrix under XLA, one transpose costs less than one more product.
    """
    small = isinstance(x.shape[0], int) and x.shape[0] <= _TRANSPOSED_UPSTREAM_UP_TO
    return compiled_by_xla() and not small


# XLA's CPU code reads an (N, N) matrix transposed slowly, but up to this
# size a second product costs more: N = 256, with XLA, the distance
# matrix's forward and backward 1.32 → 1.09 ms (a random upstream
# gradient), the contrastive loss 1.40 → 1.14 ms; from 512 some losses
# took longer (batch-hard: 1.7 → 2.6 ms; the lifted structure loss at
# 1,024: 16 → 34 ms).
_TRANSPOSED_UPSTREAM_UP_TO = 256


def compiled_by_xla():
    """Whether the code being traced is compiled by XLA: always on JAX; in TensorFlow, `jit_compile` functions."""
    if backend.backend() == "jax":
        return True
    if backend.backend() != "tensorflow":
        return False
    try:
        from tensorflow.python.framework import ops as graph_ops
        from tensorflow.python.ops import control_flow_util

        return bool(control_flow_util.GraphOrParentsInXlaContext(graph_ops.get_default_graph()))
    except (ImportError, AttributeError):  # internals that moved: the choice only costs time
        return False


def runs_op_by_op():
    """Whether every operation runs as a kernel of its own (TensorFlow without XLA, PyTorch), which favours
    one library call (a selection, a search) over a few fused passes."""
    return backend.backend() in ("tensorflow", "torch") and not compiled_by_xla()


def tensorflow_op_by_op():
    """`runs_op_by_op` under TensorFlow: where its own kernels serve (`set_diag`, a bit-pattern `argmin`)."""
    return backend.backend() == "tensorflow" and runs_op_by_op()


def _moved_and_scale(x, ref=None):
    """`x` moved to put its first row at the origin and divided by the power-of-two scale (of both sets)."""
    origin = ops.stop_gradient(x[:1])
    moved = x - origin
    scale = _power_of_two_scale(moved)
    if ref is not None:
        scale = ops.maximum(scale, _power_of_two_scale(ref - origin))
    return moved / scale, scale


def _squared_norms_expanded(x, y):
    """`|x_i|² + |y_j|² − 2 x_i·y_j`, negative roundings at 0.

    `−2` scales an operand of the product rather than the `(N, R)` result:
    the same floats (a power of two), one pass fewer.
    """
    squares = ops.sum(ops.square(x), axis=1)[:, None] + ops.sum(ops.square(y), axis=1)[None, :]
    # relu, not maximum: Keras' PyTorch maximum returns float32 for float64 inputs.
    return ops.relu(squares + inner_products(x * -2.0, y))


def _from_squares(d2, scale, squared):
    """The distances from the scaled squares, and the scaled distances (None when squared)."""
    if squared:
        return _scaled(d2, scale, times=2), None
    value = ops.sqrt(d2)
    return _scaled(value, scale), value


def _scaled(matrix, factor, times=1):
    """`matrix · factor^times`; TensorFlow op by op skips that pass over the matrix where the factor is 1 (most calls).

    One product at a time: where `factor²` overflows (rows beyond 2⁶⁴ in
    float32), `0 · factor · factor` is still 0 (a zero distance), where
    `0 · factor²` would be NaN.
    """

    def product():
        result = matrix
        for _ in range(times):
            result = result * factor
        return result

    if tensorflow_op_by_op():
        return ops.cond(ops.equal(factor, 1.0), lambda: matrix, product)
    return product()


def _pair_weights(upstream, d2, value, scale, squared):
    """`(W, factor)`: the gradient is `factor · (x_i Σ_j W_ij − (W y)_i)` in the scaled coordinates."""
    if squared:
        # d(scale² |a − b|²) / da = 2 scale (a − b) in the scaled coordinates.
        return ops.where(d2 > 0, upstream, ops.zeros((), upstream.dtype)), 2.0 * scale
    # d |a − b| / da = (a − b) / |a − b|, and 0 where the rows coincide.
    return ops.divide_no_nan(upstream, value), 1.0


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
        cosine = _clip_at_zero(1.0 - inner_products(x, x if ref is None else ref))
        return _zero_diagonal(cosine) if ref is None else cosine
    return _euclidean_matrix(x, ref, squared=distance == "squared_euclidean")


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
    return inner_products(x, x if ref is None else ref)


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
