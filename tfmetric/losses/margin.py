"""The margin loss of Wu et al. 2017, "Sampling Matters in Deep Embedding Learning".

Notation: `d` is the `(N, R)` Euclidean distance matrix of the (by default
L2-normalised) query and reference embeddings (the batch itself by
default), `β` the boundary between positive and negative distances, `m` the
margin around it.
"""

import keras
from keras import ops

from tfmetric.distances import nonnegative_row_sums, row_sums
from tfmetric.labels import check_class_ids
from tfmetric.losses.base import DistanceLoss, add_at, apply_miner, check_choice, pair_distances, per_query
from tfmetric.losses.state import LossState
from tfmetric.mining import (
    UNIFORMS_PER_ANCHOR,
    count_at,
    distance_weighted_log_weights,
    entry_coordinates,
    mine_pairs,
    random_numbers,
    sample_negative_counts,
    sample_negative_draws,
    take_entries,
    take_in_range,
)

SAMPLINGS = ("distance_weighted", "all")


def margin_terms(distances, positive, negative, anchor_beta, negative_weights=None, margin=0.2, nu=0.0):
    """Per-anchor sums of margin-loss terms and how many of them are positive.

    `positive`, `negative` are the masks of `tfm.mining.label_masks`. Every
    positive pair (a, p) gives `relu(m + d_ap − β_a)`; the negatives
    (a, n) give `relu(m − d_an + β_a)` with multiplicity
    `negative_weights[a, n]` (the number of times it was sampled; `None`:
    every negative once). `ν·β_a` is added once per term.

    Returns:
        `(loss_sums, active_counts)`, both `(N,)`.
    """
    dtype = distances.dtype
    # One expression for both kinds of pair: the sign is +1 for positives,
    # -1 for negatives (half the elementwise passes of two hinges).
    sign = ops.where(negative, -ops.ones_like(distances), ops.ones_like(distances))
    anchor_beta = ops.cast(anchor_beta, dtype)
    values = ops.relu(margin + sign * (distances - anchor_beta[:, None]))
    if negative_weights is None:
        weights = ops.cast(ops.logical_or(positive, negative), dtype)
    else:
        weights = ops.where(negative, ops.cast(negative_weights, dtype), ops.cast(positive, dtype))
    # Products with ones under XLA on a CPU (`row_sums`), whose reductions would read the terms from memory.
    loss_sums = nonnegative_row_sums(weights * values)
    if nu:
        loss_sums = loss_sums + nu * anchor_beta * row_sums(weights)
    active = row_sums(weights * ops.cast(values > 0, dtype))
    return loss_sums, ops.stop_gradient(active)


def drawn_margin_terms(distances, positive, draws, anchor_beta, margin=0.2, nu=0.0, coordinates=None):
    """`margin_terms` with the draws of `tfm.mining.sample_negative_draws`, on their entries only.

    Where every operation is a kernel of its own: the terms of the
    positive pairs (`tfm.mining.entry_coordinates`) and of the drawn
    negatives, K − 1 of each a row in a P×K batch, are a vector of entries
    gathered from the matrix, not passes over all of it. Each draw is a
    term of its own, as a negative drawn k times weighs k in `margin_terms`.
    `coordinates`: `entry_coordinates(positive)`, where the caller has them.
    """
    dtype = distances.dtype
    num_rows = ops.shape(distances)[0]
    positive_rows, positive_columns = entry_coordinates(positive) if coordinates is None else coordinates
    negative_columns, drawn = draws
    negative_rows = ops.zeros_like(negative_columns) + ops.arange(num_rows, dtype="int32")[:, None]
    negative_rows, negative_columns, drawn = (ops.reshape(v, (-1,)) for v in (negative_rows, negative_columns, drawn))
    rows = ops.concatenate([positive_rows, negative_rows], axis=0)
    columns = ops.concatenate([positive_columns, negative_columns], axis=0)
    ones = ops.ones_like(positive_rows, dtype)
    sign = ops.concatenate([ones, -ops.ones_like(negative_rows, dtype)], axis=0)
    weights = ops.concatenate([ones, ops.cast(drawn, dtype)], axis=0)
    anchor_beta = ops.cast(anchor_beta, dtype)
    entries = take_entries(distances, rows, columns)
    values = ops.relu(margin + sign * (entries - take_in_range(anchor_beta, rows)))
    loss_sums = add_at(weights * values, rows, num_rows)
    if nu:
        loss_sums = loss_sums + nu * anchor_beta * add_at(weights, rows, num_rows)
    active = add_at(weights * ops.cast(values > 0, dtype), rows, num_rows)
    return loss_sums, ops.stop_gradient(active)


def sampled_margin_terms(embeddings, ref_embeddings, positive, negative, beta, *, normalize=True, **options):
    """`margin_terms` of queries against a reference, with their negatives sampled or all.

    The Euclidean distances of the (by default L2-normalised) embeddings,
    then `sampled_margin_distance_terms` with the `options` (`margin`,
    `nu`, `sampling`, `cutoff`, `nonzero_loss_cutoff`, `seed`, `uniforms`).
    """
    distances = pair_distances(embeddings, ref_embeddings, "euclidean", normalize)
    return sampled_margin_distance_terms(distances, positive, negative, beta, embeddings.shape[-1], **options)


def sampled_margin_distance_terms(
    distances,
    positive,
    negative,
    beta,
    dim,
    *,
    margin=0.2,
    nu=0.0,
    sampling="distance_weighted",
    cutoff=0.5,
    nonzero_loss_cutoff=1.4,
    seed=None,
    uniforms=None,
):
    """`margin_terms` on the Euclidean distances between embeddings of size `dim`, negatives sampled or all.

    `beta` is a float or the `(N,)` β of every query; `seed` an int, `None`
    or a `keras.random.SeedGenerator` (what `MarginLoss` passes, so that
    each call draws anew); `uniforms`: the `(N, UNIFORMS_PER_ANCHOR)`
    numbers in [0, 1) the seed would draw, drawn before (`seed` unused).
    """
    num_queries = ops.shape(distances)[0]
    anchor_beta = ops.cast(beta, distances.dtype) * ops.ones((num_queries,), distances.dtype)
    negative_weights = None
    if check_choice("sampling", sampling, SAMPLINGS) == "distance_weighted":
        if dim is None:
            raise ValueError("Distance-weighted sampling needs a known embedding size.")
        log_weights = distance_weighted_log_weights(
            ops.stop_gradient(distances), negative, dim, cutoff, nonzero_loss_cutoff
        )
        if uniforms is None:
            uniforms = random_numbers((num_queries, UNIFORMS_PER_ANCHOR), seed)
        # Op by op, the positives' coordinates once: their rows counted are the draws a row needs.
        coordinates = entry_coordinates(positive)
        counts = None if coordinates is None else count_at(coordinates[0], num_queries, "int32")
        draws = sample_negative_draws(log_weights, positive, uniforms, counts)
        if draws is not None:
            return drawn_margin_terms(distances, positive, draws, anchor_beta, margin, nu, coordinates)
        negative_weights = sample_negative_counts(log_weights, positive, uniforms)
    return margin_terms(distances, positive, negative, anchor_beta, negative_weights, margin, nu)


def margin_loss(
    labels,
    embeddings,
    ref_labels=None,
    ref_embeddings=None,
    *,
    margin=0.2,
    beta=1.2,
    nu=0.0,
    sampling="distance_weighted",
    cutoff=0.5,
    nonzero_loss_cutoff=1.4,
    normalize=True,
    seed=None,
    multi_label=False,
    remove_diagonal=None,
    miner=None,
):
    """Per-query margin losses (the math of `MarginLoss`).

    Each query's `Σ relu(m ± (d − β_a)) + ν β_a` per term over its positive
    pairs and its sampled (or all) negative pairs with the reference rows
    (default: the batch itself), divided by its number of positive terms.

    Args:
        labels: Class ids `(N,)` of the queries (or, with `multi_label`,
            0/1 rows `(N, C)`).
        embeddings: Query embeddings `(N, D)`.
        ref_labels, ref_embeddings: Optional reference `(R,)`, `(R, D)`.
        beta: The boundary β: a float, or one per query `(N,)`.
        seed: For `sampling="distance_weighted"`: an int, or a
            `keras.random.SeedGenerator` to draw anew at every call (needed
            inside a JAX trace).
        remove_diagonal: Whether reference row a is query a itself; `None`:
            only without a reference.
        margin, nu, sampling, cutoff, nonzero_loss_cutoff, normalize, multi_label: As
            `MarginLoss`.

    Returns:
        The `(N,)` per-query losses.

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> losses = tfm.losses.margin_loss([0, 0, 1, 1], embeddings, sampling="all")
    >>> [round(float(v), 4) for v in losses]
    [0.0, 0.5056, 0.5056, 0.0]
    """
    _check_cutoff(cutoff)
    pairs = mine_pairs(
        labels, embeddings, ref_labels, ref_embeddings, multi_label=multi_label, remove_diagonal=remove_diagonal
    )
    pairs = apply_miner(miner, pairs)
    return per_query(
        sampled_margin_terms(
            *pairs,
            beta,
            margin=margin,
            nu=nu,
            sampling=sampling,
            cutoff=cutoff,
            nonzero_loss_cutoff=nonzero_loss_cutoff,
            normalize=normalize,
            seed=seed,
        )
    )


def _check_cutoff(cutoff):
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive; received {cutoff}.")


@keras.saving.register_keras_serializable(package="tfmetric")
class MarginLoss(DistanceLoss):
    r"""Margin loss with distance-weighted sampling (Wu et al. 2017).

    Positive distances are pulled below `β − m`, negative ones pushed above
    `β + m`:

    $$ \ell_{ap} = \mathrm{relu}\big(m + d(a, p) - \beta_a\big) \quad \text{every positive pair} $$

    $$ \ell_{an} = \mathrm{relu}\big(m - d(a, n) + \beta_a\big) \quad \text{sampled (or all) negative pairs} $$

    $$ \text{loss} = \Big(\sum \ell + \nu \sum \beta_a\Big) \Big/ \#\{\ell > 0\}
        \quad \text{(0 when no term is positive)} $$

    `β_a = beta`, plus a learned offset for the anchor's class when
    `num_classes` is given. With `sampling="distance_weighted"`, each
    positive pair (a, p) draws one negative of a with probability
    `∝ 1/q(d(a, n))`, `q` the density of distances between random points of
    the unit sphere in D dimensions, `d` clipped below at `cutoff`, and no
    chance beyond `nonzero_loss_cutoff` (uniform over the negatives when
    all are that far). The weights are computed in log space, so they stay
    meaningful for 512-dimensional embeddings, where PyTorch Metric
    Learning's miner underflows to all-zero weights.

    `sampling="distance_weighted"` is `tfm.miners.DistanceWeightedMiner`'s
    draw (one negative per positive pair) built in, with a negative drawn k
    times counted k times, as PML's `MarginLoss` counts the repeated pairs of
    its `DistanceWeightedMiner`. `MarginLoss(sampling="all",
    miner=DistanceWeightedMiner())` instead counts each drawn negative once
    (a miner gives a set of pairs), and a `miner=` with
    `sampling="distance_weighted"` draws among the mined pairs.

    `learn_beta=True` makes β (and the class offsets) trainable: compile a
    model with this loss and `model.fit` trains β with the model's own
    optimizer; it is saved and restored with the model, its optimizer state
    and the sampling's random state in every Keras path (`model.save` and
    `load_model`, checkpoints, `BackupAndRestore`); in a custom training
    loop, call `tfm.losses.attach_state(model, loss)` first.
    Read it as `loss.beta_value()`.

    Args:
        margin: The margin `m`.
        beta: The initial boundary `β`.
        nu: The weight `ν` of the β regularisation.
        learn_beta: Train β with the model.
        num_classes: Learn one β offset per class (labels must then be the
            class ids `0 … num_classes − 1`); needs `learn_beta=True`.
        sampling: `"distance_weighted"` or `"all"` (every negative pair).
        cutoff: Distances are clipped below at this value for the weights.
        nonzero_loss_cutoff: Negatives at least this far are never sampled.
        normalize: L2-normalise the embeddings first (the sampling
            distribution assumes the unit sphere).
        seed: Seed of the sampling, for reproducible runs.
        reduction: `"sum_over_batch_size"` (the loss above, default),
            `"sum"`, or `None` for each anchor's own mean.
        name: Optional name of the loss.
        cross_replica: Under a `tf.distribute` strategy, mine each replica's
            anchors against the batches of all replicas, so that training
            matches one device on the global batch (see the guide *Several devices*,
            docs/guides/devices.md).
        multi_label: Labels are multi-hot rows `(N, C)`: a positive pair
            shares at least one label, a negative pair none (not with
            `num_classes`).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> labels = np.array([0, 0, 1, 1])
    >>> embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> round(float(tfm.MarginLoss(sampling="all")(labels, embeddings)), 4)
    0.5056
    """

    faster_under_xla = True
    compiles_terms_alone = True

    def __init__(
        self,
        margin=0.2,
        beta=1.2,
        nu=0.0,
        learn_beta=False,
        num_classes=None,
        sampling="distance_weighted",
        cutoff=0.5,
        nonzero_loss_cutoff=1.4,
        normalize=True,
        seed=None,
        reduction="sum_over_batch_size",
        name="margin_loss",
        cross_replica=False,
        multi_label=False,
        miner=None,
    ):
        super().__init__("euclidean", normalize, reduction, name, cross_replica, multi_label, miner)
        if num_classes is not None and not learn_beta:
            raise ValueError(
                "num_classes adds a learned β offset per class; it needs learn_beta=True."
            )
        if num_classes is not None and int(num_classes) < 1:
            raise ValueError(f"num_classes must be positive; received {num_classes}.")
        if num_classes is not None and multi_label:
            raise ValueError("A β per class needs one class per example: not with multi_label=True.")
        _check_cutoff(cutoff)
        self.margin = float(margin)
        self.beta = float(beta)
        self.nu = float(nu)
        self.learn_beta = bool(learn_beta)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.sampling = check_choice("sampling", sampling, SAMPLINGS)
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.seed = seed
        self.state = None
        if self.learn_beta or sampling == "distance_weighted":
            self.state = LossState(name=f"{name}_state")
            if self.learn_beta:
                self.state.beta = self.state.add_weight(
                    shape=(), initializer=keras.initializers.Constant(self.beta), name="beta"
                )
                if self.num_classes is not None:
                    self.state.class_beta = self.state.add_weight(
                        shape=(self.num_classes,), initializer="zeros", name="class_beta"
                    )
            if sampling == "distance_weighted":
                self.state.seed_generator = keras.random.SeedGenerator(seed, name="sampling_seed")

    def beta_value(self):
        """The current β: a float, or with `num_classes` an array of per-class β."""
        if not self.learn_beta:
            return self.beta
        base = keras.ops.convert_to_numpy(self.state.beta)
        if self.num_classes is None:
            return float(base)
        return base + keras.ops.convert_to_numpy(self.state.class_beta)

    def _anchor_beta(self, y_true, num_examples, dtype):
        if not self.learn_beta:
            return ops.full((num_examples,), self.beta, dtype)
        beta = ops.cast(self.state.beta, dtype)
        if self.num_classes is None:
            return ops.full((num_examples,), 1.0, dtype) * beta
        check_class_ids(y_true, self.num_classes)
        class_ids = ops.cast(ops.reshape(ops.convert_to_tensor(y_true), (-1,)), "int32")
        return beta + ops.cast(ops.take(self.state.class_beta, class_ids), dtype)

    def query_terms(self, labels, embeddings, ref_labels=None, ref_embeddings=None, remove_diagonal=None,
                    ref_valid=None):
        # The β of each query's class comes from its class id, which the
        # masks alone do not carry.
        pairs = self.mine(labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, ref_valid)
        anchor_beta = self._anchor_beta(labels, ops.shape(pairs.embeddings)[0], pairs.embeddings.dtype)
        return self._pair_terms(*pairs, anchor_beta)

    def pair_terms(self, embeddings, ref_embeddings, positive, negative):
        if self.num_classes is not None:
            raise ValueError("A β per class needs the class ids of the anchors.")
        return self._pair_terms(
            embeddings, ref_embeddings, positive, negative, self._anchor_beta(None, 1, embeddings.dtype)
        )

    def may_compile(self):
        # β's value is read before a compiled call, but a β per class needs the class ids, and a miner's
        # generator its own calls.
        return self.num_classes is None and getattr(self.miner, "seed_generator", None) is None

    def compiled_inputs(self, num_queries):
        trained = (ops.convert_to_tensor(self.state.beta),) if self.learn_beta else ()
        drawn = ()
        if self.sampling == "distance_weighted":
            drawn = (random_numbers((num_queries, UNIFORMS_PER_ANCHOR), self.state.seed_generator),)
        return trained, drawn

    def compiled_pair_terms(self, embeddings, ref_embeddings, positive, negative, trained, drawn):
        matrix, terms = self.compiled_matrix_terms(embeddings.shape[-1])
        return terms(matrix(embeddings, ref_embeddings), positive, negative, trained, drawn)

    def compiled_matrix_terms(self, dim):
        def terms(distances, positive, negative, trained, drawn):
            beta = trained[0] if trained else self.beta
            uniforms = drawn[0] if drawn else None
            return sampled_margin_distance_terms(
                distances, positive, negative, beta, dim, **self._sampling_arguments(), uniforms=uniforms
            )

        return self._distances, terms

    def _pair_terms(self, embeddings, ref_embeddings, positive, negative, anchor_beta):
        return sampled_margin_terms(
            embeddings, ref_embeddings, positive, negative, anchor_beta, **self._sampling_arguments(),
            normalize=self.normalize,
        )

    def _sampling_arguments(self):
        return {
            "margin": self.margin,
            "nu": self.nu,
            "sampling": self.sampling,
            "cutoff": self.cutoff,
            "nonzero_loss_cutoff": self.nonzero_loss_cutoff,
            "seed": None if self.state is None else getattr(self.state, "seed_generator", None),
        }

    def get_config(self):
        config = super().get_config()
        del config["distance"]
        config.update(
            {
                "margin": self.margin,
                "beta": self.beta,
                "nu": self.nu,
                "learn_beta": self.learn_beta,
                "num_classes": self.num_classes,
                "sampling": self.sampling,
                "cutoff": self.cutoff,
                "nonzero_loss_cutoff": self.nonzero_loss_cutoff,
                "seed": self.seed,
            }
        )
        return config
