"""tfmetric: deep metric learning for Keras 3 and TensorFlow.

```python
import tfmetric as tfm
model.compile(optimizer="adam", loss=tfm.BatchHardTriplet(margin=0.5))
```
"""

import os as _os
import sys as _sys


def _starting_command_line():
    """Whether this import is `tfmetric ...` or `python -m tfmetric ...` starting.

    The command line parses its arguments before TensorFlow is imported (it
    takes seconds), so the package then loads its contents on first use;
    imported by anything else it loads them now, registering the losses with
    Keras (`keras.models.load_model` needs no `custom_objects`).
    """
    if _sys.argv[:1] == ["-m"]:  # `python -m NAME` while NAME's packages import
        arguments = _sys.orig_argv
        return "-m" in arguments[:-1] and arguments[arguments.index("-m") + 1].split(".")[0] == "tfmetric"
    script = getattr(_sys.modules.get("__main__"), "__file__", None) or ""
    return _os.path.basename(script).removesuffix(".exe").removesuffix("-script.py") == "tfmetric"


_LAZY = _starting_command_line()
if not _LAZY:
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
    # import TensorFlow for nothing. Started as the command line, everything
    # is loaded on first use.
    import importlib
    import importlib.util

    if name in __all__ and importlib.util.find_spec(f"tfmetric.{name}") is not None:
        return importlib.import_module(f"tfmetric.{name}")
    if _LAZY and name == "lstm_gates":
        return importlib.import_module("tfmetric.recurrent").lstm_gates
    if _LAZY and name in __all__:
        return getattr(importlib.import_module("tfmetric.losses"), name)
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
