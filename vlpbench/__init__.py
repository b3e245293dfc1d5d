"""vlpbench: comparative benchmarking of vision-language pre-training methods.

The Python API (``vlpbench.api``): ``create_method``, ``run``, ``load_run``, ``evaluate``, and
``vlpbench.results.load``. They are imported on first use, so that ``import vlpbench`` and the
command line's ``--help`` import no torch.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["create_method", "evaluate", "load_run", "results", "run"]

_API = ("create_method", "evaluate", "load_run", "run")


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module("vlpbench.api"), name)
    if name == "results":
        return importlib.import_module("vlpbench.results")
    raise AttributeError(f"module 'vlpbench' has no attribute {name!r}")
