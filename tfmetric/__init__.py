"""tfmetric: deep metric learning for Keras 3 and TensorFlow.

```python
import tfmetric as tfm
model.compile(optimizer="adam", loss=tfm.BatchHardTriplet(margin=0.5))
```
"""

from tfmetric import distances, losses, metrics
from tfmetric.losses import BatchAllTriplet, BatchHardTriplet, SemiHardTriplet

__version__ = "0.1.0"

__all__ = [
    "BatchAllTriplet",
    "BatchHardTriplet",
    "SemiHardTriplet",
    "distances",
    "losses",
    "metrics",
]
