"""Plug-ins: a user's own encoders, objectives and kinds, registered by importing a module.

A plug-in is any Python module that registers into the registries when it is imported
(``@ENCODERS.register("mine/encoder")``, ``@OBJECTIVES.register(...)``, ``@KINDS.register(...)``). The
``biossl`` command imports, before it runs a verb,

1. every entry point of the group ``biossl.plugins`` of the installed packages
   (``[project.entry-points."biossl.plugins"] mine = "mine.biossl_plugin"`` in the package's
   ``pyproject.toml``);
2. the modules of ``$BIOSSL_PLUGINS`` (comma-separated);
3. the modules of ``--plugin MODULE`` (repeatable; before or after the verb).

A module is a name importable from ``sys.path`` or the path of a ``.py`` file (imported under its stem).
A pretraining checkpoint records the plug-ins loaded when it was written (``checkpoint["biossl"]["plugins"]``:
module, how it came, its file or distribution, and what it registered); :func:`require_plugins`, called by
the one checkpoint loader, imports them again by module name. A plug-in that came as a file is imported
by name only (from ``sys.path``), never from the path the checkpoint records: a checkpoint is read with
``weights_only`` loading, and naming a file must not make it run code. When one cannot be imported the
message says to pass ``--plugin`` or to install its package.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from biossl.errors import InputError

logger = logging.getLogger(__name__)

#: The entry-point group a package declares its biossl plug-in module in.
ENTRY_POINT_GROUP = "biossl.plugins"
#: Environment variable naming plug-in modules (comma-separated).
ENV = "BIOSSL_PLUGINS"


@dataclass
class Plugin:
    """A plug-in module this process imported, as a checkpoint records it.

    Attributes:
        module: The module name it was imported under.
        via: ``"entry point"``, ``"BIOSSL_PLUGINS"``, ``"--plugin"`` or ``"checkpoint"``.
        path: The ``.py`` file it was given as (``None`` for a module name).
        distribution: ``"name version"`` of the package declaring the entry point.
        provides: The registry names it registered (``"encoder table/mine"``, ``"kind spectrum"``).
    """

    module: str
    via: str
    path: str | None = None
    distribution: str | None = None
    provides: list[str] = field(default_factory=list)


_LOADED: dict[str, Plugin] = {}
_IMPORTING: list[Plugin] = []  # the plug-in being imported (its registrations are attributed to it)
_FAILED: dict[str, str] = {}  # entry points that did not import: "name = value" -> why


def current() -> Plugin | None:
    """The plug-in being imported right now (registries attribute registrations to it), or ``None``."""
    return _IMPORTING[-1] if _IMPORTING else None


def loaded() -> list[Plugin]:
    """The plug-ins this process has imported, in order."""
    return list(_LOADED.values())


def failed_entry_points() -> dict[str, str]:
    """Entry points of ``biossl.plugins`` that could not be imported (``"name = value"`` -> the reason)."""
    return dict(_FAILED)


def records() -> list[dict[str, Any]]:
    """What a checkpoint records of the loaded plug-ins (plain values)."""
    return [asdict(p) for p in _LOADED.values()]


@contextmanager
def _attributing(plugin: Plugin) -> Iterator[None]:
    _IMPORTING.append(plugin)
    try:
        yield
    finally:
        _IMPORTING.pop()


def _import_name(name: str, plugin: Plugin) -> None:
    with _attributing(plugin):
        importlib.import_module(name)


def _import_file(path: Path, plugin: Plugin) -> None:
    name = plugin.module
    old = sys.modules.get(name)
    if old is not None:
        if Path(getattr(old, "__file__", "") or "").resolve() == path:
            return
        raise InputError(f"--plugin {path}: a module named {name!r} is already loaded from "
                         f"{getattr(old, '__file__', None) or 'biossl or Python itself'}; rename the file")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"--plugin {path} cannot be imported as a Python module; pass a .py file or a module name")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _attributing(plugin):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise


def load_plugin(text: str, *, via: str = "--plugin", distribution: str | None = None) -> Plugin:
    """Import a plug-in module (a name importable from ``sys.path``, or a ``.py`` file) once.

    Args:
        text: The module name or the file path.
        via: How it was named (recorded in checkpoints, used in messages).
        distribution: The package of an entry point.

    Returns:
        The loaded plug-in (the same object when it was loaded before).

    Raises:
        InputError: The module cannot be found or imported, or raises while it is imported (one line
            naming it and the error).
    """
    text = text.strip()
    is_file = text.endswith(".py") or os.sep in text or (os.altsep is not None and os.altsep in text)
    path = Path(text).expanduser().resolve() if is_file else None
    name = path.stem if path is not None else text
    if name in _LOADED:
        return _LOADED[name]
    if path is not None and not path.is_file():
        raise InputError(f"{via} {text}: no such file; pass an existing .py file or an importable module name")
    if path is None and not name.replace(".", "").replace("_", "").isalnum():
        raise InputError(f"{via} {text!r} is neither a module name (such as mypkg.biossl_plugin) nor a .py file")
    plugin = Plugin(module=name, via=via, path=str(path) if path else None, distribution=distribution)
    try:
        if path is not None:
            _import_file(path, plugin)
        else:
            _import_name(name, plugin)
    except InputError:
        raise
    except ModuleNotFoundError as exc:
        if path is None and exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise InputError(f"{via} {name}: no module named {name!r} on sys.path; pass the .py file's path, or "
                             f"`pip install` the package that provides it") from None
        raise InputError(f"{via} {text}: importing it failed: {exc} (a package it needs is missing; pip install "
                         "it)") from None
    except Exception as exc:  # noqa: BLE001 (a plug-in may raise anything while it is imported)
        raise InputError(f"{via} {text}: importing it failed ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]}); fix the plug-in") from None
    _LOADED[name] = plugin
    logger.debug("plug-in %s loaded (%s)%s", name, via, f": {', '.join(plugin.provides)}" if plugin.provides else "")
    return plugin


def load_entry_points() -> list[Plugin]:
    """Import every entry point of the group ``biossl.plugins`` (a failing one is a warning, and remembered).

    A broken third-party package does not stop every ``biossl`` command: its failure is logged, named
    again if a registry lookup misses (:func:`hint`), and a checkpoint that needs it says so.
    """
    from importlib.metadata import entry_points

    out = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        label = f"{dist.name} {dist.version}" if dist is not None else None
        try:
            out.append(load_plugin(ep.value.split(":", 1)[0], via="entry point", distribution=label))
        except InputError as exc:
            key = f"{ep.name} = {ep.value}" + (f" (package {label})" if label else "")
            if key not in _FAILED:
                logger.warning("biossl plug-in entry point %s does not import: %s", key, exc)
            _FAILED[key] = str(exc)
    return out


def env_plugins(environ: Mapping[str, str] | None = None) -> list[str]:
    """The module names or files of ``$BIOSSL_PLUGINS`` (comma-separated; blanks ignored)."""
    value = (os.environ if environ is None else environ).get(ENV, "")
    return [v.strip() for v in value.split(",") if v.strip()]


def load_plugins(named: Iterable[str] = (), *, entry_points: bool = True) -> list[Plugin]:
    """Import the entry points, ``$BIOSSL_PLUGINS`` and ``named`` (the ``--plugin`` options), in that order.

    Raises:
        InputError: A module of ``$BIOSSL_PLUGINS`` or ``named`` cannot be imported.
    """
    out = load_entry_points() if entry_points else []
    out += [load_plugin(text, via=ENV) for text in env_plugins()]
    out += [load_plugin(text) for text in named]
    return out


def hint() -> str:
    """Text appended to a registry miss: the plug-in entry points that failed to import, if any."""
    if not _FAILED:
        return ""
    return " (plug-in entry points that did not import: " + "; ".join(_FAILED) + ")"


def _uses(state: Mapping[str, Any], provided: Iterable[str]) -> bool:
    """True if a checkpoint's modality specs name one of ``provided`` (``"encoder x"`` names ``x``)."""
    names = {p.split(" ", 1)[-1] for p in provided}
    used: set[str] = set()
    for spec in (state.get("modality_specs") or {}).values():
        for key in ("encoder", "kind", "objective"):
            value = spec.get(key) if isinstance(spec, Mapping) else None
            values = value if isinstance(value, list | tuple) else [value]
            used.update(v for v in values if isinstance(v, str))
    return bool(names & used)


def require_plugins(ckpt: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Import the plug-ins a loaded checkpoint records (by module name), before its model is rebuilt.

    A plug-in that cannot be imported is an error when the checkpoint uses what it registered (or
    when it is not known what it registered), else a warning.

    Raises:
        InputError: One line naming the checkpoint, the module, how it was loaded when the checkpoint
            was written, and the fix (``--plugin FILE_OR_MODULE``, or ``pip install`` its package).
    """
    state = ckpt.get("biossl") or {}
    for rec in state.get("plugins") or ():
        if not isinstance(rec, Mapping) or not rec.get("module"):
            continue
        name = str(rec["module"])
        if name in _LOADED or name in sys.modules:
            continue
        try:
            load_plugin(name, via="checkpoint")
        except InputError as exc:
            provides = [str(p) for p in rec.get("provides") or ()]
            where = rec.get("path") or rec.get("distribution")
            fix = (f"pass --plugin {rec['path']} (or put its folder on PYTHONPATH)" if rec.get("path")
                   else f"pass --plugin {name} (a module name or its .py file)") + (
                f", or `pip install {str(rec['distribution']).split(' ')[0]}`" if rec.get("distribution")
                else ", or `pip install` the package that provides it")
            text = (f"checkpoint {path} was written with plug-in module {name!r} ({rec.get('via', 'plug-in')}"
                    f"{f': {where}' if where else ''}{'; it registered ' + ', '.join(provides) if provides else ''}),"
                    f" which cannot be imported here ({_reason(exc)}); {fix}")
            if provides and not _uses(state, provides):
                logger.warning("%s; the checkpoint's modalities do not use it, so it is skipped", text)
                continue
            raise InputError(text) from None


def _reason(exc: InputError) -> str:
    text = str(exc)
    return "no module of that name on sys.path" if "no module named" in text else text.split(": ", 1)[-1][:160]


def forget(name: str) -> None:
    """Unregister what plug-in ``name`` registered and drop its module (tests that load and unload one)."""
    plugin = _LOADED.pop(name, None)
    sys.modules.pop(name, None)
    if plugin is None:
        return
    from biossl.registry import registries

    for item in plugin.provides:
        kind, _, reg_name = item.partition(" ")
        for registry in registries():
            if registry.kind == kind:
                registry.unregister(reg_name)


__all__ = ["ENTRY_POINT_GROUP", "ENV", "Plugin", "current", "env_plugins", "failed_entry_points", "forget", "hint",
           "load_entry_points", "load_plugin", "load_plugins", "loaded", "records", "require_plugins"]
