"""What an LSTM layer's gates do, step by step, recomputed from its weights."""

import keras
import numpy as np

from tfmetric.inspection import submodel

__all__ = ["GATES", "active_units", "layer_inputs", "lstm_gates"]

# Keras packs an LSTM's kernels as [input | forget | cell | output].
GATES = ("input", "forget", "cell", "output")


def lstm_gates(layer, inputs, mask=None):
    """Gate activations of an `LSTM` or `Bidirectional(LSTM)` layer over `inputs`.

    For every step the cell computes, from the step's input `x_t` and the
    previous state `(h, c)`:

        input  i_t = σ(x_t W_i + h_{t-1} U_i + b_i)
        forget f_t = σ(x_t W_f + h_{t-1} U_f + b_f)
        cell   g_t = tanh(x_t W_c + h_{t-1} U_c + b_c)
        output o_t = σ(x_t W_o + h_{t-1} U_o + b_o)
        c_t = f_t c_{t-1} + i_t g_t,   h_t = o_t tanh(c_t)

    with the layer's own `recurrent_activation` (σ) and `activation` (tanh).
    The gates are recomputed from the layer's weights as at inference (no
    dropout), from zero initial states.

    Args:
        layer: A built `keras.layers.LSTM`, or `keras.layers.Bidirectional`
            wrapping LSTMs.
        inputs: What the layer receives, `(batch, time, features)`.
        mask: Optional boolean `(batch, time)`; as in Keras, a masked step
            leaves the state unchanged. Its gates are reported as 0.

    Returns:
        `{"forward": {"input", "forget", "cell", "output"}, "backward": {...}}`,
        each a float32 NumPy array `(batch, time, units)`, in the input's time
        order for both directions (the backward gates at `t` are those the
        backward LSTM computed when reading step `t`). A plain LSTM gives one
        direction: "backward" when it has `go_backwards=True`, else "forward".

    Example:

    >>> import keras, numpy as np, tfmetric as tfm
    >>> layer = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True))
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype("float32")
    >>> _ = layer(x)
    >>> gates = tfm.lstm_gates(layer, x)
    >>> gates["backward"]["forget"].shape
    (2, 5, 3)
    """
    if isinstance(layer, keras.layers.Bidirectional):
        directions = {"forward": layer.forward_layer, "backward": layer.backward_layer}
    elif isinstance(layer, keras.layers.LSTM):
        directions = {"backward" if layer.go_backwards else "forward": layer}
    else:
        raise TypeError(
            f"lstm_gates needs a keras.layers.LSTM or Bidirectional(LSTM); received {type(layer).__name__}."
        )
    for direction in directions.values():
        if not isinstance(direction, keras.layers.LSTM):
            raise TypeError(f"lstm_gates needs LSTM layers; this Bidirectional wraps {type(direction).__name__}.")
        if not direction.built:
            raise ValueError(f"Layer {direction.name!r} is not built yet: call it (or the model) on data first.")
        if direction.stateful:
            raise ValueError(f"Layer {direction.name!r} is stateful; lstm_gates starts from zero states.")
    inputs = np.asarray(keras.ops.convert_to_numpy(inputs), np.float32)
    if inputs.ndim != 3:
        raise ValueError(f"inputs must be (batch, time, features); received shape {inputs.shape}.")
    if mask is None:
        mask = np.ones(inputs.shape[:2], bool)
    else:
        mask = np.asarray(keras.ops.convert_to_numpy(mask), bool)
        if mask.shape != inputs.shape[:2]:
            raise ValueError(f"mask must be (batch, time) = {inputs.shape[:2]}; received shape {mask.shape}.")
    return {name: _run_direction(lstm, inputs, mask) for name, lstm in directions.items()}


def active_units(gates, threshold=0.8, names=("input", "forget", "output")):
    """How many units have each gate above `threshold`, per step, all directions summed.

    Args:
        gates: What `lstm_gates` returns.
        threshold: A gate counts as open above this value (a sigmoid gate is
            0.8 at a pre-activation of about 1.4).
        names: Which gates to count.

    Returns:
        `{gate name: int array (batch, time)}`, between 0 and
        units × directions.
    """
    return {name: sum(np.sum(direction[name] > threshold, axis=-1) for direction in gates.values()) for name in names}


def _run_direction(lstm, inputs, mask):
    cell = lstm.cell
    kernel = keras.ops.convert_to_numpy(cell.kernel)
    recurrent_kernel = keras.ops.convert_to_numpy(cell.recurrent_kernel)
    bias = keras.ops.convert_to_numpy(cell.bias) if cell.use_bias else 0.0
    steps = np.arange(inputs.shape[1])
    if lstm.go_backwards:
        steps = steps[::-1]
    batch, units = inputs.shape[0], cell.units
    projected = inputs @ kernel + bias
    hidden = np.zeros((batch, units), np.float32)
    carry = np.zeros((batch, units), np.float32)
    gates = {name: np.zeros((batch, len(steps), units), np.float32) for name in GATES}
    for step in steps:
        pre_activations = projected[:, step] + hidden @ recurrent_kernel
        # Elementwise: each block keeps its own activation of the two.
        gated = np.split(_apply(cell.recurrent_activation, pre_activations), 4, axis=-1)
        candidate = np.split(_apply(cell.activation, pre_activations), 4, axis=-1)[GATES.index("cell")]
        values = dict(zip(GATES, gated), cell=candidate)
        new_carry = values["forget"] * carry + values["input"] * values["cell"]
        new_hidden = values["output"] * _apply(cell.activation, new_carry)
        live = mask[:, step, None]
        carry = np.where(live, new_carry, carry)
        hidden = np.where(live, new_hidden, hidden)
        for name in GATES:
            gates[name][:, step] = np.where(live, values[name], 0.0)
    return gates


def _apply(activation, values):
    """A Keras activation on a NumPy array, back as float32 NumPy."""
    return np.asarray(keras.ops.convert_to_numpy(activation(values)), np.float32)


def layer_inputs(model, layer):
    """A function mapping `model`'s inputs to `layer`'s `(inputs, mask)`.

    Keras 3 records an upstream mask (an `Embedding(mask_zero=True)`, a
    `Masking` layer) as an argument of the layer's call in the model's graph,
    so a sub-model up to the layer returns it too. `mask` is None when the
    layer receives none.
    """
    if not model.built or not getattr(layer, "_inbound_nodes", None):
        raise ValueError(
            f"Layer {layer.name!r} has no inputs in a graph of layers: build the Functional or Sequential "
            "model first; for a subclassed model, call tfm.lstm_gates(layer, inputs, mask) with the "
            "layer's inputs yourself."
        )
    arguments = layer._inbound_nodes[0].arguments
    sequences = arguments.args[0] if arguments.args else next(iter(arguments.kwargs.values()))
    mask = arguments.kwargs.get("mask")
    cut = submodel(model, [sequences] if mask is None else [sequences, mask])

    def inputs_and_mask(x):
        outputs = cut(x, training=False)
        sequences = keras.ops.convert_to_numpy(outputs[0])
        return sequences, (None if mask is None else keras.ops.convert_to_numpy(outputs[1]))

    return inputs_and_mask
