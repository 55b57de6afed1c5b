"""Calibrated matching (Index.calibrate, Index.match) against brute-force loops and hand-made cases."""

import keras
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from tfmetric.search import Index, nearest_neighbours
from tfmetric.search.calibration import Calibration, calibrate, calibration_curve


def brute_force_curve(distances, nearest_labels, query_labels, known):
    """Every distinct distance as a threshold; each query counted one by one."""
    rows = []
    for threshold in sorted(set(distances)):
        matched = correct = 0
        for distance, nearest, truth in zip(distances, nearest_labels, query_labels):
            if distance <= threshold:
                matched += 1
                correct += nearest == truth
        precision, recall = correct / matched, correct / sum(known) if sum(known) else 0.0
        f1 = 2 * precision * recall / (precision + recall) if correct else 0.0
        rows.append((threshold, precision, recall, f1))
    return [np.array(column) for column in zip(*rows)]


def brute_force_choice(thresholds, precision, f1, target_precision):
    """The documented choice, by a plain loop: the last reaching the target, or the first best F1.

    This loop's F1 is `2pr/(p + r)`, which rounds differently from the
    library's `2·correct/(matches + known)`: equal F1s (2/3 as 6/9 and 8/12)
    may differ in their last bit here, so a tie is anything within 1e-12.
    """
    chosen = None
    for i in range(len(thresholds)):
        if target_precision is not None and precision[i] >= target_precision:
            chosen = i
        if target_precision is None and f1[i] > 0 and (chosen is None or f1[i] > f1[chosen] * (1 + 1e-12)):
            chosen = i
    return chosen


@settings(max_examples=80, deadline=None)
# Two thresholds with an F1 of 2/3 each, which 2pr/(p + r) rounds apart.
@example(n=29, classes=1, open_set=True, target_precision=None, seed=16787665)
@given(
    n=st.integers(1, 30),
    classes=st.integers(1, 4),
    open_set=st.booleans(),
    target_precision=st.sampled_from([None, 0.25, 0.5, 2 / 3, 0.8, 1.0]),
    seed=st.integers(0, 2**31),
)
def test_curve_and_choice_match_brute_force(n, classes, open_set, target_precision, seed):
    rng = np.random.default_rng(seed)
    distances = rng.integers(0, 6, size=n) / 4  # many ties
    nearest_labels = rng.integers(0, classes, size=n)
    query_labels = rng.integers(0, classes + open_set, size=n)  # class `classes` has no reference
    known = query_labels < classes
    curve = calibration_curve(distances, nearest_labels, query_labels, known)
    want = brute_force_curve(distances, nearest_labels, query_labels, known)
    for got, expected in zip(curve, want):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    chosen = brute_force_choice(*want[:2], want[3], target_precision)
    if chosen is None:
        with pytest.raises(ValueError):
            calibrate(distances, nearest_labels, query_labels, known, target_precision)
        return
    calibration = calibrate(distances, nearest_labels, query_labels, known, target_precision)
    assert calibration.threshold == want[0][chosen]
    assert (calibration.precision, calibration.recall) == (want[1][chosen], want[2][chosen])
    assert calibration.f1 == pytest.approx(want[3][chosen], rel=1e-12)


def test_hand_made_target_precision():
    # Sorted by distance: right, right, wrong, right, wrong, right.
    distances = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    nearest, truth = [0, 1, 2, 3, 4, 5], [0, 1, 0, 3, 0, 5]
    curve = calibration_curve(distances, nearest, truth)
    assert curve.precision.tolist() == [1, 1, 2 / 3, 3 / 4, 3 / 5, 4 / 6]
    assert curve.recall.tolist() == [1 / 6, 2 / 6, 2 / 6, 3 / 6, 3 / 6, 4 / 6]
    assert calibrate(distances, nearest, truth, target_precision=1.0).threshold == 0.2
    assert calibrate(distances, nearest, truth, target_precision=0.75).threshold == 0.4
    # 2/3 is reached again at the largest threshold, after dipping below it.
    assert calibrate(distances, nearest, truth, target_precision=2 / 3).threshold == 0.6
    assert calibrate(distances, nearest, truth, target_precision=0.6).threshold == 0.6
    calibration = calibrate(distances, nearest, truth, target_precision=0.75, distance="cosine")
    assert (calibration.precision, calibration.recall, calibration.target_precision) == (0.75, 0.5, 0.75)
    assert calibration.f1 == pytest.approx(0.6) and calibration.distance == "cosine"


def test_hand_made_best_f1_and_its_ties():
    # Right, right, right, then an open-set query (class 9): F1 = 2 correct / (matched + 3 known).
    calibration = calibrate([1.0, 2.0, 3.0, 4.0], [0, 1, 2, 3], [0, 1, 2, 9], known=[1, 1, 1, 0])
    assert calibration.curve.f1.tolist() == [2 / 4, 4 / 5, 6 / 6, 6 / 7]
    assert (calibration.threshold, calibration.precision, calibration.recall, calibration.f1) == (3.0, 1, 1, 1)
    assert calibration.target_precision is None
    # F1 2/3 at 1.0, then 2/4, 2/5, and 4/6 = 2/3 again at 4.0: the smaller threshold (fewer false matches) wins.
    tied = calibrate([1.0, 2.0, 3.0, 4.0], [0, 7, 2, 3], [0, 8, 8, 3], known=[1, 0, 0, 1])
    assert tied.curve.f1.tolist() == [2 / 3, 2 / 4, 2 / 5, 4 / 6] and tied.curve.f1[0] == tied.curve.f1[3]
    assert (tied.threshold, tied.precision, tied.recall) == (1.0, 1.0, 0.5)


def test_queries_at_equal_distances_switch_together():
    # Three queries at 0.5: one right, two wrong; they are matched (or not) as one.
    curve = calibration_curve([0.5, 0.2, 0.5, 0.5, 0.9], [1, 1, 2, 3, 4], [1, 1, 0, 0, 4])
    assert curve.thresholds.tolist() == [0.2, 0.5, 0.9]
    assert curve.precision.tolist() == [1.0, 2 / 4, 3 / 5]
    assert curve.recall.tolist() == [1 / 5, 2 / 5, 3 / 5]
    # Matching only the right one of the three (precision 1) or two of them (2/3) is no choice.
    arguments = [0.5, 0.2, 0.5, 0.5, 0.9], [1, 1, 2, 3, 4], [1, 1, 0, 0, 4]
    assert calibrate(*arguments, target_precision=0.55).threshold == 0.9
    assert calibrate(*arguments, target_precision=0.61).threshold == 0.2


def test_open_set_queries_only_lower_precision():
    # The third and fourth queries' classes (7, 8) have no reference: matching them is a false match,
    # and they are not in the recall's denominator.
    distances, nearest, truth = [0.1, 0.2, 0.3, 0.4], [0, 1, 2, 3], [0, 1, 7, 8]
    curve = calibration_curve(distances, nearest, truth, known=[True, True, False, False])
    assert curve.precision.tolist() == [1.0, 1.0, 2 / 3, 0.5]
    assert curve.recall.tolist() == [0.5, 1.0, 1.0, 1.0]
    # Without `known`, every query counts as findable: recall halves.
    assert calibration_curve(distances, nearest, truth).recall.tolist() == [0.25, 0.5, 0.5, 0.5]


def test_everything_unknown_or_wrong_has_no_threshold():
    # Every query is open-set: nothing can be matched correctly.
    with pytest.raises(ValueError, match="no threshold matches any query correctly"):
        calibrate([0.1, 0.2], [0, 1], [5, 6], known=[False, False])
    curve = calibration_curve([0.1, 0.2], [0, 1], [5, 6], known=[False, False])
    assert curve.precision.tolist() == [0.0, 0.0] and curve.recall.tolist() == [0.0, 0.0]
    assert curve.f1.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"No threshold reaches a precision of 0.9: the best is 0.5 \(threshold 0.2\)"):
        calibrate([0.1, 0.2, 0.3], [0, 1, 2], [9, 1, 9], target_precision=0.9)


def test_one_query():
    calibration = calibrate([0.25], ["a"], ["a"])
    assert (calibration.threshold, calibration.precision, calibration.recall, calibration.f1) == (0.25, 1, 1, 1)
    assert calibrate([0.25], ["a"], ["a"], target_precision=1.0).threshold == 0.25
    with pytest.raises(ValueError, match="no threshold"):
        calibrate([0.25], ["a"], ["b"])
    assert calibrate([0.0], [3], [3]).threshold == 0.0


def test_calibration_errors():
    with pytest.raises(ValueError, match=r"shape \(N,\) with N >= 1; received shape \(0,\)"):
        calibrate([], [], [])
    with pytest.raises(ValueError, match=r"query_labels must be one per query, shape \(2,\); received shape \(3,\)"):
        calibrate([0.1, 0.2], [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="finite and non-negative"):
        calibrate([0.1, -0.2], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="finite and non-negative"):
        calibrate([0.1, np.nan], [0, 1], [0, 1])
    for target in (0, 1.5, -0.1, "high"):
        with pytest.raises(ValueError, match=r"target_precision must be a number in \(0, 1\]"):
            calibrate([0.1], [0], [0], target_precision=target)
    with pytest.raises(ValueError, match="known False"):
        calibrate([0.1], [0], [0], known=[False])
    with pytest.raises(ValueError, match="known must be booleans"):
        calibrate([0.1], [0], [0], known=[2])
    with pytest.raises(ValueError, match="never compare equal"):
        calibrate([0.1], [0], ["0"])


def clusters(seed, per_class=6, classes=4, dim=3):
    """Labelled points around the same well-separated centres, whatever the seed."""
    centres = np.random.default_rng(0).normal(scale=4.0, size=(classes, dim))
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_index_calibrate_is_the_calibration_of_its_nearest(distance):
    references, reference_labels = clusters(0)
    queries, query_labels = clusters(1)
    query_labels = np.where(query_labels == 3, 9, query_labels)  # class 9 has no reference: open set
    index = Index(distance=distance)
    index.add(references, labels=reference_labels)
    calibration = index.calibrate(queries, query_labels, target_precision=0.8)
    distances, indices = nearest_neighbours(queries, references, 1, distance)
    want = brute_force_curve(distances[:, 0], reference_labels[indices[:, 0]], query_labels, query_labels != 9)
    for got, expected in zip(calibration.curve, want):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert calibration.threshold == want[0][brute_force_choice(*want[:2], want[3], 0.8)]
    assert index.threshold == calibration.threshold and index.calibration is calibration
    assert calibration.distance == distance and calibration.precision >= 0.8
    # match on the same queries makes the same decisions as the calibration counted.
    result = index.match(queries, verbose=0)
    correct = result.matched & (result.labels == query_labels)
    assert correct.sum() / result.matched.sum() == calibration.precision
    assert correct.sum() / (query_labels != 9).sum() == calibration.recall


def test_index_calibrate_leave_one_out():
    references, labels = clusters(2, per_class=3)
    labels = np.append(labels, 7)  # alone of its class: an open-set query against the others
    references = np.vstack([references, np.zeros((1, 3))])
    index = Index()
    index.add(references, labels=labels)
    calibration = index.calibrate(exclude_self=True)
    distances, indices = nearest_neighbours(references, references, 1, exclude_self=True)
    known = np.array([np.sum(labels == label) > 1 for label in labels])
    assert known.tolist() == [True] * 12 + [False]
    want = brute_force_curve(distances[:, 0], labels[indices[:, 0]], labels, known)
    for got, expected in zip(calibration.curve, want):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert calibration.threshold == want[0][brute_force_choice(*want[:2], want[3], None)]
    with pytest.raises(ValueError, match="give no embeddings, x or labels"):
        index.calibrate(references, labels, exclude_self=True)
    single = Index()
    single.add(np.zeros((1, 2)), labels=[0])
    with pytest.raises(ValueError, match="at least 2 references; the index has 1"):
        single.calibrate(exclude_self=True)


def test_index_calibrate_with_string_labels_and_match():
    index = Index()
    index.add(np.array([[0.0], [10.0], [20.0]]), labels=["cat", "dog", "owl"])
    queries = np.array([[0.5], [11.0], [14.0], [21.5]])
    calibration = index.calibrate(queries, ["cat", "dog", "dog", "fox"])
    # By distance: 0.5 right, 1.0 right, 1.5 wrong (a fox: open set), 4.0 right; 3 known queries.
    assert calibration.curve.f1.tolist() == [2 / 4, 4 / 5, 4 / 6, 6 / 7]
    assert calibration.threshold == 4.0
    calibration = index.calibrate(queries, ["cat", "dog", "dog", "fox"], target_precision=1.0)
    assert (calibration.threshold, calibration.recall) == (1.0, 2 / 3)
    result = index.match(queries, verbose=0)
    assert result.labels.tolist() == ["cat", "dog", "", ""] and result.labels.dtype == np.dtype("<U3")
    # Squared distances are exact to 1e-12 of the largest squared norm (441): 1.5 is 1.500000000038.
    np.testing.assert_allclose(result.distances, [0.5, 1.0, 4.0, 1.5], rtol=1e-9)
    assert result.indices.tolist() == [0, 1, 1, 2] and result.matched.tolist() == [True, True, False, False]
    widened = index.match(queries, unknown="unknown", verbose=0).labels
    assert widened.tolist() == ["cat", "dog", "unknown", "unknown"] and widened.dtype == np.dtype("<U7")
    mixed = index.match(queries, unknown=-1, verbose=0).labels
    assert mixed.dtype == object and mixed.tolist() == ["cat", "dog", -1, -1]


def test_match_threshold_sources_and_errors():
    index = Index()
    index.add(np.array([[0.0], [10.0]]), labels=[3, 7])
    queries = np.array([[1.0], [9.5], [5.0], [0.0]])
    with pytest.raises(ValueError, match="needs a threshold"):
        index.match(queries, verbose=0)
    # A given threshold; the distance equal to it is a match.
    assert index.match(queries, threshold=1, verbose=0).labels.tolist() == [3, 7, -1, 3]
    assert index.match(queries, threshold=0.0, verbose=0).matched.tolist() == [False, False, False, True]
    index.threshold = 5.0
    assert index.threshold == 5.0 and index.calibration is None
    assert index.match(queries, verbose=0).matched.tolist() == [True, True, True, True]
    # The call's threshold overrides the index's.
    assert index.match(queries, threshold=0.5, verbose=0).labels.tolist() == [-1, 7, -1, 3]
    for bad in (-0.1, np.inf, np.nan, "1", True):
        with pytest.raises(ValueError, match="non-negative"):
            index.threshold = bad
        with pytest.raises(ValueError, match="non-negative"):
            index.match(queries, threshold=bad, verbose=0)
    index.threshold = None
    assert index.threshold is None
    unlabelled = Index()
    unlabelled.add(np.zeros((2, 1)))
    with pytest.raises(ValueError, match="needs an index with labels"):
        unlabelled.match(queries, threshold=1.0, verbose=0)
    with pytest.raises(ValueError, match="needs an index with labels"):
        unlabelled.calibrate(queries, [0, 0, 0, 0], verbose=0)
    with pytest.raises(ValueError, match="empty"):
        Index().calibrate(queries, [0, 0, 0, 0], verbose=0)
    with pytest.raises(ValueError, match="empty"):
        Index().match(queries, threshold=1.0, verbose=0)
    with pytest.raises(ValueError, match="needs the queries' labels"):
        index.calibrate(queries)
    with pytest.raises(ValueError, match=r"4 queries need labels of shape \(4,\); received \(3,\)"):
        index.calibrate(queries, [3, 7, 3])
    with pytest.raises(ValueError, match="1-dimensional embeddings; the queries have 2"):
        index.calibrate(np.zeros((1, 2)), [3])
    with pytest.raises(ValueError, match="never compare equal"):
        index.calibrate(queries, ["3", "7", "3", "3"])


def test_everything_unknown_in_match():
    index = Index()
    index.add(np.array([[0.0], [10.0]]), labels=[3, 7])
    result = index.match(np.array([[4.0], [6.0]]), threshold=1.0, verbose=0)
    assert result.labels.tolist() == [-1, -1] and not result.matched.any()
    with pytest.raises(ValueError, match="no threshold matches any query correctly"):
        index.calibrate(np.array([[4.0], [6.0]]), [5, 6])


@pytest.mark.parametrize(
    ("labels", "unknown", "dtype", "expected"),
    [
        (np.array([3, 7], np.int64), None, np.int64, [3, -1]),
        (np.array([3, 7], np.int8), None, np.int8, [3, -1]),
        (np.array([3, 7], np.uint8), None, np.int16, [3, -1]),  # the smallest type that holds -1
        (np.array([3, 7], np.uint64), None, object, [3, -1]),  # uint64 and -1 meet only in float64
        (np.array([3, 7], np.int8), 1000, np.int32, [3, 1000]),  # NumPy's promotion of int8 and uint16
        (np.array([3, 7], np.int64), 2**70, object, [3, 2**70]),
        (np.array([3, 7]), "unknown", object, [3, "unknown"]),
        (np.array([3, 7]), -1.5, object, [3, -1.5]),  # a float is not of integer labels' kind
        (np.array([0.5, 1.5]), None, np.float64, [0.5, np.nan]),
        (np.array([0.5, 1.5], np.float32), -1, np.float32, [0.5, -1.0]),
        (np.array(["a", "b"]), None, "<U1", ["a", ""]),
        (np.array([b"a", b"b"]), None, "S1", [b"a", b""]),
        (np.array([b"a", b"b"]), "x", object, [b"a", "x"]),
        (np.array([True, False]), None, object, [True, None]),
    ],
)
def test_unknown_value_and_dtype(labels, unknown, dtype, expected):
    index = Index()
    index.add(np.array([[0.0], [10.0]]), labels=labels)
    got = index.match(np.array([[0.0], [5.0]]), threshold=1.0, unknown=unknown, verbose=0).labels
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, np.array(expected, dtype=dtype))
    assert [type(value) for value in got.tolist()] == [type(value) for value in np.array(expected, dtype).tolist()]


def test_save_load_keeps_the_threshold_and_the_calibration(tmp_path):
    references, labels = clusters(3)
    index = Index(distance="cosine")
    index.add(references, labels=labels)
    index.save(tmp_path / "plain.npz")
    plain = Index.load(tmp_path / "plain.npz")
    assert plain.threshold is None and plain.calibration is None
    calibration = index.calibrate(exclude_self=True, target_precision=0.9)
    index.save(tmp_path / "calibrated.npz")
    loaded = Index.load(tmp_path / "calibrated.npz")
    assert loaded.threshold == index.threshold == calibration.threshold
    for name in ("threshold", "precision", "recall", "f1", "target_precision", "distance"):
        assert getattr(loaded.calibration, name) == getattr(calibration, name)
    for got, saved in zip(loaded.calibration.curve, calibration.curve):
        np.testing.assert_array_equal(got, saved)
    queries = references + 0.1
    np.testing.assert_array_equal(loaded.match(queries, verbose=0).labels, index.match(queries, verbose=0).labels)
    # A threshold set by hand, without a calibration, is kept too.
    index.threshold = 0.125
    index.save(tmp_path / "by_hand.npz")
    by_hand = Index.load(tmp_path / "by_hand.npz")
    assert by_hand.threshold == 0.125 and by_hand.calibration.threshold == calibration.threshold


def test_plot_returns_axes(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib import pyplot

    calibration = calibrate([0.1, 0.2, 0.3, 0.4], [0, 1, 2, 3], [0, 1, 9, 3], target_precision=0.7, distance="cosine")
    ax = calibration.plot()
    assert ax.get_xlabel() == "cosine distance threshold"
    assert [line.get_label() for line in ax.get_lines()][:3] == ["precision", "recall", "F1"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), calibration.curve.thresholds)
    assert "threshold 0.4 (precision ≥ 0.7)" in [text.get_text() for text in ax.get_legend().get_texts()]
    figure, given = pyplot.subplots()
    assert calibration.plot(ax=given) is given
    figure.savefig(tmp_path / "calibration.png")
    pyplot.close("all")
    with pytest.raises(ValueError, match="no curve"):
        Calibration(0.1, 1.0, 1.0, 1.0).plot()


def test_calibrate_and_match_raw_inputs_with_a_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_initializer="glorot_uniform")])
    rng = np.random.default_rng(4)
    x, labels = rng.normal(size=(24, 4)).astype("float32"), np.arange(24) % 4
    queries = (x + rng.normal(scale=0.1, size=x.shape)).astype("float32")
    index = Index(model)
    index.add(x=x, labels=labels, batch_size=8, verbose=0)
    calibration = index.calibrate(x=queries, labels=labels, batch_size=8, verbose=0)
    embedded = Index()
    embedded.add(index.embeddings, labels=labels)
    # Same batches, so float32 rounds the same: the same calibration as on the embeddings.
    want = embedded.calibrate(model.predict(queries, batch_size=8, verbose=0), labels)
    assert calibration.threshold == want.threshold and calibration.f1 == want.f1
    result = index.match(x=queries, batch_size=8, verbose=0)
    np.testing.assert_array_equal(result.labels, embedded.match(model.predict(queries, batch_size=8, verbose=0)).labels)
    other = Index()
    other.add(index.embeddings, labels=labels)
    assert other.calibrate(x=queries, labels=labels, model=model, batch_size=8, verbose=0).threshold == want.threshold
