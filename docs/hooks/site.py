"""Build hooks: formulas as MathML, and the notebooks of notebooks/ as pages.

Formulas become MathML at build time (latex2mathml), which browsers render
natively: the site needs no script and no network, so it builds and reads
offline, and a formula that latex2mathml cannot parse fails the build instead
of showing raw TeX.
"""

import html
import os
import re
from pathlib import Path

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

REPOSITORY = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPOSITORY / "notebooks"

# pymdownx.arithmatex (generic mode) wraps $$…$$ and $…$ in these.
BLOCK = re.compile(r'<div class="arithmatex">\s*\\\[(.*?)\\\]\s*</div>', re.S)
INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)


def _mathml(match, display, page):
    tex = html.unescape(match.group(1)).strip()
    try:
        mathml = convert(tex, display=display)
    except Exception as error:  # latex2mathml raises its own exception types
        raise PluginError(f"{page.file.src_uri}: the formula {tex!r} does not convert to MathML: {error}") from error
    # An unknown command comes out as its name, backslash included.
    if "\\" in mathml:
        raise PluginError(f"{page.file.src_uri}: the formula {tex!r} has a command latex2mathml does not know")
    return mathml


def on_page_content(html_text, page, **kwargs):
    html_text = BLOCK.sub(lambda match: f'<div class="math">{_mathml(match, "block", page)}</div>', html_text)
    return INLINE.sub(lambda match: _mathml(match, "inline", page), html_text)


def on_config(config, **kwargs):
    # The notebooks execute at build time with their fast settings (fewer epochs,
    # seeds and examples): minutes, not hours. TFMETRIC_FAST= (empty) runs them in full.
    os.environ.setdefault("TFMETRIC_FAST", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # The kernels import this checkout's tfmetric, installed or not.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    return config


# Before mkdocs-jupyter's on_files, which turns .ipynb files into pages.
@event_priority(50)
def on_files(files, config, **kwargs):
    # The notebooks stay in notebooks/ and run there, so that they write under
    # notebooks/logs/ as they do in Jupyter, not into the docs.
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(REPOSITORY),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
