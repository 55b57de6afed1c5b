"""The search engines (tfm.search.engines): exact, and faiss' IVF and HNSW against the exact search."""

import sys

import numpy as np
import pytest

import tfmetric as tfm
from tfmetric.search import HNSW, IVF, Exact, get_engine, nearest_neighbours, recall

pytest.importorskip("faiss", reason="the approximate engines need faiss-cpu (the search and test extras)")

DISTANCES = ("euclidean", "squared_euclidean", "cosine")


def clusters(count=600, dimensions=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(12, dimensions))
    return (centres[rng.integers(12, size=count)] + rng.normal(size=(count, dimensions))).astype("float32")


def brute_force(queries, references, k, distance):
    """Every distance in float64 by a loop; the k smallest, ties to the lower index."""
    rows = []
    for query in queries.astype(float):
        if distance == "cosine":
            values = [1 - query @ r / np.linalg.norm(query) / np.linalg.norm(r) for r in references.astype(float)]
        else:
            values = [np.sum((query - r) ** 2) for r in references.astype(float)]
        rows.append(np.lexsort((np.arange(len(values)), values))[:k])
    indices = np.array(rows)
    chosen = []
    for query, row in zip(queries.astype(float), indices):
        nearest = references[row].astype(float)
        if distance == "cosine":
            chosen.append([1 - query @ r / np.linalg.norm(query) / np.linalg.norm(r) for r in nearest])
        else:
            squared = [np.sum((query - r) ** 2) for r in nearest]
            chosen.append(np.sqrt(squared) if distance == "euclidean" else squared)
    return np.array(chosen), indices


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("engine", [IVF(lists=8, probes=8), HNSW(links=16, search_breadth=600)])
def test_exhaustive_settings_find_the_exact_neighbours(engine, distance):
    # Every cell probed / a search as broad as the index: nothing can be
    # missed, and the float32 distances agree with float64 to rounding.
    references = clusters()
    queries = clusters(40, seed=1)
    engine.build(references, distance)
    distances, indices = engine.search(queries, 7)
    want_distances, want_indices = brute_force(queries, references, 7, distance)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(distances, want_distances, rtol=1e-4, atol=1e-4)
    assert distances.dtype == np.float64 and indices.dtype == np.int64


@pytest.mark.parametrize("engine", ["ivf", "hnsw"])
def test_default_settings_recall_most_neighbours(engine):
    references = clusters(3000, dimensions=8)
    index = tfm.search.Index(engine=engine)
    index.add(references)
    found = index.search(references[:200], k=10).indices
    exact = nearest_neighbours(references[:200], references, 10)[1]
    assert 0.9 <= recall(found, exact) <= 1.0
    # The exact engine agrees with itself.
    assert recall(exact, exact) == 1.0


def test_cells_too_few_for_k_are_searched_exactly():
    # 60 cells over 600 points and one probed: a query's cell holds about 10
    # references, fewer than k = 30; faiss pads with -1, the engine does not.
    references = clusters()
    engine = IVF(lists=60, probes=1)
    engine.build(references, "euclidean")
    distances, indices = engine.search(references[:50], 30)
    assert (indices >= 0).all() and len(np.unique(indices[0])) == 30
    assert (np.diff(distances, axis=1) >= -1e-6).all()


def test_k_beyond_the_index_returns_every_reference():
    references = clusters(20)
    engine = HNSW()
    engine.build(references, "cosine")
    distances, indices = engine.search(references[:3], 50)
    assert indices.shape == (3, 20)
    assert sorted(indices[0]) == list(range(20))


def test_exact_engine_is_nearest_neighbours():
    references = clusters(300)
    engine = Exact(block_size=(7, 11))
    engine.build(references, "squared_euclidean")
    got = engine.search(references[:30], 4)
    want = nearest_neighbours(references[:30], references, 4, "squared_euclidean")
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_recall_by_hand():
    assert recall([[0, 1], [2, 5]], [[1, 0], [2, 3]]) == 0.75
    assert recall([[4]], [[3]]) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        recall([[0, 1]], [[0]])
    with pytest.raises(ValueError, match="at least one"):
        recall(np.zeros((0, 2)), np.zeros((0, 2)))


def test_engine_names_and_errors():
    assert isinstance(get_engine("ivf"), IVF) and isinstance(get_engine("hnsw"), HNSW)
    assert isinstance(get_engine("exact"), Exact)
    with pytest.raises(ValueError, match="Unknown engine 'annoy'"):
        get_engine("annoy")
    with pytest.raises(ValueError, match="build, search and get_config"):
        get_engine(object())
    with pytest.raises(ValueError, match="lists must be a positive integer"):
        IVF(lists=0)
    with pytest.raises(ValueError, match="links must be a positive integer"):
        HNSW(links=2.5)


def test_without_faiss_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"faiss-cpu.*tfmetric\[search\]"):
        IVF().build(clusters(50), "euclidean")


def test_index_rebuilds_its_engine_after_an_add_and_saves_its_settings(tmp_path):
    references = clusters(400)
    index = tfm.search.Index(distance="cosine", engine=IVF(lists=4, probes=4))
    index.add(references[:200], labels=np.arange(200))
    assert index.search(references[300:301], k=1).labels.tolist() != [[300]]
    # The reference added after the first search is found: the engine was rebuilt.
    index.add(references[200:], labels=np.arange(200, 400))
    assert index.search(references[300:301], k=1).labels.tolist() == [[300]]
    assert repr(index.engine) == "IVF(lists=4, probes=4, seed=0)"
    index.save(tmp_path / "index.npz")
    loaded = tfm.search.Index.load(tmp_path / "index.npz")
    assert isinstance(loaded.engine, IVF) and loaded.engine.get_config() == index.engine.get_config()
    expected = index.search(references[:20], k=3).indices
    np.testing.assert_array_equal(loaded.search(references[:20], k=3).indices, expected)
    # Another engine at load time: the exact one agrees, every cell being probed.
    exact = tfm.search.Index.load(tmp_path / "index.npz", engine="exact")
    np.testing.assert_array_equal(exact.search(references[:20], k=3).indices, expected)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(references[:2], k=0)
