"""One name -> class registry used by modalities, fusion strategies and heads.

Why one class: every registry must reject a name registered twice, stamp the class with
its name, list names sorted, and fail on an unknown name with the valid ones listed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from modalities.errors import UnknownNameError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes by name; ``kind`` names the registry in error messages ("fusion strategy")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator adding ``cls`` under ``name``; a duplicate name is a bug."""

        def deco(cls: T) -> T:
            if name in self._items and self._items[name] is not cls:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            cls.name = name
            self._items[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> T:
        """The class registered as ``name``; ``UnknownNameError`` lists the valid names."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, list(self._items)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items
