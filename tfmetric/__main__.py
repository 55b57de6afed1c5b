"""Command line: `tfmetric demo` (also `python -m tfmetric demo`)."""

import argparse
import os


def main(argv=None):
    # Before TensorFlow is imported (by the demo module), or it logs its set-up.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfmetric import demo as demo_module

    parser = argparse.ArgumentParser(prog="tfmetric", description="Deep metric learning for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train an embedding of the bundled digits (no download)")
    demo.add_argument("--loss", choices=list(demo_module.LOSSES), default="batch_hard")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--margin", type=float, default=0.5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--log-dir", help="write TensorBoard projector, PCA film and retrieval metrics here")
    args = parser.parse_args(argv)
    demo_module.run(loss=args.loss, epochs=args.epochs, margin=args.margin, seed=args.seed, log_dir=args.log_dir)


if __name__ == "__main__":
    main()
