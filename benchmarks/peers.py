"""tfmetric against TF Addons and PyTorch Metric Learning, in one run on one machine.

    python benchmarks/peers.py                       # N = 256 ... 4096
    python benchmarks/peers.py --sizes 512 1024 --tasks semi-hard batch-hard
    python benchmarks/peers.py --setup               # only create the peers' environments

The peers live in virtual environments of their own, which this script
creates on first use under `--env-dir` (default `~/.cache/tfmetric-peers`):

- `tfa`: tensorflow==2.15.1, tensorflow-addons==0.23.0 (TF Addons does not
  import on Keras 3);
- `pml`: torch==2.13.0, pytorch-metric-learning==2.9.0. On Linux, PyPI's
  torch is a CUDA build that also runs on CPU; for the smaller CPU build
  pass `--pip-args="--index-url https://download.pytorch.org/whl/cpu"`.

tfmetric runs in the Python running this script. Each (implementation, task,
N, XLA) cell runs in its own process and is timed as forward + backward (the
loss and its gradient with respect to the embeddings), median over repeats
after a warm-up; `+MB` is the peak resident memory the cell added to its
process (runtime, data and loss object excluded). Batches are P×K (N/K
classes of K examples, K = 4), D = 128, float32, the same numbers for
everyone. TF Addons runs in `tf.function`, with `jit_compile` off and on;
PyTorch runs eagerly (its `XLA` cells repeat the eager time, for the ratio).

The tasks, with the same definitions on both sides (the `value` column shows
it where the definitions agree exactly):

- semi-hard: `SemiHardTriplet` / TF Addons `TripletSemiHardLoss`.
- batch-hard: `BatchHardTriplet` / TF Addons `TripletHardLoss` / PML
  `BatchHardMiner` + `TripletMarginLoss` (mean over anchors).
- batch-all: `BatchAllTriplet` / PML `TripletMarginLoss` without a miner
  (all triplets, mean over the positive ones).
- contrastive: `Contrastive` / PML `ContrastiveLoss` over all pairs (PML's
  terms are not squared: same work, different values).
- margin: `MarginLoss` (distance-weighted sampling) / PML
  `DistanceWeightedMiner` + `MarginLoss` (random draws: different values).
- lifted: `LiftedStructure` / TF Addons `LiftedStructLoss`.

`--peers` picks the peers (`--peers` alone: tfmetric only, no environment
to create). TF Addons' semi-hard and lifted losses and PML's all-triplets
masks build (N, N, N)
tensors; their cells are skipped when that would not fit in `--max-memory-gb`.
"""

import argparse
import json
import os
import subprocess
import sys

from losses import build_loss
from timing import pk_batch, rss_mb, run_cell, tensorflow_step, time_calls

PEERS = {
    "tfa": {
        "requirements": ["tensorflow==2.15.1", "tensorflow-addons==0.23.0"],
        "check": "import tensorflow_addons",
    },
    "pml": {
        "requirements": ["torch==2.13.0", "pytorch-metric-learning==2.9.0"],
        "check": "import pytorch_metric_learning",
    },
}

MARGIN = 0.2  # the triplet and margin losses' margin, as benchmarks/losses.py configures tfmetric's



def no_cube(n):
    return 0.0


def tfa_tiled_gb(n):
    # TF Addons tiles the (N, N) matrix N times; measured: 13 bytes per
    # entry of (N, N, N) for the semi-hard loss at N = 512.
    return 16 * n**3 / 2**30


def pml_all_triplets_gb(n):
    # PML masks all (N, N, N) triplets at once below 2**31 entries (~1.1
    # bytes each, measured at N = 1024) and loops over anchors above.
    return 1.5 * n**3 / 2**30 if n**3 < 2**31 else 0.0


# task -> [(implementation, environment, GB its (N, N, N) tensors need)]
TASKS = {
    "semi-hard": [
        ("tfmetric semi_hard", "tfmetric", no_cube),
        ("TF Addons TripletSemiHardLoss", "tfa", tfa_tiled_gb),
    ],
    "batch-hard": [
        ("tfmetric batch_hard", "tfmetric", no_cube),
        ("TF Addons TripletHardLoss", "tfa", no_cube),
        ("PML BatchHardMiner+TripletMargin", "pml", no_cube),
    ],
    "batch-all": [
        ("tfmetric batch_all_nonzero", "tfmetric", no_cube),
        ("PML TripletMarginLoss (all)", "pml", pml_all_triplets_gb),
    ],
    "contrastive": [
        ("tfmetric contrastive_all", "tfmetric", no_cube),
        ("PML ContrastiveLoss", "pml", no_cube),
    ],
    "margin": [
        ("tfmetric margin_dw", "tfmetric", no_cube),
        ("PML DistanceWeighted+MarginLoss", "pml", no_cube),
    ],
    "lifted": [
        ("tfmetric lifted_structure", "tfmetric", no_cube),
        ("TF Addons LiftedStructLoss", "tfa", tfa_tiled_gb),
    ],
}


def tensorflow_loss(implementation):
    if implementation.startswith("tfmetric "):
        return build_loss(implementation.removeprefix("tfmetric "))
    import tensorflow_addons as tfa

    return {
        "TF Addons TripletSemiHardLoss": lambda: tfa.losses.TripletSemiHardLoss(margin=MARGIN),
        "TF Addons TripletHardLoss": lambda: tfa.losses.TripletHardLoss(margin=MARGIN),
        "TF Addons LiftedStructLoss": lambda: tfa.losses.LiftedStructLoss(margin=1.0),
    }[implementation]()


def torch_loss(implementation):
    from pytorch_metric_learning import distances, losses, miners, reducers

    euclidean = distances.LpDistance(normalize_embeddings=False)
    if implementation == "PML BatchHardMiner+TripletMargin":
        miner = miners.BatchHardMiner(distance=euclidean)
        loss = losses.TripletMarginLoss(margin=MARGIN, distance=euclidean, reducer=reducers.MeanReducer())
        return lambda x, y: loss(x, y, miner(x, y))
    if implementation == "PML TripletMarginLoss (all)":
        return losses.TripletMarginLoss(margin=MARGIN, distance=euclidean)
    if implementation == "PML ContrastiveLoss":
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0, distance=euclidean)
    if implementation == "PML DistanceWeighted+MarginLoss":
        # Both normalise the embeddings, as tfmetric's MarginLoss does.
        miner = miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
        loss = losses.MarginLoss(margin=MARGIN, beta=1.2)
        return lambda x, y: loss(x, y, miner(x, y))
    raise KeyError(implementation)


def measure(implementation, environment, n, k, dim, jit, min_seconds):
    """Runs in a child process, under the environment's Python."""
    x, y = pk_batch(n, k, dim)
    if environment == "pml":
        import torch

        torch.manual_seed(0)
        loss = torch_loss(implementation)
        embeddings = torch.tensor(x, requires_grad=True)
        labels = torch.tensor(y)

        def gradient_step():
            embeddings.grad = None
            loss(embeddings, labels).backward()
            embeddings.grad.numpy()

        def value():
            with torch.no_grad():
                return float(loss(embeddings, labels))

    else:
        import tensorflow as tf

        loss = tensorflow_loss(implementation)
        embeddings, labels = tf.constant(x), tf.constant(y)
        gradient_step = tensorflow_step(loss, embeddings, labels, jit)

        def value():
            return float(loss(labels, embeddings))

    result = time_calls(gradient_step, min_seconds, baseline_mb=rss_mb())
    result["value"] = value()
    return result


def environment_python(environment, env_dir, pip_args):
    """The Python of an environment, which is created if it is not there yet."""
    if environment == "tfmetric":
        return sys.executable
    peer = PEERS[environment]
    python = os.path.join(env_dir, environment, "bin", "python")
    check = subprocess.run([python, "-c", peer["check"]], capture_output=True) if os.path.exists(python) else None
    if check is None or check.returncode != 0:
        print(
            f"Creating {os.path.dirname(os.path.dirname(python))} ({', '.join(peer['requirements'])}) ...", flush=True
        )
        subprocess.run([sys.executable, "-m", "venv", os.path.join(env_dir, environment)], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", *pip_args, *peer["requirements"]], check=True)
    return python


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--peers", nargs="*", choices=list(PEERS), default=list(PEERS))
    parser.add_argument("--k", type=int, default=4, help="examples per class (K of P×K)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--env-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "tfmetric-peers"))
    parser.add_argument("--pip-args", default="", help="extra arguments for pip when creating the peer environments")
    total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        default=round(0.6 * total_gb, 1),
        help="skip the cells whose (N, N, N) tensors would need more (default: 60%% of RAM)",
    )
    parser.add_argument("--cell-timeout", type=float, default=900, help="seconds before a cell is given up")
    parser.add_argument(
        "--setup", action="store_true", help="create the peers' environments, print their Pythons and stop"
    )
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(measure(*json.loads(args.cell))))
        return
    if args.setup:
        for environment in args.peers:
            print(environment_python(environment, args.env_dir, args.pip_args.split()))
        return

    pythons = {}
    for task in args.tasks:
        for _, environment, _ in TASKS[task]:
            if environment not in pythons and environment in ("tfmetric", *args.peers):
                pythons[environment] = environment_python(environment, args.env_dir, args.pip_args.split())
    versions = {
        "tfmetric": "import tensorflow as t, tfmetric; print('tfmetric on TensorFlow', t.__version__)",
        "tfa": "import tensorflow as t, tensorflow_addons as a; "
        "print('TF Addons', a.__version__, 'on TensorFlow', t.__version__)",
        "pml": "import torch, pytorch_metric_learning as p; "
        "print('PML', p.__version__, 'on torch', torch.__version__, torch.get_num_threads(), 'threads')",
    }
    for environment, python in pythons.items():
        out = subprocess.run(
            [python, "-c", versions[environment]],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        print(out.stdout.strip())
    print(
        f"{os.cpu_count()} CPUs, D={args.dim}, K={args.k}, float32, forward+backward; "
        "× = peer ms ÷ tfmetric ms, same column"
    )
    header = (
        f"{'task':<12}{'N':>5}  {'implementation':<33}{'ms':>10}{'ms XLA':>10}{'+MB':>7}{'+MB XLA':>8}"
        f"{'×':>8}{'× XLA':>8}{'value':>10}"
    )
    print(header)
    print("-" * len(header))
    for task in args.tasks:
        for n in args.sizes:
            ours = None
            for implementation, environment, cube_gb in TASKS[task]:
                if environment not in pythons:
                    continue
                label = f"{task:<12}{n:>5}  {implementation:<33}"
                if cube_gb(n) > args.max_memory_gb:
                    print(f"{label}skipped: its (N, N, N) tensors need ~{cube_gb(n):.0f} GB", flush=True)
                    continue
                cells = {}
                for jit in (False, True):
                    if jit and environment == "pml":
                        cells[jit] = cells[False]
                        continue
                    cell = [implementation, environment, n, args.k, args.dim, jit, args.min_seconds]
                    cells[jit] = run_cell(pythons[environment], os.path.abspath(__file__), cell, args.cell_timeout)
                errors = [r["error"] for r in cells.values() if "error" in r]
                if errors:
                    print(f"{label}error: {errors[0]}", flush=True)
                    continue
                if environment == "tfmetric":
                    ours = cells
                ratios = [cells[jit]["ms"] / ours[jit]["ms"] if ours else float("nan") for jit in (False, True)]
                print(
                    f"{label}{cells[False]['ms']:>10.2f}{cells[True]['ms']:>10.2f}"
                    f"{cells[False]['extra_mb']:>7.0f}{cells[True]['extra_mb']:>8.0f}"
                    f"{ratios[0]:>8.1f}{ratios[1]:>8.1f}{cells[False]['value']:>10.5f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
