"""One registry shape for every pluggable kind (SAELens' `register_sae_class` idiom): scorers,
query strategies, ... A class registers under its `name`; a second class under a taken name
is refused, so a plugin cannot silently replace a built-in, and choices are validated against
`names()` (by a config, or where a run starts)."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes of one kind by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator: make `cls` available under `cls.name` (refuses a taken name)."""
        name = cls.name  # type: ignore[attr-defined]
        held = self._classes.get(name)
        if held is not None:
            raise ValueError(
                f"a {self.kind} named {name!r} is already registered ({held.__module__}."
                f"{held.__qualname__}); give {cls.__qualname__} another name"
            )
        self._classes[name] = cls
        return cls

    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def get(self, name: str) -> T:
        """The class registered as `name`; an unknown name is a one-line error naming the known."""
        try:
            return self._classes[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r} (known: {', '.join(self._classes)})"
            ) from None
