"""The method registry: each file in ``methods/`` (installed as ``vlpbench.methods``) registers one method class by name.

Third-party packages can add methods through the ``vlpbench.methods`` entry-point group.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

_METHODS: dict[str, type] = {}
_discovered = False


def register_method(cls: type) -> type:
    """Class decorator: ``cls.name`` becomes the ``method.name`` experiments use."""
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice ({_METHODS[cls.name]} and {cls})")
    _METHODS[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    importlib.import_module("vlpbench.methods")
    for ep in entry_points(group="vlpbench.methods"):
        ep.load()


def get_method(name: str) -> type:
    _discover()
    return _METHODS[name]


def available_methods() -> list[str]:
    _discover()
    return sorted(_METHODS)
