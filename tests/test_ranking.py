"""FastAP, Smooth-AP, PNP and the ranked list loss (`tfm.losses.ranking`)."""

import functools
import json

import keras
import numpy as np
import pytest
import reference_ranking
from hypothesis import given, settings, strategies as st
from keras import ops

from tfmetric.losses import ranking

import recorded
from conftest import BACKEND, COMPILE_MODES, FIT_JIT_COMPILE, check_against, slow_on_jax, tensor, value_and_grad

# kind: (class, reference, arguments of both)
KINDS = {
    "fast_ap": (ranking.FastAP, reference_ranking.fast_ap, {}),
    "smooth_ap": (ranking.SmoothAP, reference_ranking.smooth_ap, {}),
    "pnp": (ranking.PNP, reference_ranking.pnp, {}),
    "ranked_list": (ranking.RankedList, reference_ranking.ranked_list, {"margin": 0.4, "Tn": 10.0}),
}
# Arguments the random tests draw, per loss.
OPTIONS = {
    "fast_ap": {
        "num_bins": [3, 10, 40],
        "distance": ["squared_euclidean", "euclidean", "cosine"],
        "normalize": [True, True, False],
        "max_distance": [None, 3.0],
    },
    "smooth_ap": {"temperature": [0.01, 0.1, 1.0], "normalize": [True, False]},
    "pnp": {
        "variant": list(ranking.PNP_VARIANTS),
        "anneal": [0.01, 0.1, 1.0],
        "b": [2.0, 0.5],
        "alpha": [1.0, 2.5],
        "normalize": [True, False],
    },
    "ranked_list": {
        "margin": [0.4, 0.1],
        "Tn": [10.0, 0.0, 2.0],
        "Tp": [0.0, 1.0],
        "imbalance": [0.5, 0.0, 0.8],
        "alpha": [None, 1.1],
        "distance": ["euclidean", "squared_euclidean", "cosine"],
        "normalize": [True, False],
    },
}


def make(kind, **kwargs):
    cls, ref, shared = KINDS[kind]
    arguments = {**shared, **kwargs}
    sample_free = {name: value for name, value in arguments.items() if name not in ("reduction", "name")}
    return cls(**arguments), lambda x, y, **kw: ref(x, y, **sample_free, **kw)


@functools.lru_cache(maxsize=None)
def objective(kind, **kwargs):
    """`(x, labels) -> loss` of one configuration: compiled once per shape (JAX, XLA), whatever the data."""
    loss = make(kind, **kwargs)[0]
    return lambda e, y: loss(y, e)


def evaluate(fn, *args):
    """`fn(*args)` as NumPy: jitted under JAX, whose eager operations compile one by one for every new shape."""
    if BACKEND == "jax":
        import jax

        fn = jax.jit(fn)
    return np.asarray(keras.ops.convert_to_numpy(fn(*args)))


def check(kind, x, labels, compiled=False, sample_weight=None, **kwargs):
    loss, ref = make(kind, **kwargs)
    # Where the reference's gradient is 0 (a perfect ranking of one class:
    # FastAP's pulses cancel), float32 leaves ~1e-7: an absolute floor of 1e-5.
    scale = max(np.abs(ref(x.astype("float64"), labels, sample_weight=sample_weight).grad).max(), 1e-6)
    return check_against(loss, ref, x, labels, compiled, sample_weight, grad_rtol=max(1e-3, 1e-5 / scale))


# ---------------------------------------------------------------- hand-made cases

# One query against three reference rows: positive, negative, positive (in
# this order of closeness): AP = (1/1 + 2/3) / 2 = 5/6.
POSITIVE = np.array([[True, False, True]])
NEGATIVE = ~POSITIVE


def terms(function, matrix, **kwargs):
    losses, counts = function(tensor(np.array([matrix], "float32")), tensor(POSITIVE), tensor(NEGATIVE), **kwargs)
    return float(np.asarray(losses)[0]), float(np.asarray(counts)[0])


def test_hand_made_fast_ap_is_average_precision_on_bin_centres():
    # Δ = 4 / 10 = 0.4: distances 0.4, 0.8, 1.2 each fill one bin.
    assert terms(ranking.fast_ap_terms, [0.4, 0.8, 1.2]) == pytest.approx((1 / 6, 1.0))
    # The positive at 1.0, between bins 2 (0.8) and 3 (1.2), half in each:
    # h⁺ = [0, 1, 0.5, 0.5], h = [0, 1, 1.5, 0.5], H⁺ = [0, 1, 1.5, 2], H = [0, 1, 2.5, 3].
    fast_ap = (1 * 1 / 1 + 0.5 * 1.5 / 2.5 + 0.5 * 2 / 3) / 2
    assert terms(ranking.fast_ap_terms, [0.4, 0.8, 1.0])[0] == pytest.approx(1 - fast_ap, rel=1e-6)
    # The negative in the positive's bin: a tie, counted as retrieved together.
    assert terms(ranking.fast_ap_terms, [0.4, 0.4, 1.2])[0] == pytest.approx(1 - (1 / 2 + 2 / 3) / 2, rel=1e-6)
    # Beyond the last bin (4 + Δ): left out of the ranking.
    assert terms(ranking.fast_ap_terms, [0.4, 4.5, 1.2])[0] == pytest.approx(0.0, abs=1e-7)


def test_hand_made_smooth_ap():
    # A cold sigmoid: the exact ranks.
    assert terms(ranking.smooth_ap_terms, [0.9, 0.5, 0.1], temperature=1e-4) == pytest.approx((1 / 6, 1.0))
    # τ = 1: rank(p₁) = 1 + σ(−0.4) + σ(−0.8), rank⁺(p₁) = 1 + σ(−0.8);
    # rank(p₂) = 1 + σ(0.8) + σ(0.4), rank⁺(p₂) = 1 + σ(0.8).
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    first = (1 + sigmoid(-0.8)) / (1 + sigmoid(-0.4) + sigmoid(-0.8))
    second = (1 + sigmoid(0.8)) / (1 + sigmoid(0.8) + sigmoid(0.4))
    want = 1 - (first + second) / 2
    assert terms(ranking.smooth_ap_terms, [0.9, 0.5, 0.1], temperature=1.0)[0] == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("formula", [ranking._exact_sigmoid_and_slope, ranking._fused_sigmoid_and_slope])
def test_sigmoids_and_slopes_keep_their_relative_precision_in_both_tails(formula):
    # Operation by operation from e = exp(−z); compiled from σ(−|z|) alone, which XLA keeps as one matrix. Either
    # way every value to float32's relative precision, where `1 − σ` for σ' or a fast sigmoid would lose it
    # (sharp temperatures put most pairs in the tails); below σ(−50) both stay at that floor.
    exponents = np.concatenate([-np.geomspace(80, 1e-3, 40), [0.0], np.geomspace(1e-3, 50, 40), [60.0, np.inf]])
    exponents = exponents.astype("float32")
    z = -np.minimum(exponents.astype("float64"), 50.0)
    sigmoid, slope = (keras.ops.convert_to_numpy(v) for v in formula(tensor(exponents)))
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-z)), rtol=2e-6)
    np.testing.assert_allclose(slope, 1 / (1 + np.exp(-z)) / (1 + np.exp(z)), rtol=2e-6)


@pytest.mark.parametrize(
    "variant, want",
    [
        # Negatives before the positives: 0 and 1.
        ("O", 0.5),
        ("Ds", np.log(2) / 2),
        ("Dq", 1 - (1 + 1 / 2) / 2),  # α = 1
        ("Iu", 2 * np.log(2) / 2),
        ("Ib", (2 - np.log(3)) / 4 / 2),  # b = 2
    ],
)
def test_hand_made_pnp_variants(variant, want):
    value = terms(ranking.pnp_terms, [0.9, 0.5, 0.1], anneal=1e-4, variant=variant)
    assert value == pytest.approx((want, 1.0), rel=1e-6)


def test_hand_made_ranked_list():
    # m = 0.4, α = 1.2, c = 0.8; rows: positive at 1.1 (0.3 beyond c),
    # negative at 1.0 (0.2 inside α), positive at 0.5 (fine).
    epsilon = 1e-5 * 4
    want = 0.5 * 0.3 / (1 + epsilon) + 0.5 * 0.2 / (1 + epsilon)
    value = terms(ranking.ranked_list_terms, [1.1, 1.0, 0.5], margin=0.4, Tn=0.0, Tp=0.0)
    assert value == pytest.approx((want, 1.0), rel=1e-6)
    # Tn = 10 with one violating negative: its weight cancels.
    assert terms(ranking.ranked_list_terms, [1.1, 1.0, 0.5], margin=0.4, Tn=10.0)[0] == pytest.approx(
        0.5 * 0.3 / (1 + epsilon) + 0.5 * 0.2 * np.exp(2) / (np.exp(2) + epsilon), rel=1e-6
    )


def test_queries_without_positives_count_as_documented():
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    distinct = np.arange(4)
    for kind in ("fast_ap", "smooth_ap", "pnp"):
        assert float(evaluate(make(kind)[0], distinct, x)) == 0.0
    # The ranked list loss still pushes the negatives (every query counts).
    ranked = float(evaluate(make("ranked_list", margin=0.4, Tn=10.0, alpha=5.0)[0], distinct, x))
    assert ranked == pytest.approx(reference_ranking.ranked_list(x, distinct, alpha=5.0).loss)
    assert ranked > 0


@pytest.mark.parametrize("variant", ["O", "Ds", "Iu", "Ib"])
def test_pnp_without_negatives_is_exactly_zero(variant):
    # The sigmoids beyond the negatives sit at their floor (2e-22 a column),
    # which must not add up to a loss where there is no negative at all.
    # ("Dq" is 1 − a mean of ones: zero up to the mean's rounding.)
    x = np.random.default_rng(7).normal(size=(6, 3)).astype("float32")
    value, grad = value_and_grad(objective("pnp", variant=variant), x, np.zeros(6, int))
    assert float(value) == 0.0 and not np.any(grad)


@pytest.mark.parametrize("kind", ["smooth_ap", "pnp"])
def test_no_gradient_beyond_the_pairs(kind):
    # Entries that are neither a positive nor a negative (the diagonal, and
    # pairs a miner left out) take no gradient at all, though the slots'
    # sigmoids there sit at their floor rather than at 0.
    rng = np.random.default_rng(3)
    similarity = rng.uniform(-1, 1, (8, 8)).astype("float32")
    labels = rng.integers(0, 3, 8)
    kept = rng.random((8, 8)) < 0.7
    positive = (labels[:, None] == labels[None, :]) & ~np.eye(8, dtype=bool) & kept
    negative = (labels[:, None] != labels[None, :]) & kept
    terms = ranking.smooth_ap_terms if kind == "smooth_ap" else ranking.pnp_terms

    def total(s):
        return ops.sum(terms(s, tensor(positive), tensor(negative))[0])

    _, grad = value_and_grad(total, similarity)
    assert np.any(grad[positive | negative])
    assert not np.any(grad[~(positive | negative)])


# ---------------------------------------------------------------- the peer's values


# TensorFlow computes float64 inputs in float64: PML's values to
# 1e-9. JAX (without x64) and PyTorch here compute in float32, whose errors the sigmoids of
# temperature 0.01 multiply by 100 (and Euclidean gradients of close pairs
# by more): the values to 1e-4, the gradients to 1e-3 of their largest.
PRECISE = BACKEND == "tensorflow"


# The same loss in a PML convention of its own (as in `cases(...)`), taken
# in turn across configurations off TensorFlow.
FAMILIES = {"smooth_ap_blocks": "smooth_ap", "pnp_singletons": "pnp"}


def covering(kinds):
    """The recorded cases of `kinds`: all on TensorFlow; elsewhere, where
    every case is a compilation of its own (JAX), one per configuration —
    every loss, variant and PML convention still covered."""
    params = recorded.cases("pml_ranking", kinds)
    if PRECISE:
        return params
    groups = {}
    for param in params:
        case = param.values[2]
        family = FAMILIES.get(case["kind"], case["kind"])
        groups.setdefault((family, json.dumps(case["cfg"], sort_keys=True)), []).append(param)
    chosen, turns = [], {}
    for (family, _), group in groups.items():
        members = sorted({param.values[2]["kind"] for param in group})
        turn = turns[family] = turns.get(family, -1) + 1
        wanted = members[turn % len(members)]
        chosen.append(next(param for param in group if param.values[2]["kind"] == wanted))
    return chosen


def pml_case(index):
    x, labels, grad = recorded.arrays("pml_ranking", index)
    return (x if PRECISE else x.astype("float32")), labels, grad


def assert_matches(value, grad, case, recorded_grad):
    value_rtol, grad_rtol = (1e-9, 1e-8) if PRECISE else (1e-4, 1e-3)
    assert float(value) == pytest.approx(case["loss"], rel=value_rtol, abs=1e-9)
    assert np.abs(grad - recorded_grad).max() <= grad_rtol * np.abs(recorded_grad).max()


@pytest.mark.parametrize("peer, index, case", covering(["fast_ap", "ranked_list"]))
def test_reproduces_pml_fast_ap_and_ranked_list(peer, index, case):
    x, labels, recorded_grad = pml_case(index)
    loss = {"fast_ap": ranking.FastAP, "ranked_list": ranking.RankedList}[case["kind"]](**case["cfg"])
    value, grad = value_and_grad(lambda e: loss(labels, e), x)
    assert_matches(value, grad, case, recorded_grad)


def _mean_of(function, labels, keep=None, **cfg):
    """The mean of a pure function's per-query losses with each query its own positive (PML's way)."""

    def loss(e):
        losses = function(labels, e, remove_diagonal=False, **cfg)
        if keep is None:
            return ops.mean(losses)
        return ops.sum(ops.where(keep, losses, ops.zeros_like(losses))) / float(np.sum(keep))

    return loss


@pytest.mark.parametrize("peer, index, case", covering(["smooth_ap", "smooth_ap_blocks"]))
def test_reproduces_pml_smooth_ap(peer, index, case):
    x, labels, recorded_grad = pml_case(index)
    if case["kind"] == "smooth_ap_blocks":
        # PML's grouping: consecutive blocks of as many rows as the batch has
        # classes, whatever the labels — right only for k classes of k.
        classes = len(np.unique(labels))
        assert len(labels) != classes**2
        general = ranking.smooth_ap(labels, x, remove_diagonal=False, **case["cfg"])
        assert float(ops.mean(general)) != pytest.approx(case["loss"], rel=1e-3)
        labels = np.arange(len(labels)) // classes
    value, grad = value_and_grad(_mean_of(ranking.smooth_ap, labels, **case["cfg"]), x)
    assert_matches(value, grad, case, recorded_grad)


@pytest.mark.parametrize("peer, index, case", covering(["pnp", "pnp_singletons"]))
def test_reproduces_pml_pnp(peer, index, case):
    x, labels, recorded_grad = pml_case(index)
    # PML leaves out the queries without another positive.
    keep = np.array([np.sum(labels == label) > 1 for label in labels])
    assert keep.all() == (case["kind"] == "pnp")
    value, grad = value_and_grad(_mean_of(ranking.pnp, labels, keep, **case["cfg"]), x)
    assert_matches(value, grad, case, recorded_grad)


def test_pml_cases_were_recorded():
    kinds = [case.values[2]["kind"] for case in recorded.cases("pml_ranking", list(KINDS) + ["smooth_ap_blocks",
                                                                                         "pnp_singletons"])]
    for kind in list(KINDS) + ["smooth_ap_blocks", "pnp_singletons"]:
        assert kinds.count(kind) >= 4, kind
    # PML's self-positive convention, and ours: the class leaves each query out of its own ranking.
    x, labels, _ = pml_case(next(i for i, case in enumerate(recorded._load("pml_ranking")[0])
                                 if case["kind"] == "smooth_ap"))
    assert float(ranking.SmoothAP()(labels, x.astype("float32"))) == pytest.approx(
        reference_ranking.smooth_ap(x.astype("float64"), labels).loss, rel=1e-4
    )


# ---------------------------------------------------------------- random cases


# Every example compiles anew under JAX: a few there, the many under TensorFlow (eager).
@settings(max_examples=25 if BACKEND == "tensorflow" else 4, deadline=None)
@given(
    kind=st.sampled_from(sorted(KINDS)),
    n=st.integers(1, 24),
    num_classes=st.integers(1, 6),
    dim=st.integers(1, 6),
    seed=st.integers(0, 2**31),
    weighted=st.booleans(),
    data=st.data(),
)
def test_matches_brute_force(kind, n, num_classes, dim, seed, weighted, data):
    options = {name: data.draw(st.sampled_from(values), label=name) for name, values in OPTIONS[kind].items()}
    if kind == "smooth_ap" and not options["normalize"] or kind == "pnp" and not options["normalize"]:
        options["temperature" if kind == "smooth_ap" else "anneal"] = 1.0  # dot products of ~dim: milder
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    labels = rng.integers(0, num_classes, size=n)
    weights = rng.uniform(0.5, 2.0, size=n) if weighted else None
    check(kind, x, labels, sample_weight=weights, **options)


# Milder scales than the defaults, for the compiled and degenerate cases:
# they share one compiled function per loss (same shapes, labels as data).
COMPILED_OPTIONS = {"smooth_ap": {"temperature": 0.1}, "pnp": {"anneal": 0.1, "variant": "Ib"}}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_compiled_matches_brute_force(kind):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 3)).astype("float32")
    labels = rng.integers(0, 3, size=8)
    options = COMPILED_OPTIONS.get(kind, {})
    want = make(kind, **options)[1](x.astype("float64"), labels)
    assert want.kink > 1e-3
    for compiled in COMPILE_MODES[1:] or (True,):
        value, grad = value_and_grad(objective(kind, **options), x, labels, compiled=compiled)
        assert float(value) == pytest.approx(want.loss, rel=1e-4, abs=1e-5)
        scale = max(np.abs(want.grad).max(), 1e-6)
        np.testing.assert_allclose(grad / scale, want.grad / scale, atol=max(1e-3, 1e-5 / scale))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reference_set_and_multi_label(kind):
    rng = np.random.default_rng(4)
    x, ref_x = rng.normal(size=(5, 3)).astype("float32"), rng.normal(size=(9, 3)).astype("float32")
    y, ref_y = (rng.random((5, 3)) < 0.5).astype("int32"), (rng.random((9, 3)) < 0.5).astype("int32")
    _, _, shared = KINDS[kind]
    function = getattr(ranking, kind)
    got = evaluate(lambda *args: function(*args, multi_label=True, **shared), y, x, ref_y, ref_x)
    want = KINDS[kind][1](x.astype("float64"), y, ref_x=ref_x.astype("float64"), ref_labels=ref_y, multi_label=True,
                          **shared)
    np.testing.assert_allclose(got, want.per_anchor, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- degenerate batches, precision


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("case", ["one example", "one class", "all distinct", "identical", "huge", "tiny"])
def test_degenerate_batches_are_finite(kind, case):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 3)).astype("float32")
    labels = np.repeat([0, 1], 4)
    expected = None
    if case == "one example":
        x, labels, expected = x[:1], labels[:1], 0.0
    elif case == "one class":
        labels = np.zeros(8, int)
        # Every candidate is a positive: a perfect ranking; the ranked list
        # loss still pulls positives beyond α − m.
        expected = 0.0 if kind in ("fast_ap", "smooth_ap", "pnp") else None
    elif case == "all distinct":
        labels = np.arange(8)
        expected = None if kind == "ranked_list" else 0.0
    elif case == "identical":
        x = np.ones_like(x)
    elif case == "huge":
        x = x * np.float32(1e15)
    elif case == "tiny":
        x = x * np.float32(1e-30)
    # Labels as data: one compiled function per loss and shape (JAX jits
    # every call), the one of `test_compiled_matches_brute_force`; XLA
    # under TensorFlow for identical embeddings, where a NaN is likeliest.
    for compiled in COMPILE_MODES if case == "identical" else (False,):
        value, grad = value_and_grad(objective(kind, **COMPILED_OPTIONS.get(kind, {})), x, labels, compiled=compiled)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), (compiled, value)
        if expected is not None:
            assert float(value) == pytest.approx(expected, abs=1e-6)
        if expected == 0.0 and kind == "pnp":
            # Exactly: no sigmoid's floor (2e-22 a column) adds up where there is nothing to rank.
            assert float(value) == 0.0 and not np.any(grad), (compiled, value)


def test_unnormalised_huge_values_are_finite():
    x = np.random.default_rng(6).normal(size=(8, 3)).astype("float32") * np.float32(1e15)
    labels = np.repeat([0, 1], 4)
    for kind, options in (("smooth_ap", {}), ("pnp", {"variant": "Iu"}), ("ranked_list", {"Tp": 5.0}),
                          ("fast_ap", {})):
        value, grad = value_and_grad(objective(kind, normalize=False, **options), x, labels)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), kind


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_precisions(kind, dtype):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 4))
    labels = np.repeat(np.arange(4), 4)
    loss, ref = make(kind, **({"temperature": 0.1} if kind == "smooth_ap" else {}))
    typed = tensor(x, dtype)
    value = evaluate(loss, labels, typed)
    assert keras.backend.standardize_dtype(value.dtype) in ("float32", "float64")
    as_float = np.asarray(tensor(typed, "float32"), "float64")
    assert float(value) == pytest.approx(ref(as_float, labels).loss, rel=1e-4, abs=1e-6)


def test_large_int64_labels_stay_distinct():
    x = np.random.default_rng(7).normal(size=(4, 3)).astype("float32")
    big = 2**53
    labels = np.array([big, big, big + 1, big + 1])
    if BACKEND != "jax":  # JAX without x64 has no int64 tensor
        labels = tensor(labels, "int64")
    for kind in KINDS:
        loss = make(kind)[0]
        assert float(loss(labels, x)) != pytest.approx(float(loss(np.zeros(4, int), x))), kind


# ---------------------------------------------------------------- configuration, arguments


@slow_on_jax
@pytest.mark.parametrize(
    "loss",
    [
        ranking.FastAP(num_bins=7, distance="cosine", max_distance=1.5, reduction="sum", name="mine"),
        ranking.SmoothAP(temperature=0.05, normalize=False),
        ranking.PNP(b=3.0, alpha=2.0, anneal=0.05, variant="Dq"),
        ranking.RankedList(margin=0.3, Tn=5.0, imbalance=0.7, alpha=1.3, Tp=1.0, distance="squared_euclidean"),
        ranking.RankedList(margin=0.3, Tn=5.0),
    ],
    ids=lambda loss: loss.name,
)
def test_config_round_trip(loss):
    config = loss.get_config()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert type(loss).from_config(config).get_config() == config
    x = np.random.default_rng(8).normal(size=(12, 3)).astype("float32")
    labels = np.repeat(np.arange(3), 4)
    assert float(evaluate(restored, labels, x)) == pytest.approx(float(evaluate(loss, labels, x)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_bins"):
        ranking.FastAP(num_bins=0)
    with pytest.raises(ValueError, match="num_bins"):
        ranking.fast_ap([0, 0], np.ones((2, 2)), num_bins=2.5)
    with pytest.raises(ValueError, match="max_distance"):
        ranking.FastAP(max_distance=-1.0)
    with pytest.raises(ValueError, match="distance"):
        ranking.FastAP(distance="L2")
    with pytest.raises(ValueError, match="temperature"):
        ranking.SmoothAP(temperature=0.0)
    with pytest.raises(ValueError, match="variant"):
        ranking.PNP(variant="X")
    with pytest.raises(ValueError, match="anneal"):
        ranking.pnp([0, 0], np.ones((2, 2)), anneal=-1.0)
    with pytest.raises(ValueError, match="b must"):
        ranking.PNP(variant="Ib", b=0.0)
    with pytest.raises(ValueError, match="alpha must"):
        ranking.PNP(variant="Dq", alpha=0.0)
    with pytest.raises(ValueError, match="imbalance"):
        ranking.RankedList(margin=0.4, Tn=10.0, imbalance=1.5)
    with pytest.raises(ValueError, match="margin"):
        ranking.ranked_list([0, 0], np.ones((2, 2)), margin=-0.1, Tn=1.0)
    with pytest.raises(TypeError):
        ranking.RankedList()  # margin and Tn are required, as in PML


def test_miner_is_passed_up():
    miner = object()
    for kind in KINDS:
        cls, _, shared = KINDS[kind]
        assert cls(**shared, miner=miner).miner is miner


# ---------------------------------------------------------------- in Keras


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fit_lowers_the_loss(kind):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 8)
    x = (rng.normal(size=(4, 6))[labels] + rng.normal(size=(32, 6))).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
    loss = make(kind, **({"temperature": 0.1} if kind == "smooth_ap" else {"anneal": 0.1} if kind == "pnp" else {}))[0]
    # Under TensorFlow, two losses in a graph and two with XLA (a compilation each).
    jit_compile = FIT_JIT_COMPILE[sorted(KINDS).index(kind) % len(FIT_JIT_COMPILE)]
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss, jit_compile=jit_compile)
    history = model.fit(x, labels, batch_size=32, epochs=6, verbose=0).history["loss"]
    assert all(np.isfinite(history)) and history[-1] < history[0]
