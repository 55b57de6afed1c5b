"""Exact search (tfm.search) against a brute-force ranking, and the Index API."""

import doctest

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tfmetric as tfm
from tfmetric import search
from tfmetric.search import Index, nearest_neighbours
from tfmetric.search.exact import _pilot_bars as original_bars

DISTANCES = ("euclidean", "squared_euclidean", "cosine")


def brute_force(queries, references, k, distance, exclude_self=False):
    """Every distance in float64, rounded to the documented grid, fully sorted by (distance, index)."""
    queries, references = np.asarray(queries, float), np.asarray(references, float)
    all_distances, all_indices = [], []
    for row, query in enumerate(queries):
        if distance == "cosine":
            unit = query / max(np.linalg.norm(query), 1e-300)
            units = references / np.maximum(np.linalg.norm(references, axis=1), 1e-300)[:, None]
            values, step = 1.0 - np.array([unit @ other for other in units]), 1e-12
        else:
            values = np.array([np.sum((query - other) ** 2) for other in references])
            scale = max(query @ query, max(other @ other for other in references), np.finfo(float).tiny)
            step = 1e-12 * scale
        values = np.maximum(np.round(values / step) * step, 0.0)
        candidates = np.array([i for i in range(len(references)) if not (exclude_self and i == row)], int)
        ranked = candidates[np.lexsort((candidates, values[candidates]))][:k]
        chosen = values[ranked]
        all_distances.append(np.sqrt(chosen) if distance == "euclidean" else chosen)
        all_indices.append(ranked)
    return np.array(all_distances), np.array(all_indices)


def assert_same(got, want):
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-9, atol=0)


@pytest.mark.parametrize("distance", DISTANCES)
def test_hand_made_ties_go_to_the_lower_index(distance):
    # Reference 0 and 2 are equally near the query (as are 1 and 3, farther).
    references = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    query = np.array([[0.0, 0.0]]) if distance != "cosine" else np.array([[1.0, 1.0]])
    distances, indices = nearest_neighbours(query, references, 4, distance)
    if distance == "cosine":
        # All four are at 45 degrees: the order is the index order.
        assert indices.tolist() == [[0, 1, 2, 3]]
    else:
        assert indices.tolist() == [[0, 2, 1, 3]]
    assert_same((distances, indices), brute_force(query, references, 4, distance))


def test_hand_made_leave_one_out():
    x = np.array([[0.0], [1.0], [3.0], [4.0]])
    distances, indices = nearest_neighbours(x, x, 2, exclude_self=True)
    assert indices.tolist() == [[1, 2], [0, 2], [3, 1], [2, 1]]
    assert distances.tolist() == [[1.0, 3.0], [1.0, 2.0], [1.0, 2.0], [1.0, 3.0]]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 25),
    m=st.integers(1, 25),
    dim=st.integers(1, 4),
    k=st.integers(1, 30),
    distance=st.sampled_from(DISTANCES),
    exclude_self=st.booleans(),
    block_size=st.sampled_from([1, 2, 3, 7, (2, 5), (5, 3), 1024]),
    kind=st.sampled_from(["integers", "normal", "duplicates"]),
    seed=st.integers(0, 2**31),
)
def test_matches_brute_force(n, m, dim, k, distance, exclude_self, block_size, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "integers":  # many exact ties
        draw = lambda size: rng.integers(-2, 3, size=(size, dim)).astype(float)  # noqa: E731
    elif kind == "normal":
        draw = lambda size: rng.normal(size=(size, dim))  # noqa: E731
    else:  # a few points repeated many times
        draw = lambda size: rng.normal(size=(3, dim))[rng.integers(0, 3, size=size)]  # noqa: E731
    queries = draw(n)
    references = queries if exclude_self else draw(m)
    got = nearest_neighbours(queries, references, k, distance, exclude_self=exclude_self, block_size=block_size)
    want = brute_force(queries, references, k, distance, exclude_self)
    assert got[1].shape == (n, min(k, len(references) - exclude_self))
    assert_same(got, want)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1e8, 1e30])
def test_huge_and_tiny_scales(distance, scale):
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, size=(40, 3)) * scale + rng.normal(size=(40, 3)) * scale * 1e-3
    got = nearest_neighbours(x, x, 5, distance, exclude_self=True, block_size=(8, 16))
    assert_same(got, brute_force(x, x, 5, distance, exclude_self=True))


def test_far_from_the_origin():
    # float32 alone would see these points all at one place.
    rng = np.random.default_rng(4)
    x = 1e6 + rng.normal(size=(60, 4))
    got = nearest_neighbours(x, x, 3, "euclidean", exclude_self=True, block_size=16)
    assert_same(got, brute_force(x, x, 3, "euclidean", exclude_self=True))


def test_many_blocks_the_last_ragged_and_float32_inputs():
    rng = np.random.default_rng(5)
    queries = rng.normal(size=(203, 8)).astype("float32")
    references = rng.normal(size=(517, 8)).astype("float32")
    want = brute_force(queries, references, 12, "euclidean")
    for block_size in [(32, 64), (50, 100), 517, (1, 1000)]:
        assert_same(nearest_neighbours(queries, references, 12, block_size=block_size), want)


@pytest.mark.parametrize("distance", DISTANCES)
def test_a_pilot_sets_the_bar_for_many_candidates(distance, monkeypatch):
    # k ≥ 44 among more than 8192 references: a sample of the references sets
    # each query's bar; with a margin so small that nearly every query falls
    # short of k candidates, they are searched again without it. Both agree
    # with the search without a pilot, itself checked against brute force
    # above; with ties (points on a grid, duplicates) and self-exclusion.
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.normal(size=(9000, 5)), rng.integers(-2, 3, size=(1000, 5)).astype(float)])
    exact = search.exact
    monkeypatch.setattr(exact, "_PILOTED_CANDIDATES", 10**9)
    want = nearest_neighbours(x[:600], x[:600 + 9000], 60, distance)
    want_loo = nearest_neighbours(x, x, 50, distance, exclude_self=True)
    monkeypatch.setattr(exact, "_PILOTED_CANDIDATES", 48)
    calls = []
    monkeypatch.setattr(exact, "_pilot_bars", lambda *a: calls.append(1) or original_bars(*a))
    for margin in (4, 0.05):
        monkeypatch.setattr(exact, "_PILOT_MARGIN", margin)
        np.testing.assert_array_equal(nearest_neighbours(x[:600], x[:600 + 9000], 60, distance)[1], want[1])
        got = nearest_neighbours(x, x, 50, distance, exclude_self=True)
        np.testing.assert_array_equal(got[1], want_loo[1])
        np.testing.assert_array_equal(got[0], want_loo[0])
    assert calls


def test_every_point_the_same_and_one_reference():
    same = np.ones((30, 2))
    distances, indices = nearest_neighbours(same, same, 4, exclude_self=True, block_size=7)
    assert indices[0].tolist() == [1, 2, 3, 4] and indices[5].tolist() == [0, 1, 2, 3]
    assert not distances.any()
    distances, indices = nearest_neighbours(np.zeros((3, 2)), np.array([[3.0, 4.0]]), 5)
    assert indices.tolist() == [[0]] * 3 and distances.tolist() == [[5.0]] * 3
    assert nearest_neighbours(np.zeros((1, 2)), np.zeros((1, 2)), 3, exclude_self=True)[1].shape == (1, 0)


def test_search_errors():
    with pytest.raises(ValueError, match="dimensions"):
        nearest_neighbours(np.zeros((2, 3)), np.zeros((2, 4)), 1)
    with pytest.raises(ValueError, match="k must"):
        nearest_neighbours(np.zeros((2, 3)), np.zeros((2, 3)), 0)
    with pytest.raises(ValueError, match="exclude_self"):
        nearest_neighbours(np.zeros((2, 3)), np.zeros((3, 3)), 1, exclude_self=True)
    with pytest.raises(ValueError, match="NaN"):
        nearest_neighbours(np.full((2, 3), np.nan), np.zeros((3, 3)), 1)
    with pytest.raises(ValueError, match="block_size"):
        nearest_neighbours(np.zeros((2, 3)), np.zeros((3, 3)), 1, block_size=(1, 0))
    with pytest.raises(ValueError, match="Unknown distance"):
        nearest_neighbours(np.zeros((2, 3)), np.zeros((3, 3)), 1, distance="manhattan")


def test_index_add_twice_appends_and_returns_labels_and_data():
    rng = np.random.default_rng(6)
    first, second = rng.normal(size=(20, 3)), rng.normal(size=(15, 3))
    index = Index(distance="cosine")
    index.add(first, labels=np.arange(20), data=[f"item {i}" for i in range(20)])
    index.add(second, labels=np.arange(20, 35), data=[f"item {i}" for i in range(20, 35)])
    assert len(index) == 35
    queries = rng.normal(size=(4, 3))
    result = index.search(queries, k=6)
    want = brute_force(queries, np.concatenate([first, second]), 6, "cosine")
    assert_same((result.distances, result.indices), want)
    np.testing.assert_array_equal(result.labels, want[1])
    assert result.data == [[f"item {i}" for i in row] for row in want[1]]


def test_index_k_beyond_the_size_returns_everything():
    index = Index()
    index.add(np.array([[0.0], [2.0], [1.0]]))
    result = index.search(np.array([[0.1]]), k=10)
    assert result.indices.tolist() == [[0, 2, 1]]
    assert result.labels is None and result.data is None


@pytest.mark.parametrize(
    "data", [None, ["a", "bb", "ccc", "d", "e"], np.arange(10.0).reshape(5, 2), np.array(["x", "y", "z", "u", "v"])]
)
def test_index_save_load_round_trip(tmp_path, data):
    rng = np.random.default_rng(7)
    index = Index(distance="squared_euclidean")
    index.add(rng.normal(size=(5, 3)).astype("float32"), labels=["p", "q", "p", "r", "q"], data=data)
    index.save(tmp_path / "index.npz")
    loaded = Index.load(tmp_path / "index.npz")
    assert loaded.distance == "squared_euclidean" and len(loaded) == 5
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    assert loaded.embeddings.dtype == np.float32
    np.testing.assert_array_equal(loaded.labels, index.labels)
    queries = rng.normal(size=(3, 3))
    before, after = index.search(queries, k=3), loaded.search(queries, k=3)
    np.testing.assert_array_equal(after.indices, before.indices)
    np.testing.assert_array_equal(after.distances, before.distances)
    np.testing.assert_array_equal(after.labels, before.labels)
    if data is None:
        assert after.data is None
    elif isinstance(data, list):
        assert after.data == before.data
    else:
        np.testing.assert_array_equal(after.data, before.data)


def test_index_save_refuses_what_needs_pickling(tmp_path):
    index = Index()
    index.add(np.zeros((2, 2)), data=[{"a": 1}, {"b": 2}])
    with pytest.raises(ValueError, match="list of strings"):
        index.save(tmp_path / "index.npz")


def test_index_embeds_raw_inputs_with_the_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_initializer="glorot_uniform")])
    rng = np.random.default_rng(8)
    x, queries = rng.normal(size=(30, 4)).astype("float32"), rng.normal(size=(5, 4)).astype("float32")
    index = Index(model)
    index.add(x=x, labels=np.arange(30), batch_size=8, verbose=0)
    result = index.search(x=queries, k=4, verbose=0)
    # Same batches as the index's, so that float32 rounds the same.
    embedded = model.predict(x, batch_size=8, verbose=0), model.predict(queries, batch_size=256, verbose=0)
    np.testing.assert_array_equal(index.embeddings, embedded[0])
    want = brute_force(embedded[1], embedded[0], 4, "euclidean")
    assert_same((result.distances, result.indices), want)
    other = Index()
    other.add(x=x, model=model, batch_size=8, verbose=0)
    np.testing.assert_array_equal(other.embeddings, index.embeddings)


def test_index_errors():
    index = Index()
    with pytest.raises(ValueError, match="empty"):
        index.search(np.zeros((1, 2)), k=1)
    with pytest.raises(ValueError, match="needs a model"):
        index.add(x=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not both"):
        index.add(np.zeros((2, 2)), x=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="2 embeddings but 3 labels"):
        index.add(np.zeros((2, 2)), labels=[0, 1, 2])
    with pytest.raises(ValueError, match="Unknown engine"):
        Index(engine="annoy")
    index.add(np.zeros((2, 2)), labels=[0, 1])
    with pytest.raises(ValueError, match="2-dimensional"):
        index.add(np.zeros((2, 3)), labels=[0, 1])
    with pytest.raises(ValueError, match="has labels"):
        index.add(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="2-dimensional"):
        index.search(np.zeros((1, 3)), k=1)
    with pytest.raises(ValueError, match="k must"):
        index.search(np.zeros((1, 2)), k=0)


def test_search_is_a_submodule_of_tfmetric():
    assert tfm.search.Index is Index


def test_docstring_examples():
    result = doctest.testmod(tfm.search, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
