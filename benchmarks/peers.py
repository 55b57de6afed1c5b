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
loss and its gradient with respect to the embeddings, and to the class
vectors of the losses that have them), median over repeats
after a warm-up; `+MB` is the peak resident memory the cell added to its
process (runtime, data and loss object excluded). Batches are P×K (N/K
classes of K examples, K = 4), D = 128, float32, the same numbers for
everyone. TF Addons runs in `tf.function`, with `jit_compile` off and on;
PyTorch runs eagerly (its `XLA` cells repeat the eager time, for the ratio).

The tasks, with the same definitions on both sides (the `value` column shows
it where the definitions agree exactly). tfmetric's side is the registry's
configuration (`tfmetric.losses.registry`), the peer's the constructor with
the same arguments (PML's defaults where they are tfmetric's):

- semi-hard: `SemiHardTriplet` / TF Addons `TripletSemiHardLoss`.
- batch-hard: `BatchHardTriplet` / TF Addons `TripletHardLoss` / PML
  `BatchHardMiner` + `TripletMarginLoss` (mean over anchors).
- batch-all: `BatchAllTriplet` / PML `TripletMarginLoss` without a miner
  (all triplets, mean over the positive ones).
- batch-all-mean: `BatchAllTriplet(average="all")` / PML
  `TripletMarginLoss` with a `MeanReducer` (mean over all triplets).
- contrastive: `Contrastive` / PML `ContrastiveLoss` over all pairs (PML's
  terms are not squared: same work, different values).
- margin: `MarginLoss` (distance-weighted sampling) / PML
  `DistanceWeightedMiner` + `MarginLoss` (random draws: different values).
- margin-all: `MarginLoss(sampling="all")` / PML `MarginLoss` without a
  miner (PML takes every triplet, so it counts a positive pair once per
  negative: same β and margin, different values).
- lifted: `LiftedStructure` / TF Addons `LiftedStructLoss` / PML
  `LiftedStructureLoss` (Euclidean distances, embeddings as they are).
- multi-similarity, circle, nca, supcon, ntxent, fast-ap, ranked-list,
  histogram, tuplet-margin, intra-pair-var, tcm, gen-lifted, snr: the
  registry's loss / PML's loss of the same name, same values.
- ms-mined: `MultiSimilarity(epsilon=0.1)` / PML `MultiSimilarityMiner` +
  `MultiSimilarityLoss`.
- dyn-soft-margin: `DynamicSoftMargin` / PML `DynamicSoftMarginLoss`. Both
  keep a running histogram: the values agree when both made as many calls
  (`--min-seconds 0`); PML's keeps its autograd graph from call to call,
  its values only are kept here (a second `backward` would fail).
- n-pairs: `NPairs` / PML `NPairsLoss`, both on raw dot products (PML takes
  one positive pair per class, tfmetric every anchor with all its
  positives: different values).
- instance: `Instance` / PML `InstanceLoss` (with repeated labels PML's
  target is the column of the label's rank: different values).
- smooth-ap: `SmoothAP` / PML `SmoothAPLoss` (PML takes blocks of N/K rows
  as the classes and counts a query as its own positive: different values).
- pnp, pnp-dq: `PNP` / PML `PNPLoss` (variant "O", and "Dq"; PML counts a
  query as its own positive: different values).
- angular: `Angular` / PML `AngularLoss` (PML leaves the negatives
  unnormalised: the values agree on unit-norm embeddings only, not here).

Then the losses with class vectors (C = N/K classes; the same seeded unit
vectors on both sides; the gradient with respect to the embeddings and the
class vectors): arcface, cosface, sphereface, l-softmax, subcenter-arcface,
norm-softmax, proxy-nca, proxy-anchor, p2sgrad, manifold (PML's proxy ids
given as `indices_tuple` = the labels), soft-triple (tfmetric with `tau=0`:
PML has no τ regulariser). Same values throughout. norm-softmax also has a
row "plain TF": the loss in three TensorFlow operations (`l2_normalize`, one
product, `sparse_softmax_cross_entropy_with_logits`), without tfmetric's
checks of the class ids, overflow-safe normalisation and exact small losses:
not a peer, the least a TensorFlow call of the task costs (its × is plain
÷ tfmetric).

`--peers` picks the peers (`--peers` alone: tfmetric only, no environment
to create). TF Addons' semi-hard and lifted losses, PML's all-triplets
masks, lifted structure and ranking losses build (N, N, N) tensors; their
cells are skipped when that would not fit in `--max-memory-gb`.
"""

import argparse
import json
import math
import os
import subprocess
import sys

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

# The triplet losses' margin, on both sides.
MARGIN = 0.2
TRIPLET_MARGIN = ("semi_hard", "batch_hard", "batch_all_nonzero", "batch_all_all")
# Where tfmetric's configuration has an option that the peer lacks, the
# peer's value of it: PML's SoftTriple has no τ regulariser.
TFMETRIC_OPTIONS = {"soft_triple": {"tau": 0.0}}
# The tasks with class vectors, and the vectors per class (tfmetric's
# defaults, passed to PML).
VECTORS_PER_CLASS = {
    "arcface": 1,
    "cosface": 1,
    "sphereface": 1,
    "l-softmax": 1,
    "subcenter-arcface": 3,
    "norm-softmax": 1,
    "proxy-nca": 1,
    "proxy-anchor": 1,
    "soft-triple": 10,
    "p2sgrad": 1,
    "manifold": 1,
}


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


def pml_lifted_gb(n):
    # PML masks the negative pairs of every positive pair, (N·(K−1), N·(N−K))
    # at once; measured: 66 bytes per entry of (N, N, N) at N = 256.
    return 70 * n**3 / 2**30


def pml_rank_cube_gb(n):
    # Smooth-AP and PNP compare every pair of similarities of every query,
    # in repeated (N, N, N) copies; measured at N = 256: 23 (Smooth-AP) and
    # 39 (PNP) bytes per entry.
    return 40 * n**3 / 2**30


def ours(name, cube_gb=no_cube):
    return (f"tfmetric {name}", "tfmetric", cube_gb)


def tfa(name, cube_gb=no_cube):
    return (f"TF Addons {name}", "tfa", cube_gb)


def pml(name, cube_gb=no_cube):
    return (f"PML {name}", "pml", cube_gb)


def plain(name):
    # The same loss in a few TensorFlow operations, without tfmetric's checks
    # and exactness: the least a TensorFlow call of the task can cost.
    return (f"plain TF {name}", "tfmetric", no_cube)


# task -> [(implementation, environment, GB its (N, N, N) tensors need)]
TASKS = {
    "semi-hard": [ours("semi_hard"), tfa("TripletSemiHardLoss", tfa_tiled_gb)],
    "batch-hard": [ours("batch_hard"), tfa("TripletHardLoss"), pml("BatchHardMiner+TripletMargin")],
    "batch-all": [ours("batch_all_nonzero"), pml("TripletMarginLoss (all)", pml_all_triplets_gb)],
    "batch-all-mean": [ours("batch_all_all"), pml("TripletMarginLoss (mean)", pml_all_triplets_gb)],
    "contrastive": [ours("contrastive_all"), pml("ContrastiveLoss")],
    "margin": [ours("margin_dw"), pml("DistanceWeighted+MarginLoss")],
    "margin-all": [ours("margin_all"), pml("MarginLoss (all)", pml_all_triplets_gb)],
    "lifted": [
        ours("lifted_structure"),
        tfa("LiftedStructLoss", tfa_tiled_gb),
        pml("LiftedStructureLoss", pml_lifted_gb),
    ],
    "multi-similarity": [ours("multi_similarity"), pml("MultiSimilarityLoss")],
    "ms-mined": [ours("multi_similarity_mined"), pml("MultiSimilarityMiner+Loss")],
    "circle": [ours("circle"), pml("CircleLoss")],
    "n-pairs": [ours("npairs"), pml("NPairsLoss")],
    "nca": [ours("nca"), pml("NCALoss")],
    "supcon": [ours("supcon"), pml("SupConLoss")],
    "ntxent": [ours("ntxent"), pml("NTXentLoss")],
    "instance": [ours("instance"), pml("InstanceLoss")],
    "fast-ap": [ours("fast_ap"), pml("FastAPLoss")],
    "smooth-ap": [ours("smooth_ap"), pml("SmoothAPLoss", pml_rank_cube_gb)],
    "pnp": [ours("pnp"), pml("PNPLoss", pml_rank_cube_gb)],
    "pnp-dq": [ours("pnp_dq"), pml("PNPLoss (Dq)", pml_rank_cube_gb)],
    "ranked-list": [ours("ranked_list"), pml("RankedListLoss")],
    "histogram": [ours("histogram"), pml("HistogramLoss", pml_all_triplets_gb)],
    "dyn-soft-margin": [ours("dynamic_soft_margin"), pml("DynamicSoftMarginLoss", pml_all_triplets_gb)],
    "angular": [ours("angular"), pml("AngularLoss")],
    "tuplet-margin": [ours("tuplet_margin"), pml("TupletMarginLoss")],
    "intra-pair-var": [ours("intra_pair_variance"), pml("IntraPairVarianceLoss")],
    "tcm": [ours("threshold_consistent_margin"), pml("ThresholdConsistentMarginLoss")],
    "gen-lifted": [ours("generalized_lifted_structure"), pml("GeneralizedLiftedStructureLoss")],
    "snr": [ours("snr_contrastive"), pml("SignalToNoiseRatioContrastiveLoss")],
    # With class vectors (VECTORS_PER_CLASS).
    "arcface": [ours("arcface"), pml("ArcFaceLoss")],
    "cosface": [ours("cosface"), pml("CosFaceLoss")],
    "sphereface": [ours("sphereface"), pml("SphereFaceLoss")],
    "l-softmax": [ours("large_margin_softmax"), pml("LargeMarginSoftmaxLoss")],
    "subcenter-arcface": [ours("subcenter_arcface"), pml("SubCenterArcFaceLoss")],
    "norm-softmax": [ours("normalized_softmax"), plain("softmax cross-entropy"), pml("NormalizedSoftmaxLoss")],
    "proxy-nca": [ours("proxy_nca"), pml("ProxyNCALoss")],
    "proxy-anchor": [ours("proxy_anchor"), pml("ProxyAnchorLoss")],
    "soft-triple": [ours("soft_triple"), pml("SoftTripleLoss")],
    "p2sgrad": [ours("p2sgrad"), pml("P2SGradLoss")],
    "manifold": [ours("manifold"), pml("ManifoldLoss")],
}


def class_vectors(task, n, k, dim):
    """The task's initial class vectors for N/K classes, `(C, dim)` or `(C, per class, dim)`; None without."""
    if task not in VECTORS_PER_CLASS:
        return None
    import numpy as np

    per_class = VECTORS_PER_CLASS[task]
    shape = (n // k, dim) if per_class == 1 else (n // k, per_class, dim)
    vectors = np.random.default_rng(1).normal(size=shape).astype("float32")
    # Unit norm: P2SGrad's PML renormalises its vectors in place at every
    # call, the other losses use their directions only.
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def tfmetric_loss(name, vectors=None):
    """tfmetric's side of a task: the registry's loss `name`, with the peers' triplet margin and class vectors."""
    # Imported here: the peers' cells run where tfmetric is not installed.
    from tfmetric.losses.registry import LOSSES, PROXY_LOSSES

    options = TFMETRIC_OPTIONS.get(name, {})
    if name in PROXY_LOSSES:
        loss = PROXY_LOSSES[name].build(vectors.shape[0], vectors.shape[-1], **options)
        loss.set_proxies(vectors)
        return loss
    # The peers' triplet margin, so that the values agree; the contrastive
    # and lifted losses keep their margin of 1 (PML's and TF Addons' too).
    return LOSSES[name].build(margin=MARGIN if name in TRIPLET_MARGIN else None, **options)


def tensorflow_loss(implementation, vectors=None):
    """The loss, and the variables (class vectors) whose gradient is timed with the embeddings'."""
    if implementation.startswith("tfmetric "):
        loss = tfmetric_loss(implementation.removeprefix("tfmetric "), vectors)
        return loss, [loss.proxies.value] if vectors is not None else []
    if implementation == "plain TF softmax cross-entropy":
        import tensorflow as tf

        proxies = tf.Variable(vectors)
        # tfmetric's temperature, whatever its default.
        temperature = tfmetric_loss("normalized_softmax", vectors).temperature

        def normalized_softmax(labels, embeddings):
            cosines = tf.matmul(tf.math.l2_normalize(embeddings, 1), tf.math.l2_normalize(proxies, 1), transpose_b=True)
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, cosines / temperature))

        return normalized_softmax, [proxies]
    import tensorflow_addons as tfa

    return {
        "TF Addons TripletSemiHardLoss": lambda: tfa.losses.TripletSemiHardLoss(margin=MARGIN),
        "TF Addons TripletHardLoss": lambda: tfa.losses.TripletHardLoss(margin=MARGIN),
        "TF Addons LiftedStructLoss": lambda: tfa.losses.LiftedStructLoss(margin=1.0),
    }[implementation](), []


def torch_loss(implementation, vectors=None):
    """The loss, `(embeddings, labels) -> value`, and its class vectors (as `tensorflow_loss`)."""
    import warnings

    import torch
    from pytorch_metric_learning import distances, losses, miners, reducers

    euclidean = distances.LpDistance(normalize_embeddings=False)

    def mined(miner, loss):
        return lambda x, y: loss(x, y, miner(x, y))

    def histogram_values_only(loss):
        # PML keeps the running histogram's autograd graph from call to call,
        # so that the second backward fails; tfmetric keeps its values.
        def call(x, y):
            value = loss(x, y)
            loss.hist_ = loss.hist_.detach()
            return value

        return call

    # Without arguments: PML's defaults are tfmetric's (the `value` column shows it).
    in_batch = {
        "BatchHardMiner+TripletMargin": lambda: mined(
            miners.BatchHardMiner(distance=euclidean),
            losses.TripletMarginLoss(margin=MARGIN, distance=euclidean, reducer=reducers.MeanReducer()),
        ),
        "TripletMarginLoss (all)": lambda: losses.TripletMarginLoss(margin=MARGIN, distance=euclidean),
        "TripletMarginLoss (mean)": lambda: losses.TripletMarginLoss(
            margin=MARGIN, distance=euclidean, reducer=reducers.MeanReducer()
        ),
        "ContrastiveLoss": lambda: losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0, distance=euclidean),
        # Both normalise the embeddings, as tfmetric's MarginLoss does.
        "DistanceWeighted+MarginLoss": lambda: mined(
            miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4), losses.MarginLoss(margin=0.2, beta=1.2)
        ),
        "MarginLoss (all)": lambda: losses.MarginLoss(margin=0.2, beta=1.2),
        "LiftedStructureLoss": lambda: losses.LiftedStructureLoss(neg_margin=1.0, pos_margin=0.0, distance=euclidean),
        "MultiSimilarityLoss": losses.MultiSimilarityLoss,
        "MultiSimilarityMiner+Loss": lambda: mined(
            miners.MultiSimilarityMiner(epsilon=0.1), losses.MultiSimilarityLoss()
        ),
        "CircleLoss": losses.CircleLoss,
        # tfmetric's n-pairs takes raw dot products, as the paper.
        "NPairsLoss": lambda: losses.NPairsLoss(distance=distances.DotProductSimilarity(normalize_embeddings=False)),
        "NCALoss": losses.NCALoss,
        "SupConLoss": losses.SupConLoss,
        "NTXentLoss": losses.NTXentLoss,
        "InstanceLoss": losses.InstanceLoss,
        "FastAPLoss": losses.FastAPLoss,
        "SmoothAPLoss": losses.SmoothAPLoss,
        "PNPLoss": losses.PNPLoss,
        "PNPLoss (Dq)": lambda: losses.PNPLoss(variant="Dq"),
        "RankedListLoss": lambda: losses.RankedListLoss(margin=0.4, Tn=10.0),
        "HistogramLoss": losses.HistogramLoss,
        "DynamicSoftMarginLoss": lambda: histogram_values_only(losses.DynamicSoftMarginLoss()),
        "AngularLoss": losses.AngularLoss,
        "TupletMarginLoss": losses.TupletMarginLoss,
        "IntraPairVarianceLoss": losses.IntraPairVarianceLoss,
        "ThresholdConsistentMarginLoss": losses.ThresholdConsistentMarginLoss,
        "GeneralizedLiftedStructureLoss": losses.GeneralizedLiftedStructureLoss,
        "SignalToNoiseRatioContrastiveLoss": losses.SignalToNoiseRatioContrastiveLoss,
    }
    # {num_classes, embedding_size} -> loss: tfmetric's registry
    # configurations, in PML's units (degrees, softmax scales).
    with_class_vectors = {
        "ArcFaceLoss": lambda classes: losses.ArcFaceLoss(**classes, margin=math.degrees(0.5), scale=64.0),
        "CosFaceLoss": lambda classes: losses.CosFaceLoss(**classes, margin=0.35, scale=64.0),
        "SphereFaceLoss": lambda classes: losses.SphereFaceLoss(**classes, margin=4, scale=1.0),
        "LargeMarginSoftmaxLoss": lambda classes: losses.LargeMarginSoftmaxLoss(**classes, margin=4, scale=1.0),
        "SubCenterArcFaceLoss": lambda classes: losses.SubCenterArcFaceLoss(
            **classes, margin=math.degrees(0.5), scale=64.0, sub_centers=VECTORS_PER_CLASS["subcenter-arcface"]
        ),
        "NormalizedSoftmaxLoss": lambda classes: losses.NormalizedSoftmaxLoss(**classes, temperature=0.05),
        "ProxyNCALoss": lambda classes: losses.ProxyNCALoss(**classes, softmax_scale=9.0),
        "ProxyAnchorLoss": lambda classes: losses.ProxyAnchorLoss(**classes, margin=0.1, alpha=32.0),
        "SoftTripleLoss": lambda classes: losses.SoftTripleLoss(
            **classes, centers_per_class=VECTORS_PER_CLASS["soft-triple"], la=20.0, gamma=0.1, margin=0.01
        ),
        "P2SGradLoss": lambda classes: losses.P2SGradLoss(classes["embedding_size"], classes["num_classes"]),
        "ManifoldLoss": lambda classes: losses.ManifoldLoss(
            l=classes["embedding_size"], K=classes["num_classes"], lambdaC=1.0, alpha=0.8, margin=0.01
        ),
    }
    name = implementation.removeprefix("PML ")
    if name in in_batch:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RankedListLoss warns for Tn > 5
            return in_batch[name](), []
    loss = with_class_vectors[name]({"num_classes": vectors.shape[0], "embedding_size": vectors.shape[-1]})
    ((attribute, parameter),) = loss.named_parameters()
    # PML keeps the proxies as rows, the other losses' vectors as columns
    # (k consecutive columns per class where there are k).
    rows = vectors.reshape(-1, vectors.shape[-1])
    with torch.no_grad():
        parameter.copy_(torch.from_numpy(rows if attribute == "proxies" else rows.T))
    if name == "ManifoldLoss":
        # PML's ManifoldLoss takes each example's proxy, here its class.
        return (lambda x, y: loss(x, indices_tuple=y)), [parameter]
    return loss, [parameter]


def measure(task, implementation, environment, n, k, dim, jit, min_seconds):
    """Runs in a child process, under the environment's Python."""
    x, y = pk_batch(n, k, dim)
    vectors = class_vectors(task, n, k, dim)
    if environment == "pml":
        import torch

        torch.manual_seed(0)
        loss, variables = torch_loss(implementation, vectors)
        embeddings = torch.tensor(x, requires_grad=True)
        labels = torch.tensor(y)

        def gradient_step():
            for gradient in torch.autograd.grad(loss(embeddings, labels), [embeddings, *variables]):
                gradient.numpy()

        def value():
            with torch.no_grad():
                return float(loss(embeddings, labels))

    else:
        import tensorflow as tf

        loss, variables = tensorflow_loss(implementation, vectors)
        embeddings, labels = tf.constant(x), tf.constant(y)
        gradient_step = tensorflow_step(loss, embeddings, labels, jit, variables)

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


def add_max_memory_argument(parser, note=""):
    """`--max-memory-gb`, the most the peers' (N, N, N) tensors may take; 60% of RAM by default."""
    total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        default=round(0.6 * total_gb, 1),
        help=f"skip the cells whose (N, N, N) tensors would need more (default: 60%% of RAM{note})",
    )


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
    add_max_memory_argument(parser)
    parser.add_argument("--cell-timeout", type=float, default=900, help="seconds before a cell is given up")
    parser.add_argument(
        "--setup", action="store_true", help="create the peers' environments, print their Pythons and stop"
    )
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    # The tests' smoke runs: tfmetric's cells in this process instead of one process each.
    parser.add_argument("--in-process", action="store_true", help="tfmetric's cells in this process (memory adds up)")
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
    task_width = max(12, *(len(task) + 1 for task in args.tasks))
    implementation_width = max(len(implementation) + 1 for task in args.tasks for implementation, _, _ in TASKS[task])
    header = (
        f"{'task':<{task_width}}{'N':>5}  {'implementation':<{implementation_width}}"
        f"{'ms':>10}{'ms XLA':>10}{'+MB':>7}{'+MB XLA':>8}{'×':>8}{'× XLA':>8}{'value':>10}"
    )
    print(header)
    print("-" * len(header))
    for task in args.tasks:
        for n in args.sizes:
            ours = None
            for implementation, environment, cube_gb in TASKS[task]:
                if environment not in pythons:
                    continue
                label = f"{task:<{task_width}}{n:>5}  {implementation:<{implementation_width}}"
                if cube_gb(n) > args.max_memory_gb:
                    print(f"{label}skipped: its (N, N, N) tensors need ~{cube_gb(n):.0f} GB", flush=True)
                    continue
                cells = {}
                for jit in (False, True):
                    if jit and environment == "pml":
                        cells[jit] = cells[False]
                        continue
                    cell = [task, implementation, environment, n, args.k, args.dim, jit, args.min_seconds]
                    if args.in_process and environment == "tfmetric":
                        cells[jit] = measure(*cell)
                    else:
                        cells[jit] = run_cell(pythons[environment], os.path.abspath(__file__), cell, args.cell_timeout)
                errors = [r["error"] for r in cells.values() if "error" in r]
                if errors:
                    print(f"{label}error: {errors[0]}", flush=True)
                    continue
                if implementation.startswith("tfmetric "):
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
