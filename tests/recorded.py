"""The peers' recorded values (`tests/fixtures/peers_*.npz`, see `record_peers.py`)."""

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@lru_cache(maxsize=None)
def _load(peer):
    data = np.load(FIXTURES / f"peers_{peer}.npz")
    return json.loads(str(data["meta"])), {key: data[key] for key in data.files if key != "meta"}


def cases(peer, kinds):
    """`pytest.param(peer, index, case)` for every recorded case of `kinds`."""
    meta, _ = _load(peer)
    return [
        pytest.param(peer, i, case, id=f"{peer}-{i}-{case['kind']}")
        for i, case in enumerate(meta)
        if case["kind"] in kinds
    ]


def arrays(peer, index):
    """`(x, y, grad)` of a case; `grad` is empty where the peer gives none."""
    _, data = _load(peer)
    return data[f"x{index}"], data[f"y{index}"], data[f"g{index}"]


def extra(peer, index, name):
    """A further array `name` of a case (e.g. the class vectors `w` of `peers_pml_proxies.npz`)."""
    _, data = _load(peer)
    return data[f"{name}{index}"]
