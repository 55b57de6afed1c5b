"""GeneralizedLiftedStructure and SignalToNoiseRatioContrastive: hand-made cases, the NumPy references, PML 2.9."""

import functools

import keras
import numpy as np
import pytest
import reference_lifted_snr as ref
from hypothesis import given, settings, strategies as st

from tfmetric.losses.contrastive_loss import (
    SignalToNoiseRatioContrastive,
    signal_to_noise_ratio,
    signal_to_noise_ratio_contrastive,
)
from tfmetric.losses.lifted import GeneralizedLiftedStructure, generalized_lifted_structure

import recorded
from conftest import (
    BACKEND,
    COMPILE_MODES,
    FIT_JIT_COMPILE,
    check_against,
    no_warnings,
    slow_on_jax,
    tensor,
    value_and_grad,
)

CLASSES = {"generalized_lifted_structure": GeneralizedLiftedStructure, "signal_to_noise_ratio_contrastive":
           SignalToNoiseRatioContrastive}
FUNCTIONS = {"generalized_lifted_structure": generalized_lifted_structure, "signal_to_noise_ratio_contrastive":
             signal_to_noise_ratio_contrastive}
KINDS = sorted(CLASSES)
# Arguments the random tests draw, per loss.
OPTIONS = {
    "generalized_lifted_structure": {
        "neg_margin": [0.5, 1.0, 2.0],
        "pos_margin": [0.0, 0.3],
        "distance": ["euclidean", "squared_euclidean", "cosine"],
        "normalize": [True, False],
    },
    "signal_to_noise_ratio_contrastive": {
        "pos_margin": [0.0, 0.5],
        "neg_margin": [1.0, 2.5],
        "normalize": [True, False],
        "zero_mean_weight": [0.0, 0.1],
    },
}
# Every example compiles anew under JAX: a few there, more under TensorFlow (eager).
EAGER_EXAMPLES = 25 if BACKEND == "tensorflow" else 3


def covering(kinds):
    """The recorded cases of `kinds`: all under TensorFlow; elsewhere (every
    case a compilation under JAX) the first of each loss and configuration."""
    params = recorded.cases("pml_lifted_snr", kinds)
    if BACKEND == "tensorflow":
        return params
    chosen = {}
    for param in params:
        case = param.values[2]
        chosen.setdefault((case["kind"], repr(sorted(case["cfg"].items()))), param)
    return list(chosen.values())


@functools.lru_cache(maxsize=None)
def objective(kind, **options):
    """`(x, labels) -> loss` of one configuration: compiled once per shape (JAX, XLA), whatever the data."""
    loss = CLASSES[kind](**options)
    return lambda e, y: loss(y, e)


def draw_options(kind, data):
    return {name: data.draw(st.sampled_from(values), label=name) for name, values in OPTIONS[kind].items()}


def check(kind, x, labels, compiled=False, sample_weight=None, **options):
    loss = CLASSES[kind](**options)
    return check_against(loss, lambda e, y, **kw: ref.REFERENCES[kind](e, y, **options, **kw), x, labels, compiled,
                         sample_weight)


# ---------------------------------------------------------------- hand-made cases

SQUARE = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 2.0]], "float32")
SQUARE_LABELS = np.array([0, 0, 1, 1])


def test_hand_made_generalized_lifted_structure():
    # Anchor 0: its positive at distance 1, its negatives at 2 and √8;
    # anchor 3: its positive at 2, its negatives at √8 and √5.
    lse = np.logaddexp
    anchor0 = 1.0 + lse(1 - 2.0, 1 - np.sqrt(8))
    anchor3 = 2.0 + lse(1 - np.sqrt(8), 1 - np.sqrt(5))
    losses = np.asarray(generalized_lifted_structure(SQUARE_LABELS, SQUARE, normalize=False))
    assert losses[0] == pytest.approx(anchor0, rel=1e-6)
    assert losses[3] == pytest.approx(anchor3, rel=1e-6)
    # The margins move the two sides: m₊ = 0.5 and m₋ = 3 add 2.5 to each inner sum.
    shifted = np.asarray(generalized_lifted_structure(SQUARE_LABELS, SQUARE, normalize=False, neg_margin=3.0,
                                                      pos_margin=0.5))
    np.testing.assert_allclose(shifted, losses + 1.5, rtol=1e-6)
    value = GeneralizedLiftedStructure(normalize=False)(SQUARE_LABELS, SQUARE)
    assert float(value) == pytest.approx(losses.mean(), rel=1e-6)


def test_generalized_lifted_structure_keeps_the_side_a_query_has():
    # Two classes of one example at distance 0.5: no positive, so each
    # query's loss is its negative side alone, relu(log e^(1 − 0.5)) (PML).
    x = np.array([[0.0, 0.0], [0.5, 0.0]], "float32")
    losses = np.asarray(generalized_lifted_structure([0, 1], x, normalize=False))
    np.testing.assert_allclose(losses, [0.5, 0.5], rtol=1e-6)
    # One class: the positive side alone, relu(0.5 − 0); beyond the margin: 0.
    np.testing.assert_allclose(generalized_lifted_structure([0, 0], x, normalize=False), [0.5, 0.5], rtol=1e-6)
    assert float(GeneralizedLiftedStructure(normalize=False)(np.array([0, 1]), 4 * x)) == 0.0
    # A query with neither (one example) counts, with loss 0, in the mean.
    assert float(GeneralizedLiftedStructure()(np.array([3]), x[:1])) == 0.0


ROWS = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 5.0], [3.0, 2.0, 1.0]], "float32")


def test_hand_made_signal_to_noise_ratio():
    # var([1, 2, 3]) = 2/3, var([1, 2, 5]) = 26/9, var([0, 0, 2]) = 8/9, ...
    want = [[0.0, 4 / 3, 4.0], [4 / 13, 0.0, 28 / 13], [4.0, 28 / 3, 0.0]]
    np.testing.assert_allclose(signal_to_noise_ratio(ROWS, normalize=False), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref.snr_matrix(ROWS, normalize=False)[0], want, rtol=1e-12)
    # Invariant to scaling and shifting all rows together, not to scaling one.
    moved = signal_to_noise_ratio(3 * ROWS + 7, normalize=False)
    np.testing.assert_allclose(moved, want, rtol=1e-5, atol=1e-6)
    rectangle = signal_to_noise_ratio(ROWS[:1], ROWS[1:], normalize=False)
    np.testing.assert_allclose(rectangle, [want[0][1:]], rtol=1e-5)


def test_hand_made_signal_to_noise_ratio_contrastive():
    labels = np.array([0, 0, 1])
    # Positive entries: d = 4/3 and 4/13, both > 0: their mean.
    pull = (4 / 3 + 4 / 13) / 2
    assert float(SignalToNoiseRatioContrastive(normalize=False)(labels, ROWS)) == pytest.approx(pull, rel=1e-6)
    # m₋ = 3: of the negative entries 4, 28/13, 4, 28/3 only 28/13 is within
    # the margin; the mean is over the entries above 0 (AvgNonZero), not all four.
    loss = SignalToNoiseRatioContrastive(normalize=False, neg_margin=3.0)
    assert float(loss(labels, ROWS)) == pytest.approx(pull + (3 - 28 / 13), rel=1e-6)
    # m₊ = 1: only the entry 4/3 is beyond it.
    loss = SignalToNoiseRatioContrastive(normalize=False, pos_margin=1.0)
    assert float(loss(labels, ROWS)) == pytest.approx(4 / 3 - 1, rel=1e-5)
    # The zero-mean regulariser: λ·mean |Σ_k x_ak| = 0.1 · (6 + 8 + 6) / 3.
    loss = SignalToNoiseRatioContrastive(normalize=False, zero_mean_weight=0.1)
    assert float(loss(labels, ROWS)) == pytest.approx(pull + 0.1 * 20 / 3, rel=1e-6)


def test_signal_to_noise_ratio_contrastive_is_a_quantity_of_the_batch():
    labels = np.array([0, 0, 1])
    value = float(SignalToNoiseRatioContrastive(normalize=False)(labels, ROWS))
    # Every query's entry is the batch's loss; sample weights scale nothing.
    per_query = SignalToNoiseRatioContrastive(normalize=False, reduction=None)(labels, ROWS)
    np.testing.assert_allclose(per_query, [value] * 3, rtol=1e-6)
    weighted = SignalToNoiseRatioContrastive(normalize=False)(labels, ROWS, sample_weight=np.array([0.1, 3.0, 1.0]))
    assert float(weighted) == pytest.approx(value, rel=1e-6)
    assert float(SignalToNoiseRatioContrastive(normalize=False, reduction="sum")(labels, ROWS)) == pytest.approx(
        3 * value, rel=1e-6
    )
    # ... but they do weight the regulariser, a mean over anchors.
    loss = SignalToNoiseRatioContrastive(normalize=False, zero_mean_weight=1.0)
    weights = np.array([1.0, 0.0, 0.0])
    assert float(loss(labels, ROWS, sample_weight=weights)) == pytest.approx(value + 6.0, rel=1e-6)


# ---------------------------------------------------------------- PyTorch Metric Learning 2.9


@pytest.mark.parametrize("peer, index, case", covering(KINDS))
def test_reproduces_pytorch_metric_learning(peer, index, case):
    x, labels, recorded_grad = recorded.arrays(peer, index)
    loss = CLASSES[case["kind"]](**case["cfg"])
    value, grad = value_and_grad(lambda e: loss(labels, e), x.astype("float32"))
    assert float(value) == pytest.approx(case["loss"], rel=1e-5)
    assert np.abs(grad - recorded_grad).max() <= 1e-4 * np.abs(recorded_grad).max()


@slow_on_jax
@pytest.mark.parametrize("peer, index, case", covering([f"{k}_ref" for k in KINDS]))
def test_reproduces_pytorch_metric_learning_with_a_reference_set(peer, index, case):
    # PML's ref_emb, ref_labels: the mean of the per-query losses (no
    # query is its own pair: the reference is apart).
    x, labels, recorded_grad = recorded.arrays(peer, index)
    ref_x, ref_labels = recorded.extra(peer, index, "rx"), recorded.extra(peer, index, "ry")
    function = FUNCTIONS[case["kind"][: -len("_ref")]]
    n = len(x)

    def mean_loss(rows):
        return keras.ops.mean(function(labels, rows[:n], ref_labels, rows[n:], **case["cfg"]))

    value, grad = value_and_grad(mean_loss, np.concatenate([x, ref_x]).astype("float32"))
    want_grad = np.concatenate([recorded_grad, recorded.extra(peer, index, "rg")])
    assert float(value) == pytest.approx(case["loss"], rel=1e-5)
    assert np.abs(grad - want_grad).max() <= 1e-4 * np.abs(want_grad).max()


def test_the_recorded_cases_agree_with_the_references():
    # The NumPy references are PML's math too (float64, to round-off).
    for kind in KINDS:
        for _, index, case in (p.values for p in recorded.cases("pml_lifted_snr", [kind])):
            x, labels, grad = recorded.arrays("pml_lifted_snr", index)
            want = ref.REFERENCES[kind](x, labels, **case["cfg"])
            assert want.loss == pytest.approx(case["loss"], rel=1e-10)
            np.testing.assert_allclose(want.grad, grad, atol=1e-10 * np.abs(grad).max())


# ---------------------------------------------------------------- random cases


@settings(max_examples=EAGER_EXAMPLES, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    n=st.integers(1, 24),
    num_classes=st.integers(1, 6),
    dim=st.integers(2, 6),
    seed=st.integers(0, 2**31),
    weighted=st.booleans(),
    data=st.data(),
)
def test_matches_brute_force(kind, n, num_classes, dim, seed, weighted, data):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    labels = rng.integers(0, num_classes, size=n)
    weights = rng.uniform(0.2, 2.0, size=n) if weighted else None
    check(kind, x, labels, sample_weight=weights, **draw_options(kind, data))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("compiled", COMPILE_MODES[-1:])
def test_compiled_matches_brute_force(kind, compiled):
    # One compilation per loss: XLA under TensorFlow, jit under JAX.
    rng = np.random.default_rng(KINDS.index(kind))
    x = rng.normal(size=(16, 5)).astype("float32")
    labels = rng.integers(0, 4, size=16)
    options = {name: values[-1] for name, values in OPTIONS[kind].items() if name != "distance"}
    want = check(kind, x, labels, compiled=compiled, sample_weight=rng.uniform(0.5, 1.5, 16), **options)
    assert want.kink > 1e-3  # the comparison ran


@functools.lru_cache(maxsize=None)
def summed(kind, **options):
    """`(rows, labels, ref_labels) -> Σ per-query losses`, rows the queries then the reference."""

    def losses(rows, labels, ref_labels):
        n = labels.shape[0]
        return keras.ops.sum(FUNCTIONS[kind](labels, rows[:n], ref_labels, rows[n:], **options))

    return losses


@settings(max_examples=EAGER_EXAMPLES, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    n=st.integers(1, 6),
    r=st.integers(1, 8),
    seed=st.integers(0, 2**31),
    multi_label=st.booleans(),
    data=st.data(),
)
def test_reference_sets_match_brute_force(kind, n, r, seed, multi_label, data):
    options = draw_options(kind, data)
    rng = np.random.default_rng(seed)
    x, ref_x = rng.normal(size=(n, 4)).astype("float32"), rng.normal(size=(r, 4)).astype("float32")
    if multi_label:
        labels, ref_labels = (rng.random((n, 3)) < 0.4).astype("int32"), (rng.random((r, 3)) < 0.4).astype("int32")
    else:
        labels, ref_labels = rng.integers(0, 3, size=n), rng.integers(0, 3, size=r)
    want = ref.REFERENCES[kind](x.astype("float64"), labels, **options, ref_x=ref_x.astype("float64"),
                                ref_labels=ref_labels, multi_label=multi_label)
    got = keras.ops.convert_to_numpy(FUNCTIONS[kind](labels, x, ref_labels, ref_x, **options, multi_label=multi_label))
    value, grad = value_and_grad(summed(kind, multi_label=multi_label, **options), np.concatenate([x, ref_x]),
                                 labels, ref_labels)
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(grad))
    if want.kink > 1e-3:
        np.testing.assert_allclose(got, want.per_anchor, rtol=1e-4, atol=1e-5)
        want_grad = np.concatenate([want.per_query_grad, want.per_query_ref_grad])
        scale = max(np.abs(want_grad).max(), 1e-6)
        np.testing.assert_allclose(grad / scale, want_grad / scale, atol=1e-3)


# ---------------------------------------------------------------- degenerate batches


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "case",
    ["one example", "one class", "all distinct", "identical embeddings", "zero embeddings", "constant rows",
     "one feature", "huge", "tiny"],
)
def test_degenerate_batches_are_finite(kind, case):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 3)).astype("float32")
    labels = np.repeat([0, 1], 4)
    expected = None
    if case == "one example":
        x, labels, expected = x[:1], labels[:1], 0.0
    elif case == "one class":
        labels = np.zeros(8, int)
    elif case == "all distinct":
        labels = np.arange(8)
    elif case in ("identical embeddings", "zero embeddings"):
        x = np.zeros_like(x) + (0.5 if case == "identical embeddings" else 0.0)
    elif case == "constant rows":
        # No variance in any row (the SNR's signal): each row the same value throughout.
        x = np.repeat(rng.normal(size=(8, 1)), 3, axis=1).astype("float32")
    elif case == "one feature":
        x = x[:, :1]
    elif case == "huge":
        x = x * np.float32(1e15)
    elif case == "tiny":
        x = x * np.float32(1e-30)
    for normalize in (True, False):
        # Compiled once per loss (XLA under TensorFlow), where a NaN is likeliest;
        # labels as data: one compilation per loss and shape under JAX (which jits every call).
        for compiled in COMPILE_MODES if case == "zero embeddings" and normalize else (False,):
            value, grad = value_and_grad(objective(kind, normalize=normalize), x, labels, compiled=compiled)
            assert np.isfinite(value) and np.all(np.isfinite(grad)), (normalize, compiled, value)
            if expected is not None:
                assert float(value) == pytest.approx(expected, abs=1e-6)


def test_degenerate_values():
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    # Identical embeddings: SNR 0 everywhere, so every negative entry is 1 = m₋.
    same = np.ones((6, 4), "float32") + np.arange(4, dtype="float32")
    assert float(SignalToNoiseRatioContrastive()(np.repeat([0, 1], 3), same)) == pytest.approx(1.0)
    # All distinct labels: no positive entries; only the negatives' mean remains.
    labels = np.arange(6)
    assert float(SignalToNoiseRatioContrastive(neg_margin=5.0)(labels, x)) == pytest.approx(
        ref.signal_to_noise_ratio_contrastive(x, labels, neg_margin=5.0).loss, rel=1e-5
    )
    assert float(GeneralizedLiftedStructure()(labels, x)) == pytest.approx(
        ref.generalized_lifted_structure(x, labels).loss, rel=1e-5
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_precisions(kind, dtype):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 4))
    labels = np.repeat(np.arange(4), 4)
    typed = tensor(x, dtype)
    value = CLASSES[kind]()(labels, typed)
    # float64 stays float64 (JAX without x64 has none).
    allowed = ("float32", "float64") if dtype == "float64" else ("float32",)
    assert keras.backend.standardize_dtype(value.dtype) in allowed
    as_float = np.asarray(tensor(typed, "float32"), "float64")
    assert float(value) == pytest.approx(ref.REFERENCES[kind](as_float, labels).loss, rel=1e-5, abs=1e-6)


def test_large_int64_labels_stay_distinct():
    x = np.random.default_rng(7).normal(size=(4, 3)).astype("float32")
    big = 2**53
    labels = np.array([big, big, big + 1, big + 1])
    if BACKEND != "jax":  # JAX without x64 has no int64 tensor
        labels = tensor(labels, "int64")
    merged = np.zeros(4, int)
    for kind in KINDS:
        loss = CLASSES[kind]()
        assert float(loss(labels, x)) != pytest.approx(float(loss(merged, x))), kind


# ---------------------------------------------------------------- configuration and arguments


@slow_on_jax
@pytest.mark.parametrize(
    "loss",
    [
        GeneralizedLiftedStructure(neg_margin=0.7, pos_margin=0.1, distance="cosine", normalize=False,
                                   reduction="sum", name="mine", multi_label=True),
        SignalToNoiseRatioContrastive(pos_margin=0.2, neg_margin=2.0, normalize=False, zero_mean_weight=0.05,
                                      reduction=None, name="mine", cross_replica=True),
    ],
    ids=KINDS,
)
def test_config_round_trip(loss):
    config = loss.get_config()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert type(loss).from_config(config).get_config() == config
    for name in ("neg_margin", "pos_margin", "normalize", "multi_label", "cross_replica"):
        assert config[name] == getattr(loss, name)
    labels = np.eye(3, dtype="int32")[np.repeat(np.arange(3), 4)] if loss.multi_label else np.repeat(np.arange(3), 4)
    x = np.random.default_rng(8).normal(size=(12, 3)).astype("float32")
    np.testing.assert_allclose(restored(labels, x), loss(labels, x), rtol=1e-6)


def test_defaults_are_pml_defaults():
    lifted = GeneralizedLiftedStructure()
    assert (lifted.neg_margin, lifted.pos_margin, lifted.distance, lifted.normalize) == (1.0, 0.0, "euclidean", True)
    snr = SignalToNoiseRatioContrastive()
    assert (snr.pos_margin, snr.neg_margin, snr.normalize, snr.zero_mean_weight) == (0.0, 1.0, True, 0.0)
    assert lifted.miner is None and snr.miner is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="neg_margin"):
        GeneralizedLiftedStructure(neg_margin=float("nan"))
    with pytest.raises(ValueError, match="pos_margin"):
        GeneralizedLiftedStructure(pos_margin="wide")
    with pytest.raises(ValueError, match="distance"):
        GeneralizedLiftedStructure(distance="L2")
    with pytest.raises(ValueError, match="neg_margin"):
        generalized_lifted_structure([0, 1], np.ones((2, 2)), neg_margin=float("inf"))
    with pytest.raises(ValueError, match="pos_margin"):
        SignalToNoiseRatioContrastive(pos_margin=None)
    with pytest.raises(ValueError, match="zero_mean_weight"):
        SignalToNoiseRatioContrastive(zero_mean_weight=-0.1)
    with pytest.raises(ValueError, match="neg_margin"):
        signal_to_noise_ratio_contrastive([0, 1], np.ones((2, 2)), neg_margin=float("nan"))
    with pytest.raises(ValueError, match="one-hot"):
        SignalToNoiseRatioContrastive()(np.eye(3), np.ones((3, 4)))


# ---------------------------------------------------------------- inside Keras


@pytest.mark.parametrize("kind", KINDS)
def test_fit_lowers_the_loss(kind):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 12)
    x = (rng.normal(size=(4, 8))[labels] * 2 + rng.normal(size=(48, 8))).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])
    # Under TensorFlow one loss in a graph, the other with XLA (a compilation each).
    jit_compile = FIT_JIT_COMPILE[KINDS.index(kind) % len(FIT_JIT_COMPILE)]
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=CLASSES[kind](), jit_compile=jit_compile)
    with no_warnings():
        history = model.fit(x, labels, batch_size=16, epochs=6, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
