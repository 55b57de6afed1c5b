"""tfmetric: deep metric learning for Keras 3 and TensorFlow.

```python
import tfmetric as tfm
model.compile(optimizer="adam", loss=tfm.BatchHardTriplet(margin=0.5))
```
"""

from tfmetric import distances, layers, losses, metrics
from tfmetric.losses import (
    BatchAllTriplet,
    BatchHardTriplet,
    Contrastive,
    MarginLoss,
    MulticlassHinge,
    PairContrastive,
    SemiHardTriplet,
    TripletLoss,
)

__version__ = "0.1.0"

__all__ = [
    "BatchAllTriplet",
    "BatchHardTriplet",
    "Contrastive",
    "MarginLoss",
    "MulticlassHinge",
    "PairContrastive",
    "SemiHardTriplet",
    "TripletLoss",
    "distances",
    "layers",
    "losses",
    "metrics",
]
