"""A 2-D PCA film of the embeddings as they train."""

import os

import numpy as np

from tfmetric.callbacks.base import PeriodicCallback, SummaryLog
from tfmetric.optional import optional_import

__all__ = ["EmbeddingSnapshots"]


class EmbeddingSnapshots(PeriodicCallback):
    """PCA scatters of the embeddings of `x` every few epochs, and a GIF of them.

    All frames are projected on one PCA basis (a mean and two principal
    axes), so they are comparable and the film shows the points move rather
    than the axes:

    - `basis="first"`: the PCA of the embeddings before training; each
      snapshot is logged to TensorBoard (image `embeddings/pca`, step = epoch)
      as training goes.
    - `basis="last"`: the PCA of the embeddings after training, where the
      learned structure is; the snapshots are kept and logged to TensorBoard
      when training ends.

    When training ends, `log_dir` also receives `embeddings.gif` (the frame
    before training, then every snapshot, on common axes) and
    `embeddings_pca.npz` (`epochs` with -1 for before training, `points` of
    shape (frames, n, 2), `labels`, `mean`, `axes`) for your own plots.

    Args:
        x: Inputs to embed.
        labels: Their labels, which colour the points.
        log_dir: Directory for the TensorBoard images, the GIF and the points.
        every_n_epochs: Snapshot every this many epochs.
        layer: Name of the layer (or the layer) whose outputs to show;
            default the model's outputs.
        milliseconds_per_frame: GIF speed.
        batch_size: Batch size for `model.predict`.
        basis: "first" or "last", see above.
    """

    def __init__(
        self,
        x,
        labels,
        log_dir,
        every_n_epochs=1,
        layer=None,
        milliseconds_per_frame=500,
        batch_size=256,
        basis="first",
    ):
        super().__init__(every_n_epochs, layer, batch_size)
        if basis not in ("first", "last"):
            raise ValueError(f'basis must be "first" or "last"; received {basis!r}.')
        self.basis = basis
        self.x = x
        self.labels = np.asarray(labels).reshape(-1)
        self.log_dir = os.fspath(log_dir)
        self.milliseconds_per_frame = milliseconds_per_frame
        self.gif_path = os.path.join(self.log_dir, "embeddings.gif")
        self.points_path = os.path.join(self.log_dir, "embeddings_pca.npz")
        self.summaries = SummaryLog(self.log_dir)

    def on_train_begin(self, logs=None):
        optional_import("sklearn.decomposition", "EmbeddingSnapshots")
        self.epochs, self.frames = [], []
        self.mean = self.axes = None
        self._snapshot(epoch=None)

    def on_epoch_end(self, epoch, logs=None):
        if self.due(epoch):
            self._snapshot(epoch)

    def on_train_end(self, logs=None):
        from tfmetric.plots import gif, scatter

        if self.basis == "last":
            self.mean, self.axes = principal_axes(self.frames[-1])
            self.frames = [self._project(frame) for frame in self.frames]
            for epoch, points in zip(self.epochs[1:], self.frames[1:]):
                self._log(epoch, points)
        os.makedirs(self.log_dir, exist_ok=True)
        points = np.stack(self.frames)
        low, high = points.min(axis=(0, 1)), points.max(axis=(0, 1))
        margin = 0.05 * np.maximum(high - low, 1e-12)
        limits = tuple(zip(low - margin, high + margin))
        pictures = [
            scatter(frame, self.labels, _title(epoch), limits) for epoch, frame in zip(self.epochs, self.frames)
        ]
        gif(pictures, self.gif_path, self.milliseconds_per_frame)
        epochs = np.array([-1 if epoch is None else epoch for epoch in self.epochs])
        np.savez(self.points_path, epochs=epochs, points=points, labels=self.labels, mean=self.mean, axes=self.axes)
        self.summaries.close()

    def _snapshot(self, epoch):
        embeddings = self.embed(self.x)
        if len(embeddings) != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels for {len(embeddings)} embeddings.")
        self.epochs.append(epoch)
        if self.basis == "last":
            # Projected when training ends, on the basis of the last snapshot.
            self.frames.append(embeddings)
            return
        if self.mean is None:
            self.mean, self.axes = principal_axes(embeddings)
        points = self._project(embeddings)
        self.frames.append(points)
        if epoch is not None:
            self._log(epoch, points)

    def _project(self, embeddings):
        return (np.asarray(embeddings, np.float64) - self.mean) @ self.axes.T

    def _log(self, epoch, points):
        from tfmetric.plots import png_to_array, scatter

        picture = png_to_array(scatter(points, self.labels, _title(epoch)))
        self.summaries.image(
            "embeddings/pca", picture, step=epoch, description=f"PCA of the embeddings ({self.basis} basis)"
        )


def principal_axes(embeddings, count=2):
    """Mean and the top `count` principal axes `(count, dim)`; zero rows when the data has fewer."""
    decomposition = optional_import("sklearn.decomposition", "EmbeddingSnapshots")
    embeddings = np.asarray(embeddings, np.float64)
    mean = embeddings.mean(axis=0)
    axes = np.zeros((count, embeddings.shape[1]))
    available = min(count, *embeddings.shape)
    if available:
        pca = decomposition.PCA(n_components=available, svd_solver="full").fit(embeddings)
        axes[:available] = pca.components_
    return mean, axes


def _title(epoch):
    return "before training" if epoch is None else f"after epoch {epoch + 1}"
