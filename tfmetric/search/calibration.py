"""Calibrated matching: the distance threshold under which a nearest reference is a match.

Each labelled query has its nearest reference (its distance and its label).
A threshold `t` matches the queries whose nearest distance is `<= t`; the
match is correct when the nearest label is the query's own. At every
candidate threshold (every distinct nearest distance, so that queries at
equal distances are matched or not together):

- precision = correct matches / matches;
- recall = correct matches / known queries, the queries whose class has a
  reference to be found (queries of classes absent from the index are the
  open-set negatives: matching them can only be a false match);
- F1 = 2 · precision · recall / (precision + recall) = 2 · correct / (matches + known).

`calibrate` chooses the largest threshold whose precision reaches the
target (the most recall at that precision), or, without a target, the
threshold of the best F1 (the smallest of equal ones: the fewer false
matches). `Index.calibrate` runs it on an index's search.

>>> import numpy as np
>>> calibration = calibrate([0.1, 0.2, 0.3, 0.4], nearest_labels=[1, 2, 3, 4], query_labels=[1, 2, 9, 4],
...                         target_precision=0.75)
>>> calibration.threshold, calibration.precision, calibration.recall
(0.4, 0.75, 0.75)
"""

import dataclasses
from collections import namedtuple

import numpy as np

from tfmetric.optional import optional_import

__all__ = ["Calibration", "CalibrationCurve", "calibrate", "calibration_curve"]

CalibrationCurve = namedtuple("CalibrationCurve", ["thresholds", "precision", "recall", "f1"])
CalibrationCurve.__doc__ = """Precision, recall and F1 at every candidate threshold.

Four `(T,)` float64 arrays: `thresholds`, the distinct nearest distances in
increasing order, and the `precision`, `recall` and `f1` of matching the
queries whose nearest distance is `<=` each.
"""


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """The chosen threshold, its precision, recall and F1, and the curve it was chosen on.

    Attributes:
        threshold: Nearest distances `<=` it are matches.
        precision, recall, f1: At the threshold (see `tfmetric.search.calibration`).
        target_precision: The precision asked for, or None for the best F1.
        distance: The distance the threshold is in (`"euclidean"`, ...), or None.
        curve: A `CalibrationCurve`, or None.

    >>> calibration = calibrate([0.5, 1.0, 2.0], [0, 1, 1], [0, 1, 0])
    >>> calibration.threshold, calibration.f1
    (1.0, 0.8)
    """

    threshold: float
    precision: float
    recall: float
    f1: float
    target_precision: float = None
    distance: str = None
    curve: CalibrationCurve = None

    def plot(self, ax=None):
        """Draws precision, recall and F1 against the threshold, the chosen one marked; returns the Axes.

        Needs matplotlib (the `[viz]` extra); without `ax`, a new pyplot figure.

        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> ax = calibrate([0.5, 1.0, 2.0], [0, 1, 1], [0, 1, 0]).plot()
        >>> ax.get_xlabel()
        'distance threshold'
        """
        if self.curve is None:
            raise ValueError("This calibration has no curve to plot (calibrate again to have one).")
        if ax is None:
            ax = optional_import("matplotlib.pyplot", "Calibration.plot").subplots()[1]
        curve = self.curve
        # The values hold from each threshold up to the next one: steps, not lines.
        for name, values in (("precision", curve.precision), ("recall", curve.recall), ("F1", curve.f1)):
            ax.step(curve.thresholds, values, where="post", label=name)
        chosen = "best F1" if self.target_precision is None else f"precision ≥ {self.target_precision:g}"
        ax.axvline(self.threshold, color="grey", linestyle="--", label=f"threshold {self.threshold:.4g} ({chosen})")
        ax.plot([self.threshold] * 3, [self.precision, self.recall, self.f1], "ko")
        ax.set_xlabel("distance threshold" if self.distance is None else f"{self.distance} distance threshold")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="best")
        return ax


def calibration_curve(nearest_distances, nearest_labels, query_labels, known=None):
    """Precision, recall and F1 at every distinct nearest distance: a `CalibrationCurve`.

    Args:
        nearest_distances: `(N,)` distance of each query to its nearest reference.
        nearest_labels: `(N,)` label of that reference.
        query_labels: `(N,)` true label of each query.
        known: Optional `(N,)` booleans: whether the query's class has a
            reference in the index (the recall's denominator counts these);
            None: every query's does.

    >>> curve = calibration_curve([0.1, 0.3, 0.3, 0.7], [1, 2, 3, 4], [1, 2, 0, 4], known=[1, 1, 0, 1])
    >>> curve.thresholds.tolist(), curve.precision.tolist(), curve.recall.tolist()
    ([0.1, 0.3, 0.7], [1.0, 0.6666666666666666, 0.75], [0.3333333333333333, 0.6666666666666666, 1.0])
    """
    distances, correct, known = _check(nearest_distances, nearest_labels, query_labels, known)
    order = np.argsort(distances, kind="stable")
    distances, correct = distances[order], correct[order]
    # A threshold at a distance matches every query up to the last of its ties.
    last_of_ties = np.append(distances[1:] != distances[:-1], True)
    matches = np.arange(1, len(distances) + 1)[last_of_ties]
    correct_matches = np.cumsum(correct)[last_of_ties]
    known_count = np.count_nonzero(known)
    precision = correct_matches / matches
    recall = correct_matches / known_count if known_count else np.zeros(len(matches))
    f1 = 2.0 * correct_matches / (matches + known_count)
    return CalibrationCurve(distances[last_of_ties], precision, recall, f1)


def calibrate(nearest_distances, nearest_labels, query_labels, known=None, target_precision=None, distance=None):
    """The threshold that reaches `target_precision`, or else that of the best F1: a `Calibration`.

    With a target, the largest threshold whose precision is at least the
    target; a ValueError says the best precision reached when none does.
    Without, the threshold of the best F1 (the smallest of ties); a
    ValueError when no query is matched correctly at any threshold.

    Args:
        nearest_distances, nearest_labels, query_labels, known: As in `calibration_curve`.
        target_precision: A precision in (0, 1], or None for the best F1.
        distance: The name of the distance, kept in the result.

    Two queries of class 5, which has no reference (`known` False):

    >>> distances, nearest, truth = [0.2, 0.4, 0.6, 0.8], [0, 1, 2, 3], [0, 1, 5, 5]
    >>> calibration = calibrate(distances, nearest, truth, known=[True, True, False, False])
    >>> calibration.threshold, calibration.precision, calibration.recall, calibration.f1
    (0.4, 1.0, 1.0, 1.0)
    >>> calibrate(distances, nearest, truth, known=[True, True, False, False], target_precision=0.5).threshold
    0.8
    """
    if target_precision is not None and not (
        isinstance(target_precision, (int, float, np.integer, np.floating)) and 0 < target_precision <= 1
    ):
        raise ValueError(f"target_precision must be a number in (0, 1] or None; received {target_precision!r}.")
    curve = calibration_curve(nearest_distances, nearest_labels, query_labels, known)
    if target_precision is None:
        if not curve.f1.any():
            raise ValueError(
                "No query's nearest reference has its label: no threshold matches any query correctly "
                "(are the labels those of the index?)."
            )
        chosen = int(np.argmax(curve.f1))
    else:
        reaching = np.flatnonzero(curve.precision >= target_precision)
        if not len(reaching):
            best = int(np.argmax(curve.precision))
            raise ValueError(
                f"No threshold reaches a precision of {target_precision}: the best is {curve.precision[best]:.4g} "
                f"(threshold {curve.thresholds[best]:.6g}). Lower target_precision, or improve the embedding."
            )
        chosen = int(reaching[-1])
    return Calibration(
        threshold=float(curve.thresholds[chosen]),
        precision=float(curve.precision[chosen]),
        recall=float(curve.recall[chosen]),
        f1=float(curve.f1[chosen]),
        target_precision=None if target_precision is None else float(target_precision),
        distance=distance,
        curve=curve,
    )


def _check(nearest_distances, nearest_labels, query_labels, known):
    """The distances, whether each nearest label is correct, and the known mask, validated."""
    distances = np.asarray(nearest_distances, dtype=float)
    nearest_labels, query_labels = np.asarray(nearest_labels), np.asarray(query_labels)
    known = np.ones(len(distances), bool) if known is None else np.asarray(known)
    if distances.ndim != 1 or not len(distances):
        raise ValueError(
            f"nearest_distances must be one per query, shape (N,) with N >= 1; received shape {distances.shape}."
        )
    for name, values in (("nearest_labels", nearest_labels), ("query_labels", query_labels), ("known", known)):
        if values.shape != distances.shape:
            raise ValueError(f"{name} must be one per query, shape {distances.shape}; received shape {values.shape}.")
    if not np.all(np.isfinite(distances)) or np.any(distances < 0):
        raise ValueError("nearest_distances must be finite and non-negative.")
    if known.dtype != bool and not np.isin(known, (0, 1)).all():
        raise ValueError(f"known must be booleans; received {known.dtype} values.")
    _check_comparable(nearest_labels, query_labels)
    correct = nearest_labels == query_labels
    known = known.astype(bool)
    if np.any(correct & ~known):
        raise ValueError("A query whose class is not in the index (known False) has a nearest reference of its class.")
    return distances, correct, known


def _check_comparable(reference_labels, query_labels):
    """Refuses labels that never compare equal: numbers against strings, str against bytes."""
    kinds = {np.asarray(values).dtype.kind for values in (reference_labels, query_labels)}
    numbers, texts = kinds <= set("biuf"), len(kinds) == 1 and kinds <= set("US")
    if not (numbers or texts or "O" in kinds):
        raise ValueError(
            f"The query labels ({np.asarray(query_labels).dtype}) and the index's labels "
            f"({np.asarray(reference_labels).dtype}) are of kinds that never compare equal."
        )
