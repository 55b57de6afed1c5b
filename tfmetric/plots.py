"""Pictures the callbacks write: gate heatmaps, PCA scatters, sprites, GIFs.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas (no
pyplot state, no display needed) and returned as PNG bytes; Pillow assembles
sprites and GIFs. Both come with the `[viz]` extra.
"""

import functools
import io
import warnings

import numpy as np

from tfmetric.optional import optional_import

__all__ = ["font_for", "gate_heatmap", "gif", "png_to_array", "scatter", "sprite", "sprite_images"]

# TensorBoard's projector refuses sprites larger than this on either side.
MAX_SPRITE_SIZE = 8192


def _figure(width, height):
    figure_module = optional_import("matplotlib.figure", "Plotting")
    backend = optional_import("matplotlib.backends.backend_agg", "Plotting")
    figure = figure_module.Figure(figsize=(width, height), dpi=100)
    backend.FigureCanvasAgg(figure)
    return figure


def _png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


@functools.lru_cache(maxsize=None)
def _characters_of(path):
    ft2font = optional_import("matplotlib.ft2font", "Plotting")
    try:
        return frozenset(ft2font.FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def font_for(text, font=None):
    """Font properties that can draw every character of `text`.

    `font` is a font file or a family name to use as is. Otherwise
    matplotlib's default font is kept when it covers `text`, and else the
    first installed font that does (CJK text needs a CJK font such as Noto
    Sans CJK). Returns None for the default font, and warns when no installed
    font has the glyphs.
    """
    font_manager = optional_import("matplotlib.font_manager", "Plotting")
    if font is not None:
        if isinstance(font, font_manager.FontProperties):
            return font
        if str(font).lower().endswith((".ttf", ".otf", ".ttc")):
            return font_manager.FontProperties(fname=str(font))
        return font_manager.FontProperties(family=font)
    needed = {ord(character) for character in text if not character.isspace()}
    default = font_manager.findfont(font_manager.FontProperties())
    if needed <= _characters_of(default):
        return None
    for entry in font_manager.fontManager.ttflist:
        # Last Resort maps every code point to a placeholder box.
        if entry.name.startswith("Last Resort"):
            continue
        if needed <= _characters_of(entry.fname):
            return font_manager.FontProperties(fname=entry.fname)
    missing = "".join(sorted({chr(code) for code in needed - _characters_of(default)})[:20])
    warnings.warn(
        f"No installed font can draw {missing!r}, so those characters will show as boxes. Pass "
        "font='/path/to/font.otf' (for Chinese, Japanese or Korean text e.g. Noto Sans CJK), or "
        "install one matplotlib can find (a system package such as fonts-noto-cjk, or "
        "`pip install mplfonts`).",
        stacklevel=3,
    )
    return None


def gate_heatmap(counts, tokens, title="", maximum=None, font=None):
    """A gates × tokens heatmap of active-unit counts, as PNG bytes.

    Args:
        counts: `{gate name: (time,) counts}`, drawn top to bottom.
        tokens: The `time` token strings for the x axis.
        title: Figure title.
        maximum: Top of the colour scale (e.g. 2 × units); default the
            largest count.
        font: See `font_for`.
    """
    names = list(counts)
    values = np.stack([np.asarray(counts[name], float) for name in names])
    tokens = [str(token) for token in tokens]
    properties = font_for("".join(tokens) + title, font)
    figure = _figure(max(4.0, 0.55 * len(tokens) + 1.8), 0.6 * len(names) + 1.6)
    axes = figure.add_subplot()
    top = maximum if maximum is not None else max(1.0, float(values.max(initial=0.0)))
    image = axes.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=top)
    axes.set_yticks(range(len(names)), names)
    axes.set_xticks(range(len(tokens)), tokens, fontproperties=properties)
    for (row, column), value in np.ndenumerate(values):
        shade = "black" if value > 0.6 * top else "white"
        axes.text(column, row, f"{value:g}", ha="center", va="center", color=shade, fontsize=8)
    figure.colorbar(image, ax=axes, label="active units")
    if title:
        axes.set_title(title, fontproperties=properties)
    figure.tight_layout()
    return _png(figure)


def scatter(points, labels, title="", limits=None, axis_labels=("PC 1", "PC 2")):
    """A 2-D scatter coloured by label, as PNG bytes.

    `limits` is `((x_min, x_max), (y_min, y_max))`; frames drawn with the
    same limits line up.
    """
    points = np.asarray(points, float)
    labels = np.asarray(labels)
    figure = _figure(5.0, 5.0)
    axes = figure.add_subplot()
    classes, codes = np.unique(labels, return_inverse=True)
    colours = optional_import("matplotlib", "Plotting").colormaps["tab10" if len(classes) <= 10 else "turbo"]
    for code, name in enumerate(classes):
        chosen = codes == code
        colour = colours(code if len(classes) <= 10 else code / max(1, len(classes) - 1))
        axes.scatter(points[chosen, 0], points[chosen, 1], s=8, color=colour, label=str(name), alpha=0.8)
    if limits is not None:
        axes.set_xlim(*limits[0])
        axes.set_ylim(*limits[1])
    if len(classes) <= 20:
        axes.legend(loc="upper right", fontsize=7, markerscale=1.5, title="label")
    axes.set_xlabel(axis_labels[0])
    axes.set_ylabel(axis_labels[1])
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return _png(figure)


def png_to_array(png):
    """PNG bytes → uint8 array `(height, width, 4)`."""
    image = optional_import("PIL.Image", "Images")
    return np.asarray(image.open(io.BytesIO(png)).convert("RGBA"))


def gif(frames, path, milliseconds_per_frame=500):
    """Writes PNG `frames` to `path` as a looping animated GIF."""
    image = optional_import("PIL.Image", "Images")
    pictures = [image.open(io.BytesIO(frame)).convert("RGB") for frame in frames]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=milliseconds_per_frame, loop=0)


def sprite_images(images):
    """`images` checked and as uint8: `(n, height, width)` or `(n, height, width, 3|4)`."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (3, 4)):
        raise ValueError(f"images must be (n, height, width[, 1|3|4]); received shape {images.shape}.")
    if images.dtype != np.uint8:
        if not np.all(np.isfinite(images)) or images.min(initial=0) < 0 or images.max(initial=0) > 1:
            raise ValueError("Non-uint8 images must hold values in [0, 1].")
        images = np.round(images * 255).astype(np.uint8)
    return images


def sprite(images, max_size=MAX_SPRITE_SIZE):
    """The projector's sprite: `images` tiled row-major in a square grid.

    Args:
        images: `(n, height, width)` or `(n, height, width, channels)`, uint8,
            or floats in [0, 1].
        max_size: Largest side of the sprite; thumbnails shrink to fit.

    Returns:
        `(PIL image, (thumbnail width, thumbnail height))`.
    """
    image = optional_import("PIL.Image", "Sprites")
    images = sprite_images(images)
    count, height, width = images.shape[:3]
    columns = int(np.ceil(np.sqrt(count)))
    scale = min(1.0, max_size / (columns * height), max_size / (columns * width))
    thumbnail = (max(1, int(width * scale)), max(1, int(height * scale)))
    mode = "L" if images.ndim == 3 else ("RGB" if images.shape[-1] == 3 else "RGBA")
    sheet = image.new(mode, (columns * thumbnail[0], columns * thumbnail[1]))
    for index, picture in enumerate(images):
        tile = image.fromarray(picture)
        if tile.size != thumbnail:
            tile = tile.resize(thumbnail, image.Resampling.LANCZOS)
        row, column = divmod(index, columns)
        sheet.paste(tile, (column * thumbnail[0], row * thumbnail[1]))
    return sheet, thumbnail
