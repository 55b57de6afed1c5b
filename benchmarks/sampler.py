"""Throughput of the P×K samplers against a plain shuffled pipeline.

    python benchmarks/sampler.py

In memory: 100 000 × 32 float32 examples of 1 000 classes, batches of 128
(P = 32 × K = 4): `tfm.data.pk_sampler` against
`Dataset.from_tensor_slices(...).shuffle(100 000).batch(128)`. Streaming: the
same examples from TFRecord files written to a temporary folder,
`tfm.data.pk_batches` against `.shuffle(10 000).batch(128)` on the same
parsed stream. Each pipeline runs one epoch to warm up, then is timed over
whole epochs; the ratio is to the plain pipeline of the same kind, measured
in the same run. `per epoch` is how many examples an epoch yields (P×K
batches leave out each class's remainder of fewer than K).
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

import tfmetric as tfm


def examples_per_second(dataset, min_seconds):
    """`(examples/s, examples per epoch)` over whole epochs after a warm-up one."""
    per_epoch = sum(int(y.shape[0]) for _, y in dataset)
    seen, start = 0, time.perf_counter()
    while True:
        for _, y in dataset:
            seen += int(y.shape[0])
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return seen / elapsed, per_epoch


def write_shards(folder, x, y, num_shards):
    paths = []
    for shard in range(num_shards):
        path = os.path.join(folder, f"shard-{shard}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(shard, len(y), num_shards):
                example = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "x": tf.train.Feature(float_list=tf.train.FloatList(value=x[i])),
                            "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[y[i]])),
                        }
                    )
                )
                writer.write(example.SerializeToString())
        paths.append(path)
    return paths


def parsed_stream(paths, dim):
    spec = {"x": tf.io.FixedLenFeature([dim], tf.float32), "y": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        return example["x"], example["y"]

    files = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths))
    records = files.interleave(tf.data.TFRecordDataset, num_parallel_calls=tf.data.AUTOTUNE)
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--p", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.examples, args.dim)).astype("float32")
    y = rng.integers(0, args.classes, size=args.examples).astype("int64")
    batch = args.p * args.k

    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, {args.examples} × {args.dim} float32, "
        f"{args.classes} classes, batch {batch} (P={args.p} × K={args.k})"
    )
    header = f"{'pipeline':<44}{'examples/s':>12}{'ratio':>8}{'per epoch':>11}"
    print(header)
    print("-" * len(header))

    def report(name, measured, reference):
        rate, per_epoch = measured
        print(f"{name:<44}{rate:>12,.0f}{rate / reference[0]:>8.2f}{per_epoch:>11,}", flush=True)

    plain = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(args.examples).batch(batch).prefetch(tf.data.AUTOTUNE)
    reference = examples_per_second(plain, args.min_seconds)
    report("in memory: from_tensor_slices.shuffle.batch", reference, reference)
    sampler = tfm.data.pk_sampler(x, y, args.p, args.k, seed=0)
    report("in memory: tfm.data.pk_sampler", examples_per_second(sampler, args.min_seconds), reference)

    with tempfile.TemporaryDirectory() as folder:
        paths = write_shards(folder, x, y, num_shards=8)
        stream = parsed_stream(paths, args.dim)
        plain = stream.shuffle(10_000).batch(batch).prefetch(tf.data.AUTOTUNE)
        reference = examples_per_second(plain, args.min_seconds)
        report("TFRecords: shuffle(10 000).batch", reference, reference)
        streamed = tfm.data.pk_batches(stream.shuffle(10_000), args.p, args.k)
        report("TFRecords: tfm.data.pk_batches", examples_per_second(streamed, args.min_seconds), reference)


if __name__ == "__main__":
    main()
