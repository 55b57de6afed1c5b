"""Embeddings for TensorBoard's Embedding Projector."""

import io
import os

import numpy as np

from tfmetric.callbacks.base import PeriodicCallback, SummaryLog, atomic_write, tsv_cell
from tfmetric.optional import optional_import
from tfmetric.plots import sprite, sprite_images

__all__ = ["EmbeddingProjector"]

# How tf.train.Checkpoint names a variable saved under a key.
TENSOR_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
METADATA_FILE = "metadata.tsv"
SPRITE_FILE = "sprite.png"
CHECKPOINT_PREFIX = "embeddings"


class EmbeddingProjector(PeriodicCallback):
    """Writes the embeddings of `x` where TensorBoard's Embedding Projector reads them.

    Every `every_n_epochs` epochs, `log_dir` receives a TensorFlow checkpoint
    of the embeddings (the model's outputs, or those of the layer `layer`),
    and, once, `metadata.tsv`, an optional `sprite.png` and
    `projector_config.pbtxt`. Run `tensorboard --logdir <log_dir or a parent>`
    and open the Projector tab. (Keras' own `TensorBoard(embeddings_freq=...)`
    saves `.weights.h5` files that the projector cannot open.)

    Each export is the tensor `epoch_NNNN` (TensorBoard caches tensors by
    name); the projector's menu offers it and the previous export.

    Nothing is ever half-visible: checkpoints are written to temporary files
    and renamed, the `checkpoint` index that TensorBoard follows moves to a new
    checkpoint only once it is complete, and every other file is replaced
    atomically. The config names no checkpoint file, only tensors that the
    latest checkpoint holds, before and after it is replaced; the last two
    checkpoints are kept, so a TensorBoard reading the previous one is not cut
    off.

    Args:
        log_dir: Directory to write to (a TensorBoard run).
        x: Inputs to embed (anything `model.predict` accepts).
        labels: Optional labels, the first metadata column ("label").
        metadata: Optional more columns: a dict `{column name: values}`, or
            one sequence of values (named "metadata").
        images: Optional thumbnails `(n, height, width[, channels])`, uint8
            or floats in [0, 1], tiled into a sprite of at most 8192×8192 px.
        layer: Name of the layer (or the layer) whose outputs to project;
            default the model's outputs.
        every_n_epochs: Export every this many epochs.
        batch_size: Batch size for `model.predict`.

    Example:

    ```python
    model.fit(..., callbacks=[tfm.callbacks.EmbeddingProjector("logs/projector", x_val, y_val)])
    ```
    """

    def __init__(
        self,
        log_dir,
        x,
        labels=None,
        metadata=None,
        images=None,
        layer=None,
        every_n_epochs=1,
        batch_size=256,
    ):
        super().__init__(every_n_epochs, layer, batch_size)
        self.log_dir = os.fspath(log_dir)
        self.x = x
        self.count = _count(x)
        self.columns = _metadata_columns(labels, metadata, self.count)
        self.images = None if images is None else sprite_images(images)
        if self.images is not None and len(self.images) != self.count:
            raise ValueError(f"images has {len(self.images)} entries for {self.count} inputs.")
        self._previous = None

    def on_epoch_end(self, epoch, logs=None):
        if self.due(epoch):
            self.export(epoch)

    def export(self, epoch):
        """Writes the current embeddings (and, the first time, the metadata and sprite)."""
        import tensorflow as tf

        embeddings = self.embed(self.x).astype(np.float32)
        if self._previous is None:
            os.makedirs(self.log_dir, exist_ok=True)
            self._write_assets()
            # The projector only looks in TensorBoard runs: directories with event files.
            log = SummaryLog(self.log_dir)
            log.text("embedding_projector", f"Embeddings of {self.count} examples: see the Projector tab.", step=epoch)
            log.close()
        # TensorBoard caches tensors by name, so each export has its own. The
        # checkpoint also holds the previous export, which the config names
        # until it is replaced: whatever the config says is always there.
        name = f"epoch_{epoch + 1:04d}"
        tensors = {name: embeddings, **(self._previous or {})}
        checkpoint = tf.train.Checkpoint(**{key: tf.Variable(value, trainable=False) for key, value in tensors.items()})
        manager = tf.train.CheckpointManager(checkpoint, self.log_dir, max_to_keep=2, checkpoint_name=CHECKPOINT_PREFIX)
        manager.save(checkpoint_number=epoch + 1)
        self._write_config([key + TENSOR_SUFFIX for key in tensors])
        self._previous = {name: embeddings}

    def _write_assets(self):
        if self.columns:
            atomic_write(os.path.join(self.log_dir, METADATA_FILE), _metadata_tsv(self.columns).encode("utf-8"))
        if self.images is not None:
            sheet, self._thumbnail = sprite(self.images)
            buffer = io.BytesIO()
            sheet.save(buffer, format="PNG")
            atomic_write(os.path.join(self.log_dir, SPRITE_FILE), buffer.getvalue())

    def _write_config(self, tensor_names):
        projector = optional_import("tensorboard.plugins.projector", "The embedding projector")
        text_format = optional_import("google.protobuf.text_format", "The embedding projector")
        config = projector.ProjectorConfig()
        for tensor_name in tensor_names:
            embedding = config.embeddings.add()
            embedding.tensor_name = tensor_name
            if self.columns:
                embedding.metadata_path = METADATA_FILE
            if self.images is not None:
                embedding.sprite.image_path = SPRITE_FILE
                embedding.sprite.single_image_dim.extend(self._thumbnail)
        atomic_write(
            os.path.join(self.log_dir, "projector_config.pbtxt"), text_format.MessageToString(config).encode("utf-8")
        )


def _count(x):
    """How many examples `x` holds: one array, or a dict, tuple or list of arrays (one per model input)."""
    if isinstance(x, dict):
        x = next(iter(x.values()))
    elif isinstance(x, (list, tuple)) and x and all(hasattr(part, "shape") for part in x):
        x = x[0]
    try:
        return len(x)
    except TypeError:
        raise ValueError("EmbeddingProjector needs x with a length (an array, or a dict or list of arrays).") from None


def _metadata_columns(labels, metadata, count):
    columns = {}
    if labels is not None:
        columns["label"] = labels
    if metadata is not None:
        if isinstance(metadata, dict):
            columns.update(metadata)
        else:
            columns["metadata"] = metadata
    for name, values in columns.items():
        values = np.asarray(values)
        if values.ndim != 1 or len(values) != count:
            raise ValueError(
                f"Metadata column {name!r} must hold one value per input ({count}); received shape {values.shape}."
            )
        columns[name] = values
    return columns


def _metadata_tsv(columns):
    """The projector's TSV: a header row only when there are several columns."""

    rows = zip(*(columns[name] for name in columns))
    lines = ["\t".join(tsv_cell(value) for value in row) for row in rows]
    if len(columns) > 1:
        lines.insert(0, "\t".join(tsv_cell(name) for name in columns))
    return "".join(line + "\n" for line in lines)
