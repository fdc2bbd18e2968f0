"""Named choices mapped to what implements them: one `Registry` per config choice.

A registry lives in the module that implements the choice (``schedules.SCHEDULES``,
``losses.LOSSES``, ``transforms.ASPECTS``, ...); `melalib.config` declares each field's
choices as a lazy reference to it, so a name registered here is a valid config value and
is run by the registry tests without any other edit. Looking up an unknown name raises
the same `ConfigError` as config validation (`choice_error`). Imports nothing heavy.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def choice_error(name: str, value: Any, choices: Iterable[Any]) -> ConfigError:
    """The one message of a value outside its choices (with a did-you-mean when close)."""
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=2)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ConfigError(f"{name} must be one of {', '.join(names)}; got {value!r}{hint}")


class Registry(dict[Hashable, T]):
    """``name -> implementation`` of the choices of config field ``field`` (insertion order
    is the documented order). ``registry[name]`` of an unknown name raises `choice_error`."""

    def __init__(self, field: str, items: dict[Hashable, T] | None = None) -> None:
        super().__init__(items or {})
        self.field = field

    def register(self, name: Hashable) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` adds the decorated callable."""

        def add(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.field}: {name!r} is registered twice")
            self[name] = obj
            return obj

        return add

    def __missing__(self, name: Hashable) -> T:
        raise choice_error(self.field, name, self)

    def check(self, name: Hashable) -> None:
        """Raise `choice_error` unless ``name`` is registered."""
        if name not in self:
            raise choice_error(self.field, name, self)
