"""Keras callbacks that watch an embedding model while it trains.

- `RetrievalEvaluation`: retrieval metrics of held-out data, collapse alarm.
- `EmbeddingProjector`: embeddings for TensorBoard's Embedding Projector.
- `EmbeddingSnapshots`: a PCA film of the embeddings (TensorBoard images, GIF).
- `GateActivations`: which LSTM gates open at which token.

They write TensorBoard files with TensorFlow whatever the Keras backend; the
pictures need the `[viz]` extra.
"""

from tfmetric.callbacks.gates import GateActivations
from tfmetric.callbacks.projector import EmbeddingProjector
from tfmetric.callbacks.retrieval import EmbeddingCollapseWarning, RetrievalEvaluation, check_collapse
from tfmetric.callbacks.snapshots import EmbeddingSnapshots

__all__ = [
    "EmbeddingCollapseWarning",
    "EmbeddingProjector",
    "EmbeddingSnapshots",
    "GateActivations",
    "RetrievalEvaluation",
    "check_collapse",
]
