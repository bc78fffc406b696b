"""Registries of named components: problems, windows and schedulers.

Configs refer to components by name; ``register`` adds a class under a name and
``get`` looks it up, raising a ``KeyError`` that lists what is available.  Used by
:mod:`fbpinn.config` (validation), :mod:`fbpinn.model` and the CLI (``fbpinn problems``).
"""

from __future__ import annotations

_REGISTRIES: dict[str, dict[str, type]] = {"problem": {}, "window": {}, "scheduler": {}}


def register(kind: str, name: str):
    """Class decorator: register ``cls`` as component ``name`` of ``kind``."""
    table = _REGISTRIES[kind]

    def decorator(cls):
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered")
        cls.name = name
        table[name] = cls
        return cls

    return decorator


def names(kind: str) -> list[str]:
    """Sorted names registered under ``kind``."""
    _load_builtins()
    return sorted(_REGISTRIES[kind])


def get(kind: str, name: str) -> type:
    """The class registered as ``name`` under ``kind``."""
    _load_builtins()
    try:
        return _REGISTRIES[kind][name]
    except KeyError:
        raise KeyError(f"unknown {kind} {name!r}; available: {', '.join(names(kind))}") from None


def _load_builtins() -> None:
    # Importing the modules runs their @register decorators.
    from . import problems, schedulers, windows  # noqa: F401
