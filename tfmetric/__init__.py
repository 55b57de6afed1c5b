"""tfmetric: deep metric learning for Keras 3 and TensorFlow.

```python
import tfmetric as tfm
model.compile(optimizer="adam", loss=tfm.BatchHardTriplet(margin=0.5))
```
"""

from tfmetric import callbacks, datasets, distances, evaluation, layers, losses, metrics, plots, recurrent
from tfmetric.losses import (
    NCA,
    ArcFace,
    BatchAllTriplet,
    BatchHardTriplet,
    BinomialDeviance,
    CenterLoss,
    Circle,
    Contrastive,
    CosFace,
    CrossBatchMemory,
    LargeMarginSoftmax,
    LiftedStructure,
    MarginLoss,
    MulticlassHinge,
    MultipleLosses,
    MultiSimilarity,
    NormalizedSoftmax,
    NPairs,
    NPairsMultilabel,
    P2SGrad,
    PairContrastive,
    ProxyAnchor,
    ProxyNCA,
    SemiHardTriplet,
    SoftNearestNeighbor,
    SoftTriple,
    SphereFace,
    SubCenterArcFace,
    TripletLoss,
)
from tfmetric.recurrent import lstm_gates

__version__ = "0.1.0"


def __getattr__(name):
    # tfm.data is TensorFlow by nature (tf.data), and the demo and comparison
    # use it; loaded on first use so that users of the JAX backend do not
    # import TensorFlow for nothing.
    if name in ("compare", "data", "demo"):
        import importlib

        return importlib.import_module(f"tfmetric.{name}")
    raise AttributeError(f"module 'tfmetric' has no attribute {name!r}")

__all__ = [
    "ArcFace",
    "BatchAllTriplet",
    "BatchHardTriplet",
    "BinomialDeviance",
    "CenterLoss",
    "Circle",
    "Contrastive",
    "CosFace",
    "CrossBatchMemory",
    "LargeMarginSoftmax",
    "LiftedStructure",
    "MarginLoss",
    "MultiSimilarity",
    "MulticlassHinge",
    "MultipleLosses",
    "NCA",
    "NPairs",
    "NPairsMultilabel",
    "NormalizedSoftmax",
    "P2SGrad",
    "PairContrastive",
    "ProxyAnchor",
    "ProxyNCA",
    "SemiHardTriplet",
    "SoftNearestNeighbor",
    "SoftTriple",
    "SphereFace",
    "SubCenterArcFace",
    "TripletLoss",
    "callbacks",
    "compare",
    "data",
    "datasets",
    "demo",
    "distances",
    "evaluation",
    "layers",
    "losses",
    "lstm_gates",
    "metrics",
    "plots",
    "recurrent",
]
