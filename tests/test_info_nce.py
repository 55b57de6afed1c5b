"""The softmax family (`tfm.losses.info_nce`): SupCon, NT-Xent, instance loss.

Hand-made values, hypothesis against the NumPy references of
`reference_info_nce.py` (values and gradients, reference sets, multi-hot
labels, sample weights), PyTorch Metric Learning's recorded values and
gradients (`fixtures/peers_pml_info_nce.npz`), degenerate batches,
precisions, configuration, compiled runs and `model.fit`.
"""

import doctest
import functools

import keras
import numpy as np
import pytest
import reference_info_nce as ref
from hypothesis import given, settings, strategies as st

import tfmetric as tfm
from tfmetric.losses import info_nce
from tfmetric.losses.base import reduce_anchor_terms
from tfmetric.losses.info_nce import Instance, NTXent, SupCon, instance, ntxent, supcon

import recorded
from conftest import BACKEND, COMPILE_MODES, FIT_JIT_COMPILE, check_against, slow_on_jax, tensor, value_and_grad

CLASSES = {"supcon": SupCon, "ntxent": NTXent, "instance": Instance}
FUNCTIONS = {"supcon": supcon, "ntxent": ntxent, "instance": instance}
# The scale argument of each loss and values the random tests draw.
SCALES = {"supcon": ("temperature", [0.1, 0.5, 1.0]), "ntxent": ("temperature", [0.07, 0.5, 1.0]),
          "instance": ("gamma", [1.0, 4.0, 16.0])}


def covering(kinds):
    """The recorded cases of `kinds`: all under TensorFlow; elsewhere (every
    case a compilation under JAX) the first of each loss and configuration."""
    params = recorded.cases("pml_info_nce", kinds)
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


def reference_of(kind, **options):
    return lambda x, y, **kw: ref.REFERENCES[kind](x, y, **options, **kw)


def check(kind, x, labels, compiled=False, sample_weight=None, **options):
    return check_against(CLASSES[kind](**options), reference_of(kind, **options), x, labels, compiled, sample_weight)


# ---------------------------------------------------------------- hand-made cases

# Anchors 0, 1 at (1, 0), anchor 2 at (0, 1), all class 0; anchor 3 at (0, 1), class 1.
HAND_X = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], "float32")
HAND_LABELS = np.array([0, 0, 0, 1])
E = np.e


def test_hand_made_supcon():
    # Anchor 0: positives at s = 1 (row 1) and 0 (row 2), negative at 0; τ = 1:
    # log(e + 1 + 1) − (1 + 0)/2. Anchor 1 alike. Anchor 2: positives at 0, 0,
    # negative at 1: log(1 + 1 + e) − 0. Anchor 3: no positive, no term.
    want = (2 * (np.log(E + 2) - 0.5) + np.log(E + 2)) / 3
    assert float(SupCon(temperature=1.0)(HAND_LABELS, HAND_X)) == pytest.approx(want, rel=1e-6)
    # τ = 0.5 doubles every logit.
    want = (2 * (np.log(np.exp(2) + 2) - 1) + np.log(2 + np.exp(2))) / 3
    assert float(SupCon(temperature=0.5)(HAND_LABELS, HAND_X)) == pytest.approx(want, rel=1e-6)
    per_query = supcon(HAND_LABELS, HAND_X, temperature=0.5)
    np.testing.assert_allclose(np.asarray(per_query)[3], 0.0)


def test_hand_made_ntxent():
    # Pair (0, 1): log(1 + e^(0 − 1)); pair (0, 2): log(1 + e^(0 − 0)); anchor 1
    # alike; pairs (2, 0), (2, 1): log(1 + e^(1 − 0)). The mean over 6 pairs.
    want = (2 * (np.log1p(1 / E) + np.log(2)) + 2 * np.log1p(E)) / 6
    assert float(NTXent(temperature=1.0)(HAND_LABELS, HAND_X)) == pytest.approx(want, rel=1e-6)
    # Each query's own mean (reduction=None) and the sum over pairs.
    per_query = np.asarray(NTXent(temperature=1.0, reduction=None)(HAND_LABELS, HAND_X))
    np.testing.assert_allclose(per_query, [(np.log1p(1 / E) + np.log(2)) / 2] * 2 + [np.log1p(E), 0.0], rtol=1e-6)
    assert float(NTXent(temperature=1.0, reduction="sum")(HAND_LABELS, HAND_X)) == pytest.approx(6 * want, rel=1e-6)


def test_hand_made_instance():
    # Anchor 0: −log((e + 1)/(e + 1 + 1)); anchor 2: −log((1 + 1)/(1 + 1 + e)).
    want = (2 * np.log((E + 2) / (E + 1)) + np.log((E + 2) / 2)) / 3
    assert float(Instance(gamma=1.0)(HAND_LABELS, HAND_X)) == pytest.approx(want, rel=1e-6)


def test_one_positive_per_anchor_makes_the_three_agree():
    # With one positive per anchor, SupCon, NT-Xent (τ) and the instance loss
    # (γ = 1/τ) are the same softmax; with several they differ.
    x = np.random.default_rng(0).normal(size=(10, 3)).astype("float32")
    pairs = np.repeat(np.arange(5), 2)
    values = [float(SupCon(0.5)(pairs, x)), float(NTXent(0.5)(pairs, x)), float(Instance(2.0)(pairs, x))]
    assert values == pytest.approx([values[0]] * 3, rel=1e-5)
    triples = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    values = [float(SupCon(0.5)(triples, x)), float(NTXent(0.5)(triples, x)), float(Instance(2.0)(triples, x))]
    assert len({round(v, 4) for v in values}) == 3


def test_one_class_batches():
    # Three identical rows of one class: each anchor's softmax is uniform over
    # its two positives, SupCon's log 2 (PML returns 0 without negatives);
    # NT-Xent's pairs have no negative: 0; the instance loss: −log 1 = 0.
    x = np.ones((3, 2), "float32")
    labels = np.zeros(3, int)
    assert float(SupCon()(labels, x)) == pytest.approx(np.log(2), rel=1e-6)
    assert float(NTXent()(labels, x)) == 0.0
    assert float(Instance()(labels, x)) == 0.0


def test_instance_is_nca_on_cosine_similarities():
    rng = np.random.default_rng(1)
    x, labels = rng.normal(size=(12, 4)).astype("float32"), rng.integers(0, 3, 12)
    assert float(Instance(gamma=8.0)(labels, x)) == pytest.approx(float(tfm.NCA(softmax_scale=4.0)(labels, x)),
                                                                    rel=1e-5)


# ---------------------------------------------------------------- PyTorch Metric Learning


def _pml_loss(loss, y, x, ref_y=None, ref_x=None):
    """The class's loss (its reduction) of the queries against an optional reference."""
    if ref_x is None:
        return loss(y, x)
    return reduce_anchor_terms(*loss.query_terms(y, x, ref_y, ref_x))


@pytest.mark.parametrize("peer, index, case", covering(["supcon", "ntxent"]))
def test_reproduces_pytorch_metric_learning(peer, index, case):
    x, labels, recorded_grad = recorded.arrays(peer, index)
    loss = CLASSES[case["kind"]](**case["cfg"])
    value, grad = value_and_grad(lambda e: loss(labels, e), x.astype("float32"))
    if case["kind"] == "supcon" and len(set(labels.tolist())) == 1:
        # Documented: without any negative pair PML returns 0, tfmetric the formula's value.
        assert case["loss"] == 0.0
        assert float(value) == pytest.approx(ref.supcon(x, labels, **case["cfg"]).loss, rel=1e-5)
        return
    assert float(value) == pytest.approx(case["loss"], rel=1e-5, abs=1e-7)
    assert np.abs(grad - recorded_grad).max() <= 1e-4 * max(np.abs(recorded_grad).max(), 1e-6)


@pytest.mark.parametrize("peer, index, case", covering(["supcon_ref", "ntxent_ref"]))
def test_reproduces_pytorch_metric_learning_with_a_reference_set(peer, index, case):
    x, labels, recorded_grad = recorded.arrays(peer, index)
    ref_x, ref_labels = recorded.extra(peer, index, "rx"), recorded.extra(peer, index, "ry")
    recorded_ref_grad = recorded.extra(peer, index, "rg")
    loss = CLASSES[case["kind"][: -len("_ref")]](**case["cfg"])
    n = len(x)
    value, grad = value_and_grad(
        lambda rows: _pml_loss(loss, labels, rows[:n], ref_labels, rows[n:]),
        np.concatenate([x, ref_x]).astype("float32"),
    )
    assert float(value) == pytest.approx(case["loss"], rel=1e-5)
    want = np.concatenate([recorded_grad, recorded_ref_grad])
    assert np.abs(grad - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("peer, index, case", covering(["instance"]))
def test_reproduces_pml_instance_loss_with_each_example_its_own_instance(peer, index, case):
    # PML's configuration where its target column is the query's own: the
    # batch as its own reference, the diagonal kept.
    x, labels, recorded_grad = recorded.arrays(peer, index)
    value, grad = value_and_grad(
        lambda e: keras.ops.mean(instance(labels, e, labels, e, **case["cfg"])), x.astype("float32")
    )
    assert float(value) == pytest.approx(case["loss"], rel=1e-5, abs=1e-12)
    assert np.abs(grad - recorded_grad).max() <= 1e-4 * max(np.abs(recorded_grad).max(), 1e-12)
    # In batch (no query its own positive), all-distinct ids have no term.
    assert float(Instance(**case["cfg"])(labels, x)) == 0.0


@pytest.mark.parametrize("peer, index, case", covering(["instance_ranks"]))
def test_pml_instance_loss_with_repeated_labels_targets_the_labels_rank(peer, index, case):
    # The documented difference: PML's target column is the rank of the label.
    x, labels, _ = recorded.arrays(peer, index)
    assert ref.pml_instance(x, labels, **case["cfg"]) == pytest.approx(case["loss"], rel=1e-10)
    ours = float(Instance(**case["cfg"])(labels, x.astype("float32")))
    assert ours == pytest.approx(ref.instance(x, labels, **case["cfg"]).loss, rel=1e-5)
    assert ours != pytest.approx(case["loss"], rel=1e-2)


# ---------------------------------------------------------------- random cases


# Every example compiles anew under JAX: a few there, more under TensorFlow (eager).
@settings(max_examples=25 if BACKEND == "tensorflow" else 3, deadline=None)
@given(
    kind=st.sampled_from(sorted(CLASSES)),
    n=st.integers(1, 24),
    num_classes=st.integers(1, 8),
    dim=st.integers(1, 6),
    scale=st.integers(0, 2),
    normalize=st.booleans(),
    weighted=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_matches_brute_force(kind, n, num_classes, dim, scale, normalize, weighted, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    labels = rng.integers(0, num_classes, size=n)
    weights = rng.uniform(0.1, 2.0, size=n).astype("float32") if weighted else None
    name, values = SCALES[kind]
    check(kind, x, labels, sample_weight=weights, normalize=normalize, **{name: values[scale]})


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_compiled_matches_brute_force(kind):
    rng = np.random.default_rng(sorted(CLASSES).index(kind))
    x = rng.normal(size=(16, 5)).astype("float32")
    labels = rng.integers(0, 4, size=16)
    for compiled in COMPILE_MODES:
        check(kind, x, labels, compiled=compiled, sample_weight=rng.uniform(0.5, 1.5, size=16).astype("float32"))


@settings(max_examples=15 if BACKEND == "tensorflow" else 2, deadline=None)
@given(
    kind=st.sampled_from(sorted(CLASSES)),
    n=st.integers(1, 6),
    r=st.integers(1, 9),
    multi_label=st.booleans(),
    remove_diagonal=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_reference_sets_match_brute_force(kind, n, r, multi_label, remove_diagonal, seed):
    rng = np.random.default_rng(seed)
    x, ref_x = rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(r, 3)).astype("float32")
    if remove_diagonal:
        # reference = [queries; more rows]
        ref_x = np.concatenate([x, ref_x])
    if multi_label:
        labels = (rng.random((n, 3)) < 0.4).astype("int32")
        ref_labels = (rng.random((r, 3)) < 0.4).astype("int32")
    else:
        labels, ref_labels = rng.integers(0, 3, size=n), rng.integers(0, 3, size=r)
    if remove_diagonal:
        ref_labels = np.concatenate([labels, ref_labels])
    name, values = SCALES[kind]
    options = {name: values[1]}
    want = ref.REFERENCES[kind](
        x.astype("float64"), labels, **options, ref_x=ref_x.astype("float64"), ref_labels=ref_labels,
        remove_diagonal=remove_diagonal, multi_label=multi_label,
    )
    function = FUNCTIONS[kind]

    def total(rows):
        return keras.ops.sum(function(labels, rows[:n], ref_labels, rows[n:], **options, multi_label=multi_label,
                                      remove_diagonal=remove_diagonal))

    got = np.asarray(function(labels, x, ref_labels, ref_x, **options, multi_label=multi_label,
                              remove_diagonal=remove_diagonal))
    np.testing.assert_allclose(got, want.per_anchor, rtol=1e-4, atol=1e-5)
    value, grad = value_and_grad(total, np.concatenate([x, ref_x]), compiled=False)
    want_grad = np.concatenate([want.per_query_grad, want.per_query_ref_grad])
    assert float(value) == pytest.approx(want.per_anchor.sum(), rel=1e-4, abs=1e-5)
    scale = max(np.abs(want_grad).max(), 1e-6)
    np.testing.assert_allclose(grad / scale, want_grad / scale, atol=1e-3)


# ---------------------------------------------------------------- degenerate batches


@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize(
    "case",
    ["one example", "one class", "all distinct", "identical embeddings", "zero embeddings", "huge", "tiny",
     "huge raw"],
)
def test_degenerate_batches_are_finite(kind, case):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 3)).astype("float32")
    labels = np.repeat([0, 1], 4)
    expected, options = None, {}
    if case == "one example":
        x, labels, expected = x[:1], labels[:1], 0.0
    elif case == "one class":
        labels = np.zeros(8, int)
        expected = None if kind == "supcon" else 0.0
    elif case == "all distinct":
        labels, expected = np.arange(8), 0.0
    elif case in ("identical embeddings", "zero embeddings"):
        x = np.zeros_like(x) + (1.0 if case == "identical embeddings" else 0.0)
        # Every softmax uniform over 7 rows: SupCon log 7, the instance loss log(7 / |P|),
        # NT-Xent log(1 + |Q|) per pair.
        expected = {"supcon": np.log(7), "ntxent": np.log(5), "instance": np.log(7 / 3)}[kind]
    elif case == "huge":
        x = x * np.float32(1e15)
    elif case == "tiny":
        x = x * np.float32(1e-30)
    elif case == "huge raw":
        # Raw dot products of 1e15: logits of 1e31 / τ.
        x, options = x * np.float32(1e15), {"normalize": False}
    # Labels as data: one compiled function per loss and shape (JAX jits every call).
    for compiled in COMPILE_MODES if case in ("one example", "identical embeddings", "huge raw") else (False,):
        value, grad = value_and_grad(objective(kind, **options), x, labels, compiled=compiled)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), (compiled, value)
        if expected is not None:
            assert float(value) == pytest.approx(expected, abs=1e-6), compiled


@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_precisions(kind, dtype):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 4))
    labels = np.repeat(np.arange(4), 4)
    typed = tensor(x, dtype)
    value = CLASSES[kind]()(labels, typed)
    assert keras.backend.standardize_dtype(value.dtype) in ("float32", "float64")
    as_float = np.asarray(tensor(typed, "float32"), "float64")
    assert float(value) == pytest.approx(ref.REFERENCES[kind](as_float, labels).loss, rel=1e-5, abs=1e-6)


def test_large_int64_labels_stay_distinct():
    x = np.random.default_rng(7).normal(size=(4, 3)).astype("float32")
    big = 2**53
    labels = np.array([big, big, big + 1, big + 1])
    if BACKEND != "jax":  # JAX without x64 has no int64 tensor
        labels = tensor(labels, "int64")
    merged = np.zeros(4, int)
    for cls in CLASSES.values():
        assert float(cls()(labels, x)) != pytest.approx(float(cls()(merged, x))), cls


# ---------------------------------------------------------------- configuration and arguments


@slow_on_jax
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_config_round_trip(kind):
    name, values = SCALES[kind]
    loss = CLASSES[kind](**{name: values[1]}, normalize=False, reduction="sum", name="mine", multi_label=True)
    config = loss.get_config()
    assert config[name] == values[1] and config["normalize"] is False and config["multi_label"] is True
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert type(loss).from_config(config).get_config() == config
    labels = (np.random.default_rng(9).random((12, 3)) < 0.5).astype("int32")
    x = np.random.default_rng(8).normal(size=(12, 3)).astype("float32")
    assert float(restored(labels, x)) == pytest.approx(float(loss(labels, x)))


def test_defaults_are_pmls():
    assert SupCon().temperature == 0.1 and NTXent().temperature == 0.07 and Instance().gamma == 64.0
    for cls in CLASSES.values():
        loss = cls()
        assert loss.normalize is True and loss.miner is None


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_arguments(bad):
    with pytest.raises(ValueError, match="temperature"):
        SupCon(temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
        NTXent(temperature=bad)
    with pytest.raises(ValueError, match="gamma"):
        Instance(gamma=bad)
    x = np.ones((4, 2), "float32")
    with pytest.raises(ValueError, match="temperature"):
        supcon([0, 0, 1, 1], x, temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
        ntxent([0, 0, 1, 1], x, temperature=bad)
    with pytest.raises(ValueError, match="gamma"):
        instance([0, 0, 1, 1], x, gamma=bad)


def test_bad_labels():
    with pytest.raises(ValueError, match="one-hot"):
        SupCon()(np.eye(3), np.ones((3, 4)))
    with pytest.raises(ValueError, match="both"):
        ntxent([0, 1], np.ones((2, 3)), ref_labels=[0, 1])


def test_docstring_examples(monkeypatch):
    # The examples use the package's exports (tfm.SupCon, tfm.losses.supcon).
    for name in ("SupCon", "NTXent", "Instance"):
        monkeypatch.setattr(tfm, name, getattr(info_nce, name), raising=False)
    for name in ("supcon", "ntxent", "instance"):
        monkeypatch.setattr(tfm.losses, name, getattr(info_nce, name), raising=False)
    result = doctest.testmod(info_nce, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- model.fit


def _clustered(n=96, classes=6, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    x = (rng.normal(size=(classes, dim))[labels] * 2 + rng.normal(size=(n, dim))).astype("float32")
    return x, labels


def _model(dim=10):
    return keras.Sequential([keras.Input((dim,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_fit_lowers_the_loss(kind):
    keras.utils.set_random_seed(0)
    x, y = _clustered()
    model = _model()
    name, values = SCALES[kind]
    # Under TensorFlow, NT-Xent with XLA and the others in a graph (an XLA compilation is seconds).
    jit_compile = FIT_JIT_COMPILE[sorted(CLASSES).index(kind) % len(FIT_JIT_COMPILE)]
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=CLASSES[kind](**{name: values[1]}),
                  jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=24, epochs=6, shuffle=False, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]


def test_ntxent_fits_two_views_of_each_image():
    # SimCLR's feed: each batch holds two noisy views of its images, stacked
    # along the batch axis, the image's position as its id in both halves.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 10)).astype("float32")

    def two_views(batch_size=16):
        while True:
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                views = [batch + 0.3 * rng.normal(size=batch.shape) for _ in range(2)]
                ids = np.arange(len(batch))
                yield np.concatenate(views).astype("float32"), np.concatenate([ids, ids])

    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=NTXent(temperature=0.5),
                  jit_compile=FIT_JIT_COMPILE[0])
    history = model.fit(two_views(), steps_per_epoch=4, epochs=6, shuffle=False, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
    # An image's other view is usually its nearest (chance: 1 in 64).
    view_1, view_2 = (model.predict(images + 0.3 * rng.normal(size=images.shape).astype("float32"), verbose=0)
                      for _ in range(2))
    s = np.asarray(tfm.distances.pairwise_similarity(view_1, ref_embeddings=view_2))
    assert np.mean(np.argmax(s, axis=1) == np.arange(len(images))) > 0.25
