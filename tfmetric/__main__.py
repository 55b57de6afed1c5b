"""Command line: `tfmetric demo`, `tfmetric compare` (also `python -m tfmetric ...`)."""

import argparse
import os


def main(argv=None):
    # Before TensorFlow is imported (by the commands' modules), or it logs its set-up.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfmetric import compare as compare_module, demo as demo_module
    from tfmetric.datasets import DATASETS, PROTOCOLS

    parser = argparse.ArgumentParser(prog="tfmetric", description="Deep metric learning for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train an embedding with a metric-learning loss and show it in TensorBoard")
    demo.add_argument("--loss", choices=demo_module.LOSS_KEYS, default="batch_hard")
    demo.add_argument(
        "--dataset",
        choices=DATASETS,
        default="digits",
        help="digits is bundled; fashion_mnist is read from Debian's dataset-fashion-mnist where installed; "
        "else mnist/fashion_mnist download",
    )
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--margin", type=float, default=0.5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--log-dir", help="TensorBoard directory (default tfmetric-logs/demo-<dataset>-<loss>)")
    demo.add_argument(
        "--data-dir", help="a directory with the IDX files of mnist/fashion_mnist (see tfm.datasets.load)"
    )
    compare = commands.add_parser("compare", help="every loss on one encoder, several seeds, open or closed protocol")
    compare.add_argument("--dataset", choices=DATASETS, default="digits")
    compare.add_argument("--data-dir", help="a directory with the IDX files of mnist/fashion_mnist")
    compare.add_argument(
        "--protocol", choices=PROTOCOLS, default="open", help="open: retrieve among classes unseen in training"
    )
    compare.add_argument(
        "--seen-classes", type=int, nargs="+", help="open protocol: the classes trained on (default: the lower half)"
    )
    compare.add_argument("--seeds", type=int, default=3, help="every number is a mean ± std over this many seeds")
    compare.add_argument("--dims", type=int, default=2, help="embedding size; 2 draws a figure per method")
    compare.add_argument("--encoder", choices=compare_module.ENCODERS, default="mlp")
    compare.add_argument("--augment", action="store_true", help="random shifts and flips (cnn)")
    compare.add_argument("--epochs", type=int, default=20)
    compare.add_argument("--train-size", type=int, help="train on a random subset of this size (per seed)")
    compare.add_argument("--eval-size", type=int, help="retrieve among a fixed random subset of this size")
    compare.add_argument("--out-dir", help="where the figures go (default tfmetric-logs/compare-<dataset>)")
    compare.add_argument("--methods", nargs="+", choices=compare_module.METHODS, default=compare_module.METHODS)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            demo_module.run(
                args.loss, args.epochs, args.margin, args.seed, args.dataset, args.log_dir, data_dir=args.data_dir
            )
        else:
            compare_module.run(
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


if __name__ == "__main__":
    main()
