import keras
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import tfmetric as tfm
from tfmetric.distances import pairwise_distance

import reference
from conftest import BACKEND, only_tensorflow, tensor, value_and_grad

DISTANCES = tfm.distances.DISTANCES


# Under JAX every new shape compiles anew: fewer shapes there.
@settings(max_examples=25 if BACKEND != "jax" else 8, deadline=None)
@given(
    n=st.integers(1, 24),
    dim=st.integers(1, 16),
    seed=st.integers(0, 2**31),
    distance=st.sampled_from(DISTANCES),
    normalize=st.booleans(),
)
@example(n=6, dim=1, seed=526123, distance="euclidean", normalize=False)  # near-coincident points
def test_matches_brute_force(n, dim, seed, distance, normalize):
    x = (np.random.default_rng(seed).normal(size=(n, dim)) * 3).astype("float32")
    got = np.asarray(pairwise_distance(x, distance, normalize)).astype("float64")
    want = reference.distance_matrix(x, distance, normalize)
    # The |a|² + |b|² − 2a·b expansion (here as everywhere) errs on squared
    # distances by a few float32 ulps of |a|² + |b|², taken after the batch is
    # translated to its first row; unit rows for cosine/normalize.
    rows = reference._normalized(x) if (normalize or distance == "cosine") else x - x[:1]
    square_norms = np.sum(rows.astype("float64") ** 2, axis=1)
    squared_error = 8 * np.finfo("float32").eps * (square_norms[:, None] + square_norms[None, :]) * dim
    if distance == "euclidean":
        tolerance = np.sqrt(squared_error) + 1e-4 * want
    else:
        tolerance = squared_error + 1e-4 * want + 2e-5
    assert np.all(np.abs(got - want) <= tolerance)


@pytest.mark.parametrize("distance", DISTANCES)
def test_exact_zero_diagonal_and_symmetry(distance):
    x = np.random.default_rng(0).normal(size=(50, 8)).astype("float32") + 100
    d = np.asarray(pairwise_distance(x, distance))
    assert np.all(np.diag(d) == 0)
    np.testing.assert_allclose(d, d.T, rtol=1e-5, atol=1e-6)
    assert np.all(d >= 0)


def test_known_values():
    d = np.asarray(pairwise_distance([[0.0, 0.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(d, [[0.0, 5.0], [5.0, 0.0]])
    d = np.asarray(pairwise_distance([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]], "cosine"))
    np.testing.assert_allclose(d, [[0, 1, 2], [1, 0, 1], [2, 1, 0]], atol=1e-7)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("normalize", [False, True])
def test_finite_gradient_where_embeddings_coincide(distance, normalize):
    x = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [3.0, -1.0]], "float32")
    value, grad = value_and_grad(lambda e: keras.ops.sum(pairwise_distance(e, distance, normalize)), x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_huge_and_tiny_values_keep_their_distances(scale):
    x = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], "float32") * np.float32(scale)
    d = np.asarray(pairwise_distance(x))
    np.testing.assert_allclose(d[0, 1:], np.array([5.0, 10.0]) * scale, rtol=1e-5)
    # Squares beyond float32's range are inf; a zero distance stays 0 (not 0 · inf).
    squared = np.asarray(pairwise_distance(x, "squared_euclidean"))
    rectangle = np.asarray(pairwise_distance(x[:2], "squared_euclidean", ref_embeddings=x))
    for matrix in (squared, rectangle):
        np.testing.assert_array_equal(np.diag(matrix), 0.0)
        assert not np.any(np.isnan(matrix))
    d = np.asarray(pairwise_distance(x[1:], "cosine"))
    np.testing.assert_allclose(d, 0.0, atol=1e-6)


def test_far_from_origin_keeps_precision():
    # Gram expansion without centering loses every digit here in float32.
    x = np.array([[1e4, 1e4], [1e4 + 1, 1e4], [1e4, 1e4 + 2]], "float32")
    d = np.asarray(pairwise_distance(x))
    np.testing.assert_allclose(d[0, 1:], [1.0, 2.0], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32(dtype):
    x = np.random.default_rng(1).normal(size=(16, 8))
    half = tensor(x, dtype)
    d = pairwise_distance(half)
    assert keras.backend.standardize_dtype(d.dtype) == "float32"
    upcast = np.asarray(tensor(half, "float32"))
    np.testing.assert_allclose(np.asarray(d), reference.distance_matrix(upcast, "euclidean"), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(BACKEND == "jax", reason="JAX without x64 has no float64")
@pytest.mark.parametrize("distance", DISTANCES)
def test_float64_is_computed_in_float64(distance):
    """Keras' PyTorch `matmul` returns float32 for float64 inputs: the products go around it."""
    x = np.random.default_rng(2).normal(size=(12, 5))
    d = pairwise_distance(tensor(x, "float64"), distance)
    assert keras.backend.standardize_dtype(d.dtype) == "float64"
    np.testing.assert_allclose(np.asarray(d), reference.distance_matrix(x, distance), rtol=1e-12, atol=1e-12)
    ref = tensor(x[:5] + 1.0, "float64")
    rectangle = pairwise_distance(tensor(x, "float64"), distance, ref_embeddings=ref)
    want = reference.distance_matrix(np.concatenate([x, x[:5] + 1.0]), distance)[:12, 12:]
    np.testing.assert_allclose(np.asarray(rectangle), want, rtol=1e-12, atol=1e-12)
    similarity = tfm.distances.pairwise_similarity(tensor(x, "float64"))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(similarity), unit @ unit.T, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(BACKEND == "jax", reason="JAX without x64 has no float64")
def test_cumsum_keeps_float64():
    """Keras' PyTorch `cumsum` sums float64 in float32: 1 + 2⁻⁴⁰ would be 1."""
    x = np.array([[1.0, 2.0**-40, 2.0**-40]])
    got = tfm.distances.cumsum(tensor(x, "float64"), axis=1)
    assert keras.backend.standardize_dtype(got.dtype) == "float64"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), np.cumsum(x, axis=1))


@pytest.mark.parametrize("dtype", [
    "float32", pytest.param("float64", marks=pytest.mark.skipif(BACKEND == "jax", reason="JAX without x64"))
])
def test_row_sums_under_xla_are_products_with_the_same_sums(dtype):
    """Under XLA on a CPU, `row_sums` is a product with ones: the same sums, exact for counts.

    `nonnegative_row_sums` with an addition after it (kept apart from the product by a maximum with 0): the same.
    """
    x = np.random.default_rng(0).normal(size=(3, 4, 50)).astype(dtype)
    counts = (x > 0).astype(dtype)
    seen = []

    def both(x, counts):
        seen.append(tfm.distances._sums_by_product())
        added = 0.5 + tfm.distances.nonnegative_row_sums(counts)
        return tfm.distances.row_sums(x), tfm.distances.row_sums(counts), added

    if BACKEND == "tensorflow":
        import tensorflow as tf

        both = tf.function(both, jit_compile=True)
    elif BACKEND == "jax":
        import jax

        both = jax.jit(both)
    sums, counted, added = (keras.ops.convert_to_numpy(v) for v in both(tensor(x, dtype), tensor(counts, dtype)))
    # Products only where XLA compiles for CPUs alone (an accelerator's matrix units may round float32).
    if BACKEND == "tensorflow":
        import tensorflow as tf

        on_cpus = not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    else:
        on_cpus = BACKEND == "jax" and __import__("jax").default_backend() == "cpu"
    assert seen == [on_cpus]
    assert sums.dtype == dtype and sums.shape == (3, 4)
    np.testing.assert_allclose(sums, x.sum(axis=-1), rtol=1e-6 if dtype == "float32" else 1e-14, atol=1e-6)
    np.testing.assert_array_equal(counted, counts.sum(axis=-1))
    np.testing.assert_array_equal(added, 0.5 + counts.sum(axis=-1))


def test_unknown_distance_names_the_choices():
    with pytest.raises(ValueError, match="angular.*cosine"):
        pairwise_distance(np.zeros((2, 2)), "angular")


@pytest.mark.parametrize("compiled", [False, True])
def test_l2_normalize_value_and_written_gradient(compiled):
    """Unit rows and `(g − y (y·g)) / ‖x‖`, against float64, for ordinary, huge, tiny and zero rows, any rank."""
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(6, 5))
    rows[1] *= 1e30
    rows[2] *= 1e-30
    rows[3] = 0.0
    rows[4] = [0.0, 0.0, -2.0, 0.0, 0.0]
    x = rows.reshape(2, 3, 5).astype("float32")
    weights = rng.normal(size=x.shape)
    def weighted_sum(e, w):
        return keras.ops.sum(tfm.distances.l2_normalize(e) * keras.ops.convert_to_tensor(w))

    value, grad = value_and_grad(weighted_sum, x, weights.astype("float32"), compiled=compiled)
    exact = x.astype("float64")
    norms = np.linalg.norm(exact, axis=-1, keepdims=True)
    unit = np.divide(exact, norms, out=np.zeros_like(exact), where=norms > 0)
    want = (weights - unit * np.sum(unit * weights, axis=-1, keepdims=True)) / np.where(norms > 0, norms, 1.0)
    np.testing.assert_allclose(value, np.sum(unit * weights), rtol=1e-5)
    scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 1.0)
    # Relative to each row's 1/‖x‖; a zero row passes the gradient through.
    np.testing.assert_allclose(grad / scale, want / scale, atol=1e-5)
    np.testing.assert_array_equal(grad.reshape(6, 5)[3], weights.reshape(6, 5)[3].astype("float32"))


@pytest.mark.parametrize("distance", DISTANCES)
def test_gradient_through_normalization_of_one_hot_like_rows(distance):
    # Rows with a single non-zero entry hit ties in naive clamps, where JAX
    # and TensorFlow split gradients differently.
    x = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [-4.0, 0.0]], "float32")
    _, grad = value_and_grad(lambda e: keras.ops.sum(pairwise_distance(e, distance, normalize=True)), x)
    d = reference.distance_matrix(x, distance, normalize=True)
    want = reference.chain_distance_gradient(x, distance, True, (d > 0).astype(float))
    np.testing.assert_allclose(grad, want, atol=1e-5)


# The Euclidean distances' gradient is written by hand (one matrix product):
# checked against the pair-by-pair reference, for the square matrix and the
# rectangle to reference rows, eagerly and compiled, with a random incoming
# gradient (a plain sum would hide a transposed or halved term).
def weighted_sum(distances, weights):
    return keras.ops.sum(distances * keras.ops.convert_to_tensor(weights))


# Under XLA the square matrices take their gradient's two products above
# `_TRANSPOSED_UPSTREAM_UP_TO` rows, the upstream gradient's transpose at or
# below it: "two products" checks the first on a small batch.
COMPILED_FORMS = [False, True, "two products"]


def compiled_form(form, monkeypatch):
    if form == "two products":
        monkeypatch.setattr(tfm.distances, "_TRANSPOSED_UPSTREAM_UP_TO", 0)
    return bool(form)


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean"])
@pytest.mark.parametrize("compiled", COMPILED_FORMS)
def test_hand_written_gradient_of_the_square_matrix(distance, compiled, monkeypatch):
    compiled = compiled_form(compiled, monkeypatch)
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(9, 5)) * 2 + 7).astype("float32")
    weights = rng.uniform(-1, 1, size=(9, 9)).astype("float32")
    objective = lambda e, w: weighted_sum(pairwise_distance(e, distance), w)  # noqa: E731
    _, grad = value_and_grad(objective, x, weights, compiled=compiled)
    want = reference.chain_distance_gradient(x, distance, False, weights.astype("float64"))
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean"])
def test_hand_written_gradient_of_the_rectangle(distance):
    rng = np.random.default_rng(4)
    x, ref = rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(8, 4)).astype("float32")
    weights = rng.uniform(-1, 1, size=(6, 8)).astype("float32")
    stacked = np.concatenate([x, ref])

    def weighted(rows, w):
        return weighted_sum(pairwise_distance(rows[:6], distance, ref_embeddings=rows[6:]), w)

    _, grad = value_and_grad(weighted, stacked, weights)
    want_x, want_ref = reference.chain_distance_gradient(x, distance, False, weights.astype("float64"), ref)
    np.testing.assert_allclose(grad, np.concatenate([want_x, want_ref]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compiled", COMPILED_FORMS)
def test_hand_written_gradient_of_the_gram_matrix(compiled, monkeypatch):
    # inner_products of a batch against itself: (W + Wᵀ) x, with an asymmetric W.
    compiled = compiled_form(compiled, monkeypatch)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(7, 3)).astype("float32")
    weights = rng.uniform(-1, 1, size=(7, 7)).astype("float32")
    value, grad = value_and_grad(lambda e, w: weighted_sum(tfm.distances.inner_products(e, e), w), x, weights,
                                 compiled=compiled)
    exact, w = x.astype("float64"), weights.astype("float64")
    np.testing.assert_allclose(value, np.sum(w * (exact @ exact.T)), rtol=1e-5)
    np.testing.assert_allclose(grad, (w + w.T) @ exact, rtol=1e-5, atol=1e-5)


def test_euclidean_gradient_is_zero_between_coincident_rows():
    # Rows 0 and 1 coincide: their distance is 0 and contributes no gradient;
    # rows 2 and 3 pull only through their distances to the others.
    x = np.array([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0], [-2.0, -2.0]], "float32")
    weights = np.zeros((4, 4), "float32")
    weights[0, 1] = weights[1, 0] = 5.0
    _, grad = value_and_grad(lambda e, w: weighted_sum(pairwise_distance(e), w), x, weights)
    np.testing.assert_array_equal(grad, np.zeros_like(x))


@only_tensorflow
def test_the_square_matrix_knows_when_xla_compiles_it():
    # The gradient takes the product form that suits XLA only inside an XLA
    # compilation; TensorFlow internals that moved would silently cost speed.
    import tensorflow as tf

    from tfmetric.distances import compiled_by_xla

    seen = {}

    def probe(jit):
        seen[jit] = compiled_by_xla()
        return tf.constant(0.0)

    for jit in (False, True):
        tf.function(lambda jit=jit: probe(jit), jit_compile=jit)()
    assert seen == {False: False, True: True}
    assert not compiled_by_xla()  # eagerly


@only_tensorflow
@pytest.mark.parametrize("scale", [1.0, 1e15])  # 1e15: beyond 2**40, a power-of-two scale that is not 1
def test_graph_and_xla_matrices_are_the_eager_floats(scale):
    """The same floats op by op in a graph (diagonal set in place, no product by a scale of 1), eagerly and in XLA."""
    import tensorflow as tf

    x = (np.random.default_rng(5).normal(size=(7, 3)) * scale).astype("float32")
    x[4] = x[2]  # coincident rows: a zero off the diagonal too
    for distance in DISTANCES:
        eager = np.asarray(pairwise_distance(x, distance))
        for jit in (False, True):
            compiled = tf.function(lambda e, distance=distance: pairwise_distance(e, distance), jit_compile=jit)
            got = compiled(tf.constant(x)).numpy()
            assert np.all(np.diag(got) == 0.0)
            if distance == "cosine":
                # 1 − cos rounds near 0 (an ulp of 1 at equal rows) as each graph's optimizer arranges it.
                np.testing.assert_allclose(got, eager, rtol=1e-6, atol=1e-6, err_msg=f"jit={jit}")
                continue
            assert got[2, 4] == 0.0
            if jit:
                np.testing.assert_allclose(got, eager, rtol=1e-6, atol=0, err_msg=distance)
            else:
                np.testing.assert_array_equal(got, eager, err_msg=distance)
