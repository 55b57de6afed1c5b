"""Optional dependencies (the `[viz]` and `[search]` extras), imported when first needed."""

import importlib

__all__ = ["optional_import"]


def optional_import(module, purpose, extra="viz", package=None):
    """Imports `module`, or says which extra (and which package) provides it and what needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = package or module.split(".")[0]
        raise ImportError(
            f"{purpose} needs {package}, which tfmetric does not install by default: "
            f"pip install 'tfmetric[{extra}]'."
        ) from error
