"""How an `Index` searches: exactly, or approximately through faiss.

An engine is built once over the references (again only after an `add`) and
answers `search(queries, k)` with `(distances, indices)`, nearest first:

- `Exact(block_size)`: every query against every reference, in blocks
  (`tfmetric.search.exact`); the answer of `tfm.evaluation.retrieval_metrics`.
- `IVF(lists, probes)`: faiss' inverted file (`IndexIVFFlat`): k-means
  cells, each query compares itself with the references of its `probes`
  nearest cells only.
- `HNSW(links, search_breadth, build_breadth)`: faiss' hierarchical
  navigable small-world graph (`IndexHNSWFlat`).

The approximate engines need faiss (`pip install 'tfmetric[search]'`); they
may miss true neighbours — `recall` measures how many against the exact
search — and compute their distances in float32. `Index(engine="ivf")` takes
an engine's name for its defaults.

>>> import numpy as np, tfmetric as tfm
>>> points = np.random.default_rng(0).normal(size=(2000, 8)).astype("float32")
>>> index = tfm.search.Index(engine=tfm.search.HNSW(links=16))
>>> index.add(points)
>>> found = index.search(points[:100], k=5).indices
>>> exact = tfm.search.nearest_neighbours(points[:100], points, k=5)[1]
>>> tfm.search.recall(found, exact) > 0.9
True
"""

import math

import numpy as np

from tfmetric.optional import optional_import
from tfmetric.search.exact import DEFAULT_BLOCK_SIZE, _as_matrix, _check_block_size, _unit_rows, nearest_neighbours

__all__ = ["Exact", "HNSW", "IVF", "get_engine", "recall"]


class Exact:
    """Exact search in blocks of `block_size` (queries, references): `tfm.search.nearest_neighbours`."""

    name = "exact"

    def __init__(self, block_size=DEFAULT_BLOCK_SIZE):
        self.block_size = _check_block_size(block_size)
        self._references = self._distance = None

    def build(self, references, distance):
        self._references, self._distance = references, distance

    def search(self, queries, k):
        return nearest_neighbours(queries, self._references, k, self._distance, block_size=self.block_size)

    def get_config(self):
        return {"block_size": list(self.block_size)}

    def __repr__(self):
        return f"Exact(block_size={self.block_size})"


class _Faiss:
    """A faiss index over the references, searched in float32.

    The cosine distance searches unit vectors by inner product; the
    euclidean ones by squared L2, the distance faiss returns.
    """

    def build(self, references, distance):
        faiss = optional_import("faiss", f"Index(engine={self.name!r})", extra="search", package="faiss-cpu")
        self._distance = distance
        # Kept for the rare query that faiss leaves short of k neighbours.
        self._exact_references = references
        references = self._prepare(references)
        metric = faiss.METRIC_INNER_PRODUCT if distance == "cosine" else faiss.METRIC_L2
        self._index = self._make(faiss, references, metric)
        self._index.add(references)
        self._size = len(references)

    def search(self, queries, k):
        k = min(k, self._size)
        scores, indices = self._index.search(self._prepare(queries), k)
        scores = scores.astype(np.float64)
        if self._distance == "cosine":
            distances = 1.0 - scores
        elif self._distance == "euclidean":
            distances = np.sqrt(np.maximum(scores, 0.0))
        else:
            distances = np.maximum(scores, 0.0)
        # A probe that reaches fewer than k references leaves -1s: those rows
        # are searched exactly, so that every result has k real neighbours.
        short = (indices < 0).any(axis=1)
        if short.any():
            exact = nearest_neighbours(queries[short], self._exact_references, k, self._distance)
            distances[short], indices[short] = exact
        return distances, indices

    def __repr__(self):
        """The settings, with those chosen at build time once built."""
        settings = {**self.get_config(), **(self._built_settings() if hasattr(self, "_index") else {})}
        return f"{type(self).__name__}({', '.join(f'{name}={value}' for name, value in settings.items())})"

    def _prepare(self, rows):
        if self._distance == "cosine":
            rows = _unit_rows(rows)
        return np.ascontiguousarray(rows, np.float32)


class IVF(_Faiss):
    """faiss' inverted file: k-means into `lists` cells, a query searches its `probes` nearest cells.

    Args:
        lists: Cells; default 4 √N, at most N / 39 (faiss' k-means wants 39
            points per centroid).
        probes: Cells each query searches; default a tenth of the cells (at
            least 1): more is slower and misses fewer neighbours.
        seed: The k-means initialisation, for reproducible indexes.
    """

    name = "ivf"

    def __init__(self, lists=None, probes=None, seed=0):
        for argument, value in (("lists", lists), ("probes", probes)):
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"IVF {argument} must be a positive integer or None; received {value!r}.")
        self.lists, self.probes, self.seed = lists, probes, seed

    def _make(self, faiss, references, metric):
        lists = self.lists or max(1, min(round(4 * math.sqrt(len(references))), len(references) // 39))
        lists = min(lists, len(references))
        dimensions = references.shape[1]
        flat = faiss.IndexFlatIP if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2
        quantizer = flat(dimensions)
        index = faiss.IndexIVFFlat(quantizer, dimensions, lists, metric)
        index.cp.seed = self.seed
        # faiss warns (on stderr) below 39 points per cell; small indexes are fine with fewer.
        index.cp.min_points_per_centroid = 1
        index.train(references)
        index.nprobe = min(lists, self.probes or max(1, math.ceil(lists / 10)))
        # The quantizer must live as long as the index that points to it.
        self._quantizer = quantizer
        return index

    def get_config(self):
        return {"lists": self.lists, "probes": self.probes, "seed": self.seed}

    def _built_settings(self):
        return {"lists": self._index.nlist, "probes": self._index.nprobe}


class HNSW(_Faiss):
    """faiss' hierarchical navigable small-world graph.

    Args:
        links: Neighbours each reference links to (faiss' M): more is more
            memory, fewer misses.
        search_breadth: Candidates a search keeps (efSearch); default
            max(64, 2k): more is slower and misses fewer.
        build_breadth: Candidates while linking (efConstruction).
    """

    name = "hnsw"

    def __init__(self, links=32, search_breadth=None, build_breadth=80):
        for argument, value in (("links", links), ("search_breadth", search_breadth), ("build_breadth", build_breadth)):
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"HNSW {argument} must be a positive integer; received {value!r}.")
        self.links, self.search_breadth, self.build_breadth = links, search_breadth, build_breadth

    def _make(self, faiss, references, metric):
        index = faiss.IndexHNSWFlat(references.shape[1], self.links, metric)
        index.hnsw.efConstruction = self.build_breadth
        return index

    def search(self, queries, k):
        self._index.hnsw.efSearch = self.search_breadth or max(64, 2 * k)
        return super().search(queries, k)

    def get_config(self):
        return {"links": self.links, "search_breadth": self.search_breadth, "build_breadth": self.build_breadth}

    def _built_settings(self):
        return {"search_breadth": self._index.hnsw.efSearch}


ENGINES = {engine.name: engine for engine in (Exact, IVF, HNSW)}


def get_engine(engine):
    """An engine from its name (`"exact"`, `"ivf"`, `"hnsw"`, with defaults) or an engine itself."""
    if isinstance(engine, str):
        if engine not in ENGINES:
            raise ValueError(f"Unknown engine {engine!r}; expected one of {sorted(ENGINES)} or an engine object.")
        return ENGINES[engine]()
    if not all(hasattr(engine, method) for method in ("build", "search", "get_config")):
        raise ValueError(f"An engine has build, search and get_config methods; received {engine!r}.")
    return engine


def recall(found, exact):
    """The share of the exact neighbours an approximate search found.

    `found` and `exact` are `(N, k)` reference indices (the `indices` of two
    searches); each query's recall is the share of its exact k found among
    its k, averaged over queries. Ties at the k-th distance can make an
    exact search and a correct one differ: compare on data without ties.

    >>> recall([[0, 1], [2, 5]], [[1, 0], [2, 3]])
    0.75
    """
    found, exact = _as_matrix(found, "found").astype(np.int64), _as_matrix(exact, "exact").astype(np.int64)
    if found.shape != exact.shape:
        raise ValueError(f"found and exact must have one shape; received {found.shape} and {exact.shape}.")
    if not found.size:
        raise ValueError("recall needs at least one query and one neighbour.")
    hits = [len(np.intersect1d(row, truth)) for row, truth in zip(found, exact)]
    return float(np.mean(hits) / found.shape[1])
