"""Optional dependencies (the `[viz]` extra), imported when first needed."""

import importlib

__all__ = ["optional_import"]


def optional_import(module, purpose):
    """Imports `module`, or says which extra provides it and what needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        raise ImportError(
            f"{purpose} needs {package}, which tfmetric does not install by default: "
            "pip install 'tfmetric[viz]'."
        ) from error
