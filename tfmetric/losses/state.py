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
nested layer stays out of every config.
"""

import sys
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

        Called by `loss` at every call until it succeeds; outside a Keras
        trainer (direct calls, custom training loops) it does nothing.
        """
        model, training = _compiled_model_calling(loss)
        if model is None or model in self._attached_to:
            return
        optimizer = getattr(model, "optimizer", None)
        if self.trainable_variables and optimizer is not None and optimizer.built:
            known = getattr(optimizer, "_trainable_variables_indices", {})
            if any(optimizer._var_key(v) not in known for v in self.trainable_variables):
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
        host = _host_layer(model)
        host._layers.append(self)
        self._attached_to.add(model)


def _compiled_model_calling(loss):
    """`(model, training)`: the Keras model compiled with `loss` whose trainer
    is calling it, if any, and whether the call comes from its training step."""
    frame = sys._getframe(2)
    model, training = None, False
    for _ in range(_MAX_FRAMES):
        if frame is None:
            break
        # The training step calls the model's `compute_loss`, which calls
        # the loss: look past the model's frame for it.
        training = training or frame.f_code.co_name == "train_step"
        owner = frame.f_locals.get("self")
        if model is None and isinstance(owner, keras.Model):
            compile_loss = getattr(owner, "_compile_loss", None)
            user_losses = keras.tree.flatten(getattr(compile_loss, "_user_loss", None))
            if any(candidate is loss for candidate in user_losses):
                model = owner
        frame = frame.f_back
    return model, training and model is not None


def _host_layer(model):
    """The first trainable leaf layer holding weights, else the first leaf."""
    leaves = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if not isinstance(layer, (keras.Model, LossState))
    ]
    for layer in leaves:
        if layer.trainable and layer.trainable_weights:
            return layer
    if not leaves:
        raise ValueError(
            f"Model {model.name!r} has no layer to carry the loss's variables."
        )
    return leaves[0]
