"""Ranking losses: FastAP, Smooth-AP, PNP, ranked list.

Each query ranks the reference rows (the batch itself by default) by
distance or similarity; these losses make its positives come first.
Notation: `d` / `s` is the `(N, R)` distance / similarity matrix of the
queries and the reference, `P(a)` the positives of query `a`, `Q(a)` its
negatives, `σ` the logistic sigmoid.

Memory: the ranked list loss, Smooth-AP and PNP work on `(N, R)` tensors,
FastAP on `(N, R, num_bins + 1)` ones. Smooth-AP and PNP compare, for every
query, every reference row with every positive: one positive of every query
at a time, with their gradients written out, where the papers' and PyTorch
Metric Learning's implementations build `(N, R, R)` tensors (4 GiB in
float32 for N = R = 1024).
"""

import keras
from keras import backend, ops

from tfmetric.distances import cumsum, nonnegative_row_sums, row_sums, runs_op_by_op
from tfmetric.losses.base import (
    DistanceLoss,
    SimilarityLoss,
    add_at,
    check_choice,
    check_positive,
    distance_loss,
    divide_or_zero,
    similarity_loss,
)
from tfmetric.mining import (
    add_all_at,
    add_to_rows,
    attach_gradient,
    entry_coordinates,
    for_each_positive,
    mask_row_counts,
    positive_table_and_counts,
    row_cells,
    row_pick,
    scatter_add,
    table_slots,
    take_along_rows,
    take_entries,
    take_in_range,
    with_written_gradient,
)

# The largest distance between two unit vectors, by distance.
UNIT_RANGE = {"squared_euclidean": 4.0, "euclidean": 2.0, "cosine": 2.0}
PNP_VARIANTS = ("O", "Ds", "Dq", "Iu", "Ib")


# ---------------------------------------------------------------- term functions


def _pulse_histograms(values, unit, channel, kept, width, num_channels):
    """Soft histograms of every row: `Σ_{j: kept[a, j], channel[a, j] = c} max(0, 1 − |position[a, j] − k|)`.

    `position = values / unit` `(N, R)` (`unit` a Python number), taken as
    0 where it is below (its gradient then as at 0: only a negative
    distance, which the library's never are, is below); `channel` boolean
    or int `(N, R)` in `[0, num_channels)`, `kept` boolean `(N, R)`;
    returns `(N, width, num_channels)`. A position beyond `width − 2` puts
    its weight in the last two bins (its gradient is the difference of
    theirs): callers leave them out. A position `k + f` adds `1 − f` to
    bin k and `f` to bin k + 1: two scatters into the bins (the entries
    not kept into a cell past them), the count and the shares `f` of each
    lower bin (`tfm.mining.add_all_at`: an unweighted `bincount` and a
    weighted one, or one scatter of the pairs under XLA). Only `values`
    has a gradient, written out: moving `f` moves weight from bin k to bin
    k + 1, so it is the difference of the upstream gradient at the two
    bins, one lookup at the cells the forward pass filled (0 at the cell
    past them; autodiff would take one per scatter), divided by `unit` in
    the table looked up (the same floats as after the lookup, a pass over
    the matrix fewer).
    """
    num_rows = ops.shape(values)[0]
    size = num_rows * width * num_channels
    shape = (num_rows, width, num_channels)
    dtype = values.dtype

    def histograms_and_gradient(values, offsets):
        position = ops.maximum(ops.stop_gradient(values) / unit, 0.0)
        lower = ops.floor(position)
        # Clipped: a NaN position must not index outside the histograms.
        lower_bin = ops.clip(ops.cast(lower, "int32"), 0, width - 2)
        cells = ops.reshape(ops.minimum(lower_bin * num_channels + offsets, size), (-1,))
        sums = add_all_at([None, ops.reshape(position - lower, (-1,))], cells, size + 1)
        weights, shares = (ops.reshape(total[:size], shape) for total in sums)
        counts = weights - shares + ops.pad(shares[:, :-1], [[0, 0], [1, 0], [0, 0]])

        def gradient(upstream):
            upstream = ops.cast(upstream, dtype)
            step = ops.pad(upstream[:, 1:] - upstream[:, :-1], [[0, 0], [0, 1], [0, 0]]) / unit
            step = ops.concatenate([ops.reshape(step, (-1,)), ops.zeros((1,), dtype)], axis=0)
            return ops.reshape(take_in_range(step, cells), ops.shape(values))

        return ops.cast(counts, dtype), gradient

    # The cells' offsets from two selections, where the masks as floats took
    # four casts and a comparison, each a pass over the matrix without XLA (a
    # cast from bool being the slower kernel).
    rows = ops.arange(num_rows, dtype="int32")[:, None] * (width * num_channels)
    if backend.standardize_dtype(channel.dtype) == "bool":
        offsets = ops.where(channel, rows + 1, rows)
    else:
        offsets = rows + ops.cast(channel, "int32")
    offsets = ops.where(kept, offsets, size)
    return with_written_gradient(histograms_and_gradient, values, offsets)


def fast_ap_terms(distances, positive, negative, num_bins=10, max_distance=4.0):
    """Per-query `1 − FastAP` and whether the query has a positive.

    The distances are binned into `num_bins + 1` triangular bins centred at
    `c_k = k·Δ`, `Δ = max_distance / num_bins` (each pair spreads a weight
    `relu(1 − |d − c_k| / Δ)` over the two bins around it), giving
    histograms `h⁺_k` of the positives and `h_k` of all candidates, and
    their cumulative sums `H⁺_k`, `H_k`:

    `FastAP_a = 1/|P(a)| · Σ_k h⁺_k H⁺_k / H_k` (bins with `H_k = 0` left out).

    Memory and work O(N·R): each distance falls between two bin centres,
    `d/Δ = k + f`, and adds `1 − f` to bin k and `f` to bin k + 1
    (`_pulse_histograms`, its gradient written out), where every pair
    against every bin would take `num_bins + 1` times the memory and time.
    """
    dtype = distances.dtype
    # Bins 0 … num_bins, then two, left out, that take the pulses beyond the
    # last centre; channel 1 the positives, 0 the negatives.
    kept = ops.logical_or(positive, negative)
    histograms = _pulse_histograms(distances, max_distance / num_bins, positive, kept, num_bins + 3, 2)
    histograms = histograms[:, : num_bins + 1]
    h_positive = histograms[..., 1]
    h_all = h_positive + histograms[..., 0]
    cumulative_positive = cumsum(h_positive, axis=1)
    cumulative_all = cumsum(h_all, axis=1)
    precision_sums = ops.sum(divide_or_zero(h_positive * cumulative_positive, cumulative_all), axis=1)
    num_positives = mask_row_counts(positive, dtype)
    has_positive = num_positives > 0
    losses = 1.0 - divide_or_zero(precision_sums, num_positives)
    return ops.where(has_positive, losses, ops.zeros_like(losses)), ops.cast(has_positive, dtype)


def _sigmoid_and_slope(exponent):
    """`σ(z)` and `σ'(z) = σ(z)·σ(−z)` from `exponent = −z`, to float32's relative precision in their tails too.

    TensorFlow's float32 `sigmoid` on CPU is a fast approximation whose
    relative error in the tails (|z| > ~10, where sharp temperatures put
    most pairs) reaches 1e-3. With `e = exp(−z)`, exact to its relative
    precision, `σ(z) = 1/(1 + e)` and `σ(−z) = e·σ(z)` are too, on both
    sides, and so is their product (`e·σ²` would underflow where `σ²`
    does, long before `σ'`). `−z` is capped at 50: below `σ ≈ 2e-22` the
    two stay there, far under anything a rank sum or a gradient can see,
    and `e` (≤ 5e21) times the slot's factors stays far from overflow in
    whatever order TensorFlow's graph optimizer multiplies them (capped at
    88, `e/τ` overflowed and met a `σ` flushed to 0: NaN); `−z = +∞` gives
    that floor too. Six elementwise passes after the exponents: without
    XLA each is a kernel over the whole matrix, once per positive slot.
    """
    return _exact_sigmoid_and_slope(exponent) if runs_op_by_op() else _fused_sigmoid_and_slope(exponent)


def _exact_sigmoid_and_slope(exponent):
    e = ops.exp(ops.minimum(exponent, 50.0))
    sigmoid = 1.0 / (1.0 + e)
    return sigmoid, sigmoid * (e * sigmoid)


def _fused_sigmoid_and_slope(exponent):
    """`_sigmoid_and_slope` as XLA fuses it best, to the same precision: from one matrix, `σ(−|z|)`.

    XLA keeps an exponential's or a division's result in memory when two
    fusions read it, and the slot loops read the sigmoids and the slopes
    in several: `e`, `σ` and `σ'` made three matrices a slot. `m = σ(−|z|)
    = t/(1 + t)`, `t = exp(−|z|)` (−z capped at 50, as there), is exact
    to its relative precision and at most 1/2, so `σ(z)` (`m`, or `1 − m`
    for z > 0) and `σ'(z) = m·(1 − m)` follow from it without a
    cancellation, in whichever fusion reads them: one matrix a slot (PNP
    at N = 1024, K = 16 under XLA: 2.9 → 2.5× the distance matrix).
    """
    t = ops.exp(-ops.abs(ops.minimum(exponent, 50.0)))
    least = t / (1.0 + t)
    return ops.where(exponent < 0, 1.0 - least, least), least * (1.0 - least)


def _over_positives(similarity, positive, table_and_counts, temperature, summed, body, weigh_positives=False):
    """Runs `body` for every positive p of every query, with the sigmoids of p's comparisons.

    `table_and_counts`: `tfm.mining.positive_table_and_counts(positive)`.

    Smooth-AP and PNP rank each positive p of query a against the reference
    rows j through `σ((s_aj − s_ap)/τ)`. Visiting one positive per query at
    a time (`tfm.mining.for_each_positive`) keeps the memory at O(N·R) and
    the work at O(N·R·k), k the most positives of a query, where comparing
    every row with every row would build `(N, R, R)` tensors (4 GiB for
    N = R = 1024).

    The sigmoids `σ((s_aj − s_ap)/τ)` are exact at the columns of `summed`
    (a boolean `(N, R)` mask) and at most 2e-22 elsewhere, so that a sum
    over `summed` is a plain row sum. `body(ranked_before,
    positives_before)` gets their row sums, `(N,)`, and with
    `weigh_positives` their sums over the positive columns (else None);
    it returns `(value, row_factor, at_positives, elsewhere)`: the `(N,)`
    term of positive p, to add up over the positives, and the derivative
    of the query's loss with respect to `s_aj` through it as
    `row_factor[a] · σ'_aj · w[a, j]`, `w` being `at_positives[a]` at the
    positive columns and `elsewhere[a]` at the others (both None: 1), σ'
    with respect to `(s_aj − s_ap)/τ`; the derivative with respect to
    `s_ap` follows: minus their sum. Factored so that the rows without the
    slot and `1/τ` scale a vector, not the matrix.

    Where `tfm.mining.positive_table` finds every query's positives (every
    operation a kernel of its own), the matrix a slot gets `elsewhere`'s
    part only, and what the positive columns get apart from it (their
    weights' difference, and p's minus the sum) is kept in an `(N, k)`
    table added after the loop in one scatter: two passes over the matrix
    a slot fewer than weighing every column (16 → 12 for Smooth-AP), and
    the sums over the positives gathered from k columns.

    Outside `summed` `s_aj` is taken as `−∞`, whose sigmoid is the floor,
    and the gradient is set to 0 once after the loop (outside `summed` and
    the positives), so the weights need not vanish there: a pass a slot
    fewer. The floor's σ' (2e-22 or less) enters each positive's own
    derivative from those columns, 1e-19 at most beside the others'.

    Returns:
        The sums of the values, `(N,)`, and the `(N, R)` gradient of every
        query's loss with respect to the similarities.
    """
    s = ops.stop_gradient(similarity)
    s_summed = ops.where(summed, s, ops.full((), float("-inf"), s.dtype))
    zeros = ops.zeros(ops.shape(s)[:1], s.dtype)
    table, counts = table_and_counts

    def sigmoids(slot_positive):
        # The difference first: exact where the two are close, finite wherever s is.
        exponents = (s_summed - row_pick(s, slot_positive)[:, None]) * (-1.0 / temperature)
        return _sigmoid_and_slope(exponents)

    def terms(before, positives_before, has_slot):
        value, row_factor, at_positives, elsewhere = body(nonnegative_row_sums(before), positives_before)
        row_factor = ops.where(has_slot, row_factor / temperature, ops.zeros_like(row_factor))
        return ops.where(has_slot, value, ops.zeros_like(value)), row_factor, at_positives, elsewhere

    if table is None:

        def step(slot_positive, has_slot, total, gradient):
            before, slope = sigmoids(slot_positive)
            positives_before = None
            if weigh_positives:
                # A selection, not a product by the mask as floats: no (N, R) float mask in memory.
                positives_before = nonnegative_row_sums(ops.where(positive, before, ops.zeros((), before.dtype)))
            value, row_factor, at_positives, elsewhere = terms(before, positives_before, has_slot)
            coefficients = row_factor[:, None] * slope
            if at_positives is not None:
                coefficients = coefficients * ops.where(positive, at_positives[:, None], elsewhere[:, None])
            own = -row_sums(coefficients)
            return total + value, add_to_rows(gradient + coefficients, [(slot_positive, own)])

        total, gradient = for_each_positive(positive, step, (zeros, ops.zeros_like(s)), counts=counts)
    else:
        is_positive = table_slots(positive, table, counts)
        no_entries = ops.zeros(ops.shape(table), s.dtype)
        slots = ops.arange(ops.shape(table)[1], dtype="int32")[None, :]

        def step(slot_positive, has_slot, total, slot, gradient, at_table):
            before, slope = sigmoids(slot_positive)
            positives_before = None
            if weigh_positives:
                positives_before = ops.sum(ops.where(is_positive, take_along_rows(before, table),
                                                     no_entries), axis=1)
            value, row_factor, at_positives, elsewhere = terms(before, positives_before, has_slot)
            dense = row_factor if elsewhere is None else row_factor * elsewhere
            own = -dense * ops.sum(slope, axis=1)
            if at_positives is not None:
                extra = (row_factor * (at_positives - elsewhere))[:, None] * take_along_rows(slope, table)
                extra = ops.where(is_positive, extra, no_entries)
                own = own - ops.sum(extra, axis=1)
                at_table = at_table + extra
            at_table = at_table + ops.where(ops.equal(slots, slot), own[:, None], no_entries)
            return total + value, slot + 1, gradient + dense[:, None] * slope, at_table

        start = (zeros, ops.convert_to_tensor(0, "int32"), ops.zeros_like(s), no_entries)
        total, _, gradient, at_table = for_each_positive(positive, step, start, table, counts)
        gradient = scatter_add(gradient, row_cells(table), ops.reshape(at_table, (-1,)))
    return total, ops.where(ops.logical_or(summed, positive), gradient, ops.zeros((), s.dtype))


def smooth_ap_terms(similarity, positive, negative, temperature=0.01):
    """Per-query `1 − Smooth-AP` and whether the query has a positive.

    `rank(p) = 1 + Σ_{j∈P(a)∪Q(a), j≠p} σ((s_aj − s_ap)/τ)`, `rank⁺(p)` the
    same over `j∈P(a)`; `AP_a = 1/|P(a)| Σ_{p∈P(a)} rank⁺(p) / rank(p)`.

    Memory O(N·R), work O(N·R·k) (see `_over_positives`).
    """
    dtype = similarity.dtype
    slots = positive_table_and_counts(positive)
    num_positives = ops.cast(slots[1], dtype)
    has_positive = num_positives > 0
    share = divide_or_zero(ops.ones_like(num_positives), num_positives)

    def body(ranked_before, positives_before):
        # j = p is in both sums with σ(0) = 1/2: 1/2 + 1/2 makes the "1 +".
        rank = 0.5 + ranked_before
        ratio = (0.5 + positives_before) / rank
        # ∂(−ratio/|P|)/∂s_aj = −σ'_j/(|P|·rank)·([j ∈ P] − ratio) at the candidates j
        return ratio, -share / rank, 1.0 - ratio, -ratio

    summed = ops.logical_or(positive, negative)
    precision_sums, gradient = _over_positives(
        similarity, positive, slots, temperature, summed, body, weigh_positives=True
    )
    losses = attach_gradient(1.0 - precision_sums * share, similarity, gradient)
    return ops.where(has_positive, losses, ops.zeros_like(losses)), ops.cast(has_positive, dtype)


def _pnp_value_and_slope(before, variant, b, alpha):
    """`f(n)` of the PNP variant and `f'(n)`, `n` the negatives ranked before a positive."""
    if variant == "O":
        return before, ops.ones_like(before)
    if variant == "Ds":
        return ops.log1p(before), 1.0 / (1.0 + before)
    if variant == "Dq":
        value = ops.exp(-alpha * ops.log1p(before))
        return value, -alpha * value / (1.0 + before)
    if variant == "Iu":
        log = ops.log1p(before)
        return (1.0 + before) * log, log + 1.0
    return (b * before - ops.log1p(b * before)) / b**2, before / (1.0 + b * before)


def pnp_terms(similarity, positive, negative, b=2.0, alpha=1.0, anneal=0.01, variant="O"):
    """Per-query PNP losses and whether the query has a positive.

    `n(p) = Σ_{j∈Q(a)} σ((s_aj − s_ap)/anneal)`, the negatives ranked before
    positive p; `ℓ_a = 1/|P(a)| Σ_{p∈P(a)} f(n(p))` with `f` by variant
    (`"Dq"`: `ℓ_a = 1 − 1/|P(a)| Σ_p f(n(p))`), see `PNP`.

    Memory O(N·R), work O(N·R·k) (see `_over_positives`).
    """
    dtype = similarity.dtype
    slots = positive_table_and_counts(positive)
    num_positives = ops.cast(slots[1], dtype)
    has_positive = num_positives > 0
    share = divide_or_zero(ops.ones_like(num_positives), num_positives)
    sign = -1.0 if variant == "Dq" else 1.0
    has_negative = ops.any(negative, axis=1)

    def body(ranked_before, _):
        # The floor of `before` beyond the negatives adds up to 1e-19 or so; none without one.
        ranked_before = ops.where(has_negative, ranked_before, ops.zeros_like(num_positives))
        value, value_slope = _pnp_value_and_slope(ranked_before, variant, b, alpha)
        return value, ops.where(has_negative, sign * share * value_slope, ops.zeros_like(value)), None, None

    value_sums, gradient = _over_positives(similarity, positive, slots, anneal, negative, body)
    losses = value_sums * share
    if variant == "Dq":
        losses = 1.0 - losses
    losses = attach_gradient(losses, similarity, gradient)
    return ops.where(has_positive, losses, ops.zeros_like(losses)), ops.cast(has_positive, dtype)


def _weighted_mean(values, temperature, mask, epsilon):
    """Row-wise `Σ_mask w·v / (Σ_mask w + epsilon)`, `w = e^{T·v}`, shifted against overflow; gradient written out.

    With `D` the denominator and `μ` the mean, `∂μ/∂v_j = w_j (1 + T (v_j − μ)) / D`:
    two products and a sum on the weights the forward pass holds, where
    autodiff takes a pass per forward operation (the selections, the
    shift, the exponential, the products).
    """

    # Every tensor is an argument (the mask as 0/1 floats): JAX's custom
    # gradients cannot close over the tracers of an enclosing trace.
    @ops.custom_gradient
    def mean(values, mask_ones, epsilon):
        values = ops.stop_gradient(values)
        mask = mask_ones > 0.5
        logits = temperature * values
        # Not -inf outside the mask (XLA on CPU made NaNs of it): the row's
        # least logit, which leaves the largest in the mask the maximum.
        floor = ops.min(logits, axis=1, keepdims=True)
        has_terms = ops.any(mask, axis=1)
        shift = ops.max(ops.where(mask, logits, floor), axis=1)
        shift = ops.where(has_terms, shift, ops.zeros_like(shift))
        zeros = ops.zeros_like(logits)
        # No inf anywhere (XLA may evaluate exp outside the mask): exp(0) there, then 0.
        weights = ops.where(mask, ops.exp(ops.where(mask, logits - shift[:, None], zeros)), zeros)
        masked_values = ops.where(mask, values, zeros)
        # ≥ 1 in exact arithmetic (the largest weight is e^0); at scales float32
        # cannot resolve (|T·d| ~ 1e15), XLA's recomputed logits can underflow
        # every weight: 0 then rather than NaN.
        denominator = ops.sum(weights, axis=1) + epsilon * ops.exp(-shift)
        result = divide_or_zero(ops.sum(weights * masked_values, axis=1), denominator)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            scale = divide_or_zero(ops.cast(upstream, values.dtype), denominator)
            offset = scale * (1.0 - temperature * result)
            grad = weights * (offset[:, None] + (temperature * scale)[:, None] * masked_values)
            return grad, ops.zeros_like(mask_ones), ops.zeros_like(epsilon)

        return result, gradient

    return mean(values, ops.cast(mask, values.dtype), epsilon)


def _weighted_mean_of_entries(values, logits, keep, rows, num_rows, epsilon):
    """`_weighted_mean` of the entries `keep` of vectors of entries (`rows`: their rows, in order)."""
    zeros = ops.zeros_like(logits)
    has_terms = add_at(ops.cast(keep, logits.dtype), rows, num_rows) > 0
    lowest = ops.full((), float("-inf"), logits.dtype)
    shift = ops.stop_gradient(ops.segment_max(ops.where(keep, logits, lowest), rows, num_rows))
    shift = ops.where(has_terms, shift, ops.zeros_like(shift))
    weights = ops.where(keep, ops.exp(ops.where(keep, logits - ops.take(shift, rows), zeros)), zeros)
    total = add_at(weights * ops.where(keep, values, zeros), rows, num_rows)
    return divide_or_zero(total, add_at(weights, rows, num_rows) + epsilon * ops.exp(-shift))


def ranked_list_terms(distances, positive, negative, margin=0.4, Tn=10.0, imbalance=0.5, alpha=None, Tp=0.0):
    """Per-query ranked list losses; every query counts once.

    With `α` (`1 + margin/2` by default) and `c = α − margin`: the positives
    farther than `c`, `P*`, and the negatives closer than `α`, `N*`, weighted
    by `w_p = e^{Tp (d_ap − c)}`, `w_n = e^{Tn (α − d_an)}`;
    `ε_a = 10⁻⁵ (1 + |P(a)| + |Q(a)|)`:

    `ℓ_a = (1 − λ) Σ_{P*} w_p (d_ap − c) / (Σ_{P*} w_p + ε_a) + λ Σ_{N*} w_n (α − d_an) / (Σ_{N*} w_n + ε_a)`.
    """
    alpha = 1.0 + margin / 2 if alpha is None else alpha
    dtype = distances.dtype
    lower = alpha - margin
    close_negative = ops.logical_and(negative, distances < alpha)
    rows = 1.0 + ops.sum(ops.cast(ops.logical_or(positive, negative), dtype), axis=1)
    epsilon = 1e-5 * rows
    coordinates = entry_coordinates(positive)
    if coordinates is None:
        far_positive = ops.logical_and(positive, distances > lower)
        pull = _weighted_mean(distances - lower, Tp, far_positive, epsilon)
    else:
        # Where every operation is a kernel of its own: on the positive pairs alone.
        pair_rows, pair_columns = coordinates
        pair_distances = take_entries(distances, pair_rows, pair_columns)
        beyond = pair_distances - lower
        pull = _weighted_mean_of_entries(
            beyond, Tp * beyond, pair_distances > lower, pair_rows, ops.shape(distances)[0], epsilon
        )
    push = _weighted_mean(alpha - distances, Tn, close_negative, epsilon)
    losses = (1.0 - imbalance) * pull + imbalance * push
    return losses, ops.ones_like(losses)


# ---------------------------------------------------------------- checks


def _fast_ap_range(num_bins, distance, max_distance):
    if int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer; received {num_bins}.")
    if max_distance is None:
        return UNIT_RANGE[distance]
    check_positive("max_distance", max_distance)
    return float(max_distance)


def _check_pnp(b, alpha, anneal, variant):
    check_choice("variant", variant, PNP_VARIANTS)
    check_positive("anneal", anneal)
    if variant == "Ib":
        check_positive("b", b)
    if variant == "Dq":
        check_positive("alpha", alpha)


def _check_ranked_list(margin, imbalance, alpha):
    if not 0 <= imbalance <= 1:
        raise ValueError(f"imbalance must be between 0 and 1; received {imbalance}.")
    if margin < 0:
        raise ValueError(f"margin must be non-negative; received {margin}.")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"alpha must be positive; received {alpha}.")


# ---------------------------------------------------------------- pure functions


def fast_ap(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    num_bins=10,
    distance="squared_euclidean",
    normalize=True,
    max_distance=None,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query `1 − FastAP` (the math of `FastAP`), 0 for queries without a positive.

    Args:
        labels: Class ids `(N,)` of the queries (or, with `multi_label`,
            0/1 rows `(N, C)`).
        embeddings: Query embeddings `(N, D)`.
        ref_labels, ref_embeddings: Optional reference `(R,)`, `(R, D)`;
            each query ranks these R rows only.
        remove_diagonal: Whether reference row a is query a itself (the
            queries come first in the reference); `None`: only without a
            reference.
        miner: A `tfm.miners` miner that narrows the pairs first; `None`:
            all of them.
        num_bins, distance, normalize, max_distance, multi_label: As `FastAP`.

    Returns:
        The `(N,)` per-query losses.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.fast_ap([0, 0, 1, 1], embeddings)]
    [0.5, 0.5, 0.6667, 0.5]
    """
    check_choice("distance", distance, tuple(UNIT_RANGE))
    return distance_loss(
        fast_ap_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        distance=distance,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        num_bins=int(num_bins),
        max_distance=_fast_ap_range(num_bins, distance, max_distance),
    )


def smooth_ap(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    temperature=0.01,
    normalize=True,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query `1 − Smooth-AP` (the math of `SmoothAP`), 0 for queries without a positive.

    The arguments are those of `tfm.losses.fast_ap` and `SmoothAP`. With
    `remove_diagonal=False` and no reference, each query is its own
    positive (similarity 1), as in the paper's code and PyTorch Metric
    Learning's `SmoothAPLoss`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.smooth_ap([0, 0, 1, 1], embeddings)]
    [0.5, 0.5, 0.6667, 0.5]
    """
    check_positive("temperature", temperature)
    return similarity_loss(
        smooth_ap_terms,
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


def pnp(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    b=2.0,
    alpha=1.0,
    anneal=0.01,
    variant="O",
    normalize=True,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query PNP losses (the math of `PNP`), 0 for queries without a positive.

    The arguments are those of `tfm.losses.fast_ap` and `PNP`. With
    `remove_diagonal=False` and no reference, each query is its own
    positive, as in PyTorch Metric Learning's `PNPLoss`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-0.6, 0.8]])
    >>> [round(float(v), 4) for v in tfm.losses.pnp([0, 0, 1, 1], embeddings)]
    [1.0, 1.0, 2.0, 1.0]
    """
    _check_pnp(b, alpha, anneal, variant)
    return similarity_loss(
        pnp_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        b=b,
        alpha=alpha,
        anneal=anneal,
        variant=variant,
    )


def ranked_list(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    margin,
    Tn,
    imbalance=0.5,
    alpha=None,
    Tp=0.0,
    distance="euclidean",
    normalize=True,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query ranked list losses (the math of `RankedList`).

    The arguments are those of `tfm.losses.fast_ap` and `RankedList`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-0.6, 0.8]])
    >>> [round(float(v), 2) for v in tfm.losses.ranked_list([0, 0, 1, 1], embeddings, margin=0.4, Tn=10.0)]
    [0.33, 0.51, 0.76, 0.31]
    """
    _check_ranked_list(margin, imbalance, alpha)
    return distance_loss(
        ranked_list_terms,
        labels,
        embeddings,
        ref_labels,
        ref_embeddings,
        distance=distance,
        normalize=normalize,
        multi_label=multi_label,
        remove_diagonal=remove_diagonal,
        miner=miner,
        margin=margin,
        Tn=Tn,
        imbalance=imbalance,
        alpha=alpha,
        Tp=Tp,
    )


# ---------------------------------------------------------------- classes


@keras.saving.register_keras_serializable(package="tfmetric")
class FastAP(DistanceLoss):
    r"""FastAP (Cakir, He, Xia, Kulis and Sclaroff 2019, "Deep Metric Learning
    to Rank", CVPR; no arXiv version, see the link below).

    Average precision of each query's ranking of the batch, with the
    distances quantised into soft histogram bins so that it has a gradient:
    `num_bins + 1` triangular bins centred at `c_k = k·Δ`, `Δ = M / num_bins`,
    each pair spreading a weight `relu(1 − |d − c_k| / Δ)` over the two bins
    around its distance. With `h⁺_k` (positives) and `h_k` (positives and
    negatives) the histograms of query a and `H⁺_k`, `H_k` their cumulative
    sums (the positives and the items retrieved up to bin k):

    $$ \mathrm{FastAP}_a = \frac{1}{|P(a)|} \sum_k h^+_k\, H^+_k / H_k
        \quad (\text{the bins with } H_k = 0 \text{ left out}) $$

    $$ \text{loss} = \text{the mean of } (1 - \mathrm{FastAP}_a) \text{ over the queries with a positive} $$

    `M`, `max_distance`, defaults to the largest distance between unit
    vectors (4 for `"squared_euclidean"`, 2 for `"euclidean"` and
    `"cosine"`); pairs farther than `M + Δ` fall in no bin and are left out
    of the ranking (set `max_distance` when `normalize=False`).

    PyTorch Metric Learning's `FastAPLoss(num_bins)` (squared Euclidean
    distances of L2-normalised embeddings): the same values. Memory
    O(N·R·(num_bins + 1)).

    Paper: https://openaccess.thecvf.com/content_CVPR_2019/html/Cakir_Deep_Metric_Learning_to_Rank_CVPR_2019_paper.html

    Args:
        num_bins: The number of bins' widths in `[0, M]` (PML's default 10).
        distance: `"squared_euclidean"` (default, as the paper and PML),
            `"euclidean"` or `"cosine"`.
        normalize: L2-normalise the embeddings first (default).
        max_distance: `M`; `None`: the range of the distance on the unit
            sphere.
        reduction: `"sum_over_batch_size"` (the mean above, default),
            `"sum"`, or `None` for each query's loss.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, rank each replica's
            queries against the batches of all replicas.
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none.
        miner: A `tfm.miners` miner that narrows the pairs; `None`: all.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-0.6, 0.8]])
    >>> round(float(tfm.FastAP()(labels, embeddings)), 4)
    0.5417
    """

    faster_under_xla = True
    compiles_terms_alone = True
    compiles_below = 1536

    def __init__(
        self,
        num_bins=10,
        distance="squared_euclidean",
        normalize=True,
        max_distance=None,
        reduction="sum_over_batch_size",
        name="fast_ap",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        check_choice("distance", distance, tuple(UNIT_RANGE))
        super().__init__(distance, normalize, reduction, name, cross_replica, multi_label, miner)
        self._range = _fast_ap_range(num_bins, distance, max_distance)
        self.num_bins = int(num_bins)
        self.max_distance = None if max_distance is None else float(max_distance)

    def distance_terms(self, distances, positive, negative):
        return fast_ap_terms(distances, positive, negative, self.num_bins, self._range)

    def get_config(self):
        config = super().get_config()
        config.update({"num_bins": self.num_bins, "max_distance": self.max_distance})
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class SmoothAP(SimilarityLoss):
    r"""Smooth-AP (Brown, Xie, Kalogeiton and Zisserman 2020, "Smooth-AP:
    Smoothing the Path Towards Large-Scale Image Retrieval", ECCV;
    https://arxiv.org/abs/2007.12163).

    Average precision of each query's ranking of the batch by cosine
    similarity, each rank's step function replaced by a sigmoid of
    temperature τ:

    $$ \mathrm{rank}(p) = 1 + \sum_{j \in P(a) \cup Q(a),\ j \ne p} \sigma\big((s(a, j) - s(a, p)) / \tau\big) $$

    $$ \mathrm{rank}^+(p) = 1 + \sum_{j \in P(a),\ j \ne p} \sigma\big((s(a, j) - s(a, p)) / \tau\big) $$

    $$ \mathrm{AP}_a = \frac{1}{|P(a)|} \sum_{p \in P(a)} \mathrm{rank}^+(p) / \mathrm{rank}(p) $$

    $$ \text{loss} = \text{the mean of } (1 - \mathrm{AP}_a) \text{ over the queries with a positive} $$

    Any labels: classes of any sizes, in any order. PyTorch Metric
    Learning's `SmoothAPLoss` (2.9) raises unless every class has equally
    many examples, and then ignores the labels: it takes consecutive blocks
    of C rows as the classes, C the number of classes in the batch, which
    is right only for C classes of C examples each, in contiguous blocks.
    It also counts each query as its own positive (similarity 1), as the
    paper's code does; here a query is not its own positive. On PML's
    batches, `tfm.losses.smooth_ap(labels, x, remove_diagonal=False)` gives
    PML's per-query values (with `labels = arange(N) // C`, PML's blocks,
    where the classes have other sizes).

    Memory O(N·R): one positive of every query at a time, with the
    gradient written out, where PML and the paper's code build `(N, R, R)`
    tensors (4 GiB each in float32 for N = R = 1024); the time grows with
    the most positives a query has (K − 1 for P×K batches).

    Args:
        temperature: τ (PML's and the paper's default 0.01).
        normalize: Cosine similarities (default), or raw dot products.
        reduction, name, cross_replica, multi_label, miner: As `FastAP`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-0.6, 0.8]])
    >>> round(float(tfm.SmoothAP()(labels, embeddings)), 4)
    0.5417
    """

    faster_under_xla = True

    def __init__(
        self,
        temperature=0.01,
        normalize=True,
        reduction="sum_over_batch_size",
        name="smooth_ap",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(normalize, reduction, name, cross_replica, multi_label, miner)
        check_positive("temperature", temperature)
        self.temperature = float(temperature)

    def similarity_terms(self, similarity, positive, negative):
        return smooth_ap_terms(similarity, positive, negative, self.temperature)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class PNP(SimilarityLoss):
    r"""PNP loss (Li, Xu, Gao, Li and Zhang 2022, "Rethinking the Optimization
    of Average Precision: Only Penalizing Negative Instances before Positive
    Ones is Enough", AAAI; https://arxiv.org/abs/2102.04640).

    For each positive p of query a, the number of negatives ranked before
    it, smoothed by a sigmoid of temperature `anneal`, is penalised by an
    increasing function `f` (the variant):

    $$ n(p) = \sum_{j \in Q(a)} \sigma\big((s(a, j) - s(a, p)) / \mathrm{anneal}\big) $$

    $$ \ell_a = \frac{1}{|P(a)|} \sum_{p \in P(a)} f\big(n(p)\big) \quad \Big(\text{"Dq": } 1
        - \frac{1}{|P(a)|} \sum_p f\big(n(p)\big)\Big) $$

    $$ \text{loss} = \text{the mean of } \ell_a \text{ over the queries with a positive} $$

    $$ \text{"O": } f(n) = n, \quad \text{"Ds": } f(n) = \log(1 + n), \quad \text{"Dq": } f(n) = (1 + n)^{-\alpha} $$

    $$ \text{"Iu": } f(n) = (1 + n) \log(1 + n), \quad \text{"Ib": } f(n) = \big(b n - \log(1 + b n)\big) / b^2 $$

    "Ds" and "Dq" decrease the gradient as n grows (the paper's PNP-D),
    "Iu" and "Ib" increase it (PNP-I, "Ib" bounded by 1/b).

    PyTorch Metric Learning's `PNPLoss` counts each query as its own
    positive when it has another one (and leaves out the queries without);
    here a query is not its own positive.
    `tfm.losses.pnp(labels, x, remove_diagonal=False)` gives PML's values on
    batches where every query has another positive.

    Memory O(N·R), time O(N·R·k), as `SmoothAP`.

    Args:
        b: The `b` of "Ib" (PML's default 2).
        alpha: The `α` of "Dq" (PML's default 1).
        anneal: The sigmoid's temperature (PML's default 0.01).
        variant: `"O"` (default), `"Ds"`, `"Dq"`, `"Iu"` or `"Ib"`.
        normalize: Cosine similarities (default), or raw dot products.
        reduction, name, cross_replica, multi_label, miner: As `FastAP`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-0.6, 0.8]])
    >>> round(float(tfm.PNP()(labels, embeddings)), 4)
    1.25
    """

    faster_under_xla = True
    compiles_terms_alone = True
    terms_alone_from = 1024

    def __init__(
        self,
        b=2.0,
        alpha=1.0,
        anneal=0.01,
        variant="O",
        normalize=True,
        reduction="sum_over_batch_size",
        name="pnp",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(normalize, reduction, name, cross_replica, multi_label, miner)
        _check_pnp(b, alpha, anneal, variant)
        self.b = float(b)
        self.alpha = float(alpha)
        self.anneal = float(anneal)
        self.variant = variant

    def similarity_terms(self, similarity, positive, negative):
        return pnp_terms(similarity, positive, negative, self.b, self.alpha, self.anneal, self.variant)

    def get_config(self):
        config = super().get_config()
        config.update({"b": self.b, "alpha": self.alpha, "anneal": self.anneal, "variant": self.variant})
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class RankedList(DistanceLoss):
    r"""Ranked list loss (Wang, Hua, Kodirov, Hu, Garnier and Robertson 2019,
    "Ranked List Loss for Deep Metric Learning", CVPR;
    https://arxiv.org/abs/1903.03238).

    Each query's positives should lie within `α − m` and its negatives
    beyond `α`; the violators are weighted by how far they are on the wrong
    side (temperatures `Tp`, `Tn`):

    $$ c = \alpha - m, \quad P^* = \{p \in P(a) : d(a, p) > c\}, \quad N^* = \{n \in Q(a) : d(a, n) < \alpha\} $$

    $$ w_p = \exp\big(T_p\, (d(a, p) - c)\big), \quad w_n = \exp\big(T_n\, (\alpha - d(a, n))\big) $$

    $$ \ell_a = (1 - \lambda) \frac{\sum_{P^*} w_p\, (d(a, p) - c)}{\sum_{P^*} w_p + \varepsilon_a}
        + \lambda \frac{\sum_{N^*} w_n\, (\alpha - d(a, n))}{\sum_{N^*} w_n + \varepsilon_a} $$

    $$ \text{loss} = \text{the mean of } \ell_a \text{ over all queries} $$

    `ε_a = 10⁻⁵ (1 + |P(a)| + |Q(a)|)`: 10⁻⁵ per row of the batch, as in
    PyTorch Metric Learning's `RankedListLoss`, whose values these are
    (Euclidean distances of L2-normalised embeddings), except that PML
    leaves out the pairs at distance exactly 0 (a negative that coincides
    with the query, say), which count here. Tp = 0 weighs the positives
    equally (the paper's RLL-Simpler).

    Args:
        margin: m, between the positives' boundary and the negatives'
            (required, as in PML; the paper: 0.4).
        Tn: The negatives' temperature (required; the paper: 10).
        imbalance: λ, the weight of the negatives' term (0.5).
        alpha: α, the negatives' boundary; `None`: `1 + m/2`.
        Tp: The positives' temperature (0).
        distance: `"euclidean"` (default), `"squared_euclidean"` or
            `"cosine"`.
        normalize: L2-normalise the embeddings first (default).
        reduction, name, cross_replica, multi_label, miner: As `FastAP`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-0.6, 0.8]])
    >>> round(float(tfm.RankedList(margin=0.4, Tn=10.0)(labels, embeddings)), 4)
    0.4761
    """

    faster_under_xla = True
    compiles_terms_alone = True
    terms_alone_from = 1024
    compiles_below = 1536

    def __init__(
        self,
        margin,
        Tn,
        imbalance=0.5,
        alpha=None,
        Tp=0.0,
        distance="euclidean",
        normalize=True,
        reduction="sum_over_batch_size",
        name="ranked_list",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__(distance, normalize, reduction, name, cross_replica, multi_label, miner)
        _check_ranked_list(margin, imbalance, alpha)
        self.margin = float(margin)
        self.Tn = float(Tn)
        self.imbalance = float(imbalance)
        self.alpha = 1.0 + self.margin / 2 if alpha is None else float(alpha)
        self.Tp = float(Tp)

    def distance_terms(self, distances, positive, negative):
        return ranked_list_terms(
            distances, positive, negative, self.margin, self.Tn, self.imbalance, self.alpha, self.Tp
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {"margin": self.margin, "Tn": self.Tn, "imbalance": self.imbalance, "alpha": self.alpha, "Tp": self.Tp}
        )
        return config
