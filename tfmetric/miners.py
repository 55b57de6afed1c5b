"""Miners: which pairs or triplets of a batch a loss looks at (PyTorch Metric Learning's miners).

A miner never returns lists of indices: it narrows the boolean `(N, R)`
masks of positive and negative pairs (N queries against R reference rows:
the batch itself, a reference set, a cross-batch memory), so that everything
keeps fixed shapes and runs under XLA, `tf.function` and JAX's jit. Masks
only ever narrow the masks a miner is given: reference sets,
`remove_diagonal`, multi-label batches and cross-batch memories keep
working.

- `pairs(matrix, positive, negative)` returns the mined `(positive,
  negative)` masks: the natural form of the pair miners.
- `triplets(matrix, positive, negative)` returns `Triplets`: the natural
  form of the triplet miners. No `(N, R, R)` tensor: `Triplets.positive`
  marks the pairs (a, p) that head at least one triplet, and
  `Triplets.negatives(slot)` gives, for the slot s that holds each anchor's
  s-th such positive p(a), the negatives n with (a, p(a), n) in the set
  (`for_each_triplet_slot` visits the slots).

A pair miner's triplets are every mined positive pair of an anchor with
every mined negative pair of the same anchor (PML's `convert_to_triplets`);
a triplet miner's pairs are the (a, p) and (a, n) of its triplets (PML's
`convert_to_pairs`, whose repeated pairs are counted once here: a set of
pairs, not a list).

Every loss takes a miner (`tfm.Contrastive(miner=tfm.miners.PairMarginMiner())`):
pair losses look at the mined pairs; `BatchAllTriplet` (PML's
`TripletMarginLoss`) at the mined triplets. Each miner has its own distance,
as in PML: `"euclidean"` (default, on L2-normalised embeddings, PML's
`LpDistance()`), `"squared_euclidean"`, `"cosine"` (1 − cosine), or
`"similarity"` (dot products, cosine similarities when normalised: PML's
`CosineSimilarity()`, where larger means closer). Miners compute nothing
differentiable: their matrix is gradient-free.
"""

import math
from fractions import Fraction
from typing import Callable, NamedTuple

import keras
from keras import ops

from tfmetric.distances import as_embedding_pair, check_distance, l2_normalize, pairwise_distance, pairwise_similarity
from tfmetric.labels import standardize_any, standardize_label_pair
from tfmetric.mining import (
    UNIFORMS_PER_ANCHOR,
    add_at,
    distance_weighted_log_weights,
    draw_columns,
    for_each_positive,
    inverse_cdf,
    pair_masks,
    random_numbers,
    row_min_above,
    row_pick,
    smallest_mask,
    take_in_range,
)

MINER_DISTANCES = ("euclidean", "squared_euclidean", "cosine", "similarity")
STRATEGIES = ("hard", "semihard", "easy", "all")
TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


class Slot(NamedTuple):
    """One slot of `Triplets.positive`: every anchor's s-th positive.

    `positive_index` `(N,)` int32: the column p(a); `has_slot` `(N,)` bool:
    whether anchor a has an s-th positive; `positive_value` `(N,)`:
    `matrix[a, p(a)]`; `matrix` `(N, R)`: the miner's matrix oriented as a
    distance (larger = farther; −similarity for `distance="similarity"`);
    `negative` `(N, R)` bool: the candidate negatives; `number`: s.
    """

    positive_index: object
    has_slot: object
    positive_value: object
    matrix: object
    negative: object
    number: object


class Triplets(NamedTuple):
    """A set of triplets (a, p, n) without an N·R·R tensor (see the module docstring).

    `positive` `(N, R)` bool: the pairs (a, p) that head at least one
    triplet; `negatives(slot)`: the `(N, R)` negatives n with
    (a, p(a), n) in the set, for a `Slot` of `positive`; `matrix`,
    `negative`: the oriented matrix and candidate negatives of the slots.
    """

    positive: object
    negatives: Callable
    matrix: object
    negative: object


def for_each_triplet_slot(triplets, body, state):
    """Runs `state = body(slot, negatives, *state)` over the slots of `triplets.positive`.

    `negatives` is `triplets.negatives(slot)` narrowed to the candidate
    negatives and to the anchors that have the slot.
    """
    matrix = triplets.matrix

    def step(slot_positive, has_slot, number, *state):
        slot = Slot(slot_positive, has_slot, row_pick(matrix, slot_positive), matrix, triplets.negative, number)
        chosen = ops.logical_and(ops.logical_and(triplets.negatives(slot), triplets.negative), has_slot[:, None])
        return (number + 1, *body(slot, chosen, *state))

    result = for_each_positive(triplets.positive, step, (ops.convert_to_tensor(0, "int32"), *state))
    return tuple(result[1:])


def triplet_heads(matrix, positive, negative, negatives):
    """`Triplets` whose `positive` keeps only the pairs of `positive` that head a triplet of `negatives`."""
    candidates = Triplets(positive, negatives, matrix, negative)

    def body(slot, chosen, heads):
        has_any = ops.logical_and(ops.any(chosen, axis=1), slot.has_slot)
        columns = ops.arange(ops.shape(matrix)[1], dtype="int32")
        hit = ops.logical_and(ops.equal(columns[None, :], slot.positive_index[:, None]), has_any[:, None])
        return (ops.logical_or(heads, hit),)

    (heads,) = for_each_triplet_slot(candidates, body, (ops.zeros_like(positive),))
    return Triplets(heads, negatives, matrix, negative)


def _one_hot(index, keep, num_columns):
    columns = ops.arange(num_columns, dtype="int32")
    return ops.logical_and(ops.equal(columns[None, :], ops.cast(index, "int32")[:, None]), keep[:, None])


def _in_range(values, allowed):
    if allowed is None:
        return ops.ones_like(values, dtype="bool")
    low, high = allowed
    return ops.logical_and(values >= low, values <= high)


def _check_range(name, allowed):
    if allowed is None:
        return None
    try:
        low, high = (float(v) for v in allowed)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be None or a pair (low, high); received {allowed!r}.") from None
    if low > high:
        raise ValueError(f"{name} must have low <= high; received {allowed!r}.")
    return (low, high)


class Miner:
    """Base class of the miners (see the module docstring).

    Args:
        distance: `"euclidean"`, `"squared_euclidean"`, `"cosine"`, or
            `"similarity"` (dot products; larger = closer).
        normalize: L2-normalise the embeddings first (PML's default).
        name: Optional name.

    Subclasses implement `pairs` (pair miners) or `triplets` (triplet
    miners); the other form comes from this class.
    """

    def __init__(self, distance="euclidean", normalize=True, name=None):
        if distance not in MINER_DISTANCES:
            raise ValueError(f"distance must be one of {MINER_DISTANCES}; received {distance!r}.")
        self.distance = distance
        self.normalize = bool(normalize)
        self.name = name or type(self).__name__

    @property
    def inverted(self):
        """Whether the matrix is a similarity (larger = closer)."""
        return self.distance == "similarity"

    def uses(self, distance, normalize):
        """Whether a loss's `(distance, normalize)` matrix is this miner's (so the miner can reuse it)."""
        return not self.inverted and distance == self.distance and bool(normalize) == self.normalize

    def matrix(self, embeddings, ref_embeddings=None):
        """The gradient-free `(N, R)` matrix of the miner's distance (the batch with itself by default)."""
        reference = None if ref_embeddings is embeddings else ref_embeddings
        if self.inverted:
            values = pairwise_similarity(embeddings, self.normalize, ref_embeddings=reference)
        else:
            values = pairwise_distance(embeddings, check_distance(self.distance), self.normalize,
                                       ref_embeddings=reference)
        return ops.stop_gradient(values)

    def oriented(self, matrix):
        """The matrix as a distance: −similarity for `"similarity"`, else itself."""
        return -matrix if self.inverted else matrix

    def pairs(self, matrix, positive, negative, embeddings=None, ref_embeddings=None):
        """The mined `(positive, negative)` masks, subsets of those given.

        A triplet miner's pairs: the (a, p) and (a, n) of its triplets.
        """
        triplets = self.triplets(matrix, positive, negative, embeddings, ref_embeddings)

        def body(slot, chosen, negatives):
            return (ops.logical_or(negatives, chosen),)

        (negatives,) = for_each_triplet_slot(triplets, body, (ops.zeros_like(negative),))
        return triplets.positive, negatives

    def triplets(self, matrix, positive, negative, embeddings=None, ref_embeddings=None):
        """The mined `Triplets`.

        A pair miner's triplets: each mined positive pair with every mined
        negative pair of its anchor.
        """
        mined_positive, mined_negative = self.pairs(matrix, positive, negative, embeddings, ref_embeddings)
        heads = ops.logical_and(mined_positive, ops.any(mined_negative, axis=1)[:, None])
        return Triplets(heads, lambda slot: mined_negative, self.oriented(matrix), mined_negative)

    def mine_pairs(self, embeddings, ref_embeddings, positive, negative, matrix=None):
        """`pairs` on the miner's matrix of the embeddings (or `matrix`, when the caller has it)."""
        if matrix is None:
            matrix = self.matrix(embeddings, ref_embeddings)
        return self.pairs(matrix, positive, negative, embeddings, ref_embeddings)

    def mine_triplets(self, embeddings, ref_embeddings, positive, negative, matrix=None):
        """`triplets` on the miner's matrix of the embeddings (or `matrix`)."""
        if matrix is None:
            matrix = self.matrix(embeddings, ref_embeddings)
        return self.triplets(matrix, positive, negative, embeddings, ref_embeddings)

    def __call__(self, labels, embeddings, ref_labels=None, ref_embeddings=None, *, multi_label=False,
                 remove_diagonal=None):
        """The mined `(positive, negative)` masks of a batch (against a reference set, if given)."""
        if (ref_labels is None) != (ref_embeddings is None):
            raise ValueError("Pass both ref_labels and ref_embeddings, or neither.")
        embeddings, ref_embeddings = as_embedding_pair(embeddings, ref_embeddings)
        if ref_embeddings is None:
            labels = standardize_any(labels, embeddings, multi_label)
            positive, negative = pair_masks(labels, multi_label=multi_label, remove_diagonal=remove_diagonal)
            ref_embeddings = embeddings
        else:
            labels, ref_labels = standardize_label_pair(labels, ref_labels, embeddings, ref_embeddings, multi_label)
            positive, negative = pair_masks(labels, ref_labels, multi_label=multi_label,
                                            remove_diagonal=bool(remove_diagonal))
        return self.mine_pairs(embeddings, ref_embeddings, positive, negative)

    def get_config(self):
        return {"distance": self.distance, "normalize": self.normalize, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items() if key != "name")
        return f"{type(self).__name__}({arguments})"


def _register(cls):
    return keras.saving.register_keras_serializable(package="tfmetric")(cls)


@_register
class PairMarginMiner(Miner):
    """Pairs that violate a margin (PML's `PairMarginMiner`).

    ```
    positive pairs with d(a, p) > pos_margin       (similarity: s(a, p) < pos_margin)
    negative pairs with d(a, n) < neg_margin       (similarity: s(a, n) > neg_margin)
    ```

    Args:
        pos_margin, neg_margin: The margins (PML's defaults 0.2, 0.8).
        distance, normalize, name: As `Miner` (PML's default: Euclidean on
            normalised embeddings).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    >>> loss = tfm.Contrastive(miner=tfm.miners.PairMarginMiner())
    >>> round(float(loss([0, 0, 1, 1], embeddings)), 4)
    0.2573
    """

    def __init__(self, pos_margin=0.2, neg_margin=0.8, distance="euclidean", normalize=True, name=None):
        super().__init__(distance, normalize, name)
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def pairs(self, matrix, positive, negative, embeddings=None, ref_embeddings=None):
        if self.inverted:
            hard_positive, hard_negative = matrix < self.pos_margin, matrix > self.neg_margin
        else:
            hard_positive, hard_negative = matrix > self.pos_margin, matrix < self.neg_margin
        return ops.logical_and(positive, hard_positive), ops.logical_and(negative, hard_negative)

    def get_config(self):
        return {**super().get_config(), "pos_margin": self.pos_margin, "neg_margin": self.neg_margin}


@_register
class MultiSimilarityMiner(Miner):
    """The pair mining of the multi-similarity loss (Wang et al. 2019, PML's `MultiSimilarityMiner`).

    With similarities s (PML's default, cosine similarities):

    ```
    positive (a, p) kept when s(a, p) − ε < max_{n∈Q(a)} s(a, n)
    negative (a, n) kept when s(a, n) + ε > min_{p∈P(a)} s(a, p)
    ```

    (with a distance: `d(a, p) + ε > min d(a, n)`, `d(a, n) − ε < max d(a, p)`).
    An anchor without a positive or without a negative keeps nothing.
    `tfm.MultiSimilarity(epsilon=ε)` applies the same selection itself.

    Paper: X. Wang, X. Han, W. Huang, D. Dong, M. R. Scott, 2019, "Multi-Similarity
    Loss with General Pair Weighting for Deep Metric Learning",
    https://arxiv.org/abs/1904.06627.

    Args:
        epsilon: The margin ε (PML's default 0.1).
        distance, normalize, name: As `Miner`; default `"similarity"` on
            normalised embeddings (PML's `CosineSimilarity()`).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    >>> loss = tfm.MultiSimilarity(miner=tfm.miners.MultiSimilarityMiner())
    >>> round(float(loss([0, 0, 1, 1], embeddings)), 4)
    0.1338
    """

    def __init__(self, epsilon=0.1, distance="similarity", normalize=True, name=None):
        super().__init__(distance, normalize, name)
        self.epsilon = float(epsilon)

    def pairs(self, matrix, positive, negative, embeddings=None, ref_embeddings=None):
        d = self.oriented(matrix)
        inf = ops.full_like(d, float("inf"))
        hardest_negative = ops.min(ops.where(negative, d, inf), axis=1)
        hardest_positive = ops.max(ops.where(positive, d, -inf), axis=1)
        if self.inverted:
            # The similarities' own comparisons (the same floats as PML's).
            kept_positive = matrix - self.epsilon < -hardest_negative[:, None]
            kept_negative = matrix + self.epsilon > -hardest_positive[:, None]
        else:
            kept_positive = d + self.epsilon > hardest_negative[:, None]
            kept_negative = d - self.epsilon < hardest_positive[:, None]
        return ops.logical_and(positive, kept_positive), ops.logical_and(negative, kept_negative)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@_register
class BatchEasyHardMiner(Miner):
    """One positive and/or one negative per anchor, the hardest or the easiest (PML's `BatchEasyHardMiner`).

    Xuan, Stylianou, Liu, Pless 2020, "Improved Embeddings with Easy Positive
    Triplet Mining", https://arxiv.org/abs/1904.04370. For every anchor a,
    among its positives (and negatives) with values in `allowed_pos_range`
    (`allowed_neg_range`), on the distance d (larger = farther):

    ```
    positive "hard": argmax d(a, p)   "easy": argmin d(a, p)
             "semihard": argmax of d(a, p) < d(a, n*), n* the chosen negative
    negative "hard": argmin d(a, n)   "easy": argmax d(a, n)
             "semihard": argmin of d(a, n) > d(a, p*), p* the chosen positive
    "all":   every positive (negative) pair, whatever the range
    ```

    Without `"all"`, an anchor gives its pair (a, p*) and its pair (a, n*)
    only when it has both (one triplet (a, p*, n*) per anchor); with `"all"`
    on one side, every pair of that side and the chosen pairs of the other.
    Ties: the first column. Both `"semihard"`, or `"semihard"` with
    `"all"`, raise a ValueError (as in PML).

    Args:
        pos_strategy, neg_strategy: `"hard"`, `"semihard"`, `"easy"` or
            `"all"` (PML's defaults `"easy"`, `"semihard"`).
        allowed_pos_range, allowed_neg_range: `None` or `(low, high)` of the
            miner's matrix values (similarities, for `"similarity"`).
        distance, normalize, name: As `Miner`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    >>> miner = tfm.miners.BatchEasyHardMiner(pos_strategy="easy", neg_strategy="hard")
    >>> loss = tfm.BatchAllTriplet(margin=0.2, average="all", miner=miner)
    >>> round(float(loss([0, 0, 1, 1], embeddings)), 4)
    0.0823
    """

    def __init__(self, pos_strategy="easy", neg_strategy="semihard", allowed_pos_range=None,
                 allowed_neg_range=None, distance="euclidean", normalize=True, name=None):
        super().__init__(distance, normalize, name)
        for argument, value in (("pos_strategy", pos_strategy), ("neg_strategy", neg_strategy)):
            if value not in STRATEGIES:
                raise ValueError(f"{argument} must be one of {STRATEGIES}; received {value!r}.")
        if pos_strategy == neg_strategy == "semihard":
            raise ValueError('pos_strategy and neg_strategy cannot both be "semihard".')
        if "semihard" in (pos_strategy, neg_strategy) and "all" in (pos_strategy, neg_strategy):
            raise ValueError('"semihard" cannot be combined with "all".')
        self.pos_strategy = pos_strategy
        self.neg_strategy = neg_strategy
        self.allowed_pos_range = _check_range("allowed_pos_range", allowed_pos_range)
        self.allowed_neg_range = _check_range("allowed_neg_range", allowed_neg_range)

    @staticmethod
    def _pick(d, mask, largest):
        inf = ops.full_like(d, float("inf"))
        if largest:
            index = ops.argmax(ops.where(mask, d, -inf), axis=1)
        else:
            index = ops.argmin(ops.where(mask, d, inf), axis=1)
        index = ops.cast(index, "int32")
        return index, ops.any(mask, axis=1), row_pick(d, index)

    def pairs(self, matrix, positive, negative, embeddings=None, ref_embeddings=None):
        d = self.oriented(matrix)
        num_columns = ops.shape(d)[1]
        pos_candidates = ops.logical_and(positive, _in_range(matrix, self.allowed_pos_range))
        neg_candidates = ops.logical_and(negative, _in_range(matrix, self.allowed_neg_range))

        def pick_positive(threshold=None):
            mask = pos_candidates
            if threshold is not None:
                mask = ops.logical_and(mask, d < threshold[:, None])
            return self._pick(d, mask, largest=self.pos_strategy in ("hard", "semihard"))

        def pick_negative(threshold=None):
            mask = neg_candidates
            if threshold is not None:
                mask = ops.logical_and(mask, d > threshold[:, None])
            return self._pick(d, mask, largest=self.neg_strategy == "easy")

        if self.pos_strategy == "semihard":
            n_index, has_n, n_value = pick_negative()
            p_index, has_p, _ = pick_positive(n_value)
        elif self.neg_strategy == "semihard":
            p_index, has_p, p_value = pick_positive()
            n_index, has_n, _ = pick_negative(p_value)
        else:
            if self.pos_strategy != "all":
                p_index, has_p, _ = pick_positive()
            if self.neg_strategy != "all":
                n_index, has_n, _ = pick_negative()
        if self.pos_strategy == "all" and self.neg_strategy == "all":
            return positive, negative
        if self.pos_strategy == "all":
            return positive, _one_hot(n_index, has_n, num_columns)
        if self.neg_strategy == "all":
            return _one_hot(p_index, has_p, num_columns), negative
        keep = ops.logical_and(has_p, has_n)
        return _one_hot(p_index, keep, num_columns), _one_hot(n_index, keep, num_columns)

    def get_config(self):
        return {
            **super().get_config(),
            "pos_strategy": self.pos_strategy,
            "neg_strategy": self.neg_strategy,
            "allowed_pos_range": self.allowed_pos_range,
            "allowed_neg_range": self.allowed_neg_range,
        }


@_register
class BatchHardMiner(BatchEasyHardMiner):
    """The hardest positive and the hardest negative of every anchor (PML's `BatchHardMiner`).

    `BatchEasyHardMiner("hard", "hard")`: one triplet
    `(a, argmax_{p∈P(a)} d(a, p), argmin_{n∈Q(a)} d(a, n))` per anchor that
    has both (Hermans et al. 2017, "In Defense of the Triplet Loss for
    Person Re-Identification", https://arxiv.org/abs/1703.07737). Ties: the
    first column. `tfm.BatchHardTriplet(margin)` equals
    `tfm.BatchAllTriplet(margin, average="all", miner=BatchHardMiner(normalize=False))`
    and is faster.

    Args:
        allowed_pos_range, allowed_neg_range, distance, normalize, name: As
            `BatchEasyHardMiner`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    >>> loss = tfm.BatchAllTriplet(margin=0.2, average="all", miner=tfm.miners.BatchHardMiner())
    >>> round(float(loss([0, 0, 1, 1], embeddings)), 4)
    0.0823
    """

    def __init__(self, allowed_pos_range=None, allowed_neg_range=None, distance="euclidean", normalize=True,
                 name=None):
        super().__init__("hard", "hard", allowed_pos_range, allowed_neg_range, distance, normalize, name)

    def get_config(self):
        config = super().get_config()
        del config["pos_strategy"], config["neg_strategy"]
        return config


@_register
class TripletMarginMiner(Miner):
    """Triplets by their margin `m(a, p, n) = d(a, n) − d(a, p)` (PML's `TripletMarginMiner`).

    Among all triplets (a, p, n), p ∈ P(a), n ∈ Q(a):

    ```
    "all":      m ≤ margin          (the triplets with a loss)
    "hard":     m ≤ margin and m ≤ 0
    "semihard": 0 < m ≤ margin
    "easy":     m > margin
    ```

    With similarities, `m = s(a, p) − s(a, n)`.

    Args:
        margin: The margin (PML's default 0.2).
        type_of_triplets: `"all"` (default), `"hard"`, `"semihard"`, `"easy"`.
        distance, normalize, name: As `Miner`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    >>> miner = tfm.miners.TripletMarginMiner(margin=0.5, type_of_triplets="all")
    >>> loss = tfm.BatchAllTriplet(margin=0.2, miner=miner)
    >>> round(float(loss([0, 0, 1, 1], embeddings)), 4)
    0.2646
    """

    def __init__(self, margin=0.2, type_of_triplets="all", distance="euclidean", normalize=True, name=None):
        super().__init__(distance, normalize, name)
        if type_of_triplets not in TRIPLET_TYPES:
            raise ValueError(f"type_of_triplets must be one of {TRIPLET_TYPES}; received {type_of_triplets!r}.")
        self.margin = float(margin)
        self.type_of_triplets = type_of_triplets

    def _selected(self, triplet_margin):
        if self.type_of_triplets == "easy":
            return triplet_margin > self.margin
        selected = triplet_margin <= self.margin
        if self.type_of_triplets == "hard":
            return ops.logical_and(selected, triplet_margin <= 0)
        if self.type_of_triplets == "semihard":
            return ops.logical_and(selected, triplet_margin > 0)
        return selected

    def triplets(self, matrix, positive, negative, embeddings=None, ref_embeddings=None):
        d = self.oriented(matrix)

        def negatives(slot):
            if self.inverted:
                # PML's own subtraction of similarities.
                return self._selected(-slot.positive_value[:, None] - matrix)
            return self._selected(d - slot.positive_value[:, None])

        if self.type_of_triplets == "semihard":
            return triplet_heads(d, positive, negative, negatives)
        # The other types hold for some negative iff they hold for the
        # closest (or, "easy", the farthest) negative: no loop needed.
        inf = ops.full_like(d, float("inf"))
        if self.type_of_triplets == "easy":
            extreme = ops.max(ops.where(negative, d, -inf), axis=1)
        else:
            extreme = ops.min(ops.where(negative, d, inf), axis=1)
        heads = ops.logical_and(positive, ops.any(negative, axis=1)[:, None])
        # The extreme triplet margin of each positive pair, the same floats
        # as the triplet's own (−extreme is the largest/smallest similarity).
        extreme_margin = matrix + extreme[:, None] if self.inverted else extreme[:, None] - d
        heads = ops.logical_and(heads, self._selected(extreme_margin))
        return Triplets(heads, negatives, d, negative)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "type_of_triplets": self.type_of_triplets}


@_register
class SemiHardMiner(Miner):
    """One negative per positive pair, FaceNet's semi-hard choice (tfmetric's; TF Addons' selection).

    For every positive pair (a, p), the negative
    `n* = argmin_{n∈Q(a), d(a, n) > d(a, p)} d(a, n)`, or the farthest
    negative when none is farther than p: one triplet (a, p, n*) per
    positive pair whose anchor has a negative. Ties: the first column.
    `tfm.SemiHardTriplet(margin)` equals
    `tfm.BatchAllTriplet(margin, average="all", miner=SemiHardMiner(normalize=False))`
    and is faster. (PML's `TripletMarginMiner(type_of_triplets="semihard")`
    is another selection: every triplet with `0 < d(a, n) − d(a, p) ≤ margin`.)

    Paper: F. Schroff, D. Kalenichenko, J. Philbin, 2015, "FaceNet: A Unified
    Embedding for Face Recognition and Clustering", https://arxiv.org/abs/1503.03832.

    Args:
        distance, normalize, name: As `Miner`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    >>> loss = tfm.BatchAllTriplet(margin=0.2, average="all", miner=tfm.miners.SemiHardMiner())
    >>> round(float(loss([0, 0, 1, 1], embeddings)), 4)
    0.05
    """

    def triplets(self, matrix, positive, negative, embeddings=None, ref_embeddings=None):
        d = self.oriented(matrix)
        inf = ops.full_like(d, float("inf"))
        negative_distances = ops.where(negative, d, inf)
        farthest = ops.cast(ops.argmax(ops.where(negative, d, -inf), axis=1), "int32")
        num_columns = ops.shape(d)[1]

        def negatives(slot):
            _, nearest, has_beyond = row_min_above(negative_distances, slot.positive_value)
            return _one_hot(ops.where(has_beyond, nearest, farthest), slot.has_slot, num_columns)

        heads = ops.logical_and(positive, ops.any(negative, axis=1)[:, None])
        return Triplets(heads, negatives, d, negative)


@_register
class AngularMiner(Miner):
    """Triplets whose angle at the negative exceeds a threshold (PML's `AngularMiner`).

    Wang, Zhou, Wen, Liu, Lin 2017, "Deep Metric Learning with Angular Loss",
    https://arxiv.org/abs/1708.01682. For a triplet (a, p, n), with the
    centre `c = (a + p) / 2`:

    ```
    ∠n = arctan(‖a − p‖ / (2 ‖n − c‖)) > angle
    ```

    A negative on the centre (`‖n − c‖ = 0`) has angle 90° (0/0: not
    selected). PML's miner asks for a normalising distance but measures the
    pairs with `pairwise_distance`, which does not normalise: it takes the
    embeddings as given (and adds torch's 1e-6 to each difference), as
    `normalize=False` (the default here) does; `normalize=True` measures
    the triangle of the L2-normalised embeddings instead.

    Args:
        angle: The threshold in degrees (PML's default 20).
        normalize: L2-normalise a, p, n first.
        name: Optional name. The distance is Euclidean.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    >>> loss = tfm.BatchAllTriplet(margin=0.2, miner=tfm.miners.AngularMiner(angle=20))
    >>> round(float(loss([0, 0, 1, 1], embeddings)), 4)
    0.3291
    """

    def __init__(self, angle=20.0, normalize=False, name=None):
        super().__init__("euclidean", normalize, name)
        self.angle = float(angle)
        if not 0.0 <= self.angle <= 180.0:
            raise ValueError(f"angle must be in degrees between 0 and 180; received {angle!r}.")

    def triplets(self, matrix, positive, negative, embeddings=None, ref_embeddings=None):
        if embeddings is None:
            raise ValueError("AngularMiner needs the embeddings: call mine_triplets or mine_pairs.")
        if ref_embeddings is None:
            ref_embeddings = embeddings
        embeddings = ops.stop_gradient(embeddings)
        reference = ops.stop_gradient(ref_embeddings)
        if self.normalize:
            embeddings, reference = l2_normalize(embeddings), l2_normalize(reference)
        threshold = math.radians(self.angle)

        def negatives(slot):
            centres = (embeddings + ops.take(reference, slot.positive_index, axis=0)) / 2
            to_centre = pairwise_distance(centres, "euclidean", False, ref_embeddings=reference)
            angles = ops.arctan(slot.positive_value[:, None] / (2 * to_centre))
            return angles > threshold

        return triplet_heads(matrix, positive, negative, negatives)

    def get_config(self):
        return {"angle": self.angle, "normalize": self.normalize, "name": self.name}


@_register
class HDCMiner(Miner):
    """The hardest share of the batch's positive and negative pairs (PML's `HDCMiner`).

    Yuan, Yang, Zhang 2017, "Hard-Aware Deeply Cascaded Embedding",
    https://arxiv.org/abs/1611.05720. Over the whole batch, the
    `⌈f·|P|⌉` positive pairs with the largest distances and the `⌈f·|Q|⌉`
    negative pairs with the smallest (with similarities: the smallest and the
    largest similarities), f = `filter_percentage`. The counts are exact
    (integers, f taken as the nearest fraction with denominator ≤ 10⁴); PML
    multiplies in float64, where f·n can land just above an integer
    (0.1·30 → 4 there, 3 here). Chosen with
    `tfm.mining.smallest_mask` (bisection, no sort); ties at the boundary go
    to the earlier pairs in (query, reference) order (PML's `topk`: any).

    Args:
        filter_percentage: f in [0, 1] (PML's default 0.5).
        distance, normalize, name: As `Miner`.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    >>> loss = tfm.Contrastive(miner=tfm.miners.HDCMiner(filter_percentage=0.5))
    >>> round(float(loss([0, 0, 1, 1], embeddings)), 4)
    0.2573
    """

    def __init__(self, filter_percentage=0.5, distance="euclidean", normalize=True, name=None):
        super().__init__(distance, normalize, name)
        self.filter_percentage = float(filter_percentage)
        if not 0.0 <= self.filter_percentage <= 1.0:
            raise ValueError(f"filter_percentage must be in [0, 1]; received {filter_percentage!r}.")
        fraction = Fraction(self.filter_percentage).limit_denominator(10**4)
        self._fraction = (fraction.numerator, fraction.denominator)

    def _kept(self, mask):
        # ⌈f·n⌉ exactly, in integers: f = p/q (q ≤ 10⁴) and n = n₁·q + n₀
        # give p·n₁ + ⌈p·n₀ / q⌉, no product above 10⁸ (float32 would round
        # 0.3·50 up to 16; JAX runs without float64).
        p, q = self._fraction
        count = ops.sum(ops.cast(mask, "int32"))
        whole, rest = count // q, count % q
        return whole * p + (rest * p + (q - 1)) // q

    def pairs(self, matrix, positive, negative, embeddings=None, ref_embeddings=None):
        d = self.oriented(matrix)
        kept_positive = smallest_mask(-d, positive, self._kept(positive))
        kept_negative = smallest_mask(d, negative, self._kept(negative))
        return kept_positive, kept_negative

    def get_config(self):
        return {**super().get_config(), "filter_percentage": self.filter_percentage}


class _RandomMiner(Miner):
    """A miner that draws at random: `seed` (int or None) and `self.seed_generator`."""

    def __init__(self, distance="euclidean", normalize=True, name=None, seed=None):
        super().__init__(distance, normalize, name)
        if seed is not None and not isinstance(seed, int):
            raise ValueError(f"seed must be an int or None; received {seed!r}.")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name=f"{self.name}_seed")

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@_register
class DistanceWeightedMiner(_RandomMiner):
    """Negatives drawn with probability ∝ 1/q(d) (PML's `DistanceWeightedMiner`).

    Wu, Manmatha, Smola, Krähenbühl 2017, "Sampling Matters in Deep Embedding
    Learning", https://arxiv.org/abs/1706.07567. On the unit sphere in D
    dimensions pairwise distances have density
    `q(d) ∝ d^(D−2)·(1 − d²/4)^((D−3)/2)`; for every positive pair (a, p),
    one negative n is drawn with probability ∝ `1/q(max(d(a, n), cutoff))`
    among those with `d(a, n) < nonzero_loss_cutoff` (all negatives, evenly,
    when none is that close): one triplet (a, p, n) per positive pair
    (`tfm.mining.distance_weighted_log_weights`, computed in log space: no
    underflow in 512 dimensions, where PML's weights become all zero).

    Differences from PML: PML draws, for each anchor, as many positives at
    random (with repetition) as it has; here each positive pair is taken
    once. As pairs (`pairs`, for pair losses), a negative drawn several times
    counts once; `tfm.MarginLoss(sampling="distance_weighted")` counts it
    as often as it is drawn, as PML's `MarginLoss` does with this miner.

    The draws come from `self.seed_generator` (a `keras.random.SeedGenerator`
    seeded with `seed`): every call draws anew.

    Args:
        cutoff, nonzero_loss_cutoff: As in the paper (PML's 0.5, 1.4).
        seed: An int for reproducible draws, or None.
        name: Optional name. The distance is Euclidean on normalised
            embeddings, as PML requires.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    >>> loss = tfm.BatchAllTriplet(margin=0.2, miner=tfm.miners.DistanceWeightedMiner(seed=1))
    >>> float(loss([0, 0, 1, 1], embeddings)) >= 0
    True
    """

    def __init__(self, cutoff=0.5, nonzero_loss_cutoff=1.4, seed=None, name=None):
        super().__init__("euclidean", True, name, seed)
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        if self.cutoff < 0 or self.nonzero_loss_cutoff <= 0:
            raise ValueError("cutoff must be >= 0 and nonzero_loss_cutoff > 0.")

    def triplets(self, matrix, positive, negative, embeddings=None, ref_embeddings=None):
        if embeddings is None or embeddings.shape[-1] is None:
            raise ValueError("DistanceWeightedMiner needs embeddings of a known size: call mine_triplets.")
        log_weights = distance_weighted_log_weights(
            matrix, negative, embeddings.shape[-1], self.cutoff, self.nonzero_loss_cutoff
        )
        distribution = inverse_cdf(log_weights)
        num_rows, num_columns = ops.shape(matrix)[0], ops.shape(matrix)[1]
        columns = ops.arange(num_columns, dtype="int32")
        uniforms = random_numbers((num_rows, UNIFORMS_PER_ANCHOR), self.seed_generator)

        def negatives(slot):
            # The draw of pair (a, p) depends on p's rank among a's
            # positives, whichever loop visits it.
            before = ops.logical_and(positive, columns[None, :] < slot.positive_index[:, None])
            rank = ops.sum(ops.cast(before, "int32"), axis=1)
            return _one_hot(draw_columns(distribution, uniforms, rank), distribution.has_candidate, num_columns)

        heads = ops.logical_and(positive, distribution.has_candidate[:, None])
        return Triplets(heads, negatives, matrix, negative)

    def get_config(self):
        config = super().get_config()
        del config["distance"], config["normalize"]
        return {**config, "cutoff": self.cutoff, "nonzero_loss_cutoff": self.nonzero_loss_cutoff}


def _bin_ids(values, mask, num_bins):
    """Each candidate's bin among `num_bins` equal-width bins over the candidates' [min, max]; others: `num_bins`.

    Bin b holds `lo + b·w ≤ v < lo + (b + 1)·w`, w = (max − min) / num_bins,
    the last one closed at the max: `min(⌊(v − lo)·num_bins / (max − min)⌋,
    num_bins − 1)`. All candidates equal: the last bin (as PML's).
    """
    inf = ops.full_like(values, float("inf"))
    low = ops.min(ops.where(mask, values, inf))
    high = ops.max(ops.where(mask, values, -inf))
    has_any = ops.any(mask)
    low = ops.where(has_any, low, ops.zeros_like(low))
    width = ops.where(has_any, high, ops.zeros_like(high)) - low
    spread = width > 0
    scaled = (ops.where(mask, values, ops.zeros_like(values) + low) - low) * num_bins / ops.where(
        spread, width, ops.ones_like(width)
    )
    scaled = ops.clip(ops.floor(scaled), 0, num_bins - 1)
    bins = ops.where(spread, ops.cast(scaled, "int32"), ops.full_like(ops.cast(scaled, "int32"), num_bins - 1))
    return ops.where(mask, bins, ops.full_like(bins, num_bins))


def _per_bin_bisection(kept_count, bins, in_range, high, steps, num_segments):
    """Per segment, the smallest threshold t in [0, high] with `#{in_range(t of its segment)} ≥ kept_count`."""

    def halve(_, bounds):
        low, top = bounds
        middle = low // 2 + top // 2 + (low % 2 + top % 2) // 2
        counts = add_at(ops.cast(in_range(take_in_range(middle, bins)), "int32"), bins, num_segments)
        enough = counts >= kept_count
        return ops.where(enough, low, middle + 1), ops.where(enough, middle, top)

    zeros = ops.zeros((num_segments,), "int32")
    low, _ = ops.fori_loop(0, steps, halve, (zeros, zeros + high))
    return low


def uniform_per_bin(bins, keys, per_bin, num_bins):
    """Flat boolean mask of `min(per_bin, n_b)` entries of every bin b: those with the smallest `keys`.

    `bins` `(M,)` int32 in [0, num_bins] (`num_bins`: no bin), `keys` `(M,)`
    int32 in [0, 2³¹ − 1): random keys make the kept entries of a bin a
    uniformly random subset. Ties of keys are broken by position (earlier
    first). Two bisections per bin, vectorised over the bins: the keys'
    threshold, then the position among the tied ones (no sort).
    """
    num_segments = num_bins + 1
    size = ops.shape(bins)[0]
    in_bin = bins < num_bins
    members = add_at(ops.cast(in_bin, "int32"), bins, num_segments)
    kept_count = ops.minimum(members, per_bin)
    kept_count = ops.where(ops.arange(num_segments) < num_bins, kept_count, ops.zeros_like(kept_count))
    key_threshold = _per_bin_bisection(
        kept_count, bins, lambda t: ops.logical_and(in_bin, keys <= t), 2**31 - 1, 32, num_segments
    )
    threshold = take_in_range(key_threshold, bins)
    below = ops.logical_and(in_bin, keys < threshold)
    at = ops.logical_and(in_bin, ops.equal(keys, threshold))
    remaining = kept_count - add_at(ops.cast(below, "int32"), bins, num_segments)
    position = ops.arange(size, dtype="int32")
    static_size = bins.shape[0]
    steps = 32 if static_size is None else max(1, int(static_size).bit_length() + 1)
    position_threshold = _per_bin_bisection(
        remaining, bins, lambda t: ops.logical_and(at, position < t), size, steps, num_segments
    )
    return ops.logical_or(below, ops.logical_and(at, position < take_in_range(position_threshold, bins)))


@_register
class UniformHistogramMiner(_RandomMiner):
    """Pairs spread evenly over the range of their distances (PML's `UniformHistogramMiner`).

    The positive pairs' values (distances, or similarities with
    `"similarity"`) are cut into `num_bins` equal-width bins between their
    smallest and largest value; from every bin, a uniformly random subset of
    `min(pos_per_bin, n_b)` of its n_b pairs is kept. The same for the
    negative pairs, with `neg_per_bin`. Bin b holds the values v with
    `lo + b·w ≤ v < lo + (b + 1)·w`, w = (hi − lo) / num_bins, the last bin
    closed at hi (all values equal: everything in one bin). A pair miner: as
    triplets, every kept positive pair with every kept negative pair of its
    anchor. No paper: PML's own miner.

    Each call draws anew from `self.seed_generator` (a
    `keras.random.SeedGenerator` seeded with `seed`): one random key per
    pair, and each bin keeps its pairs with the smallest keys (bisection per
    bin, no sort, fixed shapes; equal keys, probability ~n²/2³², go to the
    earlier pair). A loss with this miner keeps the generator in its state,
    so that it trains and saves with the model (`LossState`).

    Difference from PML: PML draws `pos_per_bin` pairs from every non-empty
    bin with replacement, a list with repeats (a bin of 3 pairs gives 10
    entries; a bin of 50, on average 9.1 distinct pairs); here each bin
    gives `min(pos_per_bin, n_b)` distinct pairs, drawn without replacement,
    and the losses see each pair once. With `pos_per_bin=1` both keep
    exactly one pair of every non-empty bin.

    Args:
        num_bins: The number of bins (PML's default 100).
        pos_per_bin, neg_per_bin: Pairs kept per bin (PML's 10, 10).
        distance, normalize: As `Miner` (PML's default: Euclidean on
            normalised embeddings).
        seed: An int for reproducible draws, or None.
        name: Optional name.

    Example:

    >>> import keras, numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    >>> miner = tfm.miners.UniformHistogramMiner(num_bins=4, pos_per_bin=1, neg_per_bin=1, seed=0)
    >>> positive, negative = miner([0, 0, 1, 1], embeddings)
    >>> int(np.sum(keras.ops.convert_to_numpy(positive)))  # the 4 positive pairs: 2 values, 2 bins
    2
    >>> loss = tfm.Contrastive(miner=tfm.miners.UniformHistogramMiner(num_bins=10, seed=0))
    >>> float(loss([0, 0, 1, 1], embeddings)) >= 0
    True
    """

    def __init__(self, num_bins=100, pos_per_bin=10, neg_per_bin=10, distance="euclidean", normalize=True,
                 seed=None, name=None):
        super().__init__(distance, normalize, name, seed)
        for argument, value in (("num_bins", num_bins), ("pos_per_bin", pos_per_bin), ("neg_per_bin", neg_per_bin)):
            if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 1:
                raise ValueError(f"{argument} must be a positive int; received {value!r}.")
        self.num_bins = int(num_bins)
        self.pos_per_bin = int(pos_per_bin)
        self.neg_per_bin = int(neg_per_bin)

    def pairs(self, matrix, positive, negative, embeddings=None, ref_embeddings=None):
        values = matrix
        if keras.backend.standardize_dtype(values.dtype) not in ("float32", "float64"):
            values = ops.cast(values, "float32")
        shape = ops.shape(values)
        flat = ops.reshape(values, (-1,))
        keys = random_numbers(ops.shape(flat), self.seed_generator, maxval=2**31 - 1)
        mined = []
        for mask, per_bin in ((positive, self.pos_per_bin), (negative, self.neg_per_bin)):
            mask = ops.reshape(ops.cast(mask, "bool"), (-1,))
            bins = _bin_ids(flat, mask, self.num_bins)
            kept = uniform_per_bin(bins, keys, per_bin, self.num_bins)
            mined.append(ops.reshape(kept, shape))
        return mined[0], mined[1]

    def get_config(self):
        return {
            **super().get_config(),
            "num_bins": self.num_bins,
            "pos_per_bin": self.pos_per_bin,
            "neg_per_bin": self.neg_per_bin,
        }
