"""Serving an index: one SavedModel from raw inputs to the nearest references.

`export(index, path)` writes the model and the index's references into one
TensorFlow SavedModel whose serving function embeds raw inputs and searches
them exactly (every reference, in one float32 matrix product, then
`tf.math.top_k`). Serving needs TensorFlow only: `tf.saved_model.load(path)`
in a process that never imports tfmetric, or TF Serving.
"""

import contextlib
import io

import keras
import numpy as np

from tfmetric.search.exact import _check_k, _squared_norms, _unit_rows

__all__ = ["export", "UNKNOWN_LABELS"]

# The `label` served for a query beyond the threshold, by the labels' kind.
UNKNOWN_LABELS = {"int": -1, "string": ""}
# Keras traces these backends' models to TensorFlow for a SavedModel:
# natively, or through jax2tf.
_EXPORTABLE_BACKENDS = ("tensorflow", "jax")


def export(index, path, model=None, k=10):
    """Writes a SavedModel at `path` that maps raw inputs to their `k` nearest references.

    The SavedModel holds the model, the index's embeddings (float32), labels
    and distance. Its endpoints (methods of the loaded object, and signatures
    for TF Serving):

    - `serve(inputs)`, also the `serving_default` signature: a dict of
      `distances` `(batch, k)` float32, `indices` `(batch, k)` int64 (positions
      in the order of `Index.add`), `labels` `(batch, k)` (when the index has
      labels: int64, or strings served as bytes) and, when the index has a
      threshold (`index.threshold`), `matched` `(batch,)` bool (the nearest
      distance is at most the threshold, compared in float32) and `label`
      `(batch,)`: the nearest label where matched, else `UNKNOWN_LABELS`: -1
      for int labels, "" for strings (check `matched` when -1 or "" is also a
      real label).
    - `embed(inputs)`: the model's embeddings alone.

    `k` beyond the size of the index serves every reference (fewer columns),
    as `Index.search` does. The search is exact up to float32 rounding: the
    distances match `Index.search`'s to about 1e-6 of their scale, and the
    order is the same except between references whose distances are equal
    up to that rounding (exact ties go to the lower index in both).

    Models of the TensorFlow and JAX backends export (JAX through Keras'
    jax2tf route); a PyTorch-backend model is refused with a `ValueError`
    that says how to move its weights to one of them. The model must have one input
    (a Functional or Sequential model built on `keras.Input`) and one output
    of the index's embedding width.

    Args:
        index: A `tfm.search.Index` holding at least one reference.
        path: The SavedModel's folder.
        model: The Keras model that embeds raw inputs; defaults to `index.model`.
        k: How many neighbours each query is served.

    Example:

    >>> import os, tempfile, keras, numpy as np, tensorflow as tf, tfmetric as tfm
    >>> from tfmetric.search.serving import export
    >>> identity = keras.layers.Dense(2, use_bias=False, kernel_initializer="identity")
    >>> model = keras.Sequential([keras.Input((2,)), identity])
    >>> index = tfm.search.Index(model)
    >>> index.add(np.array([[0.0, 0.0], [3.0, 4.0]]), labels=["origin", "far"])
    >>> index.threshold = 0.75
    >>> path = os.path.join(tempfile.mkdtemp(), "served")
    >>> export(index, path, k=2)
    >>> served = tf.saved_model.load(path)
    >>> result = served.serve(tf.constant([[0.3, 0.4], [3.0, 3.0]]))
    >>> result["indices"].numpy().tolist(), result["distances"].numpy().astype(float).round(3).tolist()
    ([[0, 1], [1, 0]], [[0.5, 4.5], [1.0, 4.243]])
    >>> result["matched"].numpy().tolist(), result["label"].numpy().tolist()
    ([True, False], [b'origin', b''])
    """
    k = _check_k(k)
    if not len(index):
        raise ValueError("The index is empty: add references before exporting it.")
    model = model if model is not None else index.model
    if model is None:
        raise ValueError("export needs the model that embeds raw inputs: Index(model) or export(..., model=...).")
    input_spec = _input_spec(model, index.embeddings.shape[1])
    labels, unknown = _served_labels(index.labels)
    # Index.threshold checks what it is given (a number >= 0, or None).
    threshold = getattr(index, "threshold", None)
    backend = keras.backend.backend()
    if backend not in _EXPORTABLE_BACKENDS:
        # Keras' route for PyTorch (torch.export, then torch_xla's StableHLO)
        # needs torch_xla, and Keras 3.15's own model.export fails in
        # torch.export before reaching it; weights move between backends.
        raise ValueError(
            f"export traces the model to a TensorFlow SavedModel, which works from the TensorFlow and JAX backends; "
            f"received a model of the {backend!r} backend. Save its weights (model.save_weights), rebuild it "
            "under KERAS_BACKEND=tensorflow (or jax), load them and export from there."
        )
    # Imported here: importing tfmetric stays free of TensorFlow's import
    # time on the other backends.
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    signature = [tf.TensorSpec(input_spec.shape, input_spec.dtype, name="inputs")]

    def embed_inputs(inputs):
        return model(inputs, training=False)

    # track + add_endpoint, not the newer track_and_add_endpoint: Keras 3.6 has only these.
    embed = archive.add_endpoint("embed", embed_inputs, input_signature=signature)
    references = _references_module(tf, index.embeddings, index.distance, labels)
    archive.track(references)

    @tf.function(input_signature=signature)
    def serve(inputs):
        distances, indices = _top_k(tf, references, tf.cast(embed(inputs), tf.float32), index.distance, k)
        served = {"distances": distances, "indices": indices}
        if labels is not None:
            served["labels"] = tf.gather(references.labels, indices)
        if threshold is not None:
            served["matched"] = distances[:, 0] <= float(threshold)
            if labels is not None:
                served["label"] = tf.where(served["matched"], served["labels"][:, 0], unknown)
        return served

    serve.get_concrete_function()
    archive.add_endpoint("serve", serve)
    # TF Serving and saved_model_cli answer with `serving_default`, which
    # would otherwise be the first endpoint, `embed`.
    archive.add_endpoint("serving_default", serve)
    # Keras 3.6 prints the endpoints whatever `verbose` says.
    with contextlib.redirect_stdout(io.StringIO()):
        archive.write_out(str(path), verbose=False)


def _input_spec(model, width):
    """The model's single input as a `tf.TensorSpec`-able `keras.InputSpec`, after checking its output width."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs or len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            "export needs a model with one input and one output, built on keras.Input (Functional or "
            f"Sequential); received {type(model).__name__} with inputs {inputs} and outputs {outputs}."
        )
    if tuple(outputs[0].shape[1:]) != (width,):
        raise ValueError(
            f"The index holds {width}-dimensional embeddings; the model outputs shape {tuple(outputs[0].shape)}."
        )
    return keras.InputSpec(shape=(None, *inputs[0].shape[1:]), dtype=inputs[0].dtype)


def _served_labels(labels):
    """The labels as int64 or strings, and the `label` served for unknown queries; `(None, None)` without labels."""
    if labels is None:
        return None, None
    if labels.dtype.kind in "iu" and labels.dtype != np.uint64:
        return labels.astype(np.int64), UNKNOWN_LABELS["int"]
    if labels.dtype.kind in "US":
        # TensorFlow stores str as UTF-8 and bytes as they are.
        return labels, UNKNOWN_LABELS["string"]
    raise ValueError(
        f"export serves integer labels (that fit int64) or string labels; the index's labels have dtype {labels.dtype}."
    )


def _references_module(tf, embeddings, distance, labels):
    """A `tf.Module` holding the references as variables.

    Variables, not constants captured by the serving function: a graph
    constant counts against the SavedModel's 2 GiB protocol-buffer limit.
    """
    references = tf.Module()
    embeddings = np.asarray(embeddings, np.float64)
    if distance == "cosine":
        references.operand = tf.Variable(
            _unit_rows(embeddings).astype(np.float32), trainable=False, name="unit_embeddings"
        )
    else:
        # Centred on their mean (queries too, when served), so that float32
        # keeps the digits of references far from the origin but near
        # one another.
        centre = embeddings.mean(axis=0)
        centred = (embeddings - centre).astype(np.float32)
        references.centre = tf.Variable(centre.astype(np.float32), trainable=False, name="centre")
        references.operand = tf.Variable(centred, trainable=False, name="centred_embeddings")
        references.squared_norms = tf.Variable(
            _squared_norms(centred).astype(np.float32),
            trainable=False,
            name="squared_norms",
        )
    if labels is not None:
        references.labels = tf.Variable(labels, trainable=False, name="labels")
    return references


def _top_k(tf, references, queries, distance, k):
    """The `k` smallest distances of each query to every reference, and their indices (ties to the lower)."""
    k = min(k, int(references.operand.shape[0]))
    if distance == "cosine":
        units = tf.math.l2_normalize(queries, axis=1)
        distances = 1.0 - tf.linalg.matmul(units, references.operand, transpose_b=True)
    else:
        centred = queries - references.centre
        distances = (
            tf.reduce_sum(tf.square(centred), axis=1, keepdims=True)
            + references.squared_norms[tf.newaxis, :]
            - 2.0 * tf.linalg.matmul(centred, references.operand, transpose_b=True)
        )
    # Rounding may take a distance a little below zero.
    distances = tf.maximum(distances, 0.0)
    # top_k keeps the lower index first among equal values.
    negated, indices = tf.math.top_k(-distances, k=k)
    nearest = -negated
    if distance == "euclidean":
        nearest = tf.sqrt(nearest)
    return nearest, tf.cast(indices, tf.int64)
