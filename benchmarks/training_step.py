"""What the loss costs in a whole training step of a small convolutional embedding model.

    python benchmarks/training_step.py
    python benchmarks/training_step.py --batch 512 --image 64
    python benchmarks/training_step.py --losses batch_hard arcface

Model: 3 × (Conv 3×3 + ReLU + 2×2 max-pool) with 32/64/128 filters, global
average pooling, Dense 128, unit-normalised; Adam. Batches are P×K (K = 4) of
random `image × image × 1` images. Each loss is timed in `train_on_batch`
(forward, loss, backward, optimizer update; median after a warm-up), next to
the same step with a stand-in loss of negligible cost (`mean(y_pred²)`), and
the loss alone (forward + backward on the model's embeddings of the batch,
compiled the same way), all in one process. Every loss of the registry is
timed (`tfm.losses.registry.LOSSES`, each in its main configuration as
`benchmarks/losses.py` builds it), then every loss with class vectors
(`PROXY_LOSSES`, one vector set per class of the batch, its gradient
included in the loss alone). `loss share` = loss alone ÷
step: the part of every step that the loss takes (the difference of two
step times is too noisy for that). `jit` is the model's `jit_compile`.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from keras import layers, ops
from losses import build_loss
from timing import tensorflow_step, time_calls

from tfmetric.losses.registry import LOSSES as REGISTRY, PROXY_LOSSES

# The stand-in, then every loss as benchmarks/losses.py configures it.
STAND_IN = "stand-in mean(y²)"
LOSSES = (STAND_IN, *REGISTRY, *PROXY_LOSSES)


def make_loss(name, classes):
    if name == STAND_IN:
        return lambda y_true, y_pred: ops.mean(ops.square(y_pred))
    if name in PROXY_LOSSES:
        return PROXY_LOSSES[name].build(classes, 128)
    return build_loss(name)


def embedding_model(image):
    inputs = keras.Input((image, image, 1))
    x = inputs
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(128)(x)
    return keras.Model(inputs, layers.UnitNormalization()(x))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image", type=int, default=28)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--losses", nargs="+", choices=LOSSES[1:], default=LOSSES[1:], help="besides the stand-in")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.image, args.image, 1)).astype("float32")
    y = np.repeat(np.arange(args.batch // 4), 4).astype("int64")
    print(
        f"Keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} CPUs, "
        f"batch {args.batch} (P={args.batch // 4} × K=4) of {args.image}×{args.image} images, 128-D embeddings"
    )
    header = f"{'loss':<30}{'jit':>6}{'step ms':>10}{'loss ms':>10}{'loss share':>12}"
    print(header)
    print("-" * len(header))
    for jit in (False, True):
        for name in (STAND_IN, *args.losses):
            keras.utils.set_random_seed(0)
            model = embedding_model(args.image)
            loss = make_loss(name, args.batch // 4)
            model.compile(optimizer="adam", loss=loss, jit_compile=jit)
            step_ms = time_calls(lambda: model.train_on_batch(x, y), args.min_seconds, baseline_mb=0)["ms"]
            embeddings = ops.convert_to_tensor(model.predict(x, verbose=0))
            # The class vectors are trained too: their gradient is part of the loss's cost.
            variables = [loss.proxies] if name in PROXY_LOSSES else []
            loss_step = tensorflow_step(loss, embeddings, ops.convert_to_tensor(y), jit, variables)
            loss_ms = time_calls(loss_step, args.min_seconds, baseline_mb=0)["ms"]
            print(f"{name:<30}{str(jit):>6}{step_ms:>10.1f}{loss_ms:>10.2f}{loss_ms / step_ms:>12.1%}", flush=True)


if __name__ == "__main__":
    main()
