"""Timing and memory of one benchmark cell, each in its own process.

Standard library only: the peer benchmark runs cells with the Python of
other virtual environments (TensorFlow 2.15 with TF Addons, PyTorch), which
import this module by path without tfmetric installed.
"""

import json
import os
import resource
import statistics
import subprocess
import time


def pk_batch(n, k, dim, seed=0):
    """The benchmarks' batch: N/K classes of K examples, `(x (N, dim) float32, y (N,) int64)`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    y = np.repeat(np.arange(n // k), k).astype("int64")
    return x, y


def rss_mb():
    """The process's resident memory now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_calls(call, min_seconds, baseline_mb, max_calls=50):
    """Median milliseconds of `call()` after one warm-up call, and peak memory.

    `call` must block until its result is computed. It runs at least 3
    times, and until `min_seconds` have passed (at most `max_calls` times).
    `extra_mb` is the peak resident memory above `baseline_mb`, the
    resident memory taken before the warm-up (runtime, data and model).
    """
    call()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_seconds and len(times) < max_calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms": 1e3 * statistics.median(times), "peak_mb": peak, "extra_mb": peak - baseline_mb}


def time_alternating(baseline, call, min_seconds, baseline_mb, max_calls=50):
    """`time_calls` of `call`, with `baseline()` timed between its calls: `ms`, `baseline_ms` and their `ratio`.

    On a busy machine the speed drifts from second to second; calls that
    alternate see the same drift, so the ratio of their medians holds where
    times measured one after the other would not.
    """
    baseline_ms, ms = alternate([baseline, call], min_seconds, max_calls=max_calls)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms": ms, "baseline_ms": baseline_ms, "ratio": ms / baseline_ms, "peak_mb": peak,
            "extra_mb": peak - baseline_mb}


def alternate(calls, min_seconds, slow_seconds=float("inf"), max_calls=50):
    """Median milliseconds of each blocking call, the calls alternating after one warm-up each.

    They run at least 3 times, and until `min_seconds` have passed (at most
    `max_calls` times). A call whose warm-up took over `slow_seconds` (a
    peer's cubic loss at large N) is timed once more, alone, so that a run
    ends on time.
    """
    slow = []
    for call in calls:
        t0 = time.perf_counter()
        call()
        slow.append(time.perf_counter() - t0 > slow_seconds)
    times = [[] for _ in calls]
    for call, recorded, is_slow in zip(calls, times, slow):
        if is_slow:
            t0 = time.perf_counter()
            call()
            recorded.append(time.perf_counter() - t0)
    fast = [(call, recorded) for call, recorded, is_slow in zip(calls, times, slow) if not is_slow]
    start = time.perf_counter()
    while fast and (len(fast[0][1]) < 3 or (time.perf_counter() - start < min_seconds and len(fast[0][1]) < max_calls)):
        for call, recorded in fast:
            t0 = time.perf_counter()
            call()
            recorded.append(time.perf_counter() - t0)
    return [1e3 * statistics.median(recorded) for recorded in times]


def run_cell(python, script, cell, timeout=None):
    """Runs `python script --cell JSON` and returns the JSON dict it prints last.

    On failure the dict is `{"error": last line of stderr}` (a process killed
    for memory has no stderr: the signal is named instead).
    """
    command = [python, script, "--cell", json.dumps(cell)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"took over {timeout:.0f} s"}
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        if out.returncode < 0:
            return {"error": f"killed by signal {-out.returncode} (out of memory?)"}
        return {"error": lines[-1] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def tensorflow_step(objective, x, y, jit, variables=()):
    """A blocking call computing `objective(y, x)` and its gradient w.r.t. `x` (and `variables`).

    Imports TensorFlow only when called, so that this module stays
    importable where TensorFlow is not installed.
    """
    import tensorflow as tf

    @tf.function(jit_compile=jit)
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = objective(y, x)
        return value, tape.gradient(value, [x, *variables])

    return lambda: [gradient.numpy() for gradient in step(x, y)[1]]
