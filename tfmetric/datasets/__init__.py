"""Data for the demo, the studies and the notebooks.

- `load(name)`: images — scikit-learn's bundled 8×8 digits, and MNIST /
  Fashion-MNIST read from their IDX files (a directory you name, a system
  copy such as Debian's `dataset-fashion-mnist`, else a `keras.datasets`
  download) — `tfmetric/datasets/images.py`.
- `open_set_split`: the classes seen in training and the unseen ones
  retrieved among (the open protocol of the studies).
- text corpora for the Bi-LSTM study — `tfmetric/datasets/text.py`:
  `navigation_queries` and `assistant_intents` (synthetic), `chatterbot_chinese`
  (real, from the `chatterbot-corpus` package).
"""

from tfmetric.datasets.images import DATASETS, available_offline, load
from tfmetric.datasets.protocols import PROTOCOLS, protocol_split
from tfmetric.datasets.text import assistant_intents, chatterbot_chinese, navigation_queries

__all__ = [
    "DATASETS",
    "PROTOCOLS",
    "assistant_intents",
    "available_offline",
    "chatterbot_chinese",
    "load",
    "navigation_queries",
    "protocol_split",
]
