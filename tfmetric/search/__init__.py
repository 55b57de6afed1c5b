"""Exact nearest-neighbour search over embeddings: `Index` and `nearest_neighbours`.

`Index` stores embeddings with their labels and any data (the products, the
file names, the answers of an intent) and finds the k nearest of queries:

>>> import numpy as np, tfmetric as tfm
>>> index = tfm.search.Index(distance="euclidean")
>>> index.add(np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]), labels=[7, 7, 9], data=["a", "b", "c"])
>>> result = index.search(np.array([[0.9, 0.1]]), k=2)
>>> result.indices.tolist(), result.labels.tolist(), result.data
([[1, 0]], [[7, 7]], [['b', 'a']])

The search is exact (`tfmetric.search.exact`): streamed in blocks at the
speed of a float32 matrix product, re-ranked in float64, ties to the lower
reference index, the order of `tfm.evaluation.retrieval_metrics`.
"""

from tfmetric.search import calibration, serving
from tfmetric.search.calibration import Calibration
from tfmetric.search.engines import HNSW, IVF, Exact, get_engine, recall
from tfmetric.search.exact import nearest_neighbours
from tfmetric.search.index import Index, MatchResult, SearchResult

__all__ = [
    "HNSW",
    "IVF",
    "Calibration",
    "Exact",
    "Index",
    "MatchResult",
    "SearchResult",
    "calibration",
    "get_engine",
    "nearest_neighbours",
    "recall",
    "serving",
]
