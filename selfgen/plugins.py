"""Plug-ins found by name: registered in this process, or through an entry-point group.

Backends (`selfgen.backends`) and scorers (`selfgen.scorers`) are found this way. Built-in ones
are entry points of selfgen's own package, so a third-party package adds its own through the
same path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    def __init__(self, group: str) -> None:
        self.group = group
        self._factories: dict[str, F] = {}

    def register(self, name: str, factory: F) -> None:
        """Make `factory` available as `name` (tests, and code that embeds selfgen)."""
        self._factories[name] = factory

    def names(self) -> list[str]:
        from importlib.metadata import entry_points  # here: slow to import, --help needs none

        found = set(self._factories)
        found.update(ep.name for ep in entry_points(group=self.group))
        return sorted(found)

    def find(self, name: str) -> F | None:
        """The factory registered as `name`, loading its entry point if need be; or None."""
        from importlib.metadata import entry_points

        factory = self._factories.get(name)
        if factory is None:
            for ep in entry_points(group=self.group):
                if ep.name == name:
                    return ep.load()
        return factory
