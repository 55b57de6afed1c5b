"""What the callbacks share: an epoch schedule, embedding a dataset, TensorBoard logs."""

import contextlib
import os
import tempfile

import keras
import numpy as np

from tfmetric.inspection import submodel

__all__ = ["PeriodicCallback", "SummaryLog", "atomic_write", "embedding_model", "tsv_cell"]


class PeriodicCallback(keras.callbacks.Callback):
    """A callback that works at the end of every `every_n_epochs`-th epoch.

    `layer` and `batch_size` say what `embed` reads: the model's outputs, or
    those of its layer `layer` (a name or the layer).
    """

    def __init__(self, every_n_epochs=1, layer=None, batch_size=256):
        super().__init__()
        if int(every_n_epochs) != every_n_epochs or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer; received {every_n_epochs}.")
        self.every_n_epochs = int(every_n_epochs)
        self.layer = layer
        self.batch_size = batch_size
        self._built_for = self._built = None

    def due(self, epoch):
        return (epoch + 1) % self.every_n_epochs == 0

    def for_model(self, build):
        """`build(self.model)`, kept until the callback is given another model.

        Sub-models built once are traced once by `predict`.
        """
        if self._built_for is not self.model:
            self._built, self._built_for = build(self.model), self.model
        return self._built

    def embed(self, x):
        """The embeddings of `x`, as a 2-D array."""
        embedder = self.for_model(lambda model: embedding_model(model, self.layer))
        outputs = np.asarray(embedder.predict(x, batch_size=self.batch_size, verbose=0))
        return outputs.reshape(len(outputs), -1)


def embedding_model(model, layer=None):
    """`model`, or the sub-model from its inputs to the outputs of its layer `layer` (a name or the layer)."""
    if layer is None:
        return model
    source = model.get_layer(layer) if isinstance(layer, str) else layer
    try:
        outputs = source.output
    except AttributeError as error:
        raise ValueError(f"Layer {source.name!r} has no outputs in a graph of layers: {error}") from error
    return submodel(model, outputs)


class SummaryLog:
    """TensorBoard event files in `log_dir`, opened on first write."""

    def __init__(self, log_dir):
        self.log_dir = str(log_dir)
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    @contextlib.contextmanager
    def _writing(self):
        import tensorflow as tf

        with self.writer.as_default():
            yield tf.summary
        self.writer.flush()

    def scalars(self, values, step):
        with self._writing() as summary:
            for name, value in values.items():
                summary.scalar(name, value, step=step)

    def image(self, name, picture, step, description=None):
        """`picture`: a uint8 array `(height, width, channels)`."""
        with self._writing() as summary:
            summary.image(name, picture[None], step=step, description=description)

    def text(self, name, value, step):
        with self._writing() as summary:
            summary.text(name, value, step=step)

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def atomic_write(path, data):
    """Writes `data` to `path` so that readers see the old file or the whole new one."""
    directory = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def tsv_cell(value):
    """`value` as one TSV cell: tabs and newlines would shift the columns or rows."""
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")
