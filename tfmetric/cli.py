"""The command line: `tfmetric demo`, `tfmetric compare`, `tfmetric --version` (also `python -m tfmetric`).

The arguments are parsed before anything imports TensorFlow, which takes
seconds to start and prints its C++ set-up log: `--help` and a mistyped
argument answer at once, and the commands import what they need, quietly
unless `-v` is given.
"""

import argparse
import contextlib
import difflib
import os
import re
import sys
import threading
import warnings

from tfmetric import choices

# TensorFlow's and XLA's C++ log (absl's format: severity, date, time,
# thread, file:line]): its notices and warnings, the error of a machine
# without a GPU, oneDNN's notice that a CPU without some AVX-512 gets Eigen's
# int32 kernels; absl's notice that it is not initialised yet, and the second
# line of the CPU-feature notice. TF_CPP_MIN_LOG_LEVEL does not silence the
# CUDA stub's line nor these errors (tensorflow/tensorflow#100442).
_CHATTER = re.compile(
    r"^(?:[IW]\d{4} [\d:. ]+ *\d+ [\w.]+:\d+\]"
    r"|E\d{4} [\d:. ]+ *\d+ cuda_\w+\.cc:\d+\] failed call to cuInit: .*UNKNOWN ERROR \(303\)"
    r"|E\d{4} [\d:. ]+ *\d+ util\.cc:\d+\] oneDNN supports DT_\w+ only on platforms with AVX-512\."
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)"
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows the defaults that say something, and keeps the line breaks of the lists of choices."""

    def _get_help_string(self, action):
        shown = isinstance(action.default, (str, int, float)) and not isinstance(action.default, bool)
        shown = shown and action.default != argparse.SUPPRESS and action.help and "%(default)" not in action.help
        return f"{action.help} (default: %(default)s)" if shown else action.help


def _one_of(names, what):
    """An argparse `type` taking one of `names`, answering a typo with the closest names."""

    def check(value):
        if value in names:
            return value
        close = difflib.get_close_matches(value, names, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r}{hint}; the {what} are: {', '.join(names)}")

    return check


def _add_choice(parser, flag, names, what, default, help):
    """An option taking one of `names`, shown as `{a,b,c}`, answering a typo with the closest."""
    parser.add_argument(
        flag, type=_one_of(names, what), default=default, metavar="{" + ",".join(names) + "}", help=help
    )


def _loss_list():
    width = max(len(key) for key in choices.LOSS_KEYS) + 2
    lines = ["losses mined from the labels of P×K batches:"]
    lines += [f"  {choice.key:<{width}}{choice.summary}" for choice in choices.LOSSES]
    lines += ["losses with class vectors (built for the number of classes):"]
    lines += [f"  {choice.key:<{width}}{choice.summary}" for choice in choices.PROXY_LOSSES]
    return "\n".join(lines)


def build_parser():
    """The parser of `tfmetric`; it imports nothing of Keras or TensorFlow."""
    parser = argparse.ArgumentParser(
        prog="tfmetric", description="Deep metric learning for Keras 3.", formatter_class=_Formatter
    )
    parser.add_argument("--version", action="store_true", help="print the versions a bug report needs, and exit")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show TensorFlow's start-up log and warnings (hidden by default)"
    )
    commands = parser.add_subparsers(dest="command", metavar="{demo,compare}")
    demo = commands.add_parser(
        "demo",
        help="train an embedding with a metric-learning loss and show it in TensorBoard",
        description="Trains a small embedding on P×K batches, prints the held-out 1-NN accuracy and\n"
        "recall@1 before and after, writes TensorBoard logs, and looks up examples in a calibrated index.",
        epilog=_loss_list(),
        formatter_class=_Formatter,
    )
    demo.add_argument(
        "--loss",
        type=_one_of(choices.LOSS_KEYS, "losses"),
        default=choices.DEFAULT_LOSS,
        metavar="LOSS",
        help="one of the losses listed below",
    )
    _add_choice(
        demo,
        "--dataset",
        choices.DATASETS,
        "datasets",
        "digits",
        "digits is bundled; fashion_mnist is read from Debian's dataset-fashion-mnist where installed; "
        "else mnist/fashion_mnist download",
    )
    demo.add_argument("--epochs", type=int, default=15, help="passes over the training data")
    demo.add_argument("--margin", type=float, default=0.5, help="of the triplet and contrastive losses")
    demo.add_argument("--seed", type=int, default=0, help="of the split, the initial weights and the batches")
    demo.add_argument("--log-dir", help="TensorBoard directory (default tfmetric-logs/demo-<dataset>-<loss>)")
    demo.add_argument(
        "--data-dir", help="a directory with the IDX files of mnist/fashion_mnist (see tfm.datasets.load)"
    )
    demo.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    compare = commands.add_parser(
        "compare",
        help="every loss on one encoder, several seeds, open or closed protocol",
        description="Trains one small encoder per method and seed; reports P@1, R@4 and MAP@R as mean ± std.",
        epilog="methods:\n" + "\n".join(f"  {method}" for method in choices.METHODS),
        formatter_class=_Formatter,
    )
    _add_choice(compare, "--dataset", choices.DATASETS, "datasets", "digits", "as for tfmetric demo")
    compare.add_argument("--data-dir", help="a directory with the IDX files of mnist/fashion_mnist")
    _add_choice(
        compare,
        "--protocol",
        choices.PROTOCOLS,
        "protocols",
        "open",
        "open: retrieve among classes unseen in training; closed: among held-out examples of the same classes",
    )
    compare.add_argument(
        "--seen-classes", type=int, nargs="+", help="open protocol: the classes trained on (default: the lower half)"
    )
    compare.add_argument("--seeds", type=int, default=3, help="every number is a mean ± std over this many seeds")
    compare.add_argument("--dims", type=int, default=2, help="embedding size; 2 draws a figure per method")
    _add_choice(
        compare,
        "--encoder",
        choices.ENCODERS,
        "encoders",
        "mlp",
        "mlp: one hidden layer of 128; cnn: three convolutions (for 28×28 images)",
    )
    compare.add_argument("--augment", action="store_true", help="random shifts and flips (cnn)")
    compare.add_argument("--epochs", type=int, default=20, help="passes over the training data")
    compare.add_argument("--train-size", type=int, help="train on a random subset of this size (per seed)")
    compare.add_argument("--eval-size", type=int, help="retrieve among a fixed random subset of this size")
    compare.add_argument("--out-dir", help="where the figures go (default tfmetric-logs/compare-<dataset>)")
    compare.add_argument(
        "--methods",
        nargs="+",
        type=_one_of(choices.METHODS, "methods"),
        default=list(choices.METHODS),
        metavar="METHOD",
        help="methods listed below, by title (quote titles with spaces; default: all of them)",
    )
    compare.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


@contextlib.contextmanager
def _tensorflow_log_filtered():
    """Drops TensorFlow's C++ chatter written to file descriptor 2; passes the rest on as it comes.

    C++ writes straight to the descriptor, below Python's `sys.stderr`, and
    not only while TensorFlow starts (oneDNN's notices come at the first
    operations): for the whole command the descriptor is a pipe whose lines a
    thread relays to the real one, the chatter left out.
    """
    sys.stderr.flush()
    original = os.dup(2)
    relayed_to = os.dup(original)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def relay():
        with open(read_end, "rb") as lines, open(relayed_to, "wb", buffering=0) as out:
            for line in lines:
                if not _CHATTER.match(line.decode(errors="replace")):
                    out.write(line)

    thread = threading.Thread(target=relay, name="tfmetric-log-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        # The pipe's last writer closes: the relay reads to its end and stops.
        os.dup2(original, 2)
        os.close(original)
        thread.join(timeout=5)


@contextlib.contextmanager
def _quiet(verbose):
    """Imports TensorFlow and Keras, and runs the command, without TensorFlow's C++ chatter, unless `verbose`.

    A `TF_CPP_MIN_LOG_LEVEL` the user set is kept; 0 (everything) keeps the chatter too.
    """
    # Read by TensorFlow's C++ when it loads: it must be set before the import.
    if verbose or os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2") == "0":
        yield
        return
    with _tensorflow_log_filtered():
        with warnings.catch_warnings():
            # Deprecation notices of TensorFlow's and its dependencies' own imports: nothing the user did.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            import keras  # noqa: F401
            import tensorflow as tf

            # Looking for GPUs is when TensorFlow logs that it found none.
            tf.config.list_physical_devices("GPU")
        yield


def versions():
    """`(name, version)` of tfmetric, Keras, Keras' backend and TensorFlow: what a bug report needs."""
    from importlib import metadata

    try:
        own = metadata.version("tfmetric")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        from tfmetric import __version__ as own
    import keras
    import tensorflow as tf

    backend = keras.backend.backend()
    rows = [("tfmetric", own), ("keras", keras.__version__), ("backend", backend), ("tensorflow", tf.__version__)]
    if backend not in ("tensorflow", "numpy"):
        rows.append((backend, metadata.version("torch" if backend == "torch" else backend)))
    rows.append(("python", sys.version.split()[0]))
    return rows


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.version and args.command is None:
        parser.print_help()
        return 0
    with _quiet(args.verbose):
        if args.version:
            for name, version in versions():
                print(f"{name} {version}")
        else:
            _run(args)
    return 0


def _run(args):
    try:
        if args.command == "demo":
            from tfmetric import demo

            demo.run(args.loss, args.epochs, args.margin, args.seed, args.dataset, args.log_dir, data_dir=args.data_dir)
        else:
            from tfmetric import compare

            compare.run(
                dataset=args.dataset,
                protocol=args.protocol,
                seeds=args.seeds,
                dimensions=args.dims,
                encoder=args.encoder,
                epochs=args.epochs,
                train_size=args.train_size,
                eval_size=args.eval_size,
                augment=args.augment,
                seen_classes=args.seen_classes,
                methods=args.methods,
                out_dir=args.out_dir,
                data_dir=args.data_dir,
            )
    except (RuntimeError, FileNotFoundError) as error:
        # A dataset that cannot be found or downloaded: say so without a traceback.
        raise SystemExit(f"tfmetric {args.command}: {error}") from None
