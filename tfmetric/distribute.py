"""In-batch losses under `tf.distribute`: gathering the global batch across replicas.

Each replica of a `tf.distribute` strategy sees only its slice of the batch.
With the TensorFlow backend, these helpers let a loss mine its anchors against
the embeddings of every replica, with gradients that flow back to the replica
each embedding came from (`ReplicaContext.all_gather` sums the incoming
gradients across replicas and hands each its slice). On other backends
(`keras.distribution` on JAX shards one global batch) there is nothing to do.
"""

import keras
from keras import ops

__all__ = ["gather_across_replicas", "replica_context", "scale_for_replicas"]


def replica_context():
    """The `tf.distribute` replica context of a strategy with several replicas, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def scale_for_replicas(loss, reduction):
    """Keras' convention for a mean loss under a strategy: each replica returns its mean ÷ R.

    The optimizer sums the replicas' gradients, so this averages them, as
    Keras' own losses do. Sums and per-example losses are left alone.
    """
    if reduction not in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
        return loss
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss * ops.cast(1.0 / replicas, loss.dtype)


def gather_across_replicas(context, embeddings, labels, weights):
    """The global batch, and where this replica's examples start in it.

    Returns `(embeddings, labels, weights, start)`: each replica's rows
    concatenated in replica order (the local batches may differ in size).
    """
    import tensorflow as tf

    all_embeddings = context.all_gather(embeddings, axis=0)
    # The gather forgets the static width, which distance-weighted sampling needs.
    all_embeddings = tf.ensure_shape(all_embeddings, (None,) + tuple(embeddings.shape[1:]))
    # Labels, weights and sizes carry no gradient: gathered apart from the embeddings.
    size = tf.reshape(tf.shape(embeddings)[0], (1,))
    all_labels, all_weights, sizes = context.all_gather([labels, weights, size], axis=0)
    start = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
    return all_embeddings, all_labels, all_weights, start
