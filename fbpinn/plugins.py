"""A config's ``problem.module``: the user's own code, imported before the config is validated.

The value is either a path to a ``.py`` file (relative to the config file's folder, ``~``
expanded) or the dotted name of an importable module.  Importing it runs its
``@register("problem", ...)`` decorators, so that ``problem.name`` can name the problems it
defines.  :func:`import_module` returns the resolved path (or the module name) and the
SHA-256 of the module's source file, which :mod:`fbpinn.config` keeps on the config and the
results file and checkpoints store (``--resume`` compares it).

A file is imported under a module name derived from its resolved path
(:func:`module_name`), so loading the same file again -- a second config, a resume, a
notebook -- finds the module already imported and leaves it as it is; a file whose source
changed since is executed again, and its classes replace their older selves in the registry.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
HASH_ATTRIBUTE = "__fbpinn_source_sha256__"  # set on a module imported from a file: the hash of what ran


class PluginError(ValueError):
    """The module cannot be found or imported; the message names the file and the first line of the error."""


@dataclass
class Imported:
    """A module imported for a config: ``spec`` is the resolved absolute path of a file (or the
    module's dotted name), ``sha256`` the hash of its source file ("" when it has none)."""

    spec: str
    sha256: str
    module: object


def is_path(value: str) -> bool:
    """Whether ``problem.module = value`` names a file (else a dotted module name)."""
    return value.endswith(".py") or "/" in value or "\\" in value or value.startswith("~")


def file_sha256(path) -> str:
    """SHA-256 (hex) of the bytes of ``path``."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def module_name(path: Path) -> str:
    """The module name a file is imported under: its stem and a hash of its resolved path."""
    stem = re.sub(r"\W", "_", path.stem)
    return f"fbpinn_user_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"


def _first_line(e: BaseException, path: Path | None = None) -> str:
    """``Type: first line of the message``, with the line of ``path`` the error came from."""
    text = (str(e).strip().splitlines() or [""])[0]
    where = ""
    if path is not None and not isinstance(e, SyntaxError):  # a SyntaxError's message has its line
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
        if frames:
            where = f" (line {frames[-1].lineno})"
    return f"{type(e).__name__}: {text}{where}" if text else f"{type(e).__name__}{where}"


def _origin(name: str) -> str | None:
    """The source file of module ``name`` without running it (None if it cannot be found)."""
    try:
        spec = importlib.util.find_spec(name)
    except (Exception, SystemExit):  # noqa: BLE001 -- finding a submodule imports its parents
        return None
    return getattr(spec, "origin", None)


def import_module(value: str, base) -> Imported:
    """Import ``problem.module = value``: a ``.py`` file (relative paths from the folder ``base``)
    or a dotted module name.  Raises :class:`PluginError` naming the file and the error."""
    if is_path(value):
        return _import_file(value, Path(base))
    if not DOTTED.match(value):
        raise PluginError(f"{value!r} is neither a path to a .py file nor a module name (like mypkg.problems)")
    try:
        module = importlib.import_module(value)
    except ModuleNotFoundError as e:
        if e.name and (value == e.name or value.startswith(e.name + ".")):
            missing = "" if e.name == value else f" (no module {e.name!r})"
            raise PluginError(f"no module {value!r} on the Python path{missing}; a file is given by its path, "
                              "ending in .py") from None
        raise PluginError(f"importing module {value!r} failed: {_first_line(e)}") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 -- whatever the user's code raises
        origin = _origin(value)
        raise PluginError(f"importing module {value!r}{f' ({origin!r})' if origin else ''} failed: "
                          f"{_first_line(e, origin and Path(origin))}") from None
    origin = getattr(getattr(module, "__spec__", None), "origin", None)
    sha = file_sha256(origin) if origin and Path(origin).is_file() else ""
    return Imported(value, sha, module)


def _import_file(value: str, base: Path) -> Imported:
    path = Path(value).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    relative = "" if Path(value).expanduser().is_absolute() else f" (a relative path is read from the config's folder {base})"
    if not path.is_file():
        raise PluginError(f"no file {str(path)!r}{relative}")
    if path.suffix != ".py":
        raise PluginError(f"{str(path)!r} is not a .py file")
    try:
        sha = file_sha256(path)
    except OSError as e:
        raise PluginError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    name = module_name(path)
    old = sys.modules.get(name)
    if old is not None and getattr(old, HASH_ATTRIBUTE, None) == sha:
        return Imported(str(path), sha, old)  # imported before, unchanged since
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    setattr(module, HASH_ATTRIBUTE, sha)
    sys.modules[name] = module  # before it runs: dataclasses and typing look their module up there
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # noqa: BLE001 -- whatever the user's code raises
        if old is not None:
            sys.modules[name] = old
        else:
            sys.modules.pop(name, None)
        raise PluginError(f"importing {str(path)!r} failed: {_first_line(e, path)}") from None
    return Imported(str(path), sha, module)
