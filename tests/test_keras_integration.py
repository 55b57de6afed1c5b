"""The losses inside Keras: compile, fit, save/load, metrics, mixed precision."""

import keras
import numpy as np
import pytest

import tfmetric as tfm
from tfmetric.losses.registry import LOSSES as REGISTRY

from conftest import BACKEND, FIT_JIT_COMPILE, slow_on_jax

LOSSES = [
    tfm.BatchHardTriplet(margin=0.5),
    tfm.BatchHardTriplet(soft=True, distance="squared_euclidean"),
    tfm.BatchAllTriplet(margin=0.2, distance="cosine", average="all"),
    tfm.SemiHardTriplet(margin=0.3, normalize=True),
    tfm.Contrastive(margin=1.0, negatives="hard"),
    tfm.MarginLoss(seed=0),
]


def clustered_data(n=96, classes=6, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    centres = rng.normal(size=(classes, dim)) * 2
    x = (centres[labels] + rng.normal(size=(n, dim))).astype("float32")
    order = rng.permutation(n)
    return x[order], labels[order].astype("int64")


def embedding_model(dim=10):
    return keras.Sequential([keras.Input((dim,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])


def grouped(x, y, batch_size=24):
    """Batches of whole classes (4 classes x 6), as a P×K sampler gives."""
    order = np.argsort(y, kind="stable")
    return x[order], y[order]


# Every loss of the registry as each backend's users fit by default on a
# CPU: a TensorFlow graph without XLA (Keras' "auto" leaves XLA off on CPUs),
# JAX jitted, PyTorch eagerly. Under XLA too (the default on GPUs), the
# configurations above: the semi-hard loop, random sampling, the hard-negative
# mask. Every loss's value and gradient under XLA is checked in its own test
# file; an XLA fit per loss would add minutes of compilation to the suite.
FITS = [(entry.build(margin=0.5), FIT_JIT_COMPILE[0]) for entry in REGISTRY.values() if not entry.variant]
FITS += [(loss, FIT_JIT_COMPILE[-1]) for loss in LOSSES[1:] if BACKEND == "tensorflow"]


@pytest.mark.parametrize("loss, jit_compile", FITS, ids=[f"{loss.name}-jit={jit}" for loss, jit in FITS])
def test_fit_lowers_the_loss(loss, jit_compile):
    keras.utils.set_random_seed(0)
    x, y = grouped(*clustered_data())
    model = embedding_model()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=loss,
        metrics=[tfm.metrics.ActiveTripletFraction(margin=0.2)],
        jit_compile=jit_compile,
    )
    history = model.fit(x, y, batch_size=24, epochs=8, shuffle=False, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
    assert 0.0 <= history["active_triplet_fraction"][-1] <= 1.0


@slow_on_jax
def test_saved_model_keeps_the_loss_and_metric(tmp_path):
    x, y = grouped(*clustered_data())
    model = embedding_model()
    model.compile(
        optimizer="adam",
        loss=tfm.SemiHardTriplet(margin=0.3, distance="cosine"),
        metrics=[tfm.metrics.ActiveTripletFraction(margin=0.3, distance="cosine")],
    )
    model.fit(x, y, batch_size=24, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)  # no custom_objects
    assert isinstance(restored.loss, tfm.SemiHardTriplet)
    assert restored.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    before = model.evaluate(x, y, batch_size=24, verbose=0, return_dict=True)
    after = restored.evaluate(x, y, batch_size=24, verbose=0, return_dict=True)
    assert after == pytest.approx(before, rel=1e-5)
    restored.fit(x, y, batch_size=24, epochs=1, verbose=0)


def test_sample_weight_through_fit():
    x, y = grouped(*clustered_data())
    model = embedding_model()
    model.compile(optimizer="adam", loss=tfm.BatchHardTriplet())
    weights = np.ones(len(y), "float32")
    unweighted = model.evaluate(x, y, batch_size=96, verbose=0)
    weighted = model.evaluate(x, y, sample_weight=weights * 3, batch_size=96, verbose=0)
    assert weighted == pytest.approx(unweighted, rel=1e-5)
    weights[y == 0] = 0
    assert model.evaluate(x, y, sample_weight=weights, batch_size=96, verbose=0) != pytest.approx(unweighted)


@slow_on_jax
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize(
    "make_loss", [lambda: tfm.BatchAllTriplet(margin=0.2), lambda: tfm.MarginLoss(learn_beta=True)]
)
def test_mixed_precision(policy, make_loss):
    keras.mixed_precision.set_global_policy(policy)
    try:
        x, y = grouped(*clustered_data())
        model = embedding_model()
        model.compile(optimizer="adam", loss=make_loss())
        history = model.fit(x, y, batch_size=24, epochs=2, verbose=0).history
        assert all(np.isfinite(history["loss"]))
        out = model(x[:24])
        value = make_loss()(y[:24], out)
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert np.isfinite(float(value))
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute")
def test_mirrored_strategy_runs():
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    x, y = grouped(*clustered_data())
    for make_loss in (lambda: tfm.BatchHardTriplet(margin=0.5), lambda: tfm.MarginLoss(learn_beta=True, seed=0)):
        with strategy.scope():
            model = embedding_model()
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss=make_loss())
        history = model.fit(x, y, batch_size=24, epochs=2, verbose=0).history
        assert all(np.isfinite(history["loss"]))
    assert model.loss.beta_value() != pytest.approx(1.2)


# ---------------------------------------------------------------- a loss's own variables


def stateful_losses():
    return [
        tfm.CenterLoss(num_classes=6, embedding_dim=4),
        tfm.MarginLoss(learn_beta=True, seed=0),
        tfm.CrossBatchMemory(tfm.MarginLoss(learn_beta=True, seed=0), memory_size=48, embedding_dim=4),
    ]


@pytest.mark.parametrize("loss", stateful_losses(), ids=lambda loss: loss.name)
def test_attach_state_makes_the_loss_variables_the_models(loss):
    model = embedding_model()
    tfm.losses.attach_state(model, loss)
    tfm.losses.attach_state(model, loss)  # once is enough; again changes nothing
    trainable = [id(v) for v in model.trainable_variables]
    every = trainable + [id(v) for v in model.non_trainable_variables]
    states = [loss.state] + ([loss.loss.state] if isinstance(loss, tfm.CrossBatchMemory) else [])
    for state in states:
        assert all(trainable.count(id(v)) == 1 for v in state.trainable_variables)
        assert all(every.count(id(v)) == 1 for v in state.variables)
    # The model's own layers and config are unchanged.
    assert len(model.layers) == 2 and "state" not in str(model.get_config())
    tfm.losses.attach_state(model, tfm.BatchHardTriplet())  # no state: nothing to do


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a GradientTape training loop")
def test_custom_training_loop_trains_the_attached_state():
    import tensorflow as tf

    x, y = grouped(*clustered_data())
    model = embedding_model()
    loss = tfm.CenterLoss(num_classes=6, embedding_dim=4)
    tfm.losses.attach_state(model, loss)
    optimizer = keras.optimizers.SGD(0.1)
    for start in range(0, 96, 24):
        with tf.GradientTape() as tape:
            value = loss(y[start : start + 24], model(x[start : start + 24], training=True))
        optimizer.apply(tape.gradient(value, model.trainable_variables), model.trainable_variables)
    assert np.all(np.linalg.norm(loss.centers_value(), axis=1) > 1e-3)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a custom train_step of the TensorFlow trainer")
def test_a_custom_train_step_asks_for_attach_state():
    import tensorflow as tf

    loss = tfm.CenterLoss(num_classes=6, embedding_dim=4)

    class Custom(keras.Sequential):
        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                value = loss(y, self(x, training=True))
            self.optimizer.apply(tape.gradient(value, self.trainable_variables), self.trainable_variables)
            return {"loss": value}

    x, y = grouped(*clustered_data())
    model = Custom([keras.Input((10,)), keras.layers.Dense(4)])
    model.compile(optimizer="sgd")
    with pytest.warns(UserWarning, match="attach_state"):
        model.fit(x, y, batch_size=24, epochs=1, verbose=0)


def test_state_that_keras_does_not_track_is_an_error(monkeypatch):
    # As if a Keras release stopped tracking layers nested this way: the
    # variables would silently stop training and saving.
    import tfmetric.losses.state

    monkeypatch.setattr(tfmetric.losses.state, "_host_layer", lambda model: keras.layers.Dense(1))
    with pytest.raises(RuntimeError, match=f"Keras {keras.__version__}"):
        tfm.losses.attach_state(embedding_model(), tfm.CenterLoss(num_classes=6, embedding_dim=4))
    with pytest.raises(RuntimeError, match="would not train or save with the model"):
        embedding_model().compile(optimizer="sgd", loss=tfm.MarginLoss(learn_beta=True, seed=0))


# Keras 3 runs eagerly or in `tf.function`s, but a loss object can still be
# called in a TensorFlow 1-style graph (`tf.compat.v1.Session`), where a
# tensor's `==` and `!=` are Python's identity: a mask made with them kept
# the diagonal there (and the losses' values were silently others).
@pytest.mark.tensorflow_only
@pytest.mark.parametrize("key", sorted(key for key, entry in REGISTRY.items() if entry.deterministic))
def test_losses_in_a_tensorflow_1_style_graph(key):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype("float32")
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])
    graph = tf.Graph()
    with graph.as_default():
        value = REGISTRY[key].build()(tf.constant(labels), tf.constant(x))
        with tf.compat.v1.Session(graph=graph) as session:
            in_graph = session.run(value)
    assert in_graph == pytest.approx(float(REGISTRY[key].build()(labels, x)), rel=1e-5, abs=1e-7)


# ---------------------------------------------------------------- losses compiled by XLA in graphs without it


def compiled_calls(graph):
    """The calls of `graph` that XLA must compile (a loss that compiles itself is one)."""
    calls = []
    for op in graph.get_operations():
        if op.type in ("PartitionedCall", "StatefulPartitionedCall"):
            try:
                if op.get_attr("_XlaMustCompile"):
                    calls.append(op)
            except ValueError:  # no such attribute: an ordinary call
                pass
    return calls


def xla_calls(graph):
    """How many calls of `graph` XLA must compile."""
    return len(compiled_calls(graph))


FASTER_UNDER_XLA = sorted(key for key, entry in REGISTRY.items() if entry.loss_class.faster_under_xla)


def test_the_faster_losses_under_xla_are_those_of_the_benchmarks():
    # A loss joins the list when its time without XLA drops in a measured run (docs/benchmarks.md).
    assert FASTER_UNDER_XLA == [
        "batch_all_all", "batch_all_nonzero", "batch_hard", "batch_hard_soft", "circle", "contrastive_all",
        "contrastive_hard", "fast_ap", "generalized_lifted_structure", "histogram", "instance", "margin_all",
        "margin_dw", "multi_similarity", "multi_similarity_mined", "nca", "npairs", "ntxent", "pnp", "pnp_dq",
        "ranked_list", "smooth_ap", "snr_contrastive", "soft_nearest_neighbor", "supcon",
    ]


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("key", FASTER_UNDER_XLA)
def test_losses_faster_under_xla_compile_themselves_in_graphs_without_it(key):
    import tensorflow as tf

    x, labels = clustered_data(n=24, classes=4, dim=5, seed=1)
    weights = np.random.default_rng(2).uniform(0.5, 2.0, size=24).astype("float32")
    loss = REGISTRY[key].build()

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            # A factor on the value: the gradient attached outside XLA must take the upstream.
            value = 3.0 * loss(labels, x, sample_weight=weights)
        return value, tape.gradient(value, x)

    x = tf.constant(x)
    compiled = tf.function(step, autograph=False).get_concrete_function(x)
    # Traced without a tape (Keras' evaluation step): the value alone, which autodiff can still differentiate.
    value_only = tf.function(lambda x: 3.0 * loss(labels, x, sample_weight=weights), autograph=False)
    value_only = value_only.get_concrete_function(x)

    def differentiated(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = value_only(x)
        return value, tape.gradient(value, x)

    previous = tfm.losses.compile_losses_with_xla(False)
    try:
        assert previous is True
        as_kernels = tf.function(step, autograph=False).get_concrete_function(x)
    finally:
        tfm.losses.compile_losses_with_xla(previous)
    # A loss whose state a compiled call cannot take (a random miner's generator) keeps TensorFlow's kernels.
    assert xla_calls(compiled.graph) == xla_calls(value_only.graph) == loss.may_compile()
    assert xla_calls(as_kernels.graph) == 0
    if REGISTRY[key].deterministic:
        eager_value, eager_gradient = step(x)
        for value, gradient in (compiled(x), differentiated(x), as_kernels(x)):
            np.testing.assert_allclose(value, eager_value, rtol=1e-5)
            np.testing.assert_allclose(gradient, eager_gradient, rtol=1e-4, atol=1e-6)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("alone", [False, True])
@pytest.mark.parametrize("learn_beta", [False, True])
def test_the_margin_loss_compiles_itself_with_its_draws_and_its_learned_beta(learn_beta, alone, monkeypatch):
    # Its sampling's numbers are drawn, and β read, before the compiled call: step after step (the
    # generator advancing) the same values and gradients, β's included, as TensorFlow's kernels;
    # the whole loss compiled, or its terms alone (a batch size among `_TERMS_ALONE_SIZES`).
    import tensorflow as tf

    from tfmetric.losses import base

    monkeypatch.setattr(base, "_TERMS_ALONE_SIZES", (20, 30) if alone else (30, 40))
    x, labels = clustered_data(n=24, classes=4, dim=5, seed=4)
    weights = np.random.default_rng(5).uniform(0.5, 2.0, size=24).astype("float32")
    x = tf.constant(x)

    def steps(compiled):
        previous = tfm.losses.compile_losses_with_xla(compiled)
        try:
            loss = tfm.losses.MarginLoss(learn_beta=learn_beta, nu=0.1, seed=11)
            variables = [loss.state.beta] if learn_beta else []

            def step(x):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    value = 3.0 * loss(labels, x, sample_weight=weights)
                return value, tape.gradient(value, [x, *variables])

            step = tf.function(step, autograph=False)
            graph = step.get_concrete_function(x).graph
            assert compiled_input_shapes(graph) == ([((24, 24) if alone else (24, 5))] if compiled else [])
            return [step(x) for _ in range(3)]
        finally:
            tfm.losses.compile_losses_with_xla(previous)

    compiled, as_kernels = steps(True), steps(False)
    assert len({float(value) for value, _ in compiled}) == 3  # every step draws anew
    for (value, gradients), (want, want_gradients) in zip(compiled, as_kernels):
        np.testing.assert_allclose(value, want, rtol=1e-6)
        for gradient, want_gradient in zip(gradients, want_gradients):
            np.testing.assert_allclose(gradient, want_gradient, rtol=1e-5, atol=1e-7)


def compiled_input_shapes(graph):
    """The static shape of the first input of each call in `graph` that XLA must compile."""
    return [tuple(op.inputs[0].shape) for op in compiled_calls(graph)]


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_a_loss_split_into_matrix_and_terms_is_its_pair_terms(key):
    loss = REGISTRY[key].build()
    split = loss.compiled_matrix_terms(5)
    if split is None:
        assert loss.matrix_terms() is None
        return
    x, labels = clustered_data(n=24, classes=4, dim=5, seed=3)
    pairs = loss.mine(labels, x)
    matrix, terms = split
    # The same draws (the margin loss's sampling) and variables' values on both sides.
    trained, drawn = loss.compiled_inputs(24)
    wants = [loss.compiled_pair_terms(pairs.embeddings, pairs.embeddings, pairs.positive, pairs.negative, trained,
                                      drawn)]
    got = terms(matrix(pairs.embeddings, pairs.embeddings), pairs.positive, pairs.negative, trained, drawn)
    if not (trained or drawn):
        wants.append(loss.pair_terms(pairs.embeddings, pairs.embeddings, pairs.positive, pairs.negative))
    if loss.matrix_terms() is not None:
        matrix, plain_terms = loss.matrix_terms()
        wants.append(plain_terms(matrix(pairs.embeddings, pairs.embeddings), pairs.positive, pairs.negative))
    for want in wants:
        for have, expected in zip(got, want):
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(have), keras.ops.convert_to_numpy(expected), rtol=1e-6
            )


def test_which_losses_split_into_matrix_and_terms():
    # The others compute more than a matrix and its terms (batch-hard differentiates only the chosen pairs).
    split = sorted(key for key in FASTER_UNDER_XLA if REGISTRY[key].build().compiled_matrix_terms(5) is not None)
    assert split == [
        "batch_all_all", "batch_all_nonzero", "circle", "contrastive_all", "contrastive_hard", "fast_ap",
        "generalized_lifted_structure", "histogram", "instance", "margin_all", "margin_dw", "multi_similarity",
        "multi_similarity_mined", "nca", "npairs", "ntxent", "pnp", "pnp_dq", "ranked_list", "smooth_ap",
        "soft_nearest_neighbor", "supcon",
    ]
    # Those measured faster so (docs/benchmarks.md); each of them splits.
    alone = sorted(key for key in FASTER_UNDER_XLA if REGISTRY[key].loss_class.compiles_terms_alone)
    assert alone == [
        "batch_all_all", "batch_all_nonzero", "circle", "contrastive_all", "contrastive_hard", "fast_ap",
        "histogram", "instance", "margin_all", "margin_dw", "multi_similarity", "multi_similarity_mined", "npairs",
        "ntxent", "pnp", "pnp_dq", "ranked_list", "soft_nearest_neighbor", "supcon",
    ]
    # And those whose kernels measured faster at large batches; without state, which would draw twice.
    below = sorted(key for key in FASTER_UNDER_XLA if REGISTRY[key].loss_class.compiles_below)
    assert below == ["fast_ap", "histogram", "ranked_list"]
    assert all(REGISTRY[key].build().state is None for key in below)
    assert set(alone) <= set(split)
    assert tfm.BatchAllTriplet(miner=tfm.miners.BatchHardMiner()).matrix_terms() is None


def _scaled_loss_step(loss):
    """Three times `loss` and its gradient w.r.t. the embeddings, for tracing at several batch sizes."""
    import tensorflow as tf

    def step(x, labels):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = 3.0 * loss(labels, x)
        return value, tape.gradient(value, x)

    return step


def _ops_of_a_step_of_unknown_size(step, x, labels):
    """The op types of `step` traced for batches of any size, which gives the eager values at 16, 24 and 32."""
    import tensorflow as tf

    unknown = tf.function(
        step, autograph=False, input_signature=[tf.TensorSpec([None, 5]), tf.TensorSpec([None], tf.int64)]
    )
    for size in (16, 24, 32):
        eager_value, eager_gradient = step(tf.constant(x[:size]), tf.constant(labels[:size]))
        value, gradient = unknown(x[:size], labels[:size])
        np.testing.assert_allclose(value, eager_value, rtol=1e-5)
        np.testing.assert_allclose(gradient, eager_gradient, rtol=1e-4, atol=1e-6)
    return {op.type for op in unknown.get_concrete_function().graph.get_operations()}


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("key", ["contrastive_all", "supcon", "nca", "batch_hard"])
def test_batches_of_some_sizes_compile_the_terms_alone_and_one_of_unknown_size_chooses_when_it_runs(
    key, monkeypatch
):
    import tensorflow as tf

    from tfmetric.losses import base

    loss = REGISTRY[key].build()
    # Sizes that fit the test: 24 queries compile the terms alone, 16 and 32 the whole loss (and every
    # size, for a loss that splits only from a larger batch: SupCon, from 1024).
    monkeypatch.setattr(base, "_TERMS_ALONE_SIZES", (20, 30))
    alone = loss.compiles_terms_alone and (loss.terms_alone_from or 0) <= 20

    step = _scaled_loss_step(loss)

    x, labels = clustered_data(n=32, classes=4, dim=5, seed=4)
    for size, splits in ((24, alone), (16, False), (32, False)):
        traced = tf.function(step, autograph=False).get_concrete_function(
            tf.constant(x[:size]), tf.constant(labels[:size])
        )
        # The (N, N) matrix goes in, or the (N, 5) embeddings.
        assert compiled_input_shapes(traced.graph) == [(size, size) if splits else (size, 5)]
    graph_ops = _ops_of_a_step_of_unknown_size(step, x, labels)
    assert bool(graph_ops & {"If", "StatelessIf"}) == alone


@pytest.mark.tensorflow_only
def test_a_loss_compiled_below_a_batch_size_is_its_kernels_from_there(monkeypatch):
    import tensorflow as tf

    from tfmetric.losses import base

    loss = REGISTRY["fast_ap"].build()
    # 16 queries compile the whole loss, 24 its terms alone, 32 none of it.
    monkeypatch.setattr(base, "_TERMS_ALONE_SIZES", (20, 30))
    monkeypatch.setattr(type(loss), "compiles_below", 30)

    step = _scaled_loss_step(loss)

    x, labels = clustered_data(n=32, classes=4, dim=5, seed=4)
    for size, shapes in ((16, [(16, 5)]), (24, [(24, 24)]), (32, [])):
        traced = tf.function(step, autograph=False).get_concrete_function(
            tf.constant(x[:size]), tf.constant(labels[:size])
        )
        assert compiled_input_shapes(traced.graph) == shapes
    graph_ops = _ops_of_a_step_of_unknown_size(step, x, labels)
    assert graph_ops & {"If", "StatelessIf"}
