"""The pure loss functions of `tfm.losses`: queries mined against a reference set.

Each function (`batch_hard_triplet`, `contrastive`, ..., `npairs`) returns
the per-query losses of N queries mined against R reference rows. Tested
against the NumPy references of `reference.py` (their docstring states the
semantics of the N×R rectangle), in values per query and in the gradients of
their sum with respect to both the queries and the reference rows:

- random queries against a random reference (hypothesis);
- the queries first in the reference (reference = [queries; more rows])
  with the diagonal removed;
- without a reference: the classes' per-anchor losses (and the square
  references);
- multi-hot labels, and one-hot rows equal to class ids;
- a β per query for the margin loss;
- hand-made cases of the lifted structured loss (the negatives of a
  reference row are taken among the queries) and of the contrastive loss
  with hard negatives (ties at the cut share the count left).
"""

import functools
import inspect
import zlib

import keras
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import tfmetric as tfm
from tfmetric.losses.registry import LOSSES as REGISTRY

import reference
from conftest import BACKEND, slow_on_jax, value_and_grad
from registry import ALL_LOSSES

# Milder scales than the defaults for the random cases (fewer saturated
# softmaxes and ties at a hinge), by function.
MILDER = {
    "batch_hard_triplet": {"margin": 0.5},
    "batch_all_triplet": {"margin": 0.5},
    "semi_hard_triplet": {"margin": 0.5},
    "contrastive": {"margin": 1.5},
    "lifted_structure": {"margin": 0.5},
    "margin_loss": {"beta": 1.0, "nu": 0.1},
    "multi_similarity": {"beta": 10.0},
    "circle": {"gamma": 16.0},
    "binomial_deviance": {"cost": 5.0},
    "soft_nearest_neighbor": {"temperature": 0.5},
    "nca": {"softmax_scale": 2.0},
    "smooth_ap": {"temperature": 0.1},
    "pnp": {"anneal": 0.1},
}
# kind: (function of tfm.losses, its reference, class, arguments of the
# function and class only, arguments of both), for every deterministic
# configuration of the registry.
KINDS = {}
for _kind, (_cls, _ref, _only, _shared) in ALL_LOSSES.items():
    _name = REGISTRY[_kind].function.__name__
    KINDS[_kind] = (_name, _ref, _cls, _only, {**_shared, **MILDER.get(_name, {})})
# The losses with a `distance` argument; the others work on dot products
# (the margin loss on Euclidean distances).
WITH_DISTANCE = {kind for kind, entry in KINDS.items() if "distance" in inspect.signature(entry[2]).parameters}
# Some losses work on cosines only (no `normalize`).
WITH_NORMALIZE = {kind for kind, entry in KINDS.items() if "normalize" in inspect.signature(entry[2]).parameters}


@functools.lru_cache(maxsize=None)
def per_query(kind, **options):
    """`(rows, labels, ref_labels) -> per-query losses`, rows the queries then the reference.

    One function per configuration, the labels as arguments; jitted under
    JAX, where running it op by op compiles every operation for every shape
    (see `conftest.value_and_grad`).
    """
    function, _, _, only, shared = KINDS[kind]
    function = getattr(tfm.losses, function)

    def losses(rows, labels, ref_labels):
        n = labels.shape[0]
        return function(labels, rows[:n], ref_labels, rows[n:], **only, **shared, **options)

    if BACKEND == "jax":
        import jax

        return jax.jit(losses)
    return losses


@functools.lru_cache(maxsize=None)
def summed(kind, **options):
    """`(rows, labels, ref_labels) -> Σ per-query losses`, for `value_and_grad` (compiled once per shape)."""
    losses = per_query(kind, **options)
    return lambda rows, labels, ref_labels: keras.ops.sum(losses(rows, labels, ref_labels))


def compare(kind, x, labels, ref_x, ref_labels, **options):
    """The function's per-query losses and gradients (queries, reference) against the reference's.

    Like `conftest.check_against`, values and gradients are compared only
    away from the reference's kinks.
    """
    ref, shared = KINDS[kind][1], KINDS[kind][4]
    x, ref_x = x.astype("float32"), ref_x.astype("float32")
    want = ref(x.astype("float64"), labels, **shared, **options, ref_x=ref_x.astype("float64"), ref_labels=ref_labels)
    rows = np.concatenate([x, ref_x])
    got = np.asarray(per_query(kind, **options)(rows, labels, ref_labels))
    assert got.shape == (len(x),)
    assert np.all(np.isfinite(got))
    value, grad = value_and_grad(summed(kind, **options), rows, labels, ref_labels)
    assert np.all(np.isfinite(grad))
    if want.kink > 1e-3:
        np.testing.assert_allclose(got, want.per_anchor, rtol=1e-4, atol=1e-5)
        assert float(value) == pytest.approx(want.per_anchor.sum(), rel=1e-4, abs=1e-5)
        want_grad = np.concatenate([want.per_query_grad, want.per_query_ref_grad])
        # (A floor: float32 leaves up to ~1e-6 where the exact gradient is 0, a
        # perfect ranking: FastAP, n=4, r=2, seed=1722 left 1.0e-6.)
        scale = max(np.abs(want_grad).max(), 1e-2)
        np.testing.assert_allclose(grad / scale, want_grad / scale, atol=1e-3)
    return want


def random_options(kind, rng):
    """A distance (where the loss has one) and whether to normalise (where it may)."""
    options = {"normalize": bool(rng.integers(2))} if kind in WITH_NORMALIZE else {}
    if kind in WITH_DISTANCE:
        options["distance"] = str(rng.choice(tfm.distances.DISTANCES))
    return options


def away_from_kinks(kind, base, draw):
    """The first case `draw(rng) -> (x, labels, ref_x, ref_labels, options)` of the kind's seeds
    whose reference is away from kinks (so that the comparisons run).

    Seeds depend on the kind's name only: adding a loss moves no other loss's cases.
    """
    ref, shared = KINDS[kind][1], KINDS[kind][4]
    for attempt in range(20):
        rng = np.random.default_rng(base + 1000 * attempt + zlib.crc32(kind.encode()) % 1000)
        x, labels, ref_x, ref_labels, options = draw(rng)
        want = ref(x, labels, **shared, **options, ref_x=ref_x, ref_labels=ref_labels)
        if want.kink > 1e-3:
            return x, labels, ref_x, ref_labels, options
    pytest.fail(f"no case of {kind} away from its kinks in 20 seeds")


# ---------------------------------------------------------------- random cases


@slow_on_jax
@pytest.mark.parametrize("kind", sorted(KINDS))
# Under JAX, every new shape is a compilation (a second or two) of its own.
@settings(max_examples=10 if BACKEND != "jax" else 2, deadline=None)
@given(n=st.integers(2, 6), r=st.integers(2, 8), seed=st.integers(0, 2**31))
@example(n=4, r=2, seed=1722)  # FastAP's perfect ranking: float32 leaves 1e-6 where the gradient is 0
def test_matches_brute_force(kind, n, r, seed):
    rng = np.random.default_rng(seed)
    x, ref_x = rng.normal(size=(n, 3)), rng.normal(size=(r, 3))
    labels, ref_labels = rng.integers(0, 3, size=n), rng.integers(0, 3, size=r)
    # remove_diagonal's default: with a reference, row a is a reference row like the others.
    compare(kind, x, labels, ref_x, ref_labels, **random_options(kind, rng))


@slow_on_jax
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_queries_first_in_the_reference(kind):
    # reference = [queries; memory]: row a of the reference is query a,
    # neither its positive nor its negative. The reference's rows are
    # variables of their own (the memory's copy of the batch).
    def draw(rng):
        x = rng.normal(size=(5, 3))
        labels = np.array([0, 0, 1, 1, 2])
        ref_x = np.concatenate([x, rng.normal(size=(4, 3))])
        return x, labels, ref_x, np.concatenate([labels, [0, 1, 2, 2]]), {"remove_diagonal": True}

    x, labels, ref_x, ref_labels, options = away_from_kinks(kind, 0, draw)
    assert compare(kind, x, labels, ref_x, ref_labels, **options).kink > 1e-3


@slow_on_jax
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_without_a_reference_is_the_class(kind):
    name, ref, cls, only, shared = KINDS[kind]
    for attempt in range(20):
        rng = np.random.default_rng(300 + 1000 * attempt + zlib.crc32(kind.encode()) % 1000)
        x = rng.normal(size=(8, 3)).astype("float32")
        labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])
        if ref(x.astype("float64"), labels, **shared).kink > 1e-3:
            break
    got = np.asarray(getattr(tfm.losses, name)(labels, x, **only, **shared))
    np.testing.assert_allclose(got, np.asarray(cls(**only, **shared).call(labels, x)), rtol=1e-6, atol=1e-7)
    per_anchor = np.asarray(cls(**only, **shared, reduction=None)(labels, x))
    np.testing.assert_allclose(got, per_anchor, rtol=1e-6, atol=1e-7)
    want = ref(x.astype("float64"), labels, **shared)
    assert want.kink > 1e-3
    np.testing.assert_allclose(got, want.per_anchor, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- multi-hot labels


def multi_hot(rng, rows):
    """Random 0/1 rows over 4 labels: some with two labels, the first with none."""
    labels = np.zeros((rows, 4), "int32")
    labels[np.arange(rows), rng.integers(0, 4, size=rows)] = 1
    labels[np.arange(rows), rng.integers(0, 4, size=rows)] = 1
    labels[0] = 0
    return labels


@slow_on_jax
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_multi_label_matches_brute_force(kind):
    def draw(rng):
        x, ref_x = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
        return x, multi_hot(rng, 5), ref_x, multi_hot(rng, 7), {"multi_label": True}

    x, labels, ref_x, ref_labels, options = away_from_kinks(kind, 1100, draw)
    assert compare(kind, x, labels, ref_x, ref_labels, **options).kink > 1e-3


@slow_on_jax
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_one_hot_rows_are_class_ids(kind):
    name, _, _, only, shared = KINDS[kind]
    function = getattr(tfm.losses, name)
    rng = np.random.default_rng(30 + zlib.crc32(kind.encode()) % 1000)
    x, ref_x = rng.normal(size=(5, 3)).astype("float32"), rng.normal(size=(6, 3)).astype("float32")
    labels, ref_labels = np.array([0, 1, 1, 2, 3]), np.array([0, 0, 1, 2, 2, 3])
    ids = np.asarray(function(labels, x, ref_labels, ref_x, **only, **shared))
    one_hot = function(np.eye(4)[labels], x, np.eye(4)[ref_labels], ref_x, multi_label=True, **only, **shared)
    np.testing.assert_allclose(np.asarray(one_hot), ids, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- arguments of one loss


def test_margin_loss_takes_a_beta_per_query():
    rng = np.random.default_rng(40)
    x, ref_x = rng.normal(size=(5, 3)).astype("float32"), rng.normal(size=(7, 3)).astype("float32")
    labels, ref_labels = rng.integers(0, 3, size=5), rng.integers(0, 3, size=7)
    beta = np.array([0.6, 0.8, 1.0, 1.2, 1.4], "float32")
    want = reference.margin(
        x.astype("float64"), labels, 0.2, beta.astype("float64"), ref_x=ref_x.astype("float64"), ref_labels=ref_labels
    )

    def total(rows, beta):
        return keras.ops.sum(tfm.losses.margin_loss(labels, rows[:5], ref_labels, rows[5:], beta=beta, sampling="all"))

    value, grad = value_and_grad(total, np.concatenate([x, ref_x]), beta)
    got = tfm.losses.margin_loss(labels, x, ref_labels, ref_x, beta=beta, sampling="all")
    assert want.kink > 1e-3
    np.testing.assert_allclose(np.asarray(got), want.per_anchor, rtol=1e-4, atol=1e-5)
    want_grad = np.concatenate([want.per_query_grad, want.per_query_ref_grad])
    np.testing.assert_allclose(grad, want_grad, atol=1e-4 * np.abs(want_grad).max())


# ---------------------------------------------------------------- hand-made cases


def test_hand_made_lifted_structure_takes_the_reference_rows_negatives_among_the_queries():
    # Queries q0 = (0, 0) of class 0, q1 = (3, 0) of class 1; reference
    # r0 = (1, 0) of class 0, r1 = (0, 2) of class 1. Distances:
    # d(q0, r0) = 1, d(q0, r1) = 2, d(q1, r0) = 2, d(q1, r1) = √13.
    x = np.array([[0.0, 0.0], [3.0, 0.0]], "float32")
    ref_x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    labels, ref_labels = np.array([0, 1]), np.array([0, 1])
    # q0's positive r0: its own negative r1 (d 2) and r0's negatives among
    # the queries, q1 (d 2): J = log(e^(1−2) + e^(1−2)) + 1 = log 2.
    # q1's positive r1: its negative r0 (d 2) and r1's negative q0 (d 2):
    # J = log(2e^(−1)) + √13 = log 2 − 1 + √13. Each query: J² / 2.
    want = [np.log(2) ** 2 / 2, (np.log(2) - 1 + 13**0.5) ** 2 / 2]
    got = tfm.losses.lifted_structure(labels, x, ref_labels, ref_x, margin=1.0)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    ref = reference.lifted_structure(x, labels, 1.0, ref_x=ref_x, ref_labels=ref_labels)
    np.testing.assert_allclose(ref.per_anchor, want, rtol=1e-12)


def test_hand_made_contrastive_hard_negatives_of_the_rectangle():
    # Queries q0 = (0, 0) of class 0, q1 = (4, 0) of class 1; reference
    # r0 = (1, 0) of class 0, r1 = (2, 0) of class 1, r2 = (0, 3) of class 2.
    # Positive entries: (q0, r0) at 1, (q1, r1) at 2 -> keep the 2 closest
    # negative entries: (q0, r1) at 2, then (q1, r0) and (q0, r2) tied at 3
    # share the one left, half each ((q1, r2) at 5 is dropped).
    x = np.array([[0.0, 0.0], [4.0, 0.0]], "float32")
    ref_x = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]], "float32")
    labels, ref_labels = np.array([0, 1]), np.array([0, 1, 2])
    # Margin 3.5: pushes (3.5 − 2)² = 2.25 and (3.5 − 3)² = 0.25.
    # q0: (1 + 2.25 + 0.25 / 2) / (1 + 1 + 1/2) = 3.375 / 2.5 = 1.35.
    # q1: (4 + 0.25 / 2) / (1 + 1/2) = 4.125 / 1.5 = 2.75.
    got = tfm.losses.contrastive(labels, x, ref_labels, ref_x, margin=3.5, negatives="hard")
    np.testing.assert_allclose(np.asarray(got), [1.35, 2.75], rtol=1e-6)
    ref = reference.contrastive(x, labels, 3.5, negatives="hard", ref_x=ref_x, ref_labels=ref_labels)
    np.testing.assert_allclose(ref.per_anchor, [1.35, 2.75], rtol=1e-12)
