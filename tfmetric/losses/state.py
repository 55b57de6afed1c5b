"""Variables of a loss that train and save with the model it is compiled into.

Keras 3 optimises and checkpoints the variables of a model's layers only;
a loss passed to `model.compile` is configuration. A loss with state of its
own (a learned margin, class centres or proxies, a memory, a random-number
state) keeps it in a `LossState` layer, and that layer becomes part of the
model as soon as the model is compiled with the loss: from then on its
variables are the model's, exactly like a layer's — the optimizer is built
with slots for them, `model.save`/`load_model`, `save_weights`/`load_weights`,
`ModelCheckpoint` and `BackupAndRestore` store and restore them together
with the optimizer's state, and on the JAX backend they (and the random
state) are threaded through the compiled step like any layer's.

Keras has no public hook for this, so importing tfmetric wraps Keras'
`Model.compile`: after Keras' own `compile`, the states of the
compiled tfmetric losses join the model, and the states of losses the
model is no longer compiled with leave it. Models compiled with other
losses are left as they are. Where the model cannot take them yet (a
subclassed model with no layers, a memory whose embedding size is not
known before the first batch), they join at the loss's first call in
`fit`, `evaluate` or `predict`, before the optimizer is built.

The layer is nested under one of the model's own layers rather than the
model itself: `Sequential` models serialise their `_layers` list, and the
nested layer stays out of every config. Keras has no public way to add a
layer to a built model, so this relies on its layer tracking; every attach
checks that the model then owns the variables and raises otherwise.
Outside `model.compile` (custom training loops, custom `train_step`s),
`attach_state(model, loss)` attaches them explicitly.
"""

import functools
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

    # Keras saves a layer's weights but not the state of its random-number
    # generators (`variables` has both): a loss that samples must resume
    # its sequence where it stopped, not from the seed.
    def save_own_variables(self, store):
        for index, variable in enumerate(self.variables):
            store[str(index)] = variable

    def load_own_variables(self, store):
        if len(store.keys()) != len(self.variables):
            raise ValueError(
                f"The saved state of loss state {self.name!r} has {len(store.keys())} variables; "
                f"this loss has {len(self.variables)}: {[v.name for v in self.variables]}. Was it "
                "saved with the same loss configuration?"
            )
        for index, variable in enumerate(self.variables):
            variable.assign(store[str(index)])

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
                raise ValueError(_late_optimizer_message(model, loss))
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
        _check_owned(model, loss, self, trains=any(trains for _, trains in _leaf_layers(model)))
        self._attached_to.add(model)
        compiled_trainable = getattr(model, "_compiled_trainable_state", None)
        if isinstance(compiled_trainable, dict):
            # Keras warns about layers that appeared after `compile`; this one joined in it.
            compiled_trainable[self] = self.trainable

    def detach_from(self, model):
        """Takes this state out of `model` (the model was compiled with another loss)."""
        for layer in model._flatten_layers(include_self=False):
            if any(sublayer is self for sublayer in layer._layers):
                layer._layers[:] = [sublayer for sublayer in layer._layers if sublayer is not self]
        self._attached_to.discard(model)


def attach_state(model, loss):
    """Makes the variables of `loss` variables of `model`.

    Losses with state of their own (`MarginLoss(learn_beta=True)`'s β,
    `CenterLoss`'s centres, `CrossBatchMemory`'s memory, the sampling
    state of distance-weighted `MarginLoss`) attach it to the model in
    `model.compile`: nothing to do there. Call this instead when the loss is used
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


def nested_losses(loss):
    """`loss` and every loss it wraps (`wrapped_losses()`: a memory's loss, `MultipleLosses`' terms)."""
    found = [loss]
    wrapped = getattr(loss, "wrapped_losses", None)
    for inner in wrapped() if callable(wrapped) else ():
        found.extend(nested_losses(inner))
    return found


def _states_of(loss):
    """The `LossState`s of `loss` and of the losses it wraps."""
    states = [getattr(inner, "state", None) for inner in nested_losses(loss)]
    return [state for state in states if isinstance(state, LossState)]


def _attach_compiled_states(model):
    """Makes the states of the losses `model` is compiled with part of it, and only those."""
    compiled = getattr(model, "loss", None)
    entries = keras.tree.flatten(compiled)
    for loss, shape in zip(entries, _output_shapes(model, compiled, len(entries))):
        for inner in nested_losses(loss):
            build_state = getattr(inner, "build_state", None)
            if build_state is not None and shape is not None and shape[-1] is not None:
                build_state(shape[-1])
    states = [(state, loss) for loss in entries for state in _states_of(loss)]
    kept = {id(state) for state, _ in states}
    for layer in list(model._flatten_layers(include_self=False)):
        if isinstance(layer, LossState) and id(layer) not in kept:
            layer.detach_from(model)
    if not states or not list(_leaf_layers(model)):
        return  # nothing to attach, or nowhere yet: the first call attaches
    optimizer = getattr(model, "optimizer", None)
    for state, loss in states:
        if (
            state.trainable_variables
            and optimizer is not None
            and optimizer.built
            and not _optimizer_knows(optimizer, state.trainable_variables)
        ):
            raise ValueError(_late_optimizer_message(model, loss))
        state.attach_to(model, loss)


def _output_shapes(model, compiled, count):
    """The shape of the output each of the `count` compiled losses applies to, `None` where unknown."""
    try:
        outputs = keras.tree.flatten(model.outputs)
    except (AttributeError, ValueError):
        return [None] * count
    if len(outputs) == 1:
        return [tuple(outputs[0].shape)] * count
    if isinstance(compiled, (list, tuple)) and len(outputs) == count:
        return [tuple(output.shape) for output in outputs]
    return [None] * count  # a dict of losses: which output is whose is Keras' business


def _late_optimizer_message(model, loss):
    return (
        f"The optimizer of model {model.name!r} was built before the learned parameters of "
        f"loss {loss.name!r} joined the model, so it has no slots for them. Compile the model "
        "with a new optimizer, e.g. `model.compile(optimizer=model.optimizer.__class__."
        "from_config(model.optimizer.get_config()), loss=model.loss)`."
    )


def _install_compile_hook():
    """Wraps Keras' `compile` so that compiling with a tfmetric loss attaches its state."""
    # Wrapped where Keras defines it (its base trainer), not on `keras.Model`:
    # Keras recompiles loaded models only if `compile` is not overridden.
    owner = next(cls for cls in keras.Model.__mro__ if "compile" in vars(cls))
    compile_model = owner.compile
    if getattr(compile_model, "_attaches_loss_states", False):
        return

    @functools.wraps(compile_model)
    def compile(self, *args, **kwargs):
        compile_model(self, *args, **kwargs)
        _attach_compiled_states(self)

    compile._attaches_loss_states = True
    owner.compile = compile


_install_compile_hook()


def _check_owned(model, loss, state, trains):
    """Raises unless `model` owns the variables of `state` (trainable ones as such if it `trains`)."""
    owned = {id(v) for v in model.trainable_variables} | {id(v) for v in model.non_trainable_variables}
    trainable = {id(v) for v in model.trainable_variables}
    missing = [v.name for v in state.variables if id(v) not in owned]
    if trains:
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
            if any(inner is loss for candidate in compiled_losses for inner in nested_losses(candidate)):
                model = owner
        frame = frame.f_back
    return model, training and model is not None, trainer


def _leaf_layers(model, trainable=True):
    """`(layer, trainable)` for the model's leaf layers, `trainable` when all its parents are."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer, trainable and layer.trainable)
        elif not isinstance(layer, (LossState, keras.layers.InputLayer)):
            yield layer, trainable and layer.trainable


def _host_layer(model):
    """The last leaf layer that trains, else the last leaf.

    Chosen by trainability only, not by weights, so that a model compiled
    before it is built gets the same host (and the optimizer the same
    order of variables) as one compiled after.
    """
    leaves = list(_leaf_layers(model))
    if not leaves:
        raise ValueError(f"Model {model.name!r} has no layer to carry the loss's variables.")
    trainable = [layer for layer, trains in leaves if trains]
    return (trainable or [layer for layer, _ in leaves])[-1]
