"""The registries of methods and downstream tasks: each file in ``methods/`` (installed as
``vlpbench.methods``) registers one method class by name, each task file in
``vlpbench/downstream/`` one task class.

Third-party packages can add methods through the ``vlpbench.methods`` entry-point group, and tasks
through ``vlpbench.tasks``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

_discovered = False


class Registry(dict):
    """Classes by their ``name``; each name once."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, cls: type) -> type:
        if cls.name in self and self[cls.name] is not cls:
            raise ValueError(f"{self.kind} name {cls.name!r} registered twice ({self[cls.name]} and {cls})")
        self[cls.name] = cls
        return cls


METHODS = Registry("method")
TASKS = Registry("task")


def register_method(cls: type) -> type:
    """Class decorator: ``cls.name`` becomes the ``method.name`` experiments use."""
    return METHODS.register(cls)


def register_task(cls: type) -> type:
    """Class decorator: ``cls.name`` becomes the name ``downstream.tasks`` lists and the section
    ``downstream.<name>``, validated by ``cls.config_class``."""
    return TASKS.register(cls)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    importlib.import_module("vlpbench.methods")
    importlib.import_module("vlpbench.downstream")
    for group in ("vlpbench.methods", "vlpbench.tasks"):
        for ep in entry_points(group=group):
            ep.load()


def get_method(name: str) -> type:
    _discover()
    return METHODS[name]


def available_methods() -> list[str]:
    _discover()
    return sorted(METHODS)


def get_task(name: str) -> type:
    _discover()
    return TASKS[name]


def available_tasks() -> list[str]:
    _discover()
    return sorted(TASKS)
