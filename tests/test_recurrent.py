"""tfm.lstm_gates: gates recomputed from an LSTM's weights rebuild the layer's own outputs."""

import keras
import numpy as np
import pytest

import tfmetric as tfm
from tfmetric.recurrent import active_units, layer_inputs


def rebuild_hidden_states(gates, mask, activation, backwards):
    """The LSTM recurrence run on given gates: c = f c + i g, h = o act(c); masked steps keep the state."""
    batch, time, units = gates["input"].shape
    hidden, carry = np.zeros((batch, units)), np.zeros((batch, units))
    outputs = np.zeros((batch, time, units))
    for step in (range(time - 1, -1, -1) if backwards else range(time)):
        new_carry = gates["forget"][:, step] * carry + gates["input"][:, step] * gates["cell"][:, step]
        new_hidden = gates["output"][:, step] * activation(new_carry)
        live = mask[:, step, None]
        carry, hidden = np.where(live, new_carry, carry), np.where(live, new_hidden, hidden)
        outputs[:, step] = np.where(live, new_hidden, 0.0)
    return outputs


def token_model(recurrent, vocabulary=30):
    inputs = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(vocabulary, 6, mask_zero=True)(inputs)
    return keras.Model(inputs, recurrent(embedded))


PADDED = np.array([[3, 7, 1, 0, 0, 0], [5, 2, 9, 4, 8, 6], [11, 0, 0, 0, 0, 0]])
MASK = PADDED != 0


@pytest.mark.parametrize("masked", [False, True])
def test_bidirectional_gates_rebuild_the_layers_outputs(masked):
    keras.utils.set_random_seed(1)
    layer = keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True))
    model = token_model(layer)
    tokens = PADDED if masked else PADDED + 1
    inputs, mask = layer_inputs(model, layer)(tokens)
    np.testing.assert_array_equal(mask, tokens != 0)
    gates = tfm.lstm_gates(layer, inputs, mask)
    assert set(gates) == {"forward", "backward"}
    for direction in gates.values():
        assert set(direction) == {"input", "forget", "cell", "output"}
        assert all(array.shape == (3, 6, 5) for array in direction.values())
    rebuilt = np.concatenate(
        [
            rebuild_hidden_states(gates["forward"], mask, np.tanh, backwards=False),
            rebuild_hidden_states(gates["backward"], mask, np.tanh, backwards=True),
        ],
        axis=-1,
    )
    np.testing.assert_allclose(rebuilt, keras.ops.convert_to_numpy(model(tokens)), atol=2e-6)
    if masked:
        # Nothing is reported for padding.
        for direction in gates.values():
            assert np.all(direction["input"][~mask] == 0)


@pytest.mark.parametrize("go_backwards", [False, True])
def test_plain_lstm_with_its_own_activations_and_no_bias(go_backwards):
    keras.utils.set_random_seed(2)
    layer = keras.layers.LSTM(
        4, return_sequences=True, go_backwards=go_backwards, activation="softsign",
        recurrent_activation="hard_sigmoid", use_bias=False,
    )
    x = np.random.default_rng(0).normal(size=(2, 7, 3)).astype("float32")
    outputs = keras.ops.convert_to_numpy(layer(x))
    gates = tfm.lstm_gates(layer, x)
    direction = "backward" if go_backwards else "forward"
    assert list(gates) == [direction]
    rebuilt = rebuild_hidden_states(
        gates[direction], np.ones((2, 7), bool), lambda v: v / (1 + np.abs(v)), go_backwards
    )
    if go_backwards:
        # Keras returns a go_backwards layer's outputs in reading order.
        rebuilt = rebuilt[:, ::-1]
    np.testing.assert_allclose(rebuilt, outputs, atol=2e-6)


def test_gates_come_in_keras_kernel_order():
    # The hidden-state check cannot tell the input gate from the cell
    # candidate (c = f c + i g is symmetric in them): pin each block with its bias.
    layer = keras.layers.LSTM(3, kernel_initializer="zeros", recurrent_initializer="zeros")
    x = np.ones((1, 4, 2), "float32")
    layer(x)
    layer.cell.bias.assign(np.repeat([3.0, -3.0, -1.0, 1.0], 3).astype("float32"))
    gates = tfm.lstm_gates(layer, x)["forward"]
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    np.testing.assert_allclose(gates["input"], sigmoid(3.0), rtol=1e-6)
    np.testing.assert_allclose(gates["forget"], sigmoid(-3.0), rtol=1e-6)
    np.testing.assert_allclose(gates["cell"], np.tanh(-1.0), rtol=1e-6)
    np.testing.assert_allclose(gates["output"], sigmoid(1.0), rtol=1e-6)


def test_active_units_count_each_gate_over_both_directions():
    forward = {name: np.array([[[0.9, 0.1], [0.85, 0.95]]]) for name in ("input", "forget", "cell", "output")}
    backward = {name: np.array([[[0.2, 0.81], [0.8, 0.5]]]) for name in ("input", "forget", "cell", "output")}
    forward["forget"] = np.zeros((1, 2, 2))
    counts = active_units({"forward": forward, "backward": backward}, threshold=0.8)
    assert set(counts) == {"input", "forget", "output"}
    np.testing.assert_array_equal(counts["input"], [[2, 2]])  # 0.8 itself is not above
    np.testing.assert_array_equal(counts["forget"], [[1, 0]])


def test_errors():
    with pytest.raises(TypeError, match="LSTM"):
        gru = keras.layers.GRU(2)
        gru(np.zeros((1, 2, 2), "float32"))
        tfm.lstm_gates(gru, np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="not built"):
        tfm.lstm_gates(keras.layers.LSTM(2), np.zeros((1, 2, 2)))
    layer = keras.layers.LSTM(2)
    layer(np.zeros((1, 3, 2), "float32"))
    with pytest.raises(ValueError, match="mask must be"):
        tfm.lstm_gates(layer, np.zeros((1, 3, 2)), mask=np.ones((1, 2), bool))
    with pytest.raises(ValueError, match="batch, time, features"):
        tfm.lstm_gates(layer, np.zeros((3, 2)))
