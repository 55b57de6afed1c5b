"""Reading what happens inside a Keras model."""

import keras

__all__ = ["submodel"]


def submodel(model, outputs):
    """A model from `model`'s inputs to `outputs`, tensors of its graph.

    Works for Functional and Sequential models (a Sequential one has no
    `input` until called, only `inputs`); a subclassed model has no graph.
    """
    try:
        try:
            inputs = model.input
        except AttributeError:
            inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        return keras.Model(inputs, outputs)
    except (AttributeError, TypeError, ValueError) as error:
        raise ValueError(
            f"Cannot read inside model {model.name!r}: that needs a built Functional or Sequential "
            "model (a subclassed model has no graph of layers to cut)."
        ) from error
