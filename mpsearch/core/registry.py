"""A small generic registry: names for the CLI, instances for the API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mpsearch.core.errors import MPSearchError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories (usually classes).

    >>> SOLVERS = Registry("solver")
    >>> @SOLVERS.register("mine")
    ... class Mine: ...
    >>> SOLVERS.get("mine") is Mine
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise MPSearchError(
                    f"{self.kind} names must be unique, but {name!r} is already registered "
                    f"to {self._items[name]!r}. Choose another name."
                )
            self._items[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"{self.kind} must be one of {sorted(self._items)}, but got {name!r}. "
                f"Pass a known name or an instance."
            ) from None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
