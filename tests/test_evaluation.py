"""Retrieval metrics against a brute-force reference (loops over neighbours)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tfmetric as tfm
import tfmetric.evaluation


def _shares_a_label(a, b):
    """Same class id, or for multi-hot rows at least one label in common."""
    if np.ndim(a):
        return any(x and y for x, y in zip(a, b))
    return a == b


def brute_force(queries, labels, references, reference_labels, ks, distance, leave_one_out):
    scored, p1, recall, r_prec, ap = 0, 0.0, {k: 0.0 for k in ks}, 0.0, 0.0
    for q in range(len(queries)):
        candidates = [i for i in range(len(references)) if not (leave_one_out and i == q)]
        def dist(i):
            a, b = queries[q], references[i]
            if distance == "euclidean":
                return float(np.sqrt(np.sum((a - b) ** 2)))
            if distance == "squared_euclidean":
                return float(np.sum((a - b) ** 2))
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            if na == 0 or nb == 0:
                return 1.0
            return max(1.0 - float(a @ b) / (na * nb), 0.0)
        ranked = sorted(candidates, key=lambda i: (round(dist(i), 9), i))
        relevant = [_shares_a_label(reference_labels[i], labels[q]) for i in ranked]
        r = sum(relevant)
        if r == 0:
            continue
        scored += 1
        p1 += relevant[0]
        for k in ks:
            recall[k] += any(relevant[:k])
        r_prec += sum(relevant[:r]) / r
        ap += sum(sum(relevant[: i + 1]) / (i + 1) for i in range(r) if relevant[i]) / r
    if not scored:
        return {"queries": 0}
    result = {"precision@1": p1 / scored, "r_precision": r_prec / scored, "map@r": ap / scored, "queries": scored}
    result.update({f"recall@{k}": recall[k] / scored for k in ks})
    return result


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 30),
    m=st.integers(1, 30),
    dim=st.integers(1, 3),
    num_classes=st.integers(1, 5),
    seed=st.integers(0, 2**31),
    distance=st.sampled_from(["euclidean", "squared_euclidean", "cosine"]),
    leave_one_out=st.booleans(),
    ks=st.sampled_from([(1,), (1, 2, 5), (3, 100)]),
)
def test_matches_brute_force(n, m, dim, num_classes, seed, distance, leave_one_out, ks):
    rng = np.random.default_rng(seed)
    # Small integer coordinates: many exact ties, broken by reference index.
    queries = rng.integers(-2, 3, size=(n, dim)).astype(float)
    labels = rng.integers(0, num_classes, size=n)
    if leave_one_out:
        references, reference_labels = queries, labels
        got = tfm.evaluation.retrieval_metrics(queries, labels, k=ks, distance=distance, nmi=False)
    else:
        references = rng.integers(-2, 3, size=(m, dim)).astype(float)
        reference_labels = rng.integers(0, num_classes, size=m)
        got = tfm.evaluation.retrieval_metrics(
            queries, labels, references, reference_labels, k=ks, distance=distance, nmi=False
        )
    want = brute_force(queries, labels, references, reference_labels, ks, distance, leave_one_out)
    assert got["queries"] == want["queries"]
    if want["queries"]:
        for name, value in want.items():
            assert got[name] == pytest.approx(value, abs=1e-12), name


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 20),
    m=st.integers(1, 20),
    num_classes=st.integers(1, 4),
    seed=st.integers(0, 2**31),
    leave_one_out=st.booleans(),
)
def test_multi_label_matches_brute_force(n, m, num_classes, seed, leave_one_out):
    rng = np.random.default_rng(seed)
    queries = rng.integers(-2, 3, size=(n, 2)).astype(float)
    # Some rows with several labels, some with none.
    labels = (rng.random((n, num_classes)) < 0.4).astype(int)
    if leave_one_out:
        references, reference_labels = queries, labels
        got = tfm.evaluation.retrieval_metrics(queries, labels, k=(1, 3), nmi=False, multi_label=True)
    else:
        references = rng.integers(-2, 3, size=(m, 2)).astype(float)
        reference_labels = (rng.random((m, num_classes)) < 0.4).astype(int)
        got = tfm.evaluation.retrieval_metrics(
            queries, labels, references, reference_labels, k=(1, 3), nmi=False, multi_label=True
        )
    want = brute_force(queries, labels, references, reference_labels, (1, 3), "euclidean", leave_one_out)
    assert got["queries"] == want["queries"]
    if want["queries"]:
        for name, value in want.items():
            assert got[name] == pytest.approx(value, abs=1e-12), name


def test_multi_label_one_hot_rows_are_class_ids_and_errors():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), rng.integers(0, 4, size=30)
    want = tfm.evaluation.retrieval_metrics(x, y, nmi=False)
    assert tfm.evaluation.retrieval_metrics(x, np.eye(4)[y], nmi=False, multi_label=True) == want
    with pytest.raises(ValueError, match="nmi=False"):
        tfm.evaluation.retrieval_metrics(x, np.eye(4)[y], multi_label=True)
    with pytest.raises(ValueError, match="0/1 matrix"):
        tfm.evaluation.retrieval_metrics(x, y, nmi=False, multi_label=True)
    with pytest.raises(ValueError, match="4 classes against reference labels with 3"):
        tfm.evaluation.retrieval_metrics(x, np.eye(4)[y], x, np.eye(3)[y % 3], nmi=False, multi_label=True)


def test_blocks_give_the_same_answer(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = rng.integers(0, 7, size=300)
    whole = tfm.evaluation.retrieval_metrics(x, y, nmi=False)
    # Blocks of 7 queries against 11 references: 43 blocks of queries scored
    # as they come, from several threads.
    monkeypatch.setattr(tfmetric.evaluation, "DEFAULT_BLOCK_SIZE", (7, 11))
    assert tfm.evaluation.retrieval_metrics(x, y, nmi=False) == whole


def test_nmi_of_separated_clusters_is_one_and_of_noise_is_low():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 25)
    centres = np.eye(4) * 100
    separated = tfm.evaluation.retrieval_metrics(centres[labels] + rng.normal(size=(100, 4)), labels)
    assert separated["nmi"] == pytest.approx(1.0)
    assert separated["map@r"] == pytest.approx(1.0)
    noise = tfm.evaluation.retrieval_metrics(rng.normal(size=(100, 4)), labels)
    assert noise["nmi"] < 0.3


def test_errors():
    with pytest.raises(ValueError, match="one label each"):
        tfm.evaluation.retrieval_metrics(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="k must"):
        tfm.evaluation.retrieval_metrics(np.zeros((3, 2)), [0, 1, 1], k=0)
    with pytest.raises(ValueError, match="reference"):
        tfm.evaluation.retrieval_metrics(np.zeros((3, 2)), [0, 1, 1], np.zeros((2, 3)), [0, 1])
