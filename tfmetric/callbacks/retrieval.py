"""Retrieval quality of held-out data during training, and the collapse alarm."""

import warnings

import numpy as np

from tfmetric.callbacks.base import PeriodicCallback, SummaryLog
from tfmetric.evaluation import retrieval_metrics

__all__ = ["EmbeddingCollapseWarning", "RetrievalEvaluation", "check_collapse"]


class EmbeddingCollapseWarning(UserWarning):
    """All embeddings have (nearly) merged into one point."""


class RetrievalEvaluation(PeriodicCallback):
    """Retrieval metrics of held-out data every few epochs, and a collapse alarm.

    Embeds `x` with the model, computes `tfm.evaluation.retrieval_metrics`
    (leave-one-out, or against `reference`/`reference_labels`) and adds them
    to the epoch's logs as `val_precision@1`, `val_recall@5`, ... so they
    appear in the history and the progress bar. With `log_dir` it writes them
    to TensorBoard itself (scalars `val_precision@1`, ... at step `epoch`);
    `keras.callbacks.TensorBoard` also picks them up when this callback comes
    before it in the list.

    It also warns (`EmbeddingCollapseWarning`) when the embeddings have
    collapsed: every point within `collapse_tolerance` × their typical norm
    of the others, the most common failure of triplet training (the loss then
    sits at the margin).

    Args:
        x: Inputs to embed.
        y: Their integer labels (with `multi_label`, 0/1 rows `(N, C)`).
        reference, reference_labels: Optional reference inputs and labels.
        k: The k of `recall@k`.
        distance: Distance for ranking neighbours.
        nmi: Also log NMI (scikit-learn).
        every_n_epochs: Evaluate every this many epochs.
        prefix: Prefix of the log names.
        collapse_tolerance: Relative spread below which the embeddings count
            as collapsed; `None` turns the check off.
        batch_size: Batch size for `model.predict`.
        layer: Evaluate the outputs of this layer (name or layer) instead of
            the model's.
        log_dir: Directory for TensorBoard scalars; None writes none.
        multi_label: The labels are multi-hot rows: a neighbour is relevant
            when it shares a label with the query.
    """

    def __init__(
        self,
        x,
        y,
        reference=None,
        reference_labels=None,
        k=(1, 5, 10),
        distance="euclidean",
        nmi=False,
        every_n_epochs=1,
        prefix="val_",
        collapse_tolerance=1e-3,
        batch_size=256,
        layer=None,
        log_dir=None,
        multi_label=False,
    ):
        super().__init__(every_n_epochs, layer, batch_size)
        if (reference is None) != (reference_labels is None):
            raise ValueError("Pass reference and reference_labels together.")
        self.x, self.y = x, y if multi_label else np.asarray(y)
        self.multi_label = bool(multi_label)
        self.reference, self.reference_labels = reference, reference_labels
        self.k, self.distance, self.nmi = k, distance, nmi
        self.prefix = prefix
        self.collapse_tolerance = collapse_tolerance
        self.summaries = None if log_dir is None else SummaryLog(log_dir)

    def on_epoch_end(self, epoch, logs=None):
        if not self.due(epoch):
            return
        embeddings = self.embed(self.x).astype(np.float64)
        if not np.isfinite(embeddings).all():
            # A diverged model: say so and let training go on (TerminateOnNaN is the user's call).
            warnings.warn(
                f"The embeddings hold NaN or infinite values after epoch {epoch + 1}: retrieval metrics skipped.",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        if self.collapse_tolerance is not None:
            check_collapse(embeddings, self.collapse_tolerance, epoch)
        reference = None
        if self.reference is not None:
            reference = self.embed(self.reference)
        metrics = retrieval_metrics(
            embeddings,
            self.y,
            reference,
            self.reference_labels,
            k=self.k,
            distance=self.distance,
            nmi=self.nmi,
            multi_label=self.multi_label,
        )
        metrics.pop("queries")
        named = {self.prefix + name: value for name, value in metrics.items()}
        if logs is not None:
            logs.update(named)
        if self.summaries is not None:
            self.summaries.scalars(named, step=epoch)

    def on_train_end(self, logs=None):
        if self.summaries is not None:
            self.summaries.close()


def check_collapse(embeddings, tolerance=1e-3, epoch=None):
    """Warns when every embedding lies within `tolerance` × their norm of their mean.

    Returns whether they have collapsed.
    """
    centre = embeddings.mean(axis=0)
    spread = np.max(np.linalg.norm(embeddings - centre, axis=1))
    scale = max(float(np.median(np.linalg.norm(embeddings, axis=1))), np.finfo(float).tiny)
    collapsed = len(embeddings) > 1 and spread <= tolerance * scale
    if collapsed:
        when = "" if epoch is None else f" after epoch {epoch + 1}"
        warnings.warn(
            f"The embeddings have collapsed{when}: all {len(embeddings)} points lie within "
            f"{spread:.3g} of their mean while their norm is about {scale:.3g}, so no distance "
            "separates the classes (a triplet loss then sits at its margin). Usual remedies: a "
            "lower learning rate, semi-hard instead of hard mining, a smaller margin, or "
            "L2-normalised embeddings.",
            EmbeddingCollapseWarning,
            stacklevel=2,
        )
    return collapsed
