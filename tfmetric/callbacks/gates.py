"""Which LSTM gates open at which token: the Bi-LSTM study's picture, every few epochs."""

import json
import os

import numpy as np

from tfmetric.callbacks.base import PeriodicCallback, SummaryLog, atomic_write, tsv_cell
from tfmetric.recurrent import active_units, layer_inputs, lstm_gates

__all__ = ["GateActivations"]

COUNTED_GATES = ("input", "forget", "output")


class GateActivations(PeriodicCallback):
    """Per token, how many LSTM units have their input, forget and output gates open.

    For a few `samples`, every `every_n_epochs` epochs, recomputes the gates
    of `layer` (an `LSTM` or `Bidirectional(LSTM)`, see `tfm.lstm_gates`) and
    counts, at each token, the units whose gate value exceeds `threshold`,
    forward and backward directions summed. Masked (padding) steps are left
    out. Each export writes to `log_dir/gates/epoch-NNNN/`:

    - `counts.tsv`: one row per sample and token: sample, position, token,
      input, forget, output;
    - `counts.json`: the same per sample, with the threshold and unit count;
    - `sample-NNN.png`: a gates × tokens heatmap per sample (any script,
      CJK included, given a font that has it: see `font`);

    and logs the heatmaps to TensorBoard as images `gates/sample-NNN`.

    Args:
        layer: The recurrent layer, or its name in the model.
        samples: Model inputs for the samples to show (e.g. padded token ids).
        log_dir: Directory to write to.
        threshold: A gate counts as open above this value.
        tokens: Optional token strings per sample, one per unmasked step, for
            the x axis; default the step positions.
        every_n_epochs: Export every this many epochs.
        font: A font file or family for the tokens; default the first
            installed font that can draw them.
    """

    def __init__(self, layer, samples, log_dir, threshold=0.8, tokens=None, every_n_epochs=1, font=None):
        super().__init__(every_n_epochs, layer)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] (gates are sigmoids); received {threshold}.")
        self.samples = samples
        self.log_dir = os.fspath(log_dir)
        self.threshold = float(threshold)
        self.tokens = None if tokens is None else [[str(token) for token in sequence] for sequence in tokens]
        self.font = font
        self.summaries = SummaryLog(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        if self.due(epoch):
            self.export(epoch)

    def on_train_end(self, logs=None):
        self.summaries.close()

    def counts(self):
        """`(samples, units)`: per sample `{"tokens", "positions", "input", "forget", "output"}`,
        and the number of units counted at each step (all directions)."""
        layer = self.model.get_layer(self.layer) if isinstance(self.layer, str) else self.layer
        inputs, mask = self.for_model(lambda model: layer_inputs(model, layer))(self.samples)
        gates = lstm_gates(layer, inputs, mask)
        if mask is None:
            mask = np.ones(inputs.shape[:2], bool)
        counts = active_units(gates, self.threshold, COUNTED_GATES)
        if self.tokens is not None and len(self.tokens) != len(inputs):
            raise ValueError(f"tokens has {len(self.tokens)} sequences for {len(inputs)} samples.")
        samples = []
        for index, kept in enumerate(mask):
            positions = np.flatnonzero(kept)
            tokens = [str(position) for position in positions]
            if self.tokens is not None:
                tokens = self.tokens[index]
                if len(tokens) != len(positions):
                    raise ValueError(
                        f"Sample {index} has {len(positions)} unmasked steps but {len(tokens)} tokens."
                    )
            entry = {"tokens": tokens, "positions": positions.tolist()}
            entry.update({name: counts[name][index, positions].tolist() for name in COUNTED_GATES})
            samples.append(entry)
        return samples, sum(direction["input"].shape[-1] for direction in gates.values())

    def export(self, epoch):
        from tfmetric.plots import gate_heatmap, png_to_array

        samples, units = self.counts()
        directory = os.path.join(self.log_dir, "gates", f"epoch-{epoch + 1:04d}")
        os.makedirs(directory, exist_ok=True)
        rows = ["sample\tposition\ttoken\t" + "\t".join(COUNTED_GATES)]
        for index, sample in enumerate(samples):
            for step, token in enumerate(sample["tokens"]):
                values = "\t".join(str(sample[name][step]) for name in COUNTED_GATES)
                rows.append(f"{index}\t{sample['positions'][step]}\t{tsv_cell(token)}\t{values}")
        atomic_write(os.path.join(directory, "counts.tsv"), ("\n".join(rows) + "\n").encode("utf-8"))
        summary = {"epoch": epoch + 1, "threshold": self.threshold, "units": units, "samples": samples}
        atomic_write(
            os.path.join(directory, "counts.json"), json.dumps(summary, ensure_ascii=False, indent=1).encode("utf-8")
        )
        for index, sample in enumerate(samples):
            separator = "" if all(len(token) == 1 for token in sample["tokens"]) else " "
            title = f"{separator.join(sample['tokens'])}: units with gate > {self.threshold:g} (epoch {epoch + 1})"
            png = gate_heatmap(
                {name: sample[name] for name in COUNTED_GATES},
                sample["tokens"],
                title=title,
                maximum=units,
                font=self.font,
            )
            atomic_write(os.path.join(directory, f"sample-{index:03d}.png"), png)
            self.summaries.image(f"gates/sample-{index:03d}", png_to_array(png), step=epoch)
        return directory
