"""Draws the README's pictures into docs/images/ with the library's own plotting.

    python docs/figures.py            # a few minutes on a 2-core CPU

- `compare-2d.png`: the 2-D embeddings of `tfmetric compare` side by side
  (bundled digits; top, the closed protocol: held-out digits of the ten
  trained on; bottom, the open protocol: trained on 0–4, drawn for the
  unseen 5–9);
- `bilstm-gates.png`: a Bi-LSTM's gate heatmap for one held-out request of
  the intent study (`tfm.intent_study`, triplet loss);
- `pca-film.png`: the first and last frames of the demo's PCA film
  (`EmbeddingSnapshots`), on the film's common axes.

Chinese tokens need a CJK font matplotlib can find (Debian:
`apt-get install fonts-wqy-microhei`); without one the heatmap's tokens are
boxes and the library warns.
"""

import argparse
import io
import os
import shutil
import tempfile

import numpy as np

from tfmetric import compare, demo, intent_study
from tfmetric.plots import scatter

IMAGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "images")
COMPARED = ("untrained encoder", "softmax", "semi-hard triplet", "multi-similarity", "ArcFace")
# GitHub shows README images at most ~880 px wide: more pixels only weigh more.
WIDTH = 1600


def side_by_side(rows, path, width=WIDTH):
    """Writes rows of PNG byte strings as one grid, scaled to `width` pixels, as a palette PNG."""
    from PIL import Image

    rows = [[Image.open(io.BytesIO(png)).convert("RGB") for png in row] for row in rows]
    heights = [max(picture.height for picture in row) for row in rows]
    grid = Image.new("RGB", (max(sum(picture.width for picture in row) for row in rows), sum(heights)), "white")
    top = 0
    for row, height in zip(rows, heights):
        left = 0
        for picture in row:
            grid.paste(picture, (left, top))
            left += picture.width
        top += height
    if grid.width > width:
        grid = grid.resize((width, round(grid.height * width / grid.width)), Image.LANCZOS)
    # A 256-colour palette keeps the flat-coloured plots sharp at a fraction of the size.
    grid.quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def compare_figure(work, epochs):
    grid = []
    # Top: held-out digits of the classes trained on; bottom: the digits 5–9, never seen.
    for protocol in ("closed", "open"):
        rows = compare.run(
            "digits",
            protocol,
            seeds=1,
            dimensions=2,
            epochs=epochs,
            methods=COMPARED,
            out_dir=os.path.join(work, f"compare-{protocol}"),
        )
        pngs = []
        for row in rows:
            with open(row["figure"], "rb") as file:
                pngs.append(file.read())
        grid.append(pngs)
    side_by_side(grid, os.path.join(IMAGES, "compare-2d.png"))


def gates_figure(work, epochs):
    rows = intent_study.run(
        "assistant_intents", losses=("triplet",), seeds=1, epochs=epochs, log_dir=os.path.join(work, "intents")
    )
    shutil.copyfile(rows[0]["gates"][0], os.path.join(IMAGES, "bilstm-gates.png"))


def film_figure(work, epochs):
    log_dir = os.path.join(work, "demo")
    demo.run("batch_hard", epochs=epochs, log_dir=log_dir, verbose=0)
    film = np.load(os.path.join(log_dir, "pca", "embeddings_pca.npz"))
    points, labels = film["points"], film["labels"]
    low, high = points.min(axis=(0, 1)), points.max(axis=(0, 1))
    margin = 0.05 * (high - low)
    limits = tuple(zip((low - margin).tolist(), (high + margin).tolist()))
    # The film's frames, on its common basis: before training and after the last epoch.
    titles = ("digits, before training", f"after epoch {int(film['epochs'][-1]) + 1}")
    frames = [scatter(points[index], labels, title, limits) for index, title in zip((0, -1), titles)]
    side_by_side([frames], os.path.join(IMAGES, "pca-film.png"), width=1000)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each training run")
    parser.add_argument("--only", choices=("compare", "gates", "film"), nargs="*", default=("compare", "gates", "film"))
    arguments = parser.parse_args()
    os.makedirs(IMAGES, exist_ok=True)
    figures = {"compare": compare_figure, "gates": gates_figure, "film": film_figure}
    with tempfile.TemporaryDirectory() as work:
        for name in arguments.only:
            figures[name](work, arguments.epochs)
    for name in sorted(os.listdir(IMAGES)):
        print(f"{os.path.join(IMAGES, name)}: {os.path.getsize(os.path.join(IMAGES, name)) // 1024} KB")


if __name__ == "__main__":
    main()
