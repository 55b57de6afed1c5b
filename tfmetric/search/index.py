"""`Index`: embeddings with their labels and data, and the search over them."""

import json
from collections import namedtuple

import numpy as np

from tfmetric.distances import check_distance
from tfmetric.search.calibration import Calibration, CalibrationCurve, _check_comparable, calibrate
from tfmetric.search.engines import ENGINES, get_engine
from tfmetric.search.exact import _as_matrix, _check_k, nearest_neighbours

__all__ = ["Index", "MatchResult", "SearchResult"]

SearchResult = namedtuple("SearchResult", ["distances", "indices", "labels", "data"])
SearchResult.__doc__ = """The k nearest references of every query, nearest first.

- `distances`: `(N, k)` float64.
- `indices`: `(N, k)` int64 positions of the references, in the order they were added.
- `labels`: `(N, k)` labels of the references (None when the index has none).
- `data`: the references' data: an `(N, k, ...)` array when it was added as
  arrays, else a list (per query) of lists; None when the index has none.
"""

MatchResult = namedtuple("MatchResult", ["labels", "distances", "indices", "matched"])
MatchResult.__doc__ = """Each query's nearest reference, accepted as a match or not.

- `labels`: `(N,)` the nearest reference's label where it is a match, else
  the `unknown` value (see `Index.match` for the dtype).
- `distances`: `(N,)` float64 distance to the nearest reference.
- `indices`: `(N,)` int64 position of the nearest reference.
- `matched`: `(N,)` booleans, `distances <= threshold`.
"""

# The value of an unmatched query when `match` is given none, by the kind of
# the labels: -1 and "" as in the exported model (tfmetric.search.serving).
_DEFAULT_UNKNOWN = {"i": -1, "u": -1, "f": float("nan"), "U": "", "S": b""}

# What `save` keeps of a calibration beside its curve (JSON in the file's configuration).
_CALIBRATION_SCALARS = ("threshold", "precision", "recall", "f1", "target_precision", "distance")


class Index:
    """Embeddings with their labels and data, searched for the nearest.

    `add` appends references: embeddings, or raw inputs `x` that the model
    embeds in batches (with Keras' progress bar); `search` returns the k
    nearest of each query (embeddings, or inputs `x` embedded the same way)
    as a `SearchResult` `(distances, indices, labels, data)`. A `k` larger
    than the index returns every reference (fewer columns), not an error.

    `calibrate` finds, on labelled queries, the distance `threshold` under
    which the nearest reference is a match; `match` then gives each query
    the nearest label, or "unknown" beyond the threshold (the open-set
    decision: verification, deduplication).

    Labels and data are optional, but every `add` must give them if the first
    did. `data` is one item per reference: a NumPy array (saved as is), or a
    list of anything (saved when all are strings).

    Args:
        model: Optional Keras model that turns raw inputs into embeddings.
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        engine: How to search (`tfmetric.search.engines`): `"exact"` (the
            default) compares every query with every reference, in blocks;
            `"ivf"` and `"hnsw"` search approximately through faiss (the
            `search` extra), faster on large indexes; or an engine object
            with its settings, e.g. `tfm.search.IVF(lists=1000, probes=50)`.
            The engine is built at the first search after an `add`.
            `calibrate` always searches exactly.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> index = tfm.search.Index(distance="cosine")
    >>> index.add(np.array([[1.0, 0.0], [0.0, 1.0]]), labels=["east", "north"])
    >>> index.add(np.array([[-1.0, 0.0]]), labels=["west"])
    >>> result = index.search(np.array([[0.9, 0.2], [-0.5, -0.1]]), k=1)
    >>> result.labels.tolist(), result.indices.tolist()
    ([['east'], ['west']], [[0], [2]])
    """

    def __init__(self, model=None, distance="euclidean", engine="exact"):
        self.model = model
        self.distance = check_distance(distance)
        self.engine = get_engine(engine)
        self._engine_is_built = False
        self._embeddings, self._labels, self._data = [], [], []
        self._has_labels = self._has_data = None
        self.calibration = None
        self._threshold = None

    def __len__(self):
        return sum(len(part) for part in self._embeddings)

    @property
    def embeddings(self):
        """The references' embeddings, `(size, D)`."""
        self._consolidate()
        return self._embeddings[0] if self._embeddings else None

    @property
    def labels(self):
        """The references' labels, or None."""
        self._consolidate()
        return self._labels[0] if self._has_labels else None

    @property
    def data(self):
        """The references' data (an array or a list), or None."""
        self._consolidate()
        return self._data[0] if self._has_data else None

    @property
    def threshold(self):
        """The distance up to which `match` accepts the nearest reference (set by `calibrate`, or by hand), or None.

        >>> import numpy as np, tfmetric as tfm
        >>> index = tfm.search.Index()
        >>> index.threshold = 0.5
        >>> index.threshold
        0.5
        """
        return self._threshold

    @threshold.setter
    def threshold(self, threshold):
        self._threshold = _check_threshold(threshold, "Index.threshold")

    def add(self, embeddings=None, labels=None, data=None, x=None, model=None, batch_size=256, verbose=1):
        """Appends references: `embeddings`, or inputs `x` embedded by the model (this one's or `model`)."""
        embeddings = self._embed(embeddings, x, model, batch_size, verbose, "add")
        if self._embeddings:
            self._check_width(embeddings, "received")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim != 1:
                raise ValueError(f"labels must be one per embedding, shape (N,); received shape {labels.shape}.")
        if data is not None and not isinstance(data, np.ndarray):
            data = list(data)
        for name, values in (("labels", labels), ("data", data)):
            if values is not None and len(values) != len(embeddings):
                raise ValueError(f"{len(embeddings)} embeddings but {len(values)} {name}.")
        if self._has_labels is None:
            self._has_labels, self._has_data = labels is not None, data is not None
        for name, values, present in (("labels", labels, self._has_labels), ("data", data, self._has_data)):
            if (values is not None) != present:
                state = "has" if present else "has no"
                raise ValueError(f"The index {state} {name}: every add must {'' if present else 'not '}give them.")
        self._embeddings.append(embeddings)
        self._engine_is_built = False
        if labels is not None:
            self._labels.append(labels)
        if data is not None:
            self._data.append(data)

    def search(self, queries=None, k=10, x=None, model=None, batch_size=256, verbose=1):
        """The `k` nearest references of every query: a `SearchResult`.

        `queries` are embeddings; or pass inputs `x` for the model to embed.
        """
        k = _check_k(k)
        if not len(self):
            raise ValueError("The index is empty: add references before searching.")
        queries = self._embed(queries, x, model, batch_size, verbose, "search")
        references = self.embeddings
        self._check_width(queries, "the queries have")
        if not self._engine_is_built:
            self.engine.build(references, self.distance)
            self._engine_is_built = True
        distances, indices = self.engine.search(queries, k)
        labels = self.labels[indices] if self._has_labels else None
        data = None
        if self._has_data:
            stored = self.data
            data = stored[indices] if isinstance(stored, np.ndarray) else [[stored[i] for i in row] for row in indices]
        return SearchResult(distances, indices, labels, data)

    def calibrate(
        self,
        embeddings=None,
        labels=None,
        x=None,
        model=None,
        target_precision=None,
        exclude_self=False,
        batch_size=256,
        verbose=1,
    ):
        """Chooses the match threshold on labelled queries; returns the `Calibration`.

        Each query (embeddings, or inputs `x` for the model to embed) is
        matched with its nearest reference; the threshold is the largest
        whose precision reaches `target_precision`, or that of the best F1
        (definitions: `tfmetric.search.calibration`). Queries whose label is
        not in the index are the open-set negatives. A ValueError says the
        best precision reached when the target is out of reach.

        `exclude_self=True` calibrates on the index's own references, each
        against the others (leave-one-out): give no queries then. A
        reference alone of its class counts as an open-set query.

        The result is kept: `index.calibration`, and `index.threshold` is
        its threshold.

        >>> import numpy as np, tfmetric as tfm
        >>> index = tfm.search.Index()
        >>> index.add(np.array([[0.0], [10.0]]), labels=["cat", "dog"])
        >>> queries = np.array([[1.0], [9.0], [6.0], [5.5]])  # a cat that looks like a dog, a fox
        >>> calibration = index.calibrate(queries, ["cat", "dog", "cat", "fox"], target_precision=1.0)
        >>> calibration.threshold, calibration.precision, calibration.recall
        (1.0, 1.0, 0.6666666666666666)
        >>> index.threshold
        1.0
        """
        if not len(self):
            raise ValueError("The index is empty: add references before calibrating.")
        if not self._has_labels:
            raise ValueError("Index.calibrate needs an index with labels: add(..., labels=...).")
        references, reference_labels = self.embeddings, self.labels
        if exclude_self:
            if embeddings is not None or x is not None or labels is not None:
                raise ValueError(
                    "Index.calibrate(exclude_self=True) calibrates on the index's own references: "
                    "give no embeddings, x or labels."
                )
            if len(self) < 2:
                raise ValueError(
                    f"Index.calibrate(exclude_self=True) needs at least 2 references; the index has {len(self)}."
                )
            queries, labels = references, reference_labels
            # Without itself, a reference can only find its class if another reference has it.
            _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
            known = counts[inverse.reshape(-1)] > 1
        else:
            if labels is None:
                raise ValueError("Index.calibrate needs the queries' labels (or exclude_self=True).")
            queries = self._embed(embeddings, x, model, batch_size, verbose, "calibrate")
            labels = np.asarray(labels)
            if labels.shape != (len(queries),):
                raise ValueError(
                    f"{len(queries)} queries need labels of shape ({len(queries)},); received {labels.shape}."
                )
            self._check_width(queries, "the queries have")
            _check_comparable(reference_labels, labels)
            known = np.isin(labels, reference_labels)
        distances, indices = nearest_neighbours(queries, references, 1, self.distance, exclude_self=exclude_self)
        self.calibration = calibrate(
            distances[:, 0], reference_labels[indices[:, 0]], labels, known, target_precision, self.distance
        )
        self.threshold = self.calibration.threshold
        return self.calibration

    def match(
        self,
        queries=None,
        x=None,
        model=None,
        threshold=None,
        unknown=None,
        batch_size=256,
        verbose=1,
    ):
        """Each query's nearest label, or `unknown` beyond the threshold: a `MatchResult`.

        `MatchResult(labels, distances, indices, matched)`: the nearest
        reference of each query (embeddings, or inputs `x` for the model),
        a match when its distance is `<= threshold` (this call's, else
        `index.threshold`).

        `unknown` is the label of the queries without a match; None gives
        -1 for integer labels and "" for string labels (as the exported
        model does), NaN for float labels, None for others. The labels keep the
        index's dtype (widened if needed: a longer string, a wider integer)
        when `unknown` is of their kind (an integer for integer labels, a
        number for float labels, a string for strings); else they are an
        object array (e.g. integer labels and `unknown="unknown"`).
        `matched` tells a real label from `unknown` whatever its value.

        >>> import numpy as np, tfmetric as tfm
        >>> index = tfm.search.Index()
        >>> index.add(np.array([[0.0], [10.0]]), labels=[3, 7])
        >>> result = index.match(np.array([[1.0], [9.5], [5.0]]), threshold=1.0)
        >>> result.labels.tolist(), result.distances.tolist(), result.matched.tolist()
        ([3, 7, -1], [1.0, 0.5, 5.0], [True, True, False])
        >>> index.match(np.array([[5.0]]), threshold=1.0, unknown="unknown").labels
        array(['unknown'], dtype=object)
        """
        if not len(self):
            raise ValueError("The index is empty: add references before matching.")
        if not self._has_labels:
            raise ValueError("Index.match needs an index with labels: add(..., labels=...).")
        threshold = self.threshold if threshold is None else _check_threshold(threshold, "threshold")
        if threshold is None:
            raise ValueError(
                "Index.match needs a threshold: index.calibrate(...), index.threshold = ..., or match(threshold=...)."
            )
        nearest = self.search(queries, 1, x, model, batch_size, verbose)
        distances, indices = nearest.distances[:, 0], nearest.indices[:, 0]
        matched = distances <= threshold
        return MatchResult(_with_unknown(nearest.labels[:, 0], matched, unknown), distances, indices, matched)

    def export(self, path, model=None, k=10):
        """Writes a TensorFlow SavedModel that serves lookups: raw inputs to the `k` nearest.

        The model (this one's or `model`), the references, labels and
        threshold in one SavedModel, loadable by `tf.saved_model.load` or TF
        Serving without tfmetric; see `tfmetric.search.serving.export`.
        """
        from tfmetric.search.serving import export

        export(self, path, model, k)

    def save(self, path):
        """Writes the index to `path` (a `.npz` file; the model is not saved).

        The threshold and the calibration (its curve included) are kept.

        Labels must be a NumPy-storable array (numbers, strings); data a
        NumPy array of numbers or strings, or a list of strings. Loading
        never unpickles.
        """
        if self._has_data and not _storable(self.data):
            raise ValueError(
                "Index.save stores data that is a NumPy array of numbers or strings, or a list of strings; "
                "keep other data beside the index and look it up by result.indices."
            )
        if self._has_labels and not _storable(self.labels):
            raise ValueError("Index.save stores labels of numbers or strings.")
        config = {
            "format": 1,
            "distance": self.distance,
            "engine": {"name": self.engine.name, "config": self.engine.get_config()},
            "has_labels": bool(self._has_labels),
            "data": None if not self._has_data else ("array" if isinstance(self.data, np.ndarray) else "list"),
            "threshold": self.threshold,
            "calibration": None,
        }
        calibration = self.calibration
        if calibration is not None:
            config["calibration"] = {name: getattr(calibration, name) for name in _CALIBRATION_SCALARS}
        arrays = {"config": np.array(json.dumps(config))}
        if calibration is not None and calibration.curve is not None:
            arrays.update({f"calibration_{name}": values for name, values in calibration.curve._asdict().items()})
        if len(self):
            arrays["embeddings"] = self.embeddings
        if self._has_labels:
            arrays["labels"] = self.labels
        if self._has_data:
            arrays["data"] = np.asarray(self.data) if config["data"] == "list" else self.data
        with open(path, "wb") as file:
            np.savez(file, **arrays)

    @classmethod
    def load(cls, path, model=None, engine=None):
        """Reads an index written by `save`; `model` embeds raw inputs, as in `Index(model)`.

        The engine is the saved one, with its settings (built anew at the
        first search), unless `engine` replaces it.
        """
        with np.load(path, allow_pickle=False) as stored:
            config = json.loads(str(stored["config"]))
            if engine is None:
                saved = config["engine"]
                if saved["name"] not in ENGINES:
                    raise ValueError(
                        f"The index was saved with the engine {saved['name']!r}, which is not one of tfmetric's "
                        f"({sorted(ENGINES)}): Index.load(path, engine=...) gives it."
                    )
                engine = ENGINES[saved["name"]](**saved["config"])
            index = cls(model, config["distance"], engine)
            if "embeddings" in stored:
                data = None
                if config["data"] == "list":
                    data = stored["data"].tolist()
                elif config["data"] == "array":
                    data = stored["data"]
                index.add(stored["embeddings"], stored["labels"] if config["has_labels"] else None, data)
            if config["calibration"] is not None:
                curve = None
                if "calibration_thresholds" in stored:
                    curve = CalibrationCurve(*(stored[f"calibration_{name}"] for name in CalibrationCurve._fields))
                index.calibration = Calibration(**config["calibration"], curve=curve)
            index.threshold = config["threshold"]
        return index

    def _embed(self, embeddings, x, model, batch_size, verbose, action):
        if (embeddings is None) == (x is None):
            raise ValueError(f"Index.{action} takes embeddings or raw inputs x (embedded by the model), not both.")
        if x is not None:
            model = model if model is not None else self.model
            if model is None:
                raise ValueError(f"Index.{action}(x=...) needs a model: Index(model) or {action}(x=..., model=...).")
            embeddings = model.predict(x, batch_size=batch_size, verbose=verbose)
        embeddings = _as_matrix(embeddings, "embeddings")
        # float32 embeddings stay float32 (half the memory); float64 stays exact.
        return embeddings.astype(np.result_type(embeddings.dtype, np.float32), copy=False)

    def _check_width(self, rows, what):
        width = self._embeddings[0].shape[1]
        if rows.shape[1] != width:
            raise ValueError(f"The index holds {width}-dimensional embeddings; {what} {rows.shape[1]} dimensions.")

    def _consolidate(self):
        """Joins the parts of successive adds, once, before a search."""
        if len(self._embeddings) > 1:
            self._embeddings = [np.concatenate(self._embeddings)]
            if self._has_labels:
                self._labels = [np.concatenate(self._labels)]
            if self._has_data:
                arrays = all(isinstance(part, np.ndarray) for part in self._data)
                self._data = [np.concatenate(self._data) if arrays else [item for part in self._data for item in part]]


def _check_threshold(threshold, name):
    """A threshold as a float, or None; refuses negative, infinite or non-numeric values."""
    if threshold is None:
        return None
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a non-negative distance (a number) or None; received {threshold!r}.")
    if not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"{name} must be a finite, non-negative distance or None; received {threshold!r}.")
    return float(threshold)


def _with_unknown(nearest_labels, matched, unknown):
    """The nearest labels, `unknown` where not matched, in the labels' dtype when `unknown` is of their kind."""
    kind = nearest_labels.dtype.kind
    if unknown is None:
        unknown = _DEFAULT_UNKNOWN.get(kind)
    number = isinstance(unknown, (int, float, np.integer, np.floating)) and not isinstance(unknown, (bool, np.bool_))
    integer = number and isinstance(unknown, (int, np.integer))
    dtype = np.dtype(object)
    if (kind in "iu" and integer) or (kind == "f" and number):
        # The smallest type that holds `unknown`: -1 does not turn int8 labels into int64.
        dtype = np.promote_types(nearest_labels.dtype, np.min_scalar_type(unknown))
    elif (kind == "U" and isinstance(unknown, str)) or (kind == "S" and isinstance(unknown, bytes)):
        dtype = np.promote_types(nearest_labels.dtype, np.asarray(unknown).dtype)
    # uint64 and -1 promote to float64, and huge integers to object: neither keeps the labels exact.
    if dtype.kind not in ("iu" if kind in "iu" else kind):
        dtype = np.dtype(object)
    labels = nearest_labels.astype(dtype)
    labels[~matched] = unknown
    return labels


def _storable(values):
    """Whether `np.savez` keeps `values` without pickling (numbers, booleans, strings)."""
    if isinstance(values, np.ndarray):
        return values.dtype.kind in "biufcUS"
    return all(isinstance(item, str) for item in values)
