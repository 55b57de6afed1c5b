"""Class labels for in-batch losses and metrics: validated, never merged.

Keras' `Loss.__call__` casts `y_true` to the loss dtype, which merges
different labels (2**24 and 2**24 + 1 are the same float32). Every in-batch
loss of tfmetric takes its labels through `standardize_labels` instead: the
labels keep their exact identity, and malformed ones are rejected with a
message that names the problem.
"""

import numpy as np
from keras import backend, ops


def is_backend_tensor(value):
    """Whether `value` is a tensor of the current Keras backend (not NumPy)."""
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.is_tensor(value)
    if backend.backend() == "jax":
        import jax

        return isinstance(value, jax.Array)
    if backend.backend() == "torch":
        import torch

        return isinstance(value, torch.Tensor)
    return False


def is_traced(tensor):
    """Whether `tensor` is symbolic (a graph or a trace), so no value to read."""
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly() or not hasattr(tensor, "numpy")
    if backend.backend() == "jax":
        import jax

        return isinstance(tensor, jax.core.Tracer)
    if backend.backend() == "torch":
        import torch

        # Keras infers output shapes on the "meta" device, which holds no values.
        return torch.compiler.is_compiling() or tensor.device.type == "meta"
    return False


def _check_shape(shape, num_examples):
    if len(shape) == 0 or len(shape) > 2:
        raise ValueError(
            "Labels must have shape (batch_size,) or (batch_size, 1); "
            f"received shape {tuple(shape)}."
        )
    if len(shape) == 2 and shape[1] is not None and shape[1] != 1:
        raise ValueError(
            f"Labels of shape {tuple(shape)} look one-hot encoded: in-batch "
            "losses take integer class ids of shape (batch_size,). Pass "
            "`np.argmax(y, axis=-1)` instead."
        )
    if (
        num_examples is not None
        and shape[0] is not None
        and shape[0] != num_examples
    ):
        raise ValueError(
            f"Labels and embeddings disagree on the batch size: {shape[0]} "
            f"labels for {num_examples} embeddings."
        )


def _check_values(values):
    """Host-side checks of float labels: finite and integral."""
    if not np.issubdtype(values.dtype, np.floating):
        return
    if not np.all(np.isfinite(values)):
        raise ValueError(
            "Labels must be finite; received "
            f"{values[~np.isfinite(values)][:5].tolist()}."
        )
    fractional = values != np.floor(values)
    if np.any(fractional):
        raise ValueError(
            "Float labels must hold integral class ids; received "
            f"non-integral values such as {values[fractional][:5].tolist()}."
        )


def _graph_checks(labels, num_examples_tensor):
    """The same checks as runtime assertions, for TensorFlow graphs.

    XLA drops assertions, so under `jit_compile=True` they do not fire; the
    labels are then still compared exactly, only not validated.
    """
    import tensorflow as tf

    checks = []
    if num_examples_tensor is not None:
        checks.append(
            tf.debugging.assert_equal(
                tf.shape(labels)[0],
                num_examples_tensor,
                message="Labels and embeddings disagree on the batch size",
            )
        )
    if labels.dtype.is_floating:
        checks.append(
            tf.debugging.assert_all_finite(labels, "Labels must be finite")
        )
        checks.append(
            tf.debugging.Assert(
                tf.reduce_all(tf.equal(labels, tf.floor(labels))),
                ["Float labels must hold integral class ids"],
            )
        )
    if checks:
        with tf.control_dependencies(checks):
            labels = tf.identity(labels)
    return labels


def standardize_labels(y_true, embeddings=None):
    """Validates class labels and returns them as a 1-D tensor.

    Args:
        y_true: Class ids of shape `(N,)` or `(N, 1)`, any integer dtype, or
            floats holding integral values. NumPy arrays and lists are
            validated on the host and mapped to dense int32 ids (so that no
            backend conversion can merge large ids); tensors keep their
            dtype, and equality on them is exact.
        embeddings: Optional `(N, D)` tensor whose batch size the labels must
            match.

    Returns:
        A tensor of shape `(N,)` whose equal entries are exactly the equal
        labels.

    Raises:
        ValueError: for one-hot labels, a wrong rank, a batch-size mismatch,
            or non-finite or non-integral float labels whose values can be
            read (eagerly). Inside a TensorFlow graph the value checks are
            assertions that raise `InvalidArgumentError` when run.
    """
    num_examples = None
    if embeddings is not None:
        num_examples = embeddings.shape[0]

    if not is_backend_tensor(y_true):
        values = np.asarray(y_true)
        if values.dtype == object or not (
            np.issubdtype(values.dtype, np.number)
            or np.issubdtype(values.dtype, np.bool_)
        ):
            raise ValueError(
                f"Labels must be numeric class ids; received dtype {values.dtype}."
            )
        _check_shape(values.shape, num_examples)
        values = values.reshape(-1)
        _check_values(values)
        # Dense ids in int32 are exact on every backend, including JAX
        # without 64-bit mode, which would truncate int64 ids.
        _, dense_ids = np.unique(values, return_inverse=True)
        return ops.convert_to_tensor(dense_ids.astype("int32").reshape(-1))

    labels = y_true
    _check_shape(tuple(labels.shape), num_examples)
    labels = ops.reshape(labels, (-1,))
    if backend.standardize_dtype(labels.dtype) == "bool":
        labels = ops.cast(labels, "int32")

    if not is_traced(labels):
        # Only float labels have values to check: integer ones stay on the device.
        if "float" in backend.standardize_dtype(labels.dtype):
            _check_values(np.asarray(ops.convert_to_numpy(labels)))
    elif backend.backend() == "tensorflow":
        import tensorflow as tf

        num_examples_tensor = (
            tf.shape(embeddings)[0] if embeddings is not None else None
        )
        labels = _graph_checks(labels, num_examples_tensor)
    return labels


def check_class_ids(y_true, num_classes):
    """Raises ValueError if readable class ids fall outside `[0, num_classes)`.

    For losses on class scores, where an out-of-range id would silently
    select no class. Under a trace the values cannot be read and this does
    nothing.
    """
    if is_backend_tensor(y_true) and is_traced(y_true):
        return
    values = np.asarray(ops.convert_to_numpy(y_true) if is_backend_tensor(y_true) else y_true)
    _check_values(values.reshape(-1))
    _check_range(values.reshape(-1), num_classes)


def _check_range(values, num_classes):
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"Class ids must lie in [0, {num_classes}) for {num_classes} classes; "
            f"received ids from {values.min()} to {values.max()}."
        )


def class_ids(y_true, num_classes, embeddings=None):
    """Validated class ids `0 … num_classes − 1`, as an int32 `(N,)` tensor.

    For losses that pick a class's vector or score by its label, where an
    id out of range would silently pick none (or another). Raises ValueError
    when the ids can be read (NumPy input, eager tensors); inside a
    TensorFlow graph an assertion raises `InvalidArgumentError` when run.
    Under XLA or a JAX trace nothing can be checked: callers give such
    examples a NaN loss (`in_class_range`).
    """
    if not is_backend_tensor(y_true):
        values = np.asarray(y_true)
        standardize_labels(values, embeddings)  # shape, dtype, finite and integral
        values = values.reshape(-1)
        _check_range(values, num_classes)
        return ops.convert_to_tensor(values.astype("int32"))
    labels = standardize_labels(y_true, embeddings)
    if not is_traced(labels):
        _check_range(np.asarray(ops.convert_to_numpy(labels)), num_classes)
    elif backend.backend() == "tensorflow":
        import tensorflow as tf

        message = f"Class ids must lie in [0, {num_classes})"
        checks = [
            tf.debugging.assert_non_negative(labels, message=message),
            tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message=message),
        ]
        with tf.control_dependencies(checks):
            labels = tf.identity(labels)
    return ops.cast(labels, "int32")


def in_class_range(y_true, num_classes):
    """`(N,)` booleans: which labels are class ids `0 … num_classes − 1` (for traces, see `class_ids`)."""
    labels = ops.reshape(ops.convert_to_tensor(y_true), (-1,))
    return (labels >= 0) & (labels < num_classes)


def standardize_multi_hot(y_true, num_examples=None):
    """Validates `(N, C)` 0/1 multi-hot labels (or a `tf.SparseTensor`) and returns them as float32.

    Two examples share a label where the product of their rows is positive.
    Raises ValueError for another rank, a batch-size mismatch, or (when the
    values can be read) entries other than 0 and 1.
    """
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(y_true, tf.SparseTensor):
            y_true = tf.sparse.to_dense(y_true)
    if not is_backend_tensor(y_true):
        y_true = np.asarray(y_true)
    if len(y_true.shape) != 2:
        raise ValueError(
            "Multi-label targets must be a (batch_size, num_classes) 0/1 matrix; "
            f"received shape {tuple(y_true.shape)}."
        )
    if num_examples is not None and y_true.shape[0] is not None and y_true.shape[0] != num_examples:
        raise ValueError(f"{y_true.shape[0]} label rows for {num_examples} examples.")
    if not (is_backend_tensor(y_true) and is_traced(y_true)):
        values = np.asarray(ops.convert_to_numpy(y_true) if is_backend_tensor(y_true) else y_true)
        if not np.all((values == 0) | (values == 1)):
            raise ValueError("Multi-label targets must hold only 0 and 1.")
    return ops.cast(y_true, "float32")


def standardize_any(y_true, embeddings=None, multi_label=False):
    """`standardize_multi_hot` or `standardize_labels`, as `multi_label` says."""
    if multi_label:
        return standardize_multi_hot(y_true, None if embeddings is None else embeddings.shape[0])
    return standardize_labels(y_true, embeddings)


def standardize_label_pair(labels, ref_labels, embeddings=None, ref_embeddings=None, multi_label=False):
    """Validated labels of queries and of their reference, comparable with each other.

    Class ids given as NumPy arrays on both sides are mapped to dense ids
    together, so equal labels stay equal across the two sets; tensors keep
    their values and are cast to one dtype. Multi-hot labels must have the
    same number of classes on both sides.
    """
    num = None if embeddings is None else embeddings.shape[0]
    ref_num = None if ref_embeddings is None else ref_embeddings.shape[0]
    if multi_label:
        labels, ref_labels = standardize_multi_hot(labels, num), standardize_multi_hot(ref_labels, ref_num)
        if labels.shape[1] is not None and ref_labels.shape[1] is not None and labels.shape[1] != ref_labels.shape[1]:
            raise ValueError(
                f"Multi-hot labels with {labels.shape[1]} classes against reference labels with "
                f"{ref_labels.shape[1]}."
            )
        return labels, ref_labels
    if not is_backend_tensor(labels) and not is_backend_tensor(ref_labels):
        values, ref_values = np.asarray(labels), np.asarray(ref_labels)
        # Validated apart (shapes, dtypes, values), then numbered together.
        standardize_labels(values, embeddings)
        standardize_labels(ref_values, ref_embeddings)
        both = np.concatenate([values.reshape(-1), ref_values.reshape(-1)])
        ids = standardize_labels(both)
        size = values.size
        return ids[:size], ids[size:]
    if not is_backend_tensor(labels):
        labels = ops.convert_to_tensor(np.asarray(labels))
    if not is_backend_tensor(ref_labels):
        ref_labels = ops.convert_to_tensor(np.asarray(ref_labels))
    labels = standardize_labels(labels, embeddings)
    ref_labels = standardize_labels(ref_labels, ref_embeddings)
    dtype = backend.result_type(labels.dtype, ref_labels.dtype)
    return ops.cast(labels, dtype), ops.cast(ref_labels, dtype)
