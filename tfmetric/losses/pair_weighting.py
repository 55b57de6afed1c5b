"""Further weightings of pairs and triplets: angular, tuplet margin, intra-pair variance, threshold-consistent margin.

Notation: `x_i` are the L2-normalised embeddings (all four losses work on
cosine similarities, as in PyTorch Metric Learning), `s(a, j) = x_a · x_j`
the `(N, R)` similarities of the queries and the reference (the batch itself
by default), `P(a)` the positives of query `a`, `Q(a)` its negatives.

`Angular` and `TupletMargin` have one term per positive pair `(a, p)`, and
their loss is the mean over positive pairs (PML's `MeanReducer` over
`"pos_pair"` losses). `IntraPairVariance` and `ThresholdConsistentMargin`
are global quantities (means over all the positive and all the negative
pairs of the batch): their term functions return `(value · 1, 1)` for every
query, so that the reduction gives the value and sample weights scale
nothing.
"""

import collections
import math

import keras
from keras import ops

from tfmetric.distances import inner_products, l2_normalize, matmul, row_sums
from tfmetric.losses.base import (
    InBatchLoss,
    SimilarityLoss,
    add_at,
    apply_miner,
    compiled_piece,
    divide_or_zero,
    per_query,
    row_logsumexp,
    similarity_loss,
)
from tfmetric.mining import (
    add_to_rows,
    entry_coordinates,
    for_each_positive,
    mask_row_counts,
    mine_pairs,
    positive_table_and_counts,
    row_pick,
    scatter_add,
    table_slots,
    take_entries,
)

# Smallest sin²θ under the square root of `cos(θ − m)`: the derivative of
# sin θ = √(1 − cos²θ) is infinite at cos θ = ±1.
_TINY = 1e-12


def _finite(name, value):
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; received {value}.")
    return value


def _check_alpha(alpha):
    alpha = _finite("alpha", alpha)
    if not 0.0 < alpha < 90.0:
        raise ValueError(f"alpha is an angle in degrees in (0, 90); received {alpha}.")
    return alpha


def _check_tuplet(margin, scale):
    margin, scale = _finite("margin", margin), _finite("scale", scale)
    if not 0.0 <= margin < 180.0:
        raise ValueError(f"margin is an angle in degrees in [0, 180); received {margin}.")
    if scale <= 0:
        raise ValueError(f"scale must be positive; received {scale}.")
    return margin, scale


def _check_nonnegative(**values):
    for name, value in values.items():
        if _finite(name, value) < 0:
            raise ValueError(f"{name} must be >= 0; received {value}.")
    return tuple(float(value) for value in values.values())


def _masked_mean(values, mask):
    """The mean of `values` over the True entries of `mask` (0 where there is none)."""
    total = ops.sum(ops.where(mask, values, ops.zeros_like(values)))
    return divide_or_zero(total, ops.sum(ops.cast(mask, values.dtype)))


def _global(value, similarity):
    """`(value · 1, 1)` for every query: the reduction's mean over queries gives `value`."""
    ones = ops.ones((ops.shape(similarity)[0],), similarity.dtype)
    return value * ones, ones


# ---------------------------------------------------------------- angular


def _angular_constants(alpha):
    tan_squared = math.tan(math.radians(_check_alpha(alpha))) ** 2
    return 4.0 * tan_squared, 2.0 * (1.0 + tan_squared)


def _sums_over_slots(positive, slot_values, num_queries, dtype):
    """`Σ_p log(1 + Σ_{n∈Q(a)} exp f(a, p, n))` for every query a, one positive slot at a time.

    `slot_values(slot_positive, has_slot)`: each query's term of the slot (0 without one).
    """

    def forward(slot_positive, has_slot, sums):
        return (sums + slot_values(slot_positive, has_slot),)

    return for_each_positive(positive, forward, (ops.zeros((num_queries,), dtype),))[0]


def _logsumexp_values(logits_of_slot, negative):
    """`slot_values` for `_sums_over_slots`: each slot's logits through a log-sum-exp."""

    def slot_values(slot_positive, has_slot):
        value = row_logsumexp(logits_of_slot(slot_positive), negative, add_one=True)
        return ops.where(has_slot, value, ops.zeros_like(value))

    return slot_values


def _negative_weights(logits, negative, has_slot, row_factor):
    """d ℓ / d logit(a, n), the softmax weight of n (the 1 counted in the normaliser), times `row_factor[a]`.

    Returns `(weights, unit_totals)`: the `(N, R)` weights and each row's sum
    of them per unit of its factor, `Σ_n exp(f − ℓ) = 1 − e^(−ℓ)` (0 for a
    row without its slot), without a pass over the matrix.
    """
    value = row_logsumexp(logits, negative, add_one=True)
    scale = ops.where(has_slot, row_factor, ops.zeros_like(row_factor))
    exponents = ops.where(negative, logits - value[:, None], ops.full((), float("-inf"), logits.dtype))
    unit_totals = ops.where(has_slot, -ops.expm1(-value), ops.zeros_like(value))
    return ops.exp(exponents) * scale[:, None], unit_totals


def angular_terms(queries, reference, positive, negative, alpha=40.0, shared_negatives=False):
    """Per-query sums of the angular losses of its positive pairs, and its number of positives.

    For the positive pair `(a, p)` of the unit vectors `x_a` (a row of
    `queries`) and `x_p` (a row of `reference`), over the negatives `n` of `a`:

    `ℓ_ap = log(1 + Σ_{n∈Q(a)} exp(4 tan²α (x_a + x_p)·x_n − 2 (1 + tan²α) x_a·x_p))`.

    `(x_a + x_p)·x_n = s(a, n) + x_p·x_n`: one `(N, D) × (D, R)` product per
    positive slot (`tfm.mining.for_each_positive`), never an N·R·R tensor;
    where the reference is the batch itself, row p of the Gram matrix
    instead (`_angular_sums_from_gram`), whose exponential, taken once,
    serves every slot for α up to about 65.9° (and, with shared negatives
    op by op, every class's pairs at once: `_class_terms`).
    The slots run in a loop without gradient; the gradient (a second pass
    over the slots, scaled by the incoming gradient) is attached with
    `keras.ops.custom_gradient`, so it works where loops of data-dependent
    length cannot be differentiated (JAX). Memory O(N·R + (N + R)·D).

    Why not `tfm.mining.attach_gradient` (a loop that returns d loss / d
    matrix, joined outside it)? The logits hold products of two reference
    rows (`x_p·x_n`), so the loss is no function of one `(N, R)` matrix:
    joining differentiable results outside the loop would take an
    `(N, k, D)` stack of the slots' results (k the most positives of a
    query) or the `(R, R)` products of the reference rows, while the
    backward pass here needs only the incoming per-query gradient. It
    returns the gradient with respect to the queries and to the reference
    rows; where a row is both (a reference that begins with the batch, as
    in `tfm.CrossBatchMemory`), autodiff adds the two.

    Args:
        queries: Unit vectors `(N, D)`.
        reference: Unit vectors `(R, D)` (may be `queries` itself).
        positive, negative: Boolean `(N, R)` masks.
        alpha: The angle α, in degrees, in (0, 90).
        shared_negatives: The two rows of every positive pair have the same
            negatives, and the masks are symmetric (class ids of the batch
            against itself, no miner): the gradient takes each pair from
            both sides in one pass instead of a scatter per slot.

    Returns:
        `(loss_sums, term_counts)`, both `(N,)`.
    """
    pull, push = _angular_constants(alpha)
    counts = mask_row_counts(positive, queries.dtype)
    if reference is queries:
        return _angular_sums_from_gram(queries, positive, negative, pull, push, shared_negatives), counts

    def slot_logits(x, ref, similarity, slot_positive):
        positive_rows = ops.take(ref, slot_positive, axis=0)
        logits = pull * (similarity + inner_products(positive_rows, ref))
        return logits - push * row_pick(similarity, slot_positive)[:, None], positive_rows

    # Every tensor the function uses is one of its arguments (the masks as
    # 0/1 floats, with zero gradients): JAX's custom gradients cannot close
    # over the tracers of an enclosing trace (this loss jitted inside a
    # jitted, differentiated function).
    @ops.custom_gradient
    def loss_sums(x, ref, positive_ones, negative_ones):
        x, ref = ops.stop_gradient(x), ops.stop_gradient(ref)
        positive, negative = positive_ones > 0.5, negative_ones > 0.5
        similarity = inner_products(x, ref)

        values = _logsumexp_values(lambda slot: slot_logits(x, ref, similarity, slot)[0], negative)
        sums = _sums_over_slots(positive, values, ops.shape(x)[0], x.dtype)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, x.dtype)

            def backward(slot_positive, has_slot, grad_x, grad_ref):
                logits, positive_rows = slot_logits(x, ref, similarity, slot_positive)
                weights, unit_totals = _negative_weights(logits, negative, has_slot, upstream)
                total = unit_totals * upstream
                weighted_negatives = matmul(weights, ref)
                # d/dx_a: 4t² Σ_n w x_n − 2(1 + t²) (Σ_n w) x_p.
                grad_x = grad_x + pull * weighted_negatives - push * total[:, None] * positive_rows
                # d/dx_n: 4t² Σ_a w (x_a + x_p).
                grad_ref = grad_ref + pull * matmul(ops.transpose(weights), x + positive_rows)
                # d/dx_p: 4t² Σ_n w x_n − 2(1 + t²) (Σ_n w) x_a, summed over the queries of slot p.
                by_positive = pull * weighted_negatives - push * total[:, None] * x
                by_positive = ops.where(has_slot[:, None], by_positive, ops.zeros((), x.dtype))
                # Row a's added to row p (a scatter, not a one-hot matrix's product).
                return grad_x, scatter_add(grad_ref, slot_positive[:, None], by_positive)

            grad_x, grad_ref = for_each_positive(positive, backward, (ops.zeros_like(x), ops.zeros_like(ref)))
            return grad_x, grad_ref, ops.zeros_like(positive_ones), ops.zeros_like(negative_ones)

        return sums, gradient

    dtype = queries.dtype
    return loss_sums(queries, reference, ops.cast(positive, dtype), ops.cast(negative, dtype)), counts


# exp(4 tan²α (G − 1)) of unit vectors is at least exp(−8 tan²α); the
# products of two of them stay normal float32 numbers (> e^−87) up to here
# (α ≈ 65.9°).
_FACTORED_PULL_MAX = 20.0


def _angular_sums_from_gram(x, positive, negative, pull, push, shared_negatives=False):
    """`angular_terms`' sums where the reference is the batch: `x_p·x_n` is row p of the Gram matrix.

    A gathered row per slot instead of a matrix product; the loop's
    gradient is with respect to the Gram matrix (`G_an` and `G_pn` get
    `4 tan²α w`, `G_ap` gets `−2 (1 + tan²α) Σ_n w`, with `w` each
    negative's softmax weight), and the Gram matrix's own (`(G + Gᵀ) x`) carries it to `x`.
    Each slot's values and weights come from `_factored_slots` (α up to
    about 65.9°) or `_logit_slots`.

    `G_pn`'s share goes to row p, the positive's. With `shared_negatives`
    (`angular_terms`) the pair (a, p)'s weights are those of (p, a) with
    a's incoming gradient: row p takes them in its own slot of a, so every
    slot is one pass that scales its weights by `upstream_a + upstream_p`
    instead of a scatter of N rows into the positives' rows. Op by op,
    with shared negatives and factored exponentials, every class's pairs
    come from one product instead (`_class_terms`) unless padding the
    classes to the largest would take over twice the batch's rows.
    """
    slots = _factored_slots if pull <= _FACTORED_PULL_MAX else _logit_slots
    # The class blocks only op by op (no table under XLA), where the custom
    # gradient below may close over the tensors they are made of.
    table, counts = (
        positive_table_and_counts(positive) if shared_negatives and slots is _factored_slots else (None, None)
    )
    by_class = None if table is None else _class_terms(positive, pull, push, table, counts)

    @ops.custom_gradient
    def loss_sums(gram, positive_ones, negative_ones):
        gram = ops.stop_gradient(gram)
        positive, negative = positive_ones > 0.5, negative_ones > 0.5
        if slots is _factored_slots:
            exps = _pair_exps(gram, negative, pull)
            values, weights = _factored_slots(gram, negative, pull, push, exps)
        else:
            values, weights = slots(gram, negative, pull, push)

        def by_slot():
            return _sums_over_slots(positive, values, ops.shape(gram)[0], gram.dtype)

        # Not differentiated through: the conditions stay plain forward ones.
        sums = by_slot() if by_class is None else ops.cond(
            by_class.fits, lambda: by_class.sums(gram, exps[1]), by_slot
        )

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, gram.dtype)

            def backward(slot_positive, has_slot, grad):
                if shared_negatives:
                    # G_an's share and, from the pair seen the other way, G_pn's.
                    both = upstream + ops.take(upstream, slot_positive, axis=0)
                    slot_weights, unit_totals = weights(slot_positive, has_slot, both)
                    grad = grad + pull * slot_weights
                else:
                    slot_weights, unit_totals = weights(slot_positive, has_slot, upstream)
                    pulled = pull * slot_weights
                    # G_an's share, then G_pn's: row a of it added to row p, in place.
                    grad = scatter_add(grad + pulled, slot_positive[:, None], pulled)
                # G_ap's, one entry a row.
                return (add_to_rows(grad, [(slot_positive, -push * unit_totals * upstream)]),)

            def by_slot():
                return for_each_positive(positive, backward, (ops.zeros_like(gram),))[0]

            grad = by_slot() if by_class is None else ops.cond(
                by_class.fits, lambda: by_class.gradient(gram, exps[1], upstream), by_slot
            )
            return grad, ops.zeros_like(positive_ones), ops.zeros_like(negative_ones)

        return sums, gradient

    dtype = x.dtype
    gram = inner_products(x, x)
    return loss_sums(gram, ops.cast(positive, dtype), ops.cast(negative, dtype))


# The class blocks are taken while their rows, padded to the largest class,
# are at most this many times the batch (a long-tailed batch's padding
# would be many times the matrix).
_CLASS_BLOCKS_MAX_PADDING = 2
# The largest class from which its block's products are compiled (`compiled_piece`) without XLA.
_CLASS_PIECES_FROM = 8


# `fits`, and the functions `sums(gram, negative_exps)` and `gradient(gram, negative_exps, upstream)`.
_ClassTerms = collections.namedtuple("_ClassTerms", "fits sums gradient")


def _class_terms(positive, pull, push, table, counts=None):
    """The angular sums and their gradient from every class's pairs at once (shared negatives, op by op).

    A class's rows share their negatives, so with `Ẽ = exp(c (G − 1))` at
    the negatives (0 elsewhere), `S_ap = Σ_{n∈Q(a)} E_an E_pn` is entry
    (a, p) of `Ẽ Ẽᵀ`: one batched product of each class's rows with
    themselves, `(C, K, R) × (C, R, K)` (K the largest class), instead of
    a gathered row, a product and a row sum per slot. The gradient is one
    more: `∂/∂Ẽ_a = Σ_p (u_a w_ap + u_p w_pa) Ẽ_p` over the class (`u` the
    incoming gradient, `w_ap = σ(log Σ exp f) / S_ap`), times `c Ẽ`, and
    `G_ap`'s `−2 (1 + tan²α) u_a σ(·)` one entry a pair. A row's positives
    and the row itself are its class, whose first row (in column order)
    has all the others in its `positive_table` row. `fits`: the classes
    padded to the largest take at most twice the batch's rows.
    """
    num_rows = ops.shape(positive)[0]
    rows = ops.arange(num_rows, dtype="int32")
    has_slot = table_slots(positive, table, counts)
    # Slices, not entries: a batch without positives has a table of width 0.
    leads = ops.any(ops.logical_and(has_slot[:, :1], table[:, :1] > rows[:, None]), axis=1)
    (lead_rows, _) = entry_coordinates(leads[:, None])
    members = ops.concatenate([lead_rows[:, None], ops.take(table, lead_rows, axis=0)], axis=1)
    valid = ops.concatenate([ops.ones_like(lead_rows[:, None], "bool"), ops.take(has_slot, lead_rows, axis=0)], axis=1)
    num_classes, width = ops.shape(members)[0], ops.shape(members)[1]
    size = num_classes * width
    fits = ops.logical_and(size > 0, size <= _CLASS_BLOCKS_MAX_PADDING * num_rows)
    # Each row's place in the flattened blocks; padding goes to one row past the batch, dropped.
    padded_members = ops.where(valid, members, num_rows)
    position = ops.scatter_update(
        ops.full((num_rows + 1,), size, "int32"),
        ops.reshape(padded_members, (-1, 1)),
        ops.arange(size, dtype="int32"),
    )[:num_rows]
    slot = ops.arange(width, dtype="int32")
    both_valid = ops.logical_and(valid[:, :, None], valid[:, None, :])
    pairs = ops.logical_and(both_valid, ops.not_equal(slot[:, None], slot[None, :]))
    first, second = (
        ops.reshape(ops.broadcast_to(side, ops.shape(pairs)), (-1,))
        for side in (members[:, :, None], members[:, None, :])
    )

    def shared(gram):
        constants = (ops.convert_to_tensor(constant, gram.dtype) for constant in (pull, push))
        return (members, pairs, first, second, position, *constants)

    # TensorFlow's batched products of the classes' blocks are slow from K = 8 (21 against 13 ms at
    # N = 1024; 11 against 15 at K = 4).
    compiles = width >= _CLASS_PIECES_FROM

    def sums(gram, negative_exps):
        return compiled_piece(_class_sums, compiles)(gram, negative_exps, *shared(gram))

    def gradient(gram, negative_exps, upstream):
        return compiled_piece(_class_gradient, compiles)(gram, negative_exps, upstream, padded_members,
                                                         *shared(gram))

    return _ClassTerms(fits, sums, gradient)


def _class_products(gram, negative_exps, members, pairs, first, second, pull, push):
    """`_class_terms`' blocks of the classes' rows, their products `S`, where they count, and `log Σ exp f`."""
    num_classes, width = ops.shape(members)[0], ops.shape(members)[1]
    blocks = ops.reshape(ops.take(negative_exps, ops.reshape(members, (-1,)), axis=0), (num_classes, width, -1))
    sums = matmul(blocks, ops.transpose(blocks, (0, 2, 1)))
    counted = ops.logical_and(pairs, sums > 0)
    gram_at_pairs = ops.reshape(take_entries(gram, first, second), ops.shape(sums))
    logs = ops.log(ops.where(counted, sums, ops.ones_like(sums))) + (2.0 * pull - push * gram_at_pairs)
    return blocks, sums, counted, logs


def _class_sums(gram, negative_exps, members, pairs, first, second, position, pull, push):
    """`_class_terms`' sums: every row's `Σ_p log(1 + Σ_n exp f)` (`compiled_piece`: TensorFlow's batched
    product took 3.3 ms where XLA's takes 1.0 at N = 1024, K = 16)."""
    _, _, counted, logs = _class_products(gram, negative_exps, members, pairs, first, second, pull, push)
    # log(1 + Σ exp f) = softplus(log Σ exp f); 0 for a pair without negatives.
    values = ops.sum(ops.where(counted, ops.softplus(logs), ops.zeros_like(logs)), axis=2)
    return ops.take(ops.concatenate([ops.reshape(values, (-1,)), ops.zeros((1,), values.dtype)]), position)


def _class_gradient(gram, negative_exps, upstream, padded_members, members, pairs, first, second, position, pull,
                    push):
    """`_class_terms`' gradient with respect to the Gram matrix, given the incoming `upstream` `(N,)`."""
    blocks, sums, counted, logs = _class_products(gram, negative_exps, members, pairs, first, second, pull, push)
    num_rows = ops.shape(gram)[0]
    size = ops.shape(members)[0] * ops.shape(members)[1]
    upstream = ops.take(ops.concatenate([upstream, ops.zeros_like(upstream[:1])]), padded_members)[:, :, None]
    slopes = ops.where(counted, ops.sigmoid(logs), ops.zeros_like(logs))
    by_sums = upstream * slopes / ops.where(counted, sums, ops.ones_like(sums))
    by_blocks = matmul(by_sums + ops.transpose(by_sums, (0, 2, 1)), blocks)
    # A row without a positive takes the zero row past the blocks.
    by_rows = ops.concatenate([ops.reshape(by_blocks, (size, num_rows)), ops.zeros((1, num_rows), gram.dtype)], 0)
    grad = pull * negative_exps * ops.take(by_rows, position, axis=0)
    return scatter_add(grad, ops.stack([first, second], axis=1), ops.reshape(-push * upstream * slopes, (-1,)))


def _pair_exps(gram, negative, pull):
    """`E = exp(c (G − 1))` and `E` at the negatives (0 elsewhere), `c = 4 tan²α`."""
    exps = ops.exp(pull * (gram - 1.0))
    return exps, ops.where(negative, exps, ops.zeros((), exps.dtype))


def _factored_slots(gram, negative, pull, push, exps=None):
    """`(values, weights)` of a slot, `f = c (G_an + G_pn) − 2(1 + tan²α) G_ap` with `c = 4 tan²α`, from one exp.

    With `E = exp(c (G − 1))`, `Σ_n exp f = e^(2c − 2(1 + tan²α) G_ap) S_a`,
    `S_a = Σ_{n∈Q(a)} E_an E_pn`: the one `exp` of the `(N, N)` matrix
    serves every slot, which is then a gathered row, a product and a row
    sum (each slot's exponentials and log-sum-exp took most of the time).
    Unit vectors keep `c (G − 1)` in `[−2c, 0]`, so no product underflows
    while `c ≤ 20`. `values(slot, has_slot)`: `log(1 + Σ exp f)` per
    query; `weights(slot, has_slot, row_factor)`: each negative's softmax
    weight times the query's factor (its incoming gradient), and each
    row's sum of those weights per unit of the factor. `exps`:
    `_pair_exps(gram, negative, pull)` where the caller has them.
    """
    exps, negative_exps = _pair_exps(gram, negative, pull) if exps is None else exps

    def products_and_logs(slot_positive, has_slot):
        """`E_an E_pn` at the negatives, `S_a > 0` where the slot counts, and `log Σ_n exp f`."""
        products = negative_exps * ops.take(exps, slot_positive, axis=0)
        sums = row_sums(products)
        logs = ops.log(ops.where(sums > 0, sums, ops.ones_like(sums)))
        logs = logs + (2.0 * pull - push * row_pick(gram, slot_positive))
        return products, sums, ops.logical_and(has_slot, sums > 0), logs

    def values(slot_positive, has_slot):
        _, _, counted, logs = products_and_logs(slot_positive, has_slot)
        # log(1 + Σ exp f) = softplus(log Σ exp f); 0 for a query without negatives.
        return ops.where(counted, ops.softplus(logs), ops.zeros_like(logs))

    def weights(slot_positive, has_slot, row_factor):
        products, sums, counted, logs = products_and_logs(slot_positive, has_slot)
        # d ℓ / d S_a = sigmoid(log Σ exp f) / S_a; the weights' row sum is sigmoid(log Σ exp f).
        safe_sums = ops.where(counted, sums, ops.ones_like(sums))
        unit_totals = ops.where(counted, ops.sigmoid(logs), ops.zeros_like(sums))
        return products * (row_factor * unit_totals / safe_sums)[:, None], unit_totals

    return values, weights


def _logit_slots(gram, negative, pull, push):
    """`_factored_slots` for any α: each slot's logits through a log-sum-exp."""

    def logits(slot_positive):
        pulled = pull * (gram + ops.take(gram, slot_positive, axis=0))
        return pulled - push * row_pick(gram, slot_positive)[:, None]

    def weights(slot_positive, has_slot, row_factor):
        return _negative_weights(logits(slot_positive), negative, has_slot, row_factor)

    return _logsumexp_values(logits, negative), weights


def _unit_pair(embeddings, ref_embeddings):
    queries = l2_normalize(embeddings)
    return queries, queries if ref_embeddings is embeddings else l2_normalize(ref_embeddings)


def angular(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    alpha=40.0,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query angular losses (the math of `Angular`): each query's mean over its positive pairs.

    Args:
        labels: Class ids `(N,)` of the queries (or, with `multi_label`,
            0/1 rows `(N, C)`).
        embeddings: Query embeddings `(N, D)`.
        ref_labels, ref_embeddings: Optional reference `(R,)`, `(R, D)`:
            positives and negatives are reference rows. O(N·R) memory.
        remove_diagonal: Whether reference row a is query a itself (the
            queries come first in the reference); `None`: only without a
            reference.
        alpha, multi_label: As `Angular`.
        miner: A `tfm.miners` miner that narrows the pairs first.

    Returns:
        The `(N,)` per-query losses, 0 for a query without a positive.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.angular([0, 0, 1, 1], embeddings)]
    [0.3124, 0.3124, 0.3124, 0.3124]
    """
    _check_alpha(alpha)
    pairs = mine_pairs(labels, embeddings, ref_labels, ref_embeddings, multi_label=multi_label,
                       remove_diagonal=remove_diagonal)
    pairs = apply_miner(miner, pairs)
    queries, reference = _unit_pair(pairs.embeddings, pairs.ref_embeddings)
    shared = ref_labels is None and miner is None and not multi_label
    return per_query(angular_terms(queries, reference, pairs.positive, pairs.negative, alpha, shared))


@keras.saving.register_keras_serializable(package="tfmetric")
class Angular(InBatchLoss):
    r"""Angular loss (Wang, Zhou, Wen, Liu & Lin 2017, "Deep Metric Learning
    with Angular Loss", https://arxiv.org/abs/1708.01682), N-pair form.

    The triangle of an anchor, its positive and a negative should have an
    angle at the negative below α: with unit vectors `x` and the pair's
    centre `(x_a + x_p) / 2`, the paper's bound `‖x_a − x_p‖² ≤ 4 tan²α
    ‖x_n − x_c‖²` becomes a logit per negative, and each positive pair is
    contrasted with all the negatives of its anchor:

    $$ f(a, p, n) = 4 \tan^2\alpha\, (x_a + x_p) \cdot x_n - 2\,(1 + \tan^2\alpha)\, x_a \cdot x_p $$

    $$ \ell(a, p) = \log\Big(1 + \sum_{n \in Q(a)} \exp f(a, p, n)\Big) $$

    $$ \text{loss} = \text{the mean of } \ell(a, p) \text{ over all positive pairs } (a, p) $$

    This is PyTorch Metric Learning's `AngularLoss` (same default α = 40°,
    in degrees; same mean over positive pairs). One difference: PML
    normalises the anchors and positives but uses the negatives' embeddings
    as they are; here every embedding is L2-normalised, as in the paper. On
    unit-norm inputs the values are the same, and the gradients the same up
    to their component along each embedding (which normalisation removes).

    Memory O(N·R): the positive pairs are visited one slot at a time
    (`tfm.mining.for_each_positive`), each a row of the batch's Gram matrix
    (a `(N, D) × (D, R)` product against a separate reference); with class
    ids of the batch against itself and without XLA, every class's pairs
    come from one product of its rows instead.

    Args:
        alpha: The angle α in degrees, in (0, 90) (paper: 36°–55°).
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's mean over its positives.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.
        miner: As `tfm.losses.base.InBatchLoss`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.Angular()(labels, embeddings)), 4)
    0.3124
    """

    def __init__(self, alpha=40.0, reduction="sum_over_batch_size", name="angular", cross_replica=False,
                 multi_label=False, miner=None):
        super().__init__(reduction, name, cross_replica, multi_label, miner)
        self.alpha = _check_alpha(alpha)

    def query_terms(self, labels, embeddings, ref_labels=None, ref_embeddings=None, remove_diagonal=None,
                    ref_valid=None):
        pairs = self.mine(labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, ref_valid)
        # Class ids of the batch against itself: a positive pair's rows share their negatives.
        shared = ref_labels is None and self.miner is None and not self.multi_label
        return self._terms(*pairs, shared_negatives=shared)

    def pair_terms(self, embeddings, ref_embeddings, positive, negative):
        return self._terms(embeddings, ref_embeddings, positive, negative)

    def _terms(self, embeddings, ref_embeddings, positive, negative, shared_negatives=False):
        queries, reference = _unit_pair(embeddings, ref_embeddings)
        return angular_terms(queries, reference, positive, negative, self.alpha, shared_negatives)

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config


# ---------------------------------------------------------------- tuplet margin


def tuplet_margin_terms(similarity, positive, negative, margin=5.73, scale=64.0):
    """Per-query sums of the tuplet margin losses of its positive pairs, and its number of positives.

    `ℓ_ap = log(1 + Σ_{n∈Q(a)} exp(γ (s(a, n) − cos(θ_ap − m))))`, `θ_ap =
    arccos s(a, p)`, `m` the margin in degrees, `γ` the scale; computed as
    `softplus(log Σ_n exp(γ s(a, n)) − γ cos(θ_ap − m))`, O(N·R).
    """
    margin, scale = _check_tuplet(margin, scale)
    radians = math.radians(margin)
    negatives = row_logsumexp(scale * similarity, negative)
    has_negative = ops.any(negative, axis=1)
    counts = mask_row_counts(positive, similarity.dtype)

    def terms(positive_similarity, negatives):
        cosine = ops.clip(positive_similarity, -1.0, 1.0)
        sine_squared = 1.0 - ops.square(cosine)
        sine = ops.sqrt(ops.where(sine_squared > _TINY, sine_squared, ops.full_like(sine_squared, _TINY)))
        # cos(θ − m) = cos θ cos m + sin θ sin m, with sin θ ≥ 0 on [0, π].
        target = cosine * math.cos(radians) + sine * math.sin(radians)
        return ops.softplus(negatives - scale * target)

    # Where every operation is a kernel of its own: the positive pairs'
    # terms on a vector of them, not on the whole matrix.
    coordinates = entry_coordinates(positive)
    if coordinates is not None:
        rows, columns = coordinates
        pair_terms = terms(take_entries(similarity, rows, columns), ops.take(negatives, rows))
        pair_terms = ops.where(ops.take(has_negative, rows), pair_terms, ops.zeros_like(pair_terms))
        return add_at(pair_terms, rows, ops.shape(similarity)[0]), counts
    all_terms = terms(similarity, negatives[:, None])
    keep = ops.logical_and(positive, has_negative[:, None])
    return ops.sum(ops.where(keep, all_terms, ops.zeros_like(all_terms)), axis=1), counts


def tuplet_margin(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    margin=5.73,
    scale=64.0,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query tuplet margin losses (the math of `TupletMargin`): each query's mean over its positive pairs.

    The arguments are those of `tfm.losses.angular` and `TupletMargin`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.tuplet_margin([0, 0, 1, 1], embeddings, scale=8.0)]
    [0.0011, 0.1224, 0.1224, 0.0011]
    """
    return similarity_loss(
        tuplet_margin_terms, labels, embeddings, ref_labels, ref_embeddings, normalize=True,
        multi_label=multi_label, remove_diagonal=remove_diagonal, miner=miner, margin=margin, scale=scale,
    )


class _CosineLoss(SimilarityLoss):
    """A `SimilarityLoss` on cosine similarities only (no `normalize` option)."""

    def __init__(self, reduction, name, cross_replica, multi_label, miner):
        super().__init__(True, reduction, name, cross_replica, multi_label, miner)

    def get_config(self):
        config = super().get_config()
        del config["normalize"]
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class TupletMargin(_CosineLoss):
    r"""Tuplet margin loss (Yu & Tao 2019, "Deep Metric Learning with Tuplet
    Margin Loss", ICCV, https://openaccess.thecvf.com/content_ICCV_2019/html/Yu_Deep_Metric_Learning_With_Tuplet_Margin_Loss_ICCV_2019_paper.html).

    An N-pair loss on scaled cosines in which the positive's angle gets a
    slack `m` (it is compared as `θ_ap − m`), so that positives are not
    pulled all the way together:

    $$ \ell(a, p) = \log\Big(1 + \sum_{n \in Q(a)} \exp\big(\gamma\,(\cos\theta_{an} - \cos(\theta_{ap}
        - m))\big)\Big) $$

    $$ \text{loss} = \text{the mean of } \ell(a, p) \text{ over all positive pairs } (a, p) $$

    PyTorch Metric Learning's `TupletMarginLoss`, same defaults (`m = 5.73°`,
    in degrees, `γ = 64`) and the same mean over positive pairs (a pair
    whose anchor has no negative counts with loss 0). The gradient stays
    finite where a positive pair coincides (PML's `acos` has an infinite
    derivative there): `sin θ` is floored at 1e-6. The paper's
    intra-pair variance regulariser is `IntraPairVariance`, added
    separately (`TupletMargin()(y, x) + 0.5 * IntraPairVariance()(y, x)`, say).

    Args:
        margin: The slack `m` in degrees, in [0, 180).
        scale: The scale `γ` > 0.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each anchor's mean over its positives.
        name, cross_replica, multi_label, miner: As `Angular`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.TupletMargin(scale=8.0)(labels, embeddings)), 4)
    0.0617
    """

    def __init__(self, margin=5.73, scale=64.0, reduction="sum_over_batch_size", name="tuplet_margin",
                 cross_replica=False, multi_label=False, miner=None):
        super().__init__(reduction, name, cross_replica, multi_label, miner)
        self.margin, self.scale = _check_tuplet(margin, scale)

    def similarity_terms(self, similarity, positive, negative):
        return tuplet_margin_terms(similarity, positive, negative, self.margin, self.scale)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "scale": self.scale})
        return config


# ---------------------------------------------------------------- intra-pair variance


def intra_pair_variance_terms(similarity, positive, negative, pos_eps=0.01, neg_eps=0.01):
    """The intra-pair variance loss of all the pairs, `(value · 1, 1)` for every query.

    `value = mean_{(a,p)} relu((1 − ε₊) μ₊ − s(a, p))² + mean_{(a,n)} relu(s(a, n) − (1 + ε₋) μ₋)²`,
    `μ₊`, `μ₋` the means of the positive and of the negative similarities
    (each mean 0 without pairs; the means are differentiated too).
    """
    pos_eps, neg_eps = _check_nonnegative(pos_eps=pos_eps, neg_eps=neg_eps)
    dtype = similarity.dtype
    value = _intra_pair_variance(similarity, ops.cast(positive, dtype), ops.cast(negative, dtype), pos_eps, neg_eps)
    return _global(value, similarity)


def _intra_pair_variance(similarity, positive_ones, negative_ones, pos_eps, neg_eps):
    """`intra_pair_variance_terms`' value from 0/1 masks, its gradient written out.

    With `r = relu((1 − ε₊) μ₊ − s)` at the P positive pairs and `t =
    relu(s − (1 + ε₋) μ₋)` at the Q negative pairs, the gradient is
    `(2/P)((1 − ε₊) mean(r) − r)` at the positives and `(2/Q)(t − (1 + ε₋)
    mean(t))` at the negatives (the means' own gradients are the `mean`
    terms): a few passes over the matrix, where autodiff took a dozen more
    through the masked means and broadcast every mean's gradient back.
    """

    # The masks are arguments: JAX's custom gradients cannot close over tracers.
    @ops.custom_gradient
    def variance(s, positive_ones, negative_ones):
        s = ops.stop_gradient(s)
        num_positive, num_negative = ops.sum(positive_ones), ops.sum(negative_ones)
        mean_positive = divide_or_zero(ops.sum(s * positive_ones), num_positive)
        mean_negative = divide_or_zero(ops.sum(s * negative_ones), num_negative)
        below = ops.relu((1.0 - pos_eps) * mean_positive - s) * positive_ones
        above = ops.relu(s - (1.0 + neg_eps) * mean_negative) * negative_ones
        value = divide_or_zero(ops.sum(below * below), num_positive) + divide_or_zero(
            ops.sum(above * above), num_negative
        )

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, s.dtype)
            pull = divide_or_zero(2.0 * upstream, num_positive)
            push = divide_or_zero(2.0 * upstream, num_negative)
            shift_positive = (1.0 - pos_eps) * divide_or_zero(ops.sum(below), num_positive)
            shift_negative = (1.0 + neg_eps) * divide_or_zero(ops.sum(above), num_negative)
            grad = pull * (shift_positive * positive_ones - below) + push * (above - shift_negative * negative_ones)
            return grad, ops.zeros_like(positive_ones), ops.zeros_like(negative_ones)

        return value, gradient

    return variance(similarity, positive_ones, negative_ones)


def intra_pair_variance(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    pos_eps=0.01,
    neg_eps=0.01,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """The intra-pair variance loss (the math of `IntraPairVariance`), repeated for every query.

    A global quantity: every entry of the `(N,)` result is the loss. The
    arguments are those of `tfm.losses.angular` and `IntraPairVariance`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.intra_pair_variance([0, 0, 1, 1], embeddings)]
    [0.09, 0.09, 0.09, 0.09]
    """
    return similarity_loss(
        intra_pair_variance_terms, labels, embeddings, ref_labels, ref_embeddings, normalize=True,
        multi_label=multi_label, remove_diagonal=remove_diagonal, miner=miner, pos_eps=pos_eps, neg_eps=neg_eps,
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class IntraPairVariance(_CosineLoss):
    r"""Intra-pair variance loss (Yu & Tao 2019, "Deep Metric Learning with
    Tuplet Margin Loss", ICCV): the regulariser that keeps the similarities
    of the positive pairs, and those of the negative pairs, close to their
    means.

    $$ \mu_+ = \text{the mean of } s(a, p) \text{ over the positive pairs},
        \quad \mu_- = \text{over the negative pairs} $$

    $$ \text{loss} = \mathrm{mean}_{(a, p)}\, \mathrm{relu}\big((1 - \varepsilon_+)\, \mu_+ - s(a, p)\big)^2
        + \mathrm{mean}_{(a, n)}\, \mathrm{relu}\big(s(a, n) - (1 + \varepsilon_-)\, \mu_-\big)^2 $$

    Positive pairs much less similar than their mean, and negative pairs
    much more similar than theirs, are penalised; the means are part of the
    gradient. PyTorch Metric Learning's `IntraPairVarianceLoss` with its
    default cosine similarity, same defaults and values (each part 0
    without pairs of its kind).

    A global quantity (means over all the pairs of the batch, not a mean
    over per-query terms): every query's loss is the whole value, and
    sample weights scale nothing (the reduction's weighted mean of equal
    values). Under `cross_replica`, the pairs of the global batch.

    Args:
        pos_eps: `ε₊` ≥ 0.
        neg_eps: `ε₋` ≥ 0.
        reduction: `"sum_over_batch_size"` (the value, default), `"sum"`
            (N times the value), or `None` (the value for every query).
        name, cross_replica, multi_label, miner: As `Angular`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.IntraPairVariance()(labels, embeddings)), 4)
    0.09
    """

    def __init__(self, pos_eps=0.01, neg_eps=0.01, reduction="sum_over_batch_size", name="intra_pair_variance",
                 cross_replica=False, multi_label=False, miner=None):
        super().__init__(reduction, name, cross_replica, multi_label, miner)
        self.pos_eps, self.neg_eps = _check_nonnegative(pos_eps=pos_eps, neg_eps=neg_eps)

    def similarity_terms(self, similarity, positive, negative):
        return intra_pair_variance_terms(similarity, positive, negative, self.pos_eps, self.neg_eps)

    def get_config(self):
        config = super().get_config()
        config.update({"pos_eps": self.pos_eps, "neg_eps": self.neg_eps})
        return config


# ---------------------------------------------------------------- threshold-consistent margin


def _check_margins(margin_plus, margin_minus):
    margin_plus, margin_minus = _finite("margin_plus", margin_plus), _finite("margin_minus", margin_minus)
    if not -1.0 <= margin_minus <= 1.0 or not -1.0 <= margin_plus <= 1.0:
        raise ValueError(
            f"margin_plus and margin_minus are cosine similarities in [-1, 1]; received {margin_plus} and "
            f"{margin_minus}."
        )
    return margin_plus, margin_minus


def threshold_consistent_margin_terms(similarity, positive, negative, lambda_plus=1.0, lambda_minus=1.0,
                                      margin_plus=0.9, margin_minus=0.5):
    """The threshold-consistent margin loss of all the pairs, `(value · 1, 1)` for every query.

    `value = λ₊ mean_{s(a,p) ≤ m₊} (m₊ − s(a, p)) + λ₋ mean_{s(a,n) ≥ m₋} (s(a, n) − m₋)`,
    each mean over the pairs of its kind on the wrong side of the margin
    (0 where there is none).
    """
    lambda_plus, lambda_minus = _check_nonnegative(lambda_plus=lambda_plus, lambda_minus=lambda_minus)
    margin_plus, margin_minus = _check_margins(margin_plus, margin_minus)
    low_positive = ops.logical_and(positive, similarity <= margin_plus)
    high_negative = ops.logical_and(negative, similarity >= margin_minus)
    value = lambda_plus * _masked_mean(margin_plus - similarity, low_positive) + lambda_minus * _masked_mean(
        similarity - margin_minus, high_negative
    )
    return _global(value, similarity)


def threshold_consistent_margin(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    lambda_plus=1.0,
    lambda_minus=1.0,
    margin_plus=0.9,
    margin_minus=0.5,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """The threshold-consistent margin loss (the math of `ThresholdConsistentMargin`), repeated for every query.

    A global quantity: every entry of the `(N,)` result is the loss. The
    arguments are those of `tfm.losses.angular` and
    `ThresholdConsistentMargin`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.threshold_consistent_margin([0, 0, 1, 1], embeddings)]
    [0.2, 0.2, 0.2, 0.2]
    """
    return similarity_loss(
        threshold_consistent_margin_terms, labels, embeddings, ref_labels, ref_embeddings, normalize=True,
        multi_label=multi_label, remove_diagonal=remove_diagonal, miner=miner, lambda_plus=lambda_plus,
        lambda_minus=lambda_minus, margin_plus=margin_plus, margin_minus=margin_minus,
    )


@keras.saving.register_keras_serializable(package="tfmetric")
class ThresholdConsistentMargin(_CosineLoss):
    r"""Threshold-consistent margin loss (Zhang, Li, Pun, Liu, Moeller,
    Zhou & Tang 2023, "Threshold-Consistent Margin Loss for Open-World Deep
    Metric Learning", https://arxiv.org/abs/2307.04047).

    A regulariser that pushes the cosine similarities of positive pairs
    above `m₊` and of negative pairs below `m₋`, so that one threshold
    separates them equally well across classes; only the pairs on the wrong
    side of their margin count:

    $$ \text{loss} = \lambda_+ \mathrm{mean}_{(a, p):\, s(a, p) \le m_+} \big(m_+ - s(a, p)\big)
        + \lambda_- \mathrm{mean}_{(a, n):\, s(a, n) \ge m_-} \big(s(a, n) - m_-\big) $$

    PyTorch Metric Learning's `ThresholdConsistentMarginLoss`, same defaults
    and values on a batch. (With a separate reference set, PML takes the
    positive and negative rows from the batch instead of the reference;
    here they are reference rows, as for every other loss.) The paper adds
    it to a base loss: `tfm.MultiSimilarity()(y, x) +
    tfm.ThresholdConsistentMargin()(y, x)`, say.

    A global quantity (means over the pairs of the batch): every query's
    loss is the whole value, and sample weights scale nothing.

    Args:
        lambda_plus: `λ₊` ≥ 0, the weight of the positive part.
        lambda_minus: `λ₋` ≥ 0, the weight of the negative part.
        margin_plus: `m₊`, a cosine similarity in [−1, 1].
        margin_minus: `m₋`, a cosine similarity in [−1, 1].
        reduction: `"sum_over_batch_size"` (the value, default), `"sum"`
            (N times the value), or `None` (the value for every query).
        name, cross_replica, multi_label, miner: As `Angular`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.ThresholdConsistentMargin()(labels, embeddings)), 4)
    0.2
    """

    def __init__(self, lambda_plus=1.0, lambda_minus=1.0, margin_plus=0.9, margin_minus=0.5,
                 reduction="sum_over_batch_size", name="threshold_consistent_margin", cross_replica=False,
                 multi_label=False, miner=None):
        super().__init__(reduction, name, cross_replica, multi_label, miner)
        self.lambda_plus, self.lambda_minus = _check_nonnegative(lambda_plus=lambda_plus, lambda_minus=lambda_minus)
        self.margin_plus, self.margin_minus = _check_margins(margin_plus, margin_minus)

    def similarity_terms(self, similarity, positive, negative):
        return threshold_consistent_margin_terms(
            similarity, positive, negative, self.lambda_plus, self.lambda_minus, self.margin_plus, self.margin_minus
        )

    def get_config(self):
        config = super().get_config()
        config.update({
            "lambda_plus": self.lambda_plus,
            "lambda_minus": self.lambda_minus,
            "margin_plus": self.margin_plus,
            "margin_minus": self.margin_minus,
        })
        return config
