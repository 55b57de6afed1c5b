"""The losses on the JAX or PyTorch backend, on its default device (a GPU where there is one), beside PML.

    KERAS_BACKEND=jax python benchmarks/backends.py --sizes 1024 4096
    KERAS_BACKEND=torch python benchmarks/backends.py --peers pml --sizes 256 1024 4096

The other benchmarks run TensorFlow; this one runs tfmetric where Keras'
backend is JAX (the loss and its gradient in one `jax.jit`) or PyTorch
(eager, as Keras' PyTorch backend runs), on the device the backend picks: a
GPU when one is visible. TensorFlow need not be installed.

Every row is one of `benchmarks/peers.py`'s tasks with tfmetric's side built
as there (the registry's configuration, the peers' triplet margin, the same
seeded class vectors), timed as forward + backward (gradients w.r.t. the
embeddings, and the class vectors where there are some), median over calls
after a warm-up. `× dist` divides it by the time of the Euclidean distance
matrix alone (`tfm.distances.pairwise_distance`, or the N × C cosine matrix
for the losses with class vectors) on the same backend, their calls
alternating. On the PyTorch backend, `--peers pml` adds PyTorch Metric
Learning's loss on the same tensors and device, also alternating with
tfmetric's call: `× PML` is PML's time over tfmetric's; `value` shows both
values (equal where the definitions agree, see peers.py). PML's cells whose
(N, N, N) tensors need more than `--max-memory-gb` are skipped.

`--deadline` (seconds) stops starting new cells once that much time has
passed, so that a run on a lent machine ends on time with what it has.
"""

import argparse
import os
import sys
import time

import keras
from keras import ops
from peers import (
    TASKS,
    add_max_memory_argument,
    class_vectors,
    tfmetric_loss,
    torch_loss,
)
from timing import alternate, pk_batch

from tfmetric.distances import l2_normalize, pairwise_distance

BACKEND = keras.backend.backend()


def loss_variables(loss):
    """The Keras variables of a loss's state (class vectors, a running histogram)."""
    state = getattr(loss, "state", None)
    return [] if state is None else list(state.variables)


def synchronize():
    if BACKEND == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def gradient_step(objective, x, y, variables=()):
    """A blocking call computing `objective(y, x)` and its gradients w.r.t. `x` and `variables` (Keras')."""
    trainable = [v for v in variables if v.trainable]
    frozen = [v for v in variables if not v.trainable]
    if BACKEND == "jax":
        import jax

        def call(x, trainable_values, frozen_values, y):
            mapping = list(zip(trainable, trainable_values)) + list(zip(frozen, frozen_values))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                value = objective(y, x)
            return value, [scope.get_current_value(v) for v in frozen]

        compiled = jax.jit(jax.value_and_grad(call, argnums=(0, 1), has_aux=True))

        def step():
            (value, new_frozen), gradients = compiled(x, [v.value for v in trainable], [v.value for v in frozen], y)
            for variable, new in zip(frozen, new_frozen):
                variable.assign(new)
            jax.block_until_ready(gradients)
            return value

        return step
    if BACKEND == "torch":
        return torch_step(lambda: objective(y, x), [x, *(v.value for v in trainable)])
    raise SystemExit(f"KERAS_BACKEND={BACKEND}: this benchmark is for jax and torch (TensorFlow: losses.py, peers.py).")


def torch_step(value, wrt):
    """A blocking call computing `value()` and its gradients w.r.t. the tensors `wrt` (PyTorch)."""
    import torch

    def step():
        result = value()
        torch.autograd.grad(result, wrt)
        synchronize()
        return result.detach()

    return step


def device_name():
    if BACKEND == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform} {getattr(device, 'device_kind', '')}".strip()
    import torch

    return f"cuda {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--peers", nargs="*", choices=["pml"], default=[])
    parser.add_argument("--k", type=int, default=4, help="examples per class (K of P×K)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    add_max_memory_argument(parser, "; on a GPU, give its memory")
    parser.add_argument("--slow-seconds", type=float, default=2.0, help="a call slower than this is timed once")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds after which no cell starts")
    args = parser.parse_args()
    if "pml" in args.peers and BACKEND != "torch":
        parser.error("--peers pml runs on the PyTorch backend (KERAS_BACKEND=torch)")
    started = time.perf_counter()

    versions = f"Keras {keras.__version__} on {BACKEND}"
    if BACKEND == "jax":
        import jax

        precision = jax.config.jax_default_matmul_precision or "default"
        versions += f" {jax.__version__} (jax.jit, matmul precision {precision})"
    else:
        import torch

        tf32 = "TF32" if torch.backends.cuda.matmul.allow_tf32 else "float32"
        versions += f" {torch.__version__} (eager, CUDA matmuls in {tf32})"
    if args.peers:
        import pytorch_metric_learning

        versions += f"; PML {pytorch_metric_learning.__version__}"
    print(f"{versions}; device: {device_name()}; {os.cpu_count()} CPUs")
    print(f"D={args.dim}, K={args.k}, float32, forward+backward; × dist = ms ÷ the distance (cosine) matrix's")
    header = f"{'task':<18}{'N':>6}{'ms':>10}{'× dist':>8}"
    if args.peers:
        header += f"{'PML ms':>10}{'× PML':>8}{'value':>11}{'PML value':>11}"
    print(header)
    print("-" * len(header), flush=True)

    for n in args.sizes:
        x_array, y_array = pk_batch(n, args.k, args.dim)
        x, y = ops.convert_to_tensor(x_array), ops.convert_to_tensor(y_array)
        if BACKEND == "torch":
            x.requires_grad_(True)
        distance_step = gradient_step(lambda y, x: ops.sum(pairwise_distance(x)), x, y)
        for task in args.tasks:
            if time.perf_counter() - started > args.deadline:
                print(f"deadline of {args.deadline:.0f} s reached: no more cells", flush=True)
                return
            (ours, _, _), *peers = TASKS[task]
            name = ours.removeprefix("tfmetric ")
            vectors = class_vectors(task, n, args.k, args.dim)
            label = f"{task:<18}{n:>6}"
            try:
                loss = tfmetric_loss(name, vectors)
                step = gradient_step(loss, x, y, loss_variables(loss))
                if vectors is None:
                    baseline = distance_step
                else:
                    # A variable, as the losses' vectors: a constant would be folded in by XLA.
                    rows = keras.Variable(vectors.reshape(-1, args.dim))
                    baseline = gradient_step(
                        lambda y, x: ops.sum(ops.matmul(l2_normalize(x), ops.transpose(l2_normalize(rows)))),
                        x,
                        y,
                        [rows],
                    )
                calls = [baseline, step]
                pml = [peer for peer in peers if peer[1] == "pml"]
                if args.peers and pml and pml[0][2](n) <= args.max_memory_gb:
                    import torch

                    torch.manual_seed(0)
                    peer_loss, peer_variables = torch_loss(pml[0][0], vectors)
                    if hasattr(peer_loss, "to"):
                        peer_loss.to(x.device)
                    calls.append(torch_step(lambda: peer_loss(x, y), [x, *peer_variables]))
                times = alternate(calls, args.min_seconds, args.slow_seconds)
            except Exception as error:  # one cell's failure is printed, the others run
                message = str(error).strip().splitlines()
                print(f"{label}  error: {type(error).__name__}: {message[0] if message else ''}", flush=True)
                continue
            row = f"{label}{times[1]:>10.2f}{times[1] / times[0]:>8.2f}"
            if args.peers:
                value = float(ops.convert_to_numpy(calls[1]()))
                if len(times) > 2:
                    peer_value = float(calls[2]().cpu())
                    row += f"{times[2]:>10.2f}{times[2] / times[1]:>8.1f}{value:>11.5f}{peer_value:>11.5f}"
                else:
                    row += f"{'skipped':>10}{'':>8}{value:>11.5f}"
            print(row, flush=True)


if __name__ == "__main__":
    sys.exit(main())
