"""P×K batches for online mining: P distinct classes × K examples each.

In-batch losses need positives in the batch. `pk_sampler` builds such
batches from data in memory (or from references that a `load_fn` decodes),
going through the data without replacement once per epoch.

How an epoch is planned (all inside the `tf.data` pipeline, from one random
seed per epoch, so the order changes every epoch and a seed fixes them all):

1. Each class's examples are shuffled and cut into groups of K (the last,
   incomplete group is dropped, or topped up with the class's own examples
   when `allow_repeats=True`).
2. The number of batches B is the largest with `Σ_c min(groups_c, B) ≥ P·B`:
   no class can appear twice in a batch, so a class gives at most B groups.
3. Classes are put in a random order, each keeping at most B of its groups;
   the first P·B groups fill a P × B grid column by column, so the (at most
   B, contiguous) groups of a class land in B different batches.
4. The batches are shuffled.

`pk_batches` does the same for a stream (TFRecord files, data larger than
memory) with bounded buffers, at the cost of the weaker guarantees it
documents.
"""

import numpy as np
import tensorflow as tf

__all__ = ["pk_batches", "pk_sampler", "random_pairs", "random_triplets"]


def pk_sampler(
    x,
    y,
    p,
    k,
    *,
    seed=None,
    allow_repeats=False,
    load_fn=None,
    num_parallel_calls=tf.data.AUTOTUNE,
    input_context=None,
):
    """A `tf.data.Dataset` of `(x_batch, y_batch)` with P classes × K examples each.

    Every batch holds exactly `p` different classes and `k` examples of each,
    a class's examples contiguous (batch size `p·k`). With
    `strategy.experimental_distribute_dataset`, each replica then gets whole
    classes when `p` is a multiple of the number of replicas.

    An epoch uses each example at most once (see `allow_repeats`) and makes
    as many full batches as the P×K constraint allows; the cardinality is
    known (Keras shows a progress bar). Iterating the dataset again, as
    `model.fit` does every epoch, draws a new order; the same `seed` gives
    the same sequence of epochs.

    Pass `shuffle=False` to `model.fit`: the sampler orders the batches
    itself (shuffling examples would break up the P×K groups), and Keras,
    which never shuffles a `tf.data.Dataset`, warns about its default
    `shuffle=True` otherwise (`UserWarning: shuffle=True was passed, but will
    be ignored`):

    >>> import keras, numpy as np, tfmetric as tfm
    >>> x = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
    >>> y = np.repeat(np.arange(16), 16)  # integer class ids
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.UnitNormalization()])
    >>> model.compile(optimizer="adam", loss=tfm.BatchHardTriplet(margin=0.5))
    >>> batches = tfm.data.pk_sampler(x, y, p=4, k=4, seed=0)
    >>> history = model.fit(batches, epochs=2, shuffle=False, verbose=0)
    >>> len(history.history["loss"]), int(batches.cardinality())  # 16 classes × 16 examples: 16 batches of 4 × 4
    (2, 16)

    Args:
        x: An array, or a nested structure (dict, tuple) of arrays sharing the
            first dimension; with `load_fn`, references to examples (e.g. file
            paths).
        y: Integer class labels, shape `(N,)` or `(N, 1)`.
        p: Classes per batch.
        k: Examples per class in a batch, at least 2.
        seed: Integer seed. `None` draws one now, so each new sampler differs.
            Required when sharding across several input pipelines. The
            epochs' draws also depend on TensorFlow's global seed
            (`keras.utils.set_random_seed`), as every `tf.data` random op
            does: workers sharding one plan must set the same one (or none).
        allow_repeats: Keep every example: a class's last incomplete group
            of K (or a class with fewer than K examples) is topped up by
            repeating examples of that class. By default those examples are
            skipped in that epoch (a different subset every epoch).
        load_fn: Optional function from one element of `x` to one example,
            run in parallel inside the pipeline (decoding images from paths,
            ...).
        num_parallel_calls: Parallelism of `load_fn`.
        input_context: A `tf.distribute.InputContext`: each input pipeline
            gets every W-th batch of the same epoch plan (W pipelines), so no
            two workers see the same example in an epoch.

    Raises:
        ValueError: for `k < 2`, `p < 1`, `x` and `y` of different lengths,
            non-integer labels, or fewer classes with enough examples than
            `p`; the message gives the numbers.
    """
    labels = _check_labels(y)
    num_examples = len(labels)
    leaves = tf.nest.flatten(x)
    for leaf in leaves:
        if len(leaf) != num_examples:
            raise ValueError(
                f"x and y disagree on the number of examples: {len(leaf)} in x, "
                f"{num_examples} labels."
            )
    p, k = _check_p_k(p, k)
    plan = _EpochPlan(labels, p, k, allow_repeats)
    num_pipelines, pipeline_id = 1, 0
    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
    if seed is None:
        if num_pipelines > 1:
            raise ValueError(
                "Sharding over several input pipelines needs a seed, so that every "
                "worker plans the same epoch and takes its own share of it."
            )
        seed = int(np.random.SeedSequence().entropy % 2**31)
    num_batches = plan.num_batches // num_pipelines
    if num_batches == 0:
        raise ValueError(
            f"{plan.num_batches} P×K batches per epoch cannot be shared by "
            f"{num_pipelines} input pipelines."
        )

    def batch_indices(epoch_seed):
        ids = plan.batches(epoch_seed)
        return ids[pipeline_id::num_pipelines][:num_batches]

    epochs = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    indices = epochs.map(batch_indices).unbatch()
    y_all = tf.constant(labels)
    if load_fn is None:
        x_all = tf.nest.map_structure(tf.convert_to_tensor, x)
        dataset = indices.map(
            lambda ids: (tf.nest.map_structure(lambda leaf: tf.gather(leaf, ids), x_all), tf.gather(y_all, ids)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        references = tf.nest.map_structure(tf.convert_to_tensor, x)
        dataset = (
            indices.unbatch()
            .map(
                lambda i: (
                    load_fn(tf.nest.map_structure(lambda leaf: leaf[i], references)),
                    y_all[i],
                ),
                num_parallel_calls=num_parallel_calls,
            )
            .batch(p * k)
        )
    return dataset.apply(tf.data.experimental.assert_cardinality(num_batches)).prefetch(tf.data.AUTOTUNE)


def _check_labels(y):
    if hasattr(y, "dense_shape"):
        raise ValueError(
            "The P×K sampler needs one class id per example; received a SparseTensor (multi-label data). "
            "Sample multi-label batches with tf.data.Dataset.shuffle().batch() instead."
        )
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 2:
        raise ValueError(
            f"The P×K sampler needs one class id per example; received labels of shape {labels.shape} "
            "(multi-hot rows?). P classes × K examples has no meaning when an example has several labels: "
            "sample multi-label batches with tf.data.Dataset.shuffle().batch() instead."
        )
    if labels.ndim != 1:
        raise ValueError(f"y must hold one integer label per example; received shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels)) and np.all(
            labels == np.floor(labels)
        ):
            labels = labels.astype("int64")
        else:
            raise ValueError(f"y must hold integer class labels; received dtype {labels.dtype}.")
    return labels


def _check_p_k(p, k):
    if int(k) != k or k < 2:
        raise ValueError(f"k must be an integer of at least 2 (a positive per example); received k={k}.")
    if int(p) != p or p < 1:
        raise ValueError(f"p must be a positive integer; received p={p}.")
    return int(p), int(k)


class _EpochPlan:
    """The static tables of an epoch plan, and the plan for one epoch seed."""

    def __init__(self, labels, p, k, allow_repeats):
        classes, class_of, counts = np.unique(labels, return_inverse=True, return_counts=True)
        groups = -(-counts // k) if allow_repeats else counts // k
        eligible = groups > 0
        if eligible.sum() < p:
            rule = "at least 1 example" if allow_repeats else f"at least k={k} examples"
            raise ValueError(
                f"p={p} classes per batch, but only {int(eligible.sum())} of the "
                f"{len(classes)} classes have {rule}"
                + ("" if allow_repeats else " (allow_repeats=True tops up smaller classes)")
                + "."
            )
        # Eligible classes renumbered 0..C-1; their examples in class order.
        new_id = np.cumsum(eligible) - 1
        keep = eligible[class_of]
        self.examples = np.flatnonzero(keep).astype("int64")
        self.example_class = new_id[class_of[keep]].astype("float64")
        counts, groups = counts[eligible], groups[eligible]
        self.num_batches = _max_batches(groups, p)
        class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        # Slot j of class c (j < groups_c · k) is the (j mod n_c)-th of its
        # shuffled examples: repeats only when topping up.
        slot_class = np.repeat(np.arange(len(counts)), groups * k)
        slot_position = np.arange(len(slot_class)) - np.repeat(
            np.concatenate([[0], np.cumsum(groups * k)[:-1]]), groups * k
        )
        self.slot_source = (class_start[slot_class] + slot_position % counts[slot_class]).astype("int64")
        # Group g holds slots g·k .. g·k + k - 1.
        self.group_class = np.repeat(np.arange(len(groups)), groups).astype("int64")
        self.group_rank = (
            np.arange(len(self.group_class)) - np.repeat(np.concatenate([[0], np.cumsum(groups)[:-1]]), groups)
        ).astype("int64")
        self.num_classes = len(groups)
        self.p, self.k = p, k

    def batches(self, epoch_seed):
        """`(B, p·k)` example indices for the epoch drawn from `epoch_seed`."""
        seeds = [tf.stack([epoch_seed, tf.constant(i, tf.int64)]) for i in range(3)]
        b, p, k = self.num_batches, self.p, self.k
        # 1. Shuffle within classes: sort by class + a random fraction.
        jitter = tf.random.stateless_uniform([len(self.examples)], seeds[0], dtype=tf.float64)
        shuffled = tf.gather(self.examples, tf.argsort(self.example_class + jitter))
        slot_example = tf.gather(shuffled, self.slot_source)
        # 3. Random class order, at most B groups per class, P·B groups in all.
        class_rank = tf.argsort(tf.argsort(tf.random.stateless_uniform([self.num_classes], seeds[1])))
        key = tf.gather(tf.cast(class_rank, tf.int64), self.group_class) * (b + 1) + self.group_rank
        key = tf.where(self.group_rank < b, key, tf.int64.max)
        chosen = tf.argsort(key)[: p * b]
        grid = tf.transpose(tf.reshape(chosen, [p, b]))
        # 4. Shuffle the batches.
        grid = tf.gather(grid, tf.argsort(tf.random.stateless_uniform([b], seeds[2])))
        slots = tf.cast(grid, tf.int64)[:, :, None] * k + tf.range(k, dtype=tf.int64)
        return tf.reshape(tf.gather(slot_example, slots), [b, p * k])


def _max_batches(groups, p):
    """The largest B with `Σ min(groups, B) ≥ p·B` (the left side grows slower)."""
    low, high = 0, int(groups.sum()) // p
    while low < high:
        middle = (low + high + 1) // 2
        if np.minimum(groups, middle).sum() >= p * middle:
            low = middle
        else:
            high = middle - 1
    return low


def pk_batches(dataset, p, k, *, block_size=8192, carry_size=None, input_context=None):
    """P×K batches from a stream of `(x, y)` examples, with bounded memory.

    The stream is read in blocks of `block_size` examples. In each block,
    together with the examples carried over from earlier blocks, the
    examples of every class are cut into groups of `k` (oldest first) and
    as many P×K batches as possible are formed, preferring the classes that
    have waited longest (the batch-count rule of `pk_sampler`). Examples
    not used yet, the incomplete groups among them, are carried to the next
    block, at most `carry_size` of them. Memory holds at most
    `block_size + carry_size` examples.

    Guarantees, per pass over `dataset`:

    - every batch has exactly `p` distinct classes × `k` examples, a class's
      examples contiguous (like `pk_sampler`);
    - no example is used twice;
    - examples are skipped only when still carried at the end of the
      stream, or when more than `carry_size` wait at once, in which case
      the oldest are dropped. Carried examples are at most `k − 1` per
      class plus complete groups that no batch could take (a stream sorted
      by class); a `carry_size` of at least `k` × the number of classes
      avoids drops for a shuffled stream.

    Batches follow the order of the stream, so shuffle the input (e.g.
    `interleave` TFRecord files and `shuffle` with a buffer); the number of
    batches is not known in advance (`model.fit` shows no total; pass
    `steps_per_epoch` or let it run to the end of the stream). As with
    `pk_sampler`, pass `shuffle=False` to `model.fit`.

    Args:
        dataset: A `tf.data.Dataset` of `(x, y)` single examples; `x` any
            nested structure of tensors of fixed shape, `y` an integer
            scalar (or shape `(1,)`) label.
        p: Classes per batch.
        k: Examples per class, at least 2.
        block_size: Examples read per step.
        carry_size: Examples kept between steps; default `block_size`.
        input_context: A `tf.distribute.InputContext`: each input pipeline
            reads every W-th example of `dataset` (W pipelines).
    """
    p, k = _check_p_k(p, k)
    carry_size = int(block_size if carry_size is None else carry_size)
    if block_size < p * k:
        raise ValueError(f"block_size={block_size} is smaller than one batch of p·k={p * k} examples.")
    x_spec, _ = _check_stream_spec(dataset.element_spec)
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    blocks = dataset.map(lambda x, y: (x, tf.cast(tf.reshape(y, []), tf.int64))).batch(block_size)

    initial = (
        tf.nest.map_structure(lambda spec: tf.zeros([carry_size, *spec.shape], spec.dtype), x_spec),
        tf.zeros([carry_size], tf.int64),
        tf.constant(0, tf.int32),
    )

    def step(carry, block):
        carry_x, carry_y, carry_count = carry
        block_x, block_y = block
        # Carried examples first: position = age order, oldest first.
        all_x = tf.nest.map_structure(
            lambda old, new: tf.concat([old[:carry_count], new], 0), carry_x, block_x
        )
        all_y = tf.concat([carry_y[:carry_count], block_y], 0)
        batch_ids, unused = _plan_block(all_y, p, k)
        batches_x = tf.nest.map_structure(lambda leaf: tf.gather(leaf, batch_ids), all_x)
        batches_y = tf.gather(all_y, batch_ids)
        # Keep the newest `carry_size` unused examples, in age order.
        unused = unused[-carry_size:]
        count = tf.shape(unused)[0]
        padding = carry_size - count
        carry_x = tf.nest.map_structure(
            lambda leaf: tf.concat(
                [tf.gather(leaf, unused), tf.zeros([padding, *leaf.shape[1:]], leaf.dtype)], 0
            ),
            all_x,
        )
        carry_y = tf.concat([tf.gather(all_y, unused), tf.zeros([padding], tf.int64)], 0)
        return (carry_x, carry_y, count), (batches_x, batches_y)

    return blocks.scan(initial, step).unbatch().prefetch(tf.data.AUTOTUNE)


def _plan_block(labels, p, k):
    """`(batch_ids (B, p·k), unused)`: P×K batches from one block, and the rest.

    `labels` are in age order. Each class's examples are cut into groups of
    k, oldest first; classes are taken in the order of their oldest
    example, at most B groups each, and laid out on a P × B grid column by
    column as in `pk_sampler`; B is the largest count the groups allow.
    """
    size = tf.shape(labels)[0]
    order = tf.argsort(labels, stable=True)
    sorted_labels = tf.gather(labels, order)
    starts = tf.searchsorted(sorted_labels, sorted_labels, side="left")
    ends = tf.searchsorted(sorted_labels, sorted_labels, side="right")
    rank = tf.range(size) - starts
    groups = (ends - starts) // k  # of the example's class
    is_first = tf.equal(rank, 0)
    class_groups = tf.boolean_mask(groups, is_first)

    def feasible(b):
        return tf.reduce_sum(tf.minimum(class_groups, b)) >= p * b

    # The largest feasible B, by bisection (feasibility is monotone).
    low, high = tf.constant(0), tf.reduce_sum(class_groups) // p
    low, high = tf.while_loop(
        lambda low, high: low < high,
        lambda low, high: tf.cond(
            feasible((low + high + 1) // 2),
            lambda: ((low + high + 1) // 2, high),
            lambda: (low, (low + high + 1) // 2 - 1),
        ),
        (low, high),
    )
    num_batches = low
    group_rank = rank // k
    # One entry per group: the position of its first example.
    group_start = tf.boolean_mask(tf.range(size), tf.equal(rank % k, 0) & (group_rank < groups))
    # Class priority: the age of its oldest example (the first in its run).
    oldest = tf.gather(order, starts)
    key = tf.cast(tf.gather(oldest, group_start), tf.int64) * tf.cast(size + 1, tf.int64) + tf.cast(
        tf.gather(group_rank, group_start), tf.int64
    )
    usable = tf.gather(group_rank, group_start) < num_batches
    key = tf.where(usable, key, tf.int64.max)
    chosen = tf.gather(group_start, tf.argsort(key)[: p * num_batches])
    grid = tf.transpose(tf.reshape(chosen, [p, num_batches]))
    positions = grid[:, :, None] + tf.range(k)
    batch_ids = tf.gather(order, tf.reshape(positions, [num_batches, p * k]))
    used = tf.scatter_nd(
        tf.reshape(batch_ids, [-1, 1]), tf.ones([num_batches * p * k], tf.int32), [size]
    )
    unused = tf.where(tf.equal(used, 0))[:, 0]
    return batch_ids, tf.cast(unused, tf.int32)


def _check_stream_spec(spec):
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError(f"pk_batches needs a dataset of (x, y) pairs; its elements are {spec}.")
    x_spec, y_spec = spec
    for leaf in tf.nest.flatten(x_spec):
        if not leaf.shape.is_fully_defined():
            raise ValueError(
                f"pk_batches needs examples of a fixed shape (batched per class); x has shape {leaf.shape}."
            )
    if not (y_spec.dtype.is_integer or y_spec.dtype.is_floating) or y_spec.shape.num_elements() != 1:
        raise ValueError(f"y must be one integer label per example; received {y_spec}.")
    return x_spec, y_spec


def _random_triplets(labels, count, rng):
    """`count` (anchor, positive, negative) index triples; the two public samplers share them."""
    labels = np.asarray(labels).reshape(-1)
    classes, codes = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(codes == code) for code in range(len(classes))]
    if len(classes) < 2:
        raise ValueError("Random pairs and triplets need at least two classes.")
    if not any(len(indices) > 1 for indices in members):
        raise ValueError("Every class has a single example: there is no positive pair.")
    # Anchors need a positive: examples of classes with two or more.
    eligible = np.concatenate([indices for indices in members if len(indices) > 1])
    anchors = eligible[rng.integers(len(eligible), size=count)]
    positives = np.empty_like(anchors)
    negatives = np.empty_like(anchors)
    for slot, anchor in enumerate(anchors):
        own = members[codes[anchor]]
        choice = own[rng.integers(len(own) - 1)]
        # Any other member of the class: skip over the anchor itself.
        positives[slot] = choice if choice != anchor else own[-1]
        negative_class = rng.integers(len(members) - 1)
        negative_class += negative_class >= codes[anchor]
        others = members[negative_class]
        negatives[slot] = others[rng.integers(len(others))]
    return anchors, positives, negatives


def random_pairs(labels, count, seed=None):
    """Offline pairs for a siamese network: half similar, half not, drawn at random.

    Returns `(first, second, similar)`: two index arrays into `labels` and
    `similar` (1 for the same class, 0 otherwise), `count` pairs in all.
    Anchors come uniformly from the examples of classes with two or more.
    """
    rng = np.random.default_rng(seed)
    first, positives, negatives = _random_triplets(labels, count, rng)
    similar = (np.arange(count) % 2 == 0).astype("int64")
    rng.shuffle(similar)
    return first, np.where(similar == 1, positives, negatives), similar


def random_triplets(labels, count, seed=None):
    """Offline triplets `(anchor, positive, negative)` of indices into `labels`, drawn at random."""
    return _random_triplets(labels, count, np.random.default_rng(seed))
