"""Class vectors or pair mining? The study behind docs/proxies.md.

`tfmetric compare` on scikit-learn's bundled digits, 32-D (L2-normalised,
compared by cosine), with losses of both kinds, several seeds, in both
protocols, printed side by side:

- closed: train on every class, retrieve among held-out examples of the same
  classes;
- open: train on the digits 0–4 only, retrieve among the unseen digits 5–9
  (the protocol of metric learning's benchmarks: CUB, Cars, SOP).

    python docs/proxies_study.py                  # the table in docs/proxies.md (~10 minutes on 2 cores)
    python docs/proxies_study.py --seeds 1 --epochs 2 --losses arcface batch_hard   # a smoke run
"""

import argparse
import contextlib
import io
import time

from tfmetric import compare
from tfmetric.losses.registry import LOSSES, PROXY_LOSSES

DEFAULT_LOSSES = (
    "semi_hard", "multi_similarity", "contrastive_hard",
    "arcface", "cosface", "normalized_softmax", "proxy_nca", "proxy_anchor", "soft_triple",
)  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--losses", nargs="+", choices=[*LOSSES, *PROXY_LOSSES], default=DEFAULT_LOSSES)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    methods = ["raw pixels", *((PROXY_LOSSES.get(key) or LOSSES[key]).title for key in args.losses)]
    tables = {}
    for protocol in ("closed", "open"):
        # compare prints its own table per protocol; this one puts them side by side.
        with contextlib.redirect_stdout(io.StringIO()):
            rows = compare.run("digits", protocol, args.seeds, 32, epochs=args.epochs, methods=methods)
        tables[protocol] = {row["method"]: row for row in rows}
    print(f"digits, 32-D, {args.epochs} epochs, mean ± std over {args.seeds} seeds; retrieval by cosine")
    header = f"{'loss':<28}{'kind':<14}{'closed P@1':>14}{'MAP@R':>14}{'open P@1':>14}{'MAP@R':>14}"
    print(header)
    print("-" * len(header))
    for method in methods:
        kind = "baseline" if method == "raw pixels" else "class vectors" if method in compare.PROXIES else "pairs"
        cells = [tables[protocol][method][name] for protocol in ("closed", "open") for name in ("precision@1", "map@r")]
        print(f"{method:<28}{kind:<14}" + "".join(f"{mean:>8.3f} ±{std:.3f}" for mean, std in cells))
    print(f"({time.perf_counter() - start:.0f} s)")
    return tables


if __name__ == "__main__":
    main()
