"""Registries of named components: problems, windows and schedulers.

Configs refer to components by name.  A component comes from one of two places:

- an **entry point** of an installed distribution, in the group ``fbpinn.problems``,
  ``fbpinn.windows`` or ``fbpinn.schedulers`` (``name = "module:Class"``).  fbpinn's own
  components are declared so in its pyproject.toml, exactly as another package would
  offer its problems.  Entry points are read from the installed metadata
  (:mod:`importlib.metadata`) and imported only when their name is first asked for,
  so this module imports none of its plug-ins;
- a **register** call: ``@register("problem", "name")`` on a class in any module that
  is imported (a config's ``problem.module``, a notebook, a test).

Registering the same class again (same module and qualified name, as after a module
is reloaded) replaces the older one; two different classes under one name is a
:class:`RegistryError` naming both modules.  An entry point that cannot be imported is
reported by its name and distribution (:func:`broken`), and hides no other component.
Used by :mod:`fbpinn.config` (validation), :mod:`fbpinn.trainer`, :mod:`fbpinn.decomposition`,
:mod:`fbpinn.schedulers` and the CLI (``fbpinn problems``).
"""

from __future__ import annotations

GROUPS = {"problem": "fbpinn.problems", "window": "fbpinn.windows", "scheduler": "fbpinn.schedulers"}
DISTRIBUTION = "fbpinn"

_REGISTRIES: dict[str, dict[str, type]] = {kind: {} for kind in GROUPS}
_entry_points: dict[str, dict] = {}  # kind -> name -> importlib.metadata.EntryPoint, read once
_broken: dict[str, dict[str, str]] = {kind: {} for kind in GROUPS}  # kind -> name -> why it failed to load


class RegistryError(ValueError):
    """A component that cannot be registered or loaded, or fbpinn's metadata is missing."""


def _identity(cls) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"


def _add(kind: str, name: str, cls) -> None:
    """Put ``cls`` into the registry of ``kind`` as ``name`` (see the module docstring)."""
    table = _REGISTRIES[kind]
    old = table.get(name)
    if old is not None and old is not cls and _identity(old) != _identity(cls):
        raise RegistryError(f"{kind} {name!r} is registered twice: by {_identity(old)} (module "
                            f"{old.__module__}) and by {_identity(cls)} (module {cls.__module__}); "
                            "rename one of them")
    cls.name = name
    table[name] = cls
    _broken[kind].pop(name, None)


def register(kind: str, name: str):
    """Class decorator: register ``cls`` as component ``name`` of ``kind``."""
    if kind not in _REGISTRIES:
        raise RegistryError(f"unknown kind of component {kind!r}; one of {', '.join(_REGISTRIES)}")

    def decorator(cls):
        _add(kind, name, cls)
        return cls

    return decorator


def entry_points(kind: str) -> dict:
    """Name -> entry point of the group of ``kind`` in the installed metadata (read once).

    Raises RegistryError when no installed fbpinn is found, or one whose metadata predates
    the entry-point groups: the built-in components are declared there."""
    if kind not in _entry_points:
        from importlib import metadata

        try:
            own = metadata.distribution(DISTRIBUTION)
        except metadata.PackageNotFoundError:
            raise RegistryError("no installed fbpinn found (no package metadata on sys.path): fbpinn finds its "
                                "problems, windows and schedulers through it. Install the package, e.g. "
                                "`pip install -c constraints.txt -e .` in the source tree") from None
        if not any(ep.group == GROUPS[kind] for ep in own.entry_points):
            raise RegistryError(f"the installed fbpinn {own.version} metadata declares no {GROUPS[kind]!r} entry "
                                "points: it is out of date. Reinstall the package, e.g. "
                                "`pip install -c constraints.txt -e .` in the source tree")
        found = {}
        for ep in metadata.entry_points(group=GROUPS[kind]):
            found.setdefault(ep.name, ep)
        _entry_points[kind] = found
    return _entry_points[kind]


def _load(kind: str, name: str) -> None:
    """Import entry point ``name`` of ``kind`` and register what it names; a failure is kept
    in :func:`broken` (and raised as RegistryError) with the entry point and its distribution."""
    ep = entry_points(kind)[name]
    dist = getattr(getattr(ep, "dist", None), "name", None) or "an unknown distribution"
    where = f"entry point {name!r} = {ep.value!r} of distribution {dist!r} (group {GROUPS[kind]})"
    try:
        obj = ep.load()
    except Exception as e:  # noqa: BLE001 -- anything a plug-in's import raises
        detail = (str(e).strip().splitlines() or [""])[0]
        _broken[kind][name] = f"{where} cannot be loaded: {type(e).__name__}: {detail}"
        raise RegistryError(_broken[kind][name]) from None
    if not isinstance(obj, type):
        _broken[kind][name] = f"{where} names {type(obj).__name__} {obj!r}, not a class"
        raise RegistryError(_broken[kind][name])
    _add(kind, name, obj)


def names(kind: str) -> list[str]:
    """Sorted names of ``kind``: registered ones and those of entry points (not imported here)."""
    return sorted(set(_REGISTRIES[kind]) | set(entry_points(kind)))


def get(kind: str, name: str) -> type:
    """The class registered as ``name`` under ``kind``, importing its entry point if need be.

    KeyError (listing what is available) for an unknown name; RegistryError for an entry
    point that cannot be loaded."""
    table = _REGISTRIES[kind]
    if name not in table:
        if name not in entry_points(kind):
            raise KeyError(f"unknown {kind} {name!r}; available: {', '.join(names(kind))}")
        _load(kind, name)
    return table[name]


def load_all(kind: str) -> dict:
    """Every component of ``kind`` that loads, by name; the others are in :func:`broken`."""
    for name in entry_points(kind):
        if name not in _REGISTRIES[kind]:
            try:
                _load(kind, name)
            except RegistryError:
                pass
    return dict(_REGISTRIES[kind])


def broken(kind: str) -> dict[str, str]:
    """Entry points of ``kind`` that failed to load so far: name -> one-line reason."""
    return dict(_broken[kind])
