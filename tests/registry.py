"""Every loss of `tfm.losses.registry.LOSSES` next to its NumPy reference, for the tests they share.

The list of losses is the library's; this file only adds the references.
`test_every_registered_loss_has_a_reference` fails for a loss added there
without one here.
"""

import functools
import importlib
import inspect
from pathlib import Path

from tfmetric.losses.registry import LOSSES as REGISTRY

import reference
from conftest import check_against

# The brute-force reference of each class (by the registry's function name).
REFERENCES = {
    "batch_hard_triplet": reference.batch_hard,
    "batch_all_triplet": reference.batch_all,
    "semi_hard_triplet": reference.semi_hard,
    "lifted_structure": reference.lifted_structure,
    "contrastive": reference.contrastive,
    "margin_loss": reference.margin,
    "npairs": reference.npairs,
    "multi_similarity": reference.multi_similarity,
    "circle": reference.circle,
    "binomial_deviance": reference.binomial_deviance,
    "soft_nearest_neighbor": reference.soft_nearest_neighbor,
    "nca": reference.nca,
}
# Each further module of references, `tests/reference_<group>.py`, names its
# own in a dict `REFERENCES` (function name: reference).
for _module in sorted(Path(__file__).resolve().parent.glob("reference_*.py")):
    REFERENCES.update(importlib.import_module(_module.stem).REFERENCES)


def _split(entry):
    """(class, reference, arguments of the loss only, arguments of both) of a registry entry."""
    ref = REFERENCES[entry.function.__name__]
    accepted = inspect.signature(ref).parameters
    shared = {name: value for name, value in entry.arguments.items() if name in accepted}
    loss_only = {name: value for name, value in entry.arguments.items() if name not in accepted}
    return entry.loss_class, ref, loss_only, shared


# The deterministic configurations (distance-weighted sampling draws at random).
_TESTED = {key: entry for key, entry in REGISTRY.items() if entry.deterministic}
# kind: (loss class, reference, arguments of the loss only, arguments of both)
# The triplet family takes the same arguments (margin, distance, normalize)
# and shares its tests; so do the contrastive and margin families.
TRIPLET_LOSSES = {key: _split(entry) for key, entry in _TESTED.items() if entry.family == "triplet"}
PAIR_LOSSES = {key: _split(entry) for key, entry in _TESTED.items() if entry.family in ("contrastive", "margin")}
LOSSES = {**TRIPLET_LOSSES, **PAIR_LOSSES}
# The losses without a distance margin: similarities, soft neighbourhoods, rankings, ...
SOFT_LOSSES = {key: _split(entry) for key, entry in _TESTED.items() if key not in LOSSES}
ALL_LOSSES = {**LOSSES, **SOFT_LOSSES}


def typical_arguments(kind):
    """Arguments for the tests every loss shares: a margin of 0.5 where there is one."""
    return {"margin": 0.5} if kind in LOSSES else {}


def loss_and_reference(kind, reduction="sum_over_batch_size", name=None, **kwargs):
    cls, ref, loss_only, shared = ALL_LOSSES[kind]
    named = {"name": name} if name else {}
    # `kwargs` override the registry's arguments.
    loss_only = {key: value for key, value in loss_only.items() if key not in kwargs}
    shared = {**shared, **kwargs}
    loss = cls(**loss_only, **shared, reduction=reduction, **named)
    return loss, lambda x, y, **kw: ref(x, y, **shared, **kw)


@functools.lru_cache(maxsize=None)
def loss_function(kind, **kwargs):
    """`(x, labels) -> loss(labels, x)`, one per configuration: compiled once per shape."""
    loss = loss_and_reference(kind, **kwargs)[0]
    return lambda x, labels: loss(labels, x)


def check(kind, x, labels, compiled=False, sample_weight=None, **kwargs):
    loss, ref = loss_and_reference(kind, **kwargs)
    return check_against(loss, ref, x, labels, compiled, sample_weight)
