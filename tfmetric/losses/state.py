"""Variables of a loss that train and save with the model it is compiled into.

Keras 3 optimises and checkpoints the variables of a model's layers only;
a loss passed to `model.compile` is configuration. A loss with state of its
own (a learned margin, a random-number state) keeps it in a `LossState`
layer, and on its first call inside the training or evaluation step of a
model compiled with it, adds that layer to the model: from then on the
optimizer updates its trainable variables and, on the JAX backend, the
random state is threaded through the compiled step like any layer's. The
loss also holds the layer as an attribute, so `model.save` stores the
variables under the model's `loss` and `keras.models.load_model` restores
them into the loss it rebuilds.

The layer is nested under one of the model's own layers rather than the
model itself: `Sequential` models serialise their `_layers` list, and the
nested layer stays out of every config. Keras has no public way to add a
layer to a built model, so this relies on its layer tracking; every attach
checks that the model then owns the variables and raises otherwise.
Outside `model.compile` (custom training loops, custom `train_step`s),
`attach_state(model, loss)` attaches them explicitly.
"""

import sys
import warnings
import weakref

import keras

# Frames between `LossState.attach` and the Keras trainer that calls the
# loss; a generous bound on a walk that only happens until it succeeds.
_MAX_FRAMES = 64


class LossState(keras.layers.Layer):
    """A layer holding a loss's variables; it computes nothing."""

    def __init__(self, name=None):
        super().__init__(name=name, dtype="float32")
        self.built = True
        # Weak, and not a list: a layer would track the models it lists as
        # its own sublayers.
        self._attached_to = weakref.WeakSet()

    def call(self, inputs):
        return inputs

    def attach(self, loss):
        """Makes this state part of the model being trained with `loss`, if any.

        Called by `loss` at every call. Outside a Keras trainer (direct
        calls, custom training loops) it does nothing; in the training step
        of a model not compiled with `loss` and not given its state by
        `attach_state`, it warns.
        """
        model, training, trainer = _compiled_model_calling(loss)
        if model is None and trainer is not None and trainer not in self._attached_to:
            warnings.warn(
                f"Loss {loss.name!r} has variables of its own and is called in a training step "
                f"of model {trainer.name!r}, which was not compiled with it: they will not train "
                "or save with the model. Call `tfm.losses.attach_state(model, loss)` once before "
                "training.",
                stacklevel=3,
            )
        if model is None or model in self._attached_to:
            return
        optimizer = getattr(model, "optimizer", None)
        if self.trainable_variables and optimizer is not None and optimizer.built:
            if not _optimizer_knows(optimizer, self.trainable_variables):
                if not training:
                    # Evaluation only reads the variables; attaching them now
                    # would break the next `fit` with an opaque error.
                    return
                raise ValueError(
                    f"The optimizer of model {model.name!r} was built before the "
                    f"learned parameters of loss {loss.name!r} joined the model "
                    "(this happens after `keras.models.load_model`). Compile the "
                    "model again before training it, e.g. "
                    "`model.compile(optimizer=model.optimizer.__class__.from_config("
                    "model.optimizer.get_config()), loss=model.loss)`."
                )
        self.attach_to(model, loss)

    def attach_to(self, model, loss):
        """Nests this state in `model` and checks that the model now owns its variables."""
        if model in self._attached_to:
            return
        host = _host_layer(model)
        # The one private write: a built layer's tracker refuses new
        # sublayers, and Keras has no public way to add variables to a
        # model after it is built. The check below makes a Keras release
        # that changes this fail loudly instead of training without them.
        host._layers.append(self)
        _check_owned(model, loss, self)
        self._attached_to.add(model)


def attach_state(model, loss):
    """Makes the variables of `loss` variables of `model`.

    Losses with state of their own (`MarginLoss(learn_beta=True)`'s β,
    `CenterLoss`'s centres, `CrossBatchMemory`'s memory, the sampling
    state of distance-weighted `MarginLoss`) attach it to the model they
    are compiled with at their first call in `fit`, `evaluate` or
    `predict`: nothing to do there. Call this instead when the loss is used
    outside `model.compile`, in a custom training loop or a custom
    `train_step`, before training: the loss's trainable variables are then
    among `model.trainable_variables`, so the loop's optimizer updates them,
    and the others among `model.non_trainable_variables`. Losses without
    state are accepted and left alone.

    Args:
        model: A built Keras model with at least one layer.
        loss: A tfmetric loss.

    Raises:
        RuntimeError: if the model does not own the variables afterwards,
            which would mean that this Keras version tracks layers
            differently from the ones tfmetric supports.

    Example:

    >>> import keras, tfmetric as tfm
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    >>> loss = tfm.CenterLoss(num_classes=3, embedding_dim=2)
    >>> tfm.losses.attach_state(model, loss)
    >>> any(v is loss.state.centers for v in model.trainable_variables)
    True
    """
    for state in _states_of(loss):
        state.attach_to(model, loss)


def _states_of(loss):
    """The `LossState`s of `loss` and of the loss it wraps, if any."""
    states = [getattr(loss, "state", None), getattr(getattr(loss, "loss", None), "state", None)]
    return [state for state in states if isinstance(state, LossState)]


def _check_owned(model, loss, state):
    owned = {id(v) for v in model.trainable_variables} | {id(v) for v in model.non_trainable_variables}
    trainable = {id(v) for v in model.trainable_variables}
    missing = [v.name for v in state.variables if id(v) not in owned]
    missing += [v.name for v in state.trainable_variables if id(v) not in trainable]
    if missing:
        raise RuntimeError(
            f"tfmetric could not make the variables {sorted(set(missing))} of loss {loss.name!r} "
            f"variables of model {model.name!r} under Keras {keras.__version__}: they would not "
            "train or save with the model. This Keras version tracks layers differently from "
            "the versions tfmetric supports (see its setup.cfg); please report it."
        )


def _optimizer_knows(optimizer, variables):
    """Whether a built optimizer has slots for all `variables` (True when it cannot tell)."""
    known = getattr(optimizer, "_trainable_variables", None)
    if known is None:
        return True
    known = {id(v) for v in known}
    return all(id(v) in known for v in variables)


def _compiled_model_calling(loss):
    """`(model, training, trainer)` of the call stack of `loss`.

    `model`: the Keras model compiled with `loss` (`model.loss`) whose
    trainer is calling it, if any; `training`: whether the call comes from
    its training step; `trainer`: any model whose `train_step` is calling,
    compiled with `loss` or not.
    """
    frame = sys._getframe(2)
    model, training, trainer = None, False, None
    for _ in range(_MAX_FRAMES):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        # The training step calls the model's `compute_loss`, which calls
        # the loss: look past the model's frame for it.
        if frame.f_code.co_name == "train_step":
            training = True
            if trainer is None and isinstance(owner, keras.Model):
                trainer = owner
        if model is None and isinstance(owner, keras.Model):
            compiled_losses = keras.tree.flatten(getattr(owner, "loss", None))
            if any(candidate is loss for candidate in compiled_losses):
                model = owner
        frame = frame.f_back
    return model, training and model is not None, trainer


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        elif not isinstance(layer, LossState):
            yield layer


def _host_layer(model):
    """The first trainable leaf layer holding weights, else the first leaf."""
    leaves = list(_leaf_layers(model))
    for layer in leaves:
        if layer.trainable and layer.trainable_weights:
            return layer
    if not leaves:
        raise ValueError(
            f"Model {model.name!r} has no layer to carry the loss's variables."
        )
    return leaves[0]
