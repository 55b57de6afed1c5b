"""The benchmark scripts still run (on tiny sizes; their figures are not checked)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import only_tensorflow

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
pytestmark = [only_tensorflow, pytest.mark.slow]


def run(script, *arguments, backend=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **({"KERAS_BACKEND": backend} if backend else {})}
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *arguments], capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def table_rows(output, first_column):
    return [line.split() for line in output.splitlines() if line.startswith(first_column)]


def test_losses_benchmark():
    output = run("losses.py", "--sizes", "16", "--min-seconds", "0", "--in-process", "--losses", "lifted_structure")
    assert "error" not in output
    assert len(table_rows(output, "lifted_structure")) == 2  # without and with XLA


@pytest.mark.parametrize(
    "flag, loss, other, label",
    [
        # As TensorFlow's kernels; the lifted loss does not compile itself.
        ("--kernels", "batch_hard", "lifted_structure", "[kernels]"),
        # Compiled whole instead of its terms alone; NCA compiles itself whole at every size.
        ("--whole", "contrastive_all", "nca", "[whole]"),
    ],
)
def test_losses_benchmark_times_a_loss_another_way_too(flag, loss, other, label):
    output = run("losses.py", "--sizes", "16", "--min-seconds", "0", "--in-process", flag, "--losses", loss, other)
    assert "error" not in output
    # Without XLA, the other way without it, then with XLA.
    rows = table_rows(output, loss)
    assert [row[1] for row in rows] == ["16", label, "16"], output
    assert [row[2 + (row[1] == label)] for row in rows] == ["False", "False", "True"], output
    assert len(table_rows(output, other)) == 2


def test_memory_benchmark():
    output = run(
        "losses.py", "--sizes", "16", "--min-seconds", "0", "--in-process", "--memory", "32", "--losses", "batch_hard"
    )
    assert "error" not in output
    assert len(table_rows(output, "xbm")) == 2  # without and with XLA


def test_peers_benchmark_without_peers():
    # The peers' own environments (TF 2.15 + TF Addons, PyTorch) are GBs to
    # install: here only tfmetric's cells run.
    output = run("peers.py", "--peers", "--sizes", "16", "--min-seconds", "0", "--in-process", "--tasks", "lifted")
    assert "error" not in output
    assert len(table_rows(output, "lifted")) == 1


def test_training_step_benchmark():
    output = run(
        "training_step.py", "--batch", "16", "--image", "8", "--min-seconds", "0", "--losses", "batch_hard"
    )
    rows = table_rows(output, "batch_hard")
    assert len(rows) == 2 and all(row[-1].endswith("%") for row in rows)


def test_search_benchmark():
    output = run("search.py", "--sizes", "300", "--classes", "10")
    rows = table_rows(output, "tfm.search")
    assert len(rows) == 1 and rows[0][2] == "300"


def test_distances_benchmark():
    output = run("distances.py", "--sizes", "16", "--dim", "4", "--min-seconds", "0")
    assert len(table_rows(output, "euclidean")) == 2  # without and with XLA
    assert len(table_rows(output, "x @ xᵀ")) == 2


def test_distances_benchmark_times_the_forward_pass_too():
    # The gradient of x @ xᵀ alone does not need the product: a step that
    # returned only the gradient timed the bare product's backward pass.
    spec = importlib.util.spec_from_file_location("distances_benchmark", BENCHMARKS / "distances.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    rng = np.random.default_rng(3)
    x, weights = rng.normal(size=(6, 3)).astype("float32"), rng.uniform(size=(6, 6)).astype("float32")
    squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cosine = np.maximum(1.0 - unit @ unit.T, 0.0)
    np.fill_diagonal(cosine, 0.0)
    expected = {"x @ xᵀ": x @ x.T, "euclidean": np.sqrt(squared), "squared_euclidean": squared, "cosine": cosine}
    for jit in (False, True):
        made = benchmark.steps(jit)
        assert set(made) == set(expected)
        for name, step in made.items():
            value, gradient = step(x, weights)
            np.testing.assert_allclose(value, (expected[name] * weights).sum(), rtol=1e-5, err_msg=name)
            assert gradient.shape == x.shape
        np.testing.assert_allclose(made["x @ xᵀ"](x, weights)[1], (weights + weights.T) @ x, rtol=1e-5)


def test_kernels_benchmark():
    output = run("kernels.py", "semi_hard", "--size", "16", "--runs", "1", "--top", "3")
    assert "semi_hard: kernels' total" in output
    # The three largest kernels: name [type], ms, × the distance matrix.
    kernels = [line for line in output.split("semi_hard:")[1].splitlines() if line.endswith(tuple("0123456789"))]
    assert len(kernels) == 3 and all("[" in line for line in kernels), output


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backends_benchmark(backend):
    # tfmetric on JAX or PyTorch, on whatever device they see (the GPU tables
    # of docs/benchmarks.md); PML is not installed here.
    pytest.importorskip(backend)
    tasks = ("semi-hard", "dyn-soft-margin", "arcface")
    output = run("backends.py", "--sizes", "16", "--min-seconds", "0", "--tasks", *tasks, backend=backend)
    rows = [table_rows(output, task) for task in tasks]
    assert all(len(row) == 1 and len(row[0]) == 4 for row in rows), output


def test_slot_loops_benchmark():
    output = run("slot_loops.py", "--size", "16", "--k", "4", "--min-seconds", "0", "--xla")
    rows = [line.split() for line in output.splitlines() if line.split()[:1] == ["4"]]
    # Without and with XLA: the distance matrix, five plain loops, the three losses beside them.
    assert [row[1] for row in rows] == ["False"] * 9 + ["True"] * 9, output
    assert sum(row[2:4] == ["plain", "loop"] for row in rows) == 10
    assert sum(row[2] == "loss" for row in rows) == 6


def test_plain_batch_all_loop_is_the_loss():
    """The plain loop times the same math as the loss it stands beside (on a batch where it is well defined)."""
    import numpy as np

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import slot_loops
        from timing import pk_batch
    finally:
        sys.path.remove(str(BENCHMARKS))
    from tfmetric.losses.registry import LOSSES

    x, y = pk_batch(32, 4, 8, seed=1)
    x = x / 3  # most triplets active, not all
    plain = slot_loops.loop_objectives(y)["batch_all_nonzero"](y, x)
    expected = LOSSES["batch_all_nonzero"].build()(y, x)
    np.testing.assert_allclose(float(plain), float(expected), rtol=1e-5)
