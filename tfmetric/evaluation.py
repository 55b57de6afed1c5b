"""Retrieval quality of embeddings: precision@1, recall@k, R-precision, MAP@R, NMI.

Every query's neighbours are ranked by distance, ties (equal up to 1e-12 of
the data's scale) broken by the reference's index, so the numbers are exact
and reproducible. Without a
reference set each point queries all the others (leave-one-out). The
neighbours come from the exact search of `tfm.search` (blocks of queries
against blocks of references), so 100 000 points take seconds and fit in
memory.

Queries whose class has no other example among the references cannot be
scored and are left out of every average (their number is reported). With
`multi_label=True` the labels are 0/1 rows `(N, C)` and a neighbour is
relevant when it shares at least one label with the query.
"""

import numpy as np

from tfmetric.distances import check_distance
from tfmetric.optional import optional_import
from tfmetric.search.exact import DEFAULT_BLOCK_SIZE, _nearest_neighbours

__all__ = ["retrieval_metrics"]

# Query-reference pairs whose shared labels are counted at once (multi-label): about 16 MiB.
_PAIRS_AT_ONCE = 2**21


def retrieval_metrics(
    embeddings,
    labels,
    reference=None,
    reference_labels=None,
    k=(1, 5, 10),
    distance="euclidean",
    nmi=True,
    multi_label=False,
):
    """Retrieval metrics of `embeddings` against a reference set (or each other).

    - `precision@1`: the share of queries whose nearest neighbour has their label.
    - `recall@k`: the share of queries with at least one same-label neighbour
      among their k nearest (the "Recall@K" of the metric-learning papers).
    - `r_precision`: with R the number of same-label references, the share of
      same-label ones among the R nearest.
    - `map@r`: mean average precision at R (Musgrave et al. 2020), which
      also rewards ranking the same-label references first.
    - `nmi`: normalised mutual information between the labels and a k-means
      clustering of the embeddings into as many clusters (scikit-learn).

    Args:
        embeddings: Query embeddings `(N, D)`.
        labels: Their integer labels `(N,)`.
        reference: Optional reference embeddings `(M, D)`; by default every
            query is compared with all the other queries (leave-one-out).
        reference_labels: Labels of `reference`.
        k: The k of `recall@k`.
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        nmi: Also compute NMI (needs scikit-learn, the `[viz]` extra; one
            class per example, so not with `multi_label`).
        multi_label: `labels` and `reference_labels` are 0/1 rows `(N, C)`
            (or `tf.SparseTensor`s); "same label" above then means "at
            least one shared label".

    Returns:
        A dict of floats, plus `"queries"` (how many were scored).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> x = np.array([[0.0], [0.1], [1.0], [1.2], [0.15]])
    >>> metrics = tfm.evaluation.retrieval_metrics(x, [0, 0, 1, 1, 1], k=(1, 2), nmi=False)
    >>> [round(metrics[name], 4) for name in ("precision@1", "recall@2", "r_precision", "map@r")]
    [0.6, 0.8, 0.6, 0.6]
    """
    queries = np.asarray(embeddings, np.float64)
    query_labels = _labels(labels, multi_label)
    if queries.ndim != 2 or len(queries) != len(query_labels):
        raise ValueError(
            f"embeddings must be (N, D) with one label each; received {queries.shape} and {query_labels.shape}."
        )
    if not np.isfinite(queries).all():
        raise ValueError("embeddings hold NaN or infinite values (has training diverged?).")
    if multi_label and nmi:
        raise ValueError("NMI compares one class per example with clusters: pass nmi=False with multi_label.")
    leave_one_out = reference is None
    if leave_one_out:
        references, reference_labels = queries, query_labels
    else:
        references = np.asarray(reference, np.float64)
        if not np.isfinite(references).all():
            raise ValueError("reference holds NaN or infinite values (has training diverged?).")
        reference_labels = _labels(reference_labels, multi_label)
        if references.ndim != 2 or references.shape[1] != queries.shape[1] or len(references) != len(reference_labels):
            raise ValueError(
                f"reference must be (M, {queries.shape[1]}) with one label each; received "
                f"{references.shape} and {reference_labels.shape}."
            )
        if multi_label and reference_labels.shape[1] != query_labels.shape[1]:
            raise ValueError(
                f"Multi-hot labels with {query_labels.shape[1]} classes against reference labels with "
                f"{reference_labels.shape[1]}."
            )
    distance = check_distance(distance)
    ks = tuple(sorted({int(value) for value in np.atleast_1d(k)}))
    if not ks or ks[0] < 1:
        raise ValueError(f"k must hold positive integers; received {k}.")
    depths = tuple(sorted(set(ks) | {1}))

    if multi_label:
        relevant_counts = _shared_label_counts(query_labels, reference_labels)
        if leave_one_out:
            # A query with a label shares it with itself, which is no neighbour.
            relevant_counts = relevant_counts - query_labels.any(axis=1)
    else:
        classes, reference_ids = np.unique(reference_labels, return_inverse=True)
        class_sizes = np.bincount(reference_ids, minlength=len(classes))
        position = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
        relevant_counts = np.where(classes[position] == query_labels, class_sizes[position], 0)
        if leave_one_out:
            relevant_counts = relevant_counts - 1
    scored = relevant_counts > 0
    available = len(references) - (1 if leave_one_out else 0)
    depth = min(max(depths[-1], int(relevant_counts.max(initial=0))), available)

    hits_at = {value: np.zeros(len(queries)) for value in depths}
    r_precision = np.zeros(len(queries))
    average_precision = np.zeros(len(queries))
    def score(rows, _, nearest):
        # Called for each block of queries as its neighbours are found (from
        # several threads, for disjoint rows): one block's neighbours in memory.
        if multi_label:
            shared = query_labels[rows, None, :] & reference_labels[nearest]
            relevant = shared.any(axis=2)
        else:
            relevant = reference_labels[nearest] == query_labels[rows, None]
        for value in depths:
            hits_at[value][rows] = relevant[:, :value].any(axis=1)
        r = relevant_counts[rows]
        hits_within_r = relevant & (np.arange(depth)[None, :] < r[:, None])
        r_safe = np.maximum(r, 1)
        r_precision[rows] = hits_within_r.sum(axis=1) / r_safe
        precision_at_rank = np.cumsum(hits_within_r, axis=1) / np.arange(1, depth + 1)
        average_precision[rows] = (precision_at_rank * hits_within_r).sum(axis=1) / r_safe

    if depth > 0:
        own = np.arange(len(queries)) if leave_one_out else None
        _nearest_neighbours(queries, references, depth, distance, own, DEFAULT_BLOCK_SIZE, consume=score)

    count = int(scored.sum())

    def mean(values):
        return float(values[scored].mean()) if count else 0.0

    metrics = {"precision@1": mean(hits_at[1])}
    for value in ks:
        metrics[f"recall@{value}"] = mean(hits_at[value])
    metrics["r_precision"] = mean(r_precision)
    metrics["map@r"] = mean(average_precision)
    if nmi:
        metrics["nmi"] = normalized_mutual_information(queries, query_labels)
    metrics["queries"] = count
    return metrics


def _labels(labels, multi_label):
    """Class ids `(N,)`, or with `multi_label` boolean rows `(N, C)` (a `tf.SparseTensor` densified)."""
    if not multi_label:
        return np.asarray(labels).reshape(-1)
    if hasattr(labels, "dense_shape"):
        import tensorflow as tf

        labels = tf.sparse.to_dense(labels)
    values = np.asarray(labels)
    if values.ndim != 2 or not np.all((values == 0) | (values == 1)):
        raise ValueError(
            f"Multi-label targets must be a (N, num_classes) 0/1 matrix; received shape {values.shape}."
        )
    return values.astype(bool)


def _shared_label_counts(query_labels, reference_labels):
    """For every query, how many references share at least one label with it (block by block)."""
    counts = np.zeros(len(query_labels), np.int64)
    references = reference_labels.astype(np.float64)
    block = max(1, _PAIRS_AT_ONCE // max(len(reference_labels), 1))
    for start in range(0, len(query_labels), block):
        rows = slice(start, start + block)
        counts[rows] = ((query_labels[rows].astype(np.float64) @ references.T) > 0).sum(axis=1)
    return counts


def normalized_mutual_information(embeddings, labels, seed=0):
    """NMI between `labels` and k-means clusters of `embeddings` (as many as labels)."""
    cluster = optional_import("sklearn.cluster", "NMI (or pass nmi=False)")
    sklearn_metrics = optional_import("sklearn.metrics", "NMI (or pass nmi=False)")
    num_clusters = len(np.unique(labels))
    if num_clusters < 2 or len(embeddings) <= num_clusters:
        return 1.0 if num_clusters == len(np.unique(embeddings, axis=0)) else 0.0
    clusters = cluster.KMeans(n_clusters=num_clusters, n_init=1, random_state=seed).fit_predict(embeddings)
    return float(sklearn_metrics.normalized_mutual_info_score(labels, clusters))
