"""tfmetric: deep metric learning for Keras 3 and TensorFlow.

```python
import tfmetric as tfm
model.compile(optimizer="adam", loss=tfm.BatchHardTriplet(margin=0.5))
```
"""

from tfmetric import (
    callbacks,
    datasets,
    distances,
    evaluation,
    layers,
    losses,
    metrics,
    miners,
    plots,
    recurrent,
    search,
)
from tfmetric.losses import (
    NCA,
    PNP,
    Angular,
    ArcFace,
    BatchAllTriplet,
    BatchHardTriplet,
    BinomialDeviance,
    CenterLoss,
    Circle,
    Contrastive,
    CosFace,
    CrossBatchMemory,
    DynamicSoftMargin,
    FastAP,
    GeneralizedLiftedStructure,
    Histogram,
    Instance,
    IntraPairVariance,
    LargeMarginSoftmax,
    LiftedStructure,
    Manifold,
    MarginLoss,
    MulticlassHinge,
    MultipleLosses,
    MultiSimilarity,
    NormalizedSoftmax,
    NPairs,
    NPairsMultilabel,
    NTXent,
    P2SGrad,
    PairContrastive,
    ProxyAnchor,
    ProxyNCA,
    RankedList,
    SemiHardTriplet,
    SignalToNoiseRatioContrastive,
    SmoothAP,
    SoftNearestNeighbor,
    SoftTriple,
    SphereFace,
    SubCenterArcFace,
    SupCon,
    ThresholdConsistentMargin,
    TripletLoss,
    TupletMargin,
    VICReg,
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
    "Angular",
    "ArcFace",
    "BatchAllTriplet",
    "BatchHardTriplet",
    "BinomialDeviance",
    "CenterLoss",
    "Circle",
    "Contrastive",
    "CosFace",
    "CrossBatchMemory",
    "DynamicSoftMargin",
    "FastAP",
    "GeneralizedLiftedStructure",
    "Histogram",
    "Instance",
    "IntraPairVariance",
    "LargeMarginSoftmax",
    "LiftedStructure",
    "Manifold",
    "MarginLoss",
    "MultiSimilarity",
    "MulticlassHinge",
    "MultipleLosses",
    "NCA",
    "NPairs",
    "NPairsMultilabel",
    "NTXent",
    "NormalizedSoftmax",
    "P2SGrad",
    "PNP",
    "PairContrastive",
    "ProxyAnchor",
    "ProxyNCA",
    "RankedList",
    "SemiHardTriplet",
    "SignalToNoiseRatioContrastive",
    "SmoothAP",
    "SoftNearestNeighbor",
    "SoftTriple",
    "SphereFace",
    "SubCenterArcFace",
    "SupCon",
    "ThresholdConsistentMargin",
    "TripletLoss",
    "TupletMargin",
    "VICReg",
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
    "miners",
    "plots",
    "recurrent",
    "search",
]
