"""One generic name → object registry: duplicates raise, unknown names list what exists."""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from edgeopt.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of ``T``; ``kind`` is what the error messages call an entry."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UsageError(unknown_name_message(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """``unknown runtime 'tfite'; available: a, b; did you mean 'litert'?``"""
    msg = f"unknown {kind} {name!r}; available: {', '.join(available) or '(none)'}"
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    return msg
