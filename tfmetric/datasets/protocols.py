"""How a study splits its data: the closed and the open protocol."""

import numpy as np

from tfmetric.choices import PROTOCOLS

__all__ = ["PROTOCOLS", "protocol_split"]


def protocol_split(train, test, protocol="open", seen_classes=None):
    """`(x_train, y_train), (x_eval, y_eval)`: what a study trains on and retrieves among.

    - `"closed"`: train on the training split, retrieve among the held-out
      split — the same classes (a classifier's test).
    - `"open"`: train on the training split's examples of the seen classes
      only, retrieve among every example (both splits) of the other, unseen
      classes — how metric learning is judged (CUB-200, Cars196, SOP): the
      embedding must place classes it never saw.

    Args:
        train: `(x_train, y_train)`, as `tfm.datasets.load` returns it.
        test: `(x_test, y_test)`.
        protocol: `"open"` or `"closed"`.
        seen_classes: The classes trained on in the open protocol; by default
            the lower half of the class ids (Fashion-MNIST: T-shirt, trouser,
            pullover, dress, coat; unseen: sandal, shirt, sneaker, bag, ankle boot).

    Example:

    >>> import numpy as np, tfmetric as tfm
    >>> x, y = np.zeros((6, 2)), np.array([0, 1, 2, 3, 0, 3])
    >>> (_, y_seen), (_, y_unseen) = tfm.datasets.protocol_split((x, y), (x[:2], y[:2]))
    >>> y_seen.tolist(), y_unseen.tolist()
    ([0, 1, 0], [2, 3, 3])
    """
    (x_train, y_train), (x_test, y_test) = train, test
    if protocol == "closed":
        return (x_train, y_train), (x_test, y_test)
    if protocol != "open":
        raise ValueError(f"Unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")
    classes = np.unique(np.concatenate([y_train, y_test]))
    seen = classes[: len(classes) // 2] if seen_classes is None else np.asarray(seen_classes)
    if not 0 < len(np.intersect1d(seen, classes)) < len(classes):
        raise ValueError(
            f"The open protocol needs seen and unseen classes; seen_classes={seen.tolist()} of {classes.tolist()}."
        )
    x_all, y_all = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
    unseen = ~np.isin(y_all, seen)
    trained = np.isin(y_train, seen)
    return (x_train[trained], y_train[trained]), (x_all[unseen], y_all[unseen])
