"""The common frame of the losses mined online from labels, and the contract a new loss follows.

A loss mined from labels compares N queries with R reference rows: the
batch with itself (a Keras loss's `y_true`, `y_pred`), a batch with a
separate reference set (the pure functions' `ref_labels`, `ref_embeddings`),
a batch with a cross-batch memory. Three levels, one hook each:

1. `InBatchLoss` takes care of the labels (validated, exact, class ids or
   multi-hot), the masks of positive and negative pairs
   (`tfm.mining.pair_masks`), the reduction and sample weights,
   `tf.distribute` (`cross_replica`) and the loss's state. Its hook:
   `pair_terms(embeddings, ref_embeddings, positive, negative)`.
2. `DistanceLoss` adds `distance` and `normalize`; its hook:
   `distance_terms(distances, positive, negative)`, on the `(N, R)`
   rectangle of `tfm.distances.pairwise_distance`.
3. `SimilarityLoss` adds `normalize`; its hook:
   `similarity_terms(similarity, positive, negative)`, on
   `tfm.distances.pairwise_similarity`.

A new loss:

- writes its math as a term function next to its class, `f(matrix,
  positive, negative, ...) -> (loss_sums, term_counts)`, both `(N,)`:
  query a's loss summed over its terms (pairs, triplets, ...) and how many
  terms it has. Masks are boolean `(N, R)`; nothing of size N·R·R.
- subclasses the level it needs and implements that level's hook by
  calling the term function with its arguments; `__init__` passes
  `reduction`, `name`, `cross_replica`, `multi_label` (and `distance`,
  `normalize`) up, and `get_config` adds the loss's own arguments.
- adds the public pure function named after the class in snake case,
  `f(labels, embeddings, ref_labels=None, ref_embeddings=None, *, ...,
  multi_label=False, remove_diagonal=None)`, returning `per_query(...)` of
  the term function on `mine_pairs(...)` (the helpers `distance_loss` and
  `similarity_loss` do this for the losses of levels 2 and 3).
- keeps its variables, if any, in `self.state` (a `LossState`, see
  `MarginLoss`): level 1 attaches them to the model at every call, so they
  train and save with it.
- sets `faster_under_xla = True` if `benchmarks/losses.py` measures it
  faster without XLA when it compiles itself (`compile_losses_with_xla`),
  and `compiles_terms_alone = True` if, a matrix and its terms
  (`matrix_terms`), `--whole` measures it faster with its terms alone
  (`terms_alone_from` if only from a larger batch than 512), and
  `compiles_below` if its kernels are the faster from some batch size on.
- gets a line in `tfm.losses.registry.LOSSES`, from which the tests,
  benchmarks and command line take their list, and a NumPy brute-force
  reference in `tests/reference.py` (named in `tests/registry.py`), which
  the shared tests then check it against.

The loss is `Σ w_a·loss_sums[a] / Σ w_a·term_counts[a]` (the mean over
terms), `per_query` the vector `loss_sums / term_counts` (0 where none).
"""

import keras
from keras import ops

from tfmetric.distances import (
    as_embeddings,
    check_distance,
    cumsum,
    pairwise_distance,
    pairwise_similarity,
    runs_op_by_op,
    tensorflow_op_by_op,
)
from tfmetric.distribute import gather_across_replicas, replica_context, scale_for_replicas
from tfmetric.labels import standardize_any
from tfmetric.mining import (
    Pairs,
    add_all_at,
    add_at,
    entry_coordinates,
    mask_row_counts,
    mine_pairs,
    places_in_rows,
    take_along_rows,
    take_entries,
    take_in_range,
)


def check_choice(argument, value, choices):
    """Returns `value` if it is one of `choices`, else raises a ValueError naming `argument`."""
    if value not in choices:
        raise ValueError(f"{argument} must be one of {choices}; received {value!r}.")
    return value


def divide_or_zero(numerator, denominator):
    """`numerator / denominator`, and 0 (with a zero gradient) where it is 0."""
    nonzero = ops.not_equal(denominator, 0)
    safe = ops.where(nonzero, denominator, ops.ones_like(denominator))
    return ops.where(nonzero, numerator / safe, ops.zeros_like(numerator))


def masked_row_mean(values, mask):
    """Each row's mean of `values` over its `mask` entries, 0 for a row without any."""
    # where, not a product: 0 · inf is NaN.
    total = ops.sum(ops.where(mask, values, ops.zeros_like(values)), axis=1)
    return divide_or_zero(total, mask_row_counts(mask, values.dtype))


def sparse_row_mean(term, matrix, mask):
    """`masked_row_mean(term(matrix), mask)` for an elementwise `term` and a mask with few entries a row.

    For the positive pairs: where every operation is a kernel of its own,
    `term` runs on the vector of the mask's entries
    (`tfm.mining.entry_coordinates`), not on the whole matrix. A term of
    one or two operations is cheaper on the matrix (the gather and its
    gradient's scatter cost more than they save).
    """
    coordinates = entry_coordinates(mask)
    if coordinates is None:
        return masked_row_mean(term(matrix), mask)
    rows, columns = coordinates
    total = add_at(term(take_entries(matrix, rows, columns)), rows, ops.shape(matrix)[0])
    return divide_or_zero(total, mask_row_counts(mask, matrix.dtype))


def negatives_below_keys(values, negative, keys):
    """For every query a and each of its keys: how many negatives n lie below the key, and the sum of their gaps to it.

    Below is `values[a, n] < keys[a, j]` (a tie is not), the gap
    `keys[a, j] − values[a, n]`. Each row's keys are sorted and a binary
    search puts every value between two of them; the counts and the gaps of
    the negatives to the key above them, added up per interval, give every
    key's: `Σ_{i ≤ j} (gaps_i + count_i · (k_j − k_i))`, running sums of
    non-negative terms only (a key's multiple minus a sum of values near it
    would lose the digits they share: 1 % of the loss for distances near
    1000 a few 2⁻¹⁰ apart). Time and memory O(N·(R + M)) for M keys a row,
    and no sort of the rows. No gradient: the gaps' derivative is +1 at a
    key per negative below it (its count) and −1 at a negative per key
    above it (the keys but those the third result counts). A search in rows
    has no `keras.ops` form: for the backends that run operation by
    operation (`tfm.mining.places_in_rows`).

    Args:
        values: `(N, R)`.
        negative: Boolean `(N, R)` mask of the negatives.
        keys: `(N, M)`.

    Returns:
        `(counts, gaps, keys_not_above)`: `(N, M)`, `(N, M)` and, for
        every value, how many of its row's keys are at or below it (all of
        them for the values that are not negatives), `(N, R)` int32.
    """
    values, keys = ops.stop_gradient(values), ops.stop_gradient(keys)
    num_queries, num_keys = ops.shape(keys)[0], ops.shape(keys)[1]
    order = ops.argsort(keys, axis=1)
    ascending = take_along_rows(keys, order)
    # Interval i of a row holds the values with i keys at or below them. The
    # last one, above every key, takes the values that are not negatives
    # too (+inf) and adds up to no key: what lands there is never read.
    candidates = ops.where(negative, values, ops.full((), float("inf"), values.dtype))
    interval = places_in_rows(ascending, candidates, side="right")
    cells = ops.reshape(ops.arange(num_queries, dtype="int32")[:, None] * (num_keys + 1) + interval, (-1,))
    key_above = take_in_range(ops.reshape(ops.pad(ascending, [[0, 0], [0, 1]]), (-1,)), cells)
    gaps = key_above - ops.reshape(candidates, (-1,))
    in_interval, gaps_in_interval = (
        ops.reshape(sums, (num_queries, -1))[:, :-1]
        for sums in add_all_at([None, gaps], cells, num_queries * (num_keys + 1))
    )
    # Cumulative sums, not triangular products, which TF32 on a GPU would round.
    counts = cumsum(in_interval, axis=1)
    steps = ascending[:, 1:] - ascending[:, :-1]
    beyond_own_key = cumsum(ops.pad(counts[:, :-1] * steps, [[0, 0], [1, 0]]), axis=1)
    total_gaps = cumsum(gaps_in_interval, axis=1) + beyond_own_key
    back = ops.argsort(order, axis=1)
    return take_along_rows(counts, back), take_along_rows(total_gaps, back), interval


def sums_from(values):
    """`Σ_{j ≥ i} values[:, j]` for every column i: each row's running sums from the right."""
    return ops.flip(cumsum(ops.flip(values, axis=1), axis=1), axis=1)


def check_sample_weight(sample_weight, loss_sums):
    """`sample_weight` as a vector like `loss_sums` (ones when None)."""
    if sample_weight is None:
        return ops.ones_like(loss_sums)
    weights = ops.reshape(ops.cast(sample_weight, loss_sums.dtype), (-1,))
    if weights.shape[0] is not None and loss_sums.shape[0] is not None and (
        weights.shape[0] != loss_sums.shape[0]
    ):
        raise ValueError(
            f"sample_weight has {weights.shape[0]} entries for a batch of "
            f"{loss_sums.shape[0]} examples."
        )
    return weights


def reduce_anchor_terms(loss_sums, term_counts, sample_weight=None, reduction="sum_over_batch_size", share=None):
    """Reduces per-anchor loss sums and term counts to the loss.

    An anchor `a` contributes `loss_sums[a]`, the sum of its `term_counts[a]`
    terms (its triplets, pairs, ...), weighted by `sample_weight[a]`.

    - `"sum_over_batch_size"`, `"mean"`, `"mean_with_sample_weight"`: the
      weighted mean over terms, `Σ w·loss_sums / Σ w·term_counts` (0 when
      there is no term): the `loss` of the formulas in the loss classes'
      docstrings.
    - `"sum"`: `Σ w·loss_sums`.
    - `None` / `"none"`: the per-anchor vector `w·loss_sums / term_counts`,
      0 for anchors without terms.

    `share`, a boolean mask over anchors, keeps only those anchors' loss sums
    in the numerator (and their entries in the vector) while the denominator
    still counts every anchor's terms: the replicas' shares of a global batch
    then add up to its loss.
    """
    weights = check_sample_weight(sample_weight, loss_sums)
    if reduction is None or reduction == "none":
        per_anchor = weights * divide_or_zero(loss_sums, term_counts)
        return per_anchor if share is None else ops.take(per_anchor, ops.where(share)[0])
    numerator = weights * loss_sums
    if share is not None:
        numerator = ops.where(share, numerator, ops.zeros_like(numerator))
    weighted_sum = ops.sum(numerator)
    if reduction == "sum":
        return weighted_sum
    return divide_or_zero(weighted_sum, ops.sum(weights * term_counts))


def check_positive(name, value):
    """`value` as a float; a ValueError unless it is a finite positive number (a temperature, a scale)."""
    if not 0 < float(value) < float("inf"):
        raise ValueError(f"{name} must be a positive number; received {value!r}.")
    return float(value)


def masked_rows(values, mask):
    """`(masked, shift, has_terms)`: `values` with −∞ outside `mask`, each row's largest masked value
    (without gradient; 0 for a row with an empty mask), and whether the row has any.

    The −∞ is a scalar: without XLA a full matrix of it is one more pass.
    """
    masked = ops.where(mask, values, ops.full((), float("-inf"), values.dtype))
    has_terms = ops.any(mask, axis=1)
    shift = ops.stop_gradient(ops.max(masked, axis=1))
    return masked, ops.where(has_terms, shift, ops.zeros_like(shift)), has_terms


def row_logsumexp(values, mask, add_one=False):
    """Row-wise `log Σ_{mask} exp(values)`, or `log(1 + Σ_{mask} exp(values))`.

    Without `add_one`, rows with an empty mask give 0 (the caller leaves
    them out); with it they give log 1 = 0, which is their value. Stable for
    large values, and NaN-free in value and gradient for empty rows.

    Where every operation is a kernel of its own the gradient is written
    out: the softmax weights `exp(v − shift) / Σ`, whose exponentials the
    forward pass holds, times the incoming gradient — one pass over the
    matrix where autodiff took four (a broadcast, the `exp`'s product and
    both sides of the mask's selection).
    """
    if runs_op_by_op():
        # PyTorch's and TensorFlow's custom gradients may close over the mask;
        # under XLA (JAX always) autodiff's passes fuse.
        @ops.custom_gradient
        def written(values):
            exps, denominators, logs = _row_exponentials(values, mask, add_one)

            def gradient(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                return exps * (ops.cast(upstream, exps.dtype) / denominators)[:, None]

            return logs, gradient

        return written(values)
    return _row_exponentials(values, mask, add_one)[2]


def shifted_exponentials(values, mask, add_one=False):
    """`(exps, total, shift)`: `exp(v − shift)` in the mask (0 outside), each row's sum of them, and
    the shift: the row's largest masked value (0 for an empty row; at least 0 with `add_one`).

    The shifted exponents are <= 0 in the mask and −∞ outside, so that no
    inf reaches `exp` (or its gradient); the largest term is exp(0), so the
    total is >= 1 wherever the row has terms and 0 where it has none.
    """
    masked, shift, _ = masked_rows(values, mask)
    if add_one:
        # The 1 of log(1 + Σ) is exp(0): a term of every row, so the shift must
        # cover it (where, not maximum: Keras' PyTorch maximum returns float32
        # for float64 inputs).
        shift = ops.where(shift > 0, shift, ops.zeros_like(shift))
    exps = ops.exp(masked - shift[:, None])
    return exps, ops.sum(exps, axis=1), shift


def _row_exponentials(values, mask, add_one):
    """`(exps, denominators, logs)`: `shifted_exponentials`' exps, each row's `Σ` (plus `exp(−shift)`
    with `add_one`; 1 for an empty row) and `row_logsumexp`'s value `shift + log Σ`."""
    exps, total, shift = shifted_exponentials(values, mask, add_one)
    if add_one:
        denominators = total + ops.exp(-shift)
    else:
        denominators = ops.where(total > 0, total, ops.ones_like(total))
    return exps, denominators, shift + ops.log(denominators)


def replica_share(context, embeddings, labels, sample_weight, reduction, terms):
    """This replica's share of the loss of the global batch, and the global batch.

    Every replica gathers the batches of all replicas and computes
    `terms(all_labels, all_embeddings)` for every row of the global batch,
    so selections that depend on all of it (the closest negative pairs,
    distance-weighted draws) are the same as on one device; each keeps its
    own anchors' terms, and the shares add up to the global loss, their
    gradients to its gradient.

    Returns:
        `(loss, all_embeddings, all_labels)`.
    """
    weights = check_sample_weight(sample_weight, ops.ones((ops.shape(embeddings)[0],), embeddings.dtype))
    all_embeddings, all_labels, all_weights, start = gather_across_replicas(context, embeddings, labels, weights)
    loss_sums, term_counts = terms(all_labels, all_embeddings)
    positions = ops.arange(ops.shape(all_embeddings)[0])
    share = (positions >= start) & (positions < start + ops.shape(embeddings)[0])
    return reduce_anchor_terms(loss_sums, term_counts, all_weights, reduction, share), all_embeddings, all_labels


_XLA_INSIDE_GRAPHS = {"enabled": True}


def compile_losses_with_xla(enabled=True):
    """Whether the losses faster under XLA compile themselves with it in TensorFlow graphs without XLA.

    Keras leaves XLA off on a machine without GPUs (`jit_compile="auto"`),
    and there every TensorFlow operation is a kernel of its own: a loss's
    passes over the `(N, N)` matrix each read and write it, where XLA fuses
    them. A loss whose `faster_under_xla` is true (batch-hard, batch-all,
    contrastive, multi-similarity, SupCon, Smooth-AP, ...: see the benchmarks page)
    therefore computes its value and its gradient with respect to the
    embeddings in one XLA-compiled function of its own, inside a
    `tf.function` (`model.fit`'s step) that is not compiled by XLA, on a
    machine whose TensorFlow sees no GPU, for the reductions to a scalar
    (some of them, at some batch sizes, compile their terms alone and leave
    the matrix to TensorFlow's kernels: `compiled_loss`).
    The labels are checked before, as ever; the function compiles once per
    batch shape. Eagerly, and with `cross_replica` or the loss's own
    variables, nothing changes.

    Args:
        enabled: False to keep every loss as TensorFlow's kernels.

    Returns:
        The previous setting.
    """
    previous = _XLA_INSIDE_GRAPHS["enabled"]
    _XLA_INSIDE_GRAPHS["enabled"] = bool(enabled)
    return previous


def compiles_alone(loss):
    """Whether `loss` computes itself under XLA here (`compile_losses_with_xla`)."""
    if not (loss.faster_under_xla and loss.may_compile() and loss.reduction not in (None, "none")):
        return False
    return compiles_pieces()


def compiles_pieces():
    """Whether code traced here runs faster compiled by XLA (`compiled_piece` compiles): a TensorFlow graph
    without XLA, on a CPU, with `compile_losses_with_xla` on."""
    if not (_XLA_INSIDE_GRAPHS["enabled"] and tensorflow_op_by_op()):
        return False
    import tensorflow as tf

    return tf.inside_function() and not tf.config.list_physical_devices("GPU")


_COMPILED_PIECES = {}


def compiled_piece(function, when=True):
    """`function` of tensors, without gradient, as one XLA-compiled call where `compiles_alone` would compile a
    loss, and `when` (a boolean scalar) holds; elsewhere `function` itself.

    For the gradient-free passes over the matrix of a loss that does not
    compile itself (its state, or slower whole): each pass a kernel, or
    three, of its own without XLA, where XLA fuses each into one (the
    dynamic soft margin's places of the negatives, 15 passes at K = 16: 27
    against 2.4 ms at N = 1024), and TensorFlow's batched matrix products
    of small matrices are slow (the angular loss's classes: 3.3 against
    1.0 ms).
    """
    if not compiles_pieces() or when is False:
        return function
    import tensorflow as tf

    if function not in _COMPILED_PIECES:
        _COMPILED_PIECES[function] = tf.function(function, jit_compile=True, autograph=False)
    compiled = _COMPILED_PIECES[function]
    if when is True:
        return compiled
    return lambda *args: tf.cond(when, lambda: compiled(*args), lambda: function(*args))


# The batch sizes at which a loss that compiles its terms alone
# (`InBatchLoss.compiles_terms_alone`) does so: from 512 queries
# TensorFlow's kernels compute the matrix and its gradient's products
# faster than XLA on a CPU (oneDNN's products: the distance matrix 7.6
# against 8.2 ms at N = 1024), while below, one compiled call for the
# whole loss costs less than the kernels' overhead; from 2048 on XLA's
# fused passes over the matrix are the faster (34.9 against 28.5 ms at
# N = 2048, 227 against 152 ms at 4096).
_TERMS_ALONE_SIZES = (512, 1536)


def compiled_loss(loss, pairs, sample_weight):
    """`loss`'s reduced value on `pairs` of the batch with itself and its gradient, in one XLA-compiled
    function; outside it, the backward pass is the upstream scalar times the gradient it returns.

    The whole loss is compiled from the embeddings (the function returns
    the `(N, D)` gradient), except for a loss that compiles its terms alone
    (`InBatchLoss.compiles_terms_alone`) on a batch of `_TERMS_ALONE_SIZES`
    (from its `terms_alone_from`, if it has one): then the matrix
    (`InBatchLoss.matrix_terms`) and its backward pass stay TensorFlow's
    kernels and the function returns the `(N, R)` gradient with
    respect to the matrix. A loss with `compiles_below` computes a batch
    of that size or more as TensorFlow's kernels, uncompiled. A batch whose
    size is only known when it runs chooses then (a `tf.cond`). The values
    of the loss's trained variables and its random numbers
    (`InBatchLoss.compiled_inputs`) are
    read and drawn before, inputs of the function: the variables get their
    gradients through the reads, and a backward pass computed later sees
    the same numbers.
    """
    import tensorflow as tf

    embeddings = pairs.embeddings
    trained, drawn = loss.compiled_inputs(ops.shape(embeddings)[0])
    inputs = (pairs.positive, pairs.negative, sample_weight, *drawn)

    def whole():
        def terms(sources, positive, negative, *drawn):
            embeddings, *trained = sources
            return loss.compiled_pair_terms(embeddings, embeddings, positive, negative, trained, drawn)

        return _compiled_terms(terms, loss.reduction, (embeddings, *trained), inputs)

    def kernels():
        # Only for losses without state (`compiles_below`): the draws above stay unused.
        return reduce_anchor_terms(*loss.pair_terms(*pairs), sample_weight, loss.reduction)

    smallest, too_large = _TERMS_ALONE_SIZES
    smallest = max(smallest, loss.terms_alone_from or 0)
    split = loss.compiled_matrix_terms(embeddings.shape[-1]) if loss.compiles_terms_alone else None
    if split is None or smallest >= too_large:
        compiled = whole
    else:
        matrix, matrix_terms = split

        def terms_alone():
            def terms(sources, positive, negative, *drawn):
                matrix_value, *trained = sources
                return matrix_terms(matrix_value, positive, negative, trained, drawn)

            return _compiled_terms(terms, loss.reduction, (matrix(embeddings, embeddings), *trained), inputs)

        def compiled():
            if size is not None:
                return terms_alone() if smallest <= size < too_large else whole()
            return tf.cond(tf.logical_and(dynamic_size >= smallest, dynamic_size < too_large), terms_alone, whole)

    size = embeddings.shape[0]
    # A size read when the batch runs only where the trace does not know it.
    dynamic_size = tf.shape(embeddings)[0] if size is None else None
    if loss.compiles_below is None:
        return compiled()
    if size is not None:
        return compiled() if size < loss.compiles_below else kernels()
    return tf.cond(dynamic_size < loss.compiles_below, compiled, kernels)


def _compiled_terms(terms, reduction, sources, inputs):
    """The reduced value of `terms(sources, positive, negative, *drawn)`, compiled with its gradients
    w.r.t. the tensors `sources` (the embeddings or the matrix, then the values of trained variables)."""
    import tensorflow as tf

    def value(sources, positive, negative, sample_weight, *drawn):
        loss_sums, term_counts = terms(sources, positive, negative, *drawn)
        return reduce_anchor_terms(loss_sums, term_counts, sample_weight, reduction)

    def value_and_gradients(sources, *inputs):
        with tf.GradientTape() as tape:
            tape.watch(sources)
            result = value(sources, *inputs)
        return result, tape.gradient(result, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    compiled_value, compiled_both = (
        tf.function(f, jit_compile=True, autograph=False) for f in (value, value_and_gradients)
    )
    taped = _gradient_taped()

    @tf.custom_gradient
    def attached(*sources):
        held = tuple(tf.stop_gradient(source) for source in sources)
        if taped:
            result, gradients = compiled_both(held, *inputs)
        else:
            # Keras' evaluation step: the value alone, the gradients only if asked for after all.
            result, gradients = compiled_value(held, *inputs), None

        def backward(upstream):
            taken = compiled_both(held, *inputs)[1] if gradients is None else gradients
            taken = [tf.cast(upstream, gradient.dtype) * gradient for gradient in taken]
            return taken[0] if len(taken) == 1 else taken

        return result, backward

    return attached(*sources)


def _gradient_taped():
    """Whether a gradient tape watches the code being traced (True where TensorFlow's internals moved)."""
    try:
        from tensorflow.python.eager import record

        return bool(record.could_possibly_record())
    except (ImportError, AttributeError):
        return True


def per_query(terms):
    """Each query's mean over its terms, from `(loss_sums, term_counts)` (0 where none)."""
    loss_sums, term_counts = terms
    return divide_or_zero(loss_sums, term_counts)


class InBatchLoss(keras.losses.Loss):
    """Base class of the losses mined online from labels (level 1 of `tfm.losses.base`).

    `y_true` holds class ids `(N,)` or `(N, 1)` — or, with
    `multi_label=True`, 0/1 rows `(N, C)` or a `tf.SparseTensor` — and
    `y_pred` embeddings `(N, D)`. Subclasses implement
    `pair_terms(embeddings, ref_embeddings, positive, negative)`, which
    returns for every query the sum of its loss terms and how many terms it
    has; this class takes care of the labels (exact, never cast to float),
    the masks, the dtype (at least float32) and the reduction
    (`reduce_anchor_terms`).

    Args:
        reduction: `"sum_over_batch_size"` (the mean over terms), `"sum"`,
            or `None` for each query's mean over its own terms.
        name: The loss's name.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas.
        multi_label: Labels are multi-hot rows: a positive pair shares at
            least one label, a negative pair none.
        miner: A `tfm.miners` miner that chooses which of the batch's pairs
            (or triplets) the loss looks at; `None`: all of them.
    """

    # True for the losses that take the miner's triplets themselves
    # (`BatchAllTriplet`); the others look at the mined pairs.
    mines_triplets = False
    # True for the losses that compile themselves with XLA inside
    # TensorFlow graphs that run op by op (`compile_losses_with_xla`).
    faster_under_xla = False
    # True for those of them that then compile their terms alone, the
    # matrix (`matrix_terms`) left to TensorFlow's kernels, at the batch
    # sizes where that measured faster (`compiled_loss`).
    compiles_terms_alone = False
    # For some of those, a batch size below which they stay whole though
    # within `_TERMS_ALONE_SIZES` (measured slower split at 512).
    terms_alone_from = None
    # For some losses that compile themselves, the batch size from which
    # they stay TensorFlow's kernels: where XLA's fused passes gain less
    # than its slower products and histograms cost (FastAP, the histogram
    # and ranked list losses from 1536 queries: as slow or slower whole at
    # 2048). Not for a loss with state: it would draw its numbers twice.
    compiles_below = None

    def __init__(self, reduction="sum_over_batch_size", name=None, cross_replica=False, multi_label=False,
                 miner=None):
        super().__init__(name=name, reduction=reduction)
        self.cross_replica = bool(cross_replica)
        self.multi_label = bool(multi_label)
        if isinstance(miner, dict):
            import tfmetric.miners  # noqa: F401 (registers the miners for deserialisation)

            miner = keras.saving.deserialize_keras_object(miner)
        self.miner = miner
        # A `tfm.losses.state.LossState` for losses with variables (learned
        # β, class centres), attached to the model at every call.
        self.state = None

    @property
    def state(self):
        """The loss's `LossState` (or None); it also holds a random miner's `seed_generator`.

        Under JAX's jit (`model.fit`) a random generator must be part of the
        model's state: a loss whose miner draws (`DistanceWeightedMiner`,
        `UniformHistogramMiner`) keeps the miner's generator in its state, created
        if the loss has none, and added again to a state a subclass sets later.
        """
        state = self.__dict__.get("_state")
        generator = getattr(self.__dict__.get("miner"), "seed_generator", None)
        if generator is not None:
            if state is None:
                from tfmetric.losses.state import LossState

                state = LossState(name=f"{self.name}_state")
                self.__dict__["_state"] = state
            if getattr(state, "miner_seed_generator", None) is not generator:
                state.miner_seed_generator = generator
        return state

    @state.setter
    def state(self, value):
        self.__dict__["_state"] = value

    def pair_terms(self, embeddings, ref_embeddings, positive, negative):
        """`(loss_sums, term_counts)`, both `(N,)`, of the queries against the reference."""
        raise NotImplementedError

    def may_compile(self):
        """Whether the loss may compile itself (`compile_losses_with_xla`).

        A compiled function can neither read the loss's variables nor
        advance its random generator: by default, only a loss without state.
        A loss may override it where it reads its variables and draws its
        numbers before the call (`compiled_inputs`).
        """
        return self.state is None

    def compiled_inputs(self, num_queries):
        """`(trained, drawn)` for a compiled call on `num_queries` queries: tuples of tensors.

        `trained`: the values of the loss's trained variables, read before
        the call (the variables are differentiated through the reads);
        `drawn`: the random numbers `pair_terms` would draw, in the same
        calls of the loss's generator, so that compiled or not the loss sees
        the same numbers. `compiled_pair_terms` takes both inside.
        """
        return (), ()

    def compiled_pair_terms(self, embeddings, ref_embeddings, positive, negative, trained, drawn):
        """`pair_terms` on the variables' values and the random numbers of `compiled_inputs`."""
        return self.pair_terms(embeddings, ref_embeddings, positive, negative)

    def compiled_matrix_terms(self, dim):
        """`matrix_terms` for embeddings of size `dim`, its terms taking `compiled_inputs`' `trained` and `drawn`
        after the masks: what a loss that compiles its terms alone compiles (`compiles_terms_alone`)."""
        split = self.matrix_terms()
        if split is None:
            return None
        matrix, terms = split
        return matrix, lambda matrix_value, positive, negative, trained, drawn: terms(matrix_value, positive, negative)

    def matrix_terms(self):
        """`(matrix, terms)` such that `pair_terms(e, r, p, n)` is `terms(matrix(e, r), p, n)`, or None.

        A loss that compiles itself (`compile_losses_with_xla`) may then
        compile its terms alone, the matrix staying TensorFlow's kernels.
        """
        return None

    def query_terms(self, labels, embeddings, ref_labels=None, ref_embeddings=None, remove_diagonal=None,
                    ref_valid=None):
        """The terms of every query, mined against the reference (default: the batch itself).

        See `tfm.mining.mine_pairs` for the arguments; `ref_valid` marks the
        reference rows that hold an example.
        """
        return self.pair_terms(*self.mine(labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, ref_valid))

    def mine(self, labels, embeddings, ref_labels=None, ref_embeddings=None, remove_diagonal=None, ref_valid=None):
        """The validated `tfm.mining.Pairs` of the queries and the reference, narrowed by the miner."""
        pairs = mine_pairs(
            labels,
            embeddings,
            ref_labels,
            ref_embeddings,
            multi_label=self.multi_label,
            remove_diagonal=remove_diagonal,
            ref_valid=ref_valid,
        )
        return pairs if self.mines_triplets else apply_miner(self.miner, pairs)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras' Loss.__call__ would cast y_true to float first, merging
        # large labels; this one keeps them exact.
        if self.state is not None:
            self.state.attach(self)
        with keras.name_scope(self.name):
            context = replica_context() if self.cross_replica else None
            if context is not None:
                return self._cross_replica_loss(context, y_true, y_pred, sample_weight)
            if compiles_alone(self):
                loss = compiled_loss(self, self.mine(y_true, y_pred), sample_weight)
            else:
                loss_sums, term_counts = self.query_terms(y_true, y_pred)
                loss = reduce_anchor_terms(loss_sums, term_counts, sample_weight, self.reduction)
            return scale_for_replicas(loss, self.reduction)

    def _cross_replica_loss(self, context, y_true, y_pred, sample_weight):
        embeddings = as_embeddings(y_pred)
        labels = standardize_any(y_true, embeddings, self.multi_label)
        loss, _, _ = replica_share(context, embeddings, labels, sample_weight, self.reduction, self.query_terms)
        return loss

    def call(self, y_true, y_pred):
        """Per-anchor losses: each anchor's mean over its terms (0 if none)."""
        return per_query(self.query_terms(y_true, y_pred))

    def get_config(self):
        config = super().get_config()
        config.update({"cross_replica": self.cross_replica, "multi_label": self.multi_label})
        if self.miner is not None:
            config["miner"] = keras.saving.serialize_keras_object(self.miner)
        return config


class DistanceLoss(InBatchLoss):
    """Level 2 of `tfm.losses.base`: losses on the distances between queries and reference.

    Subclasses implement `distance_terms(distances, positive, negative)`.

    Args:
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        normalize: L2-normalise the embeddings before the distance.
        reduction, name, cross_replica, multi_label, miner: As `InBatchLoss`.
    """

    def __init__(self, distance="euclidean", normalize=False, reduction="sum_over_batch_size", name=None,
                 cross_replica=False, multi_label=False, miner=None):
        super().__init__(reduction, name, cross_replica, multi_label, miner)
        self.distance = check_distance(distance)
        self.normalize = bool(normalize)

    def distance_terms(self, distances, positive, negative):
        """`(loss_sums, term_counts)`, both `(N,)`, from the `(N, R)` distances."""
        raise NotImplementedError

    def pair_terms(self, embeddings, ref_embeddings, positive, negative):
        return self.distance_terms(self._distances(embeddings, ref_embeddings), positive, negative)

    def _distances(self, embeddings, ref_embeddings):
        return pair_distances(embeddings, ref_embeddings, self.distance, self.normalize)

    def matrix_terms(self):
        # A subclass with its own `pair_terms` says itself whether it is the matrix and its terms.
        if type(self).pair_terms is not DistanceLoss.pair_terms:
            return None
        return self._distances, self.distance_terms

    def get_config(self):
        config = super().get_config()
        config.update({"distance": self.distance, "normalize": self.normalize})
        return config


class SimilarityLoss(InBatchLoss):
    """Level 3 of `tfm.losses.base`: losses on dot products (cosine similarities by default).

    Subclasses implement `similarity_terms(similarity, positive, negative)`.

    Args:
        normalize: L2-normalise the embeddings first (cosine similarities).
        reduction, name, cross_replica, multi_label, miner: As `InBatchLoss`.
    """

    def __init__(self, normalize=True, reduction="sum_over_batch_size", name=None, cross_replica=False,
                 multi_label=False, miner=None):
        super().__init__(reduction, name, cross_replica, multi_label, miner)
        self.normalize = bool(normalize)

    def similarity_terms(self, similarity, positive, negative):
        """`(loss_sums, term_counts)`, both `(N,)`, from the `(N, R)` similarities."""
        raise NotImplementedError

    def pair_terms(self, embeddings, ref_embeddings, positive, negative):
        return self.similarity_terms(self._similarities(embeddings, ref_embeddings), positive, negative)

    def _similarities(self, embeddings, ref_embeddings):
        return pair_similarities(embeddings, ref_embeddings, self.normalize)

    def matrix_terms(self):
        if type(self).pair_terms is not SimilarityLoss.pair_terms:
            return None
        return self._similarities, self.similarity_terms

    def get_config(self):
        config = super().get_config()
        config["normalize"] = self.normalize
        return config


def _reference(embeddings, ref_embeddings):
    # The batch against itself: None keeps the square matrix's exact zero diagonal.
    return None if ref_embeddings is embeddings else ref_embeddings


def pair_distances(embeddings, ref_embeddings, distance, normalize):
    """The `(N, R)` distances of `Pairs` embeddings (the exact square when the reference is the batch)."""
    return pairwise_distance(embeddings, distance, normalize, ref_embeddings=_reference(embeddings, ref_embeddings))


def pair_similarities(embeddings, ref_embeddings, normalize):
    """The `(N, R)` similarities of `Pairs` embeddings."""
    return pairwise_similarity(embeddings, normalize, ref_embeddings=_reference(embeddings, ref_embeddings))


def apply_miner(miner, pairs):
    """`pairs` with their masks narrowed to the pairs `miner` mines (`pairs` itself without a miner).

    The miner computes its own gradient-free matrix; under `tf.function`
    with XLA and JAX's jit, the compiler merges it with the loss's when they
    are the same distance.
    """
    if miner is None:
        return pairs
    positive, negative = miner.mine_pairs(pairs.embeddings, pairs.ref_embeddings, pairs.positive, pairs.negative)
    return Pairs(pairs.embeddings, pairs.ref_embeddings, positive, negative)


def _query_losses(matrix, terms, labels, embeddings, ref_labels, ref_embeddings, multi_label, remove_diagonal,
                  arguments, miner=None):
    pairs = mine_pairs(
        labels, embeddings, ref_labels, ref_embeddings, multi_label=multi_label, remove_diagonal=remove_diagonal
    )
    pairs = apply_miner(miner, pairs)
    values = matrix(pairs.embeddings, pairs.ref_embeddings)
    return per_query(terms(values, pairs.positive, pairs.negative, **arguments))


def distance_loss(terms, labels, embeddings, ref_labels, ref_embeddings, *, distance, normalize, multi_label,
                  remove_diagonal, miner=None, **arguments):
    """Per-query losses of the term function `terms(distances, positive, negative, **arguments)`.

    `miner`: a `tfm.miners` miner that narrows the pairs first.
    """
    check_distance(distance)

    def distances(queries, reference):
        return pair_distances(queries, reference, distance, normalize)

    return _query_losses(
        distances, terms, labels, embeddings, ref_labels, ref_embeddings, multi_label, remove_diagonal, arguments,
        miner,
    )


def similarity_loss(terms, labels, embeddings, ref_labels, ref_embeddings, *, normalize, multi_label,
                    remove_diagonal, miner=None, **arguments):
    """Per-query losses of the term function `terms(similarity, positive, negative, **arguments)`.

    `miner`: a `tfm.miners` miner that narrows the pairs first.
    """

    def similarities(queries, reference):
        return pair_similarities(queries, reference, normalize)

    return _query_losses(
        similarities, terms, labels, embeddings, ref_labels, ref_embeddings, multi_label, remove_diagonal, arguments,
        miner,
    )
