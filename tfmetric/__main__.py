"""Command line: `tfmetric demo`, `tfmetric compare` (also `python -m tfmetric ...`)."""

import argparse
import os


def main(argv=None):
    # Before TensorFlow is imported (by the commands' modules), or it logs its set-up.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfmetric import compare as compare_module, demo as demo_module
    from tfmetric.datasets import DATASETS

    parser = argparse.ArgumentParser(prog="tfmetric", description="Deep metric learning for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train an embedding with a metric-learning loss and show it in TensorBoard")
    demo.add_argument("--loss", choices=demo_module.LOSS_KEYS, default="batch_hard")
    demo.add_argument("--dataset", choices=DATASETS, default="digits", help="digits is bundled; the others download")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--margin", type=float, default=0.5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--log-dir", help="TensorBoard directory (default tfmetric-logs/demo-<dataset>-<loss>)")
    compare = commands.add_parser("compare", help="softmax vs siamese vs triplet vs online mining, 2-D embeddings")
    compare.add_argument("--dataset", choices=DATASETS, default="digits")
    compare.add_argument("--epochs", type=int, default=20)
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--out-dir", help="where the figures go (default tfmetric-logs/compare-<dataset>)")
    compare.add_argument("--methods", nargs="+", choices=compare_module.METHODS, default=compare_module.METHODS)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            demo_module.run(args.loss, args.epochs, args.margin, args.seed, args.dataset, args.log_dir)
        else:
            compare_module.run(args.dataset, args.epochs, args.seed, args.out_dir, args.methods)
    except RuntimeError as error:
        # A dataset that cannot be downloaded: say so without a traceback.
        raise SystemExit(f"tfmetric {args.command}: {error}") from None


if __name__ == "__main__":
    main()
