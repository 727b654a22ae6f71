"""Name → factory registries for encoders, objectives and heads.

Names read like ``"tile/vit_small"`` or ``"objective/vicreg"``; a miss lists the known names. A name
registered while a plug-in module is imported (:mod:`biossl.plugins`) is attributed to that plug-in, so a
checkpoint can record which plug-in provides its encoder.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from biossl import plugins

T = TypeVar("T")
_REGISTRIES: list[Registry[Any]] = []


def registries() -> list[Registry[Any]]:
    """Every registry made so far (encoders, objectives, kinds, ...)."""
    return list(_REGISTRIES)


class Registry(Generic[T]):
    """A dictionary of named factories with helpful errors.

    Args:
        kind: What the registry holds, used in error messages (for example ``"encoder"``).
        package: A package whose sub-modules register into this registry; they are imported on the
            first lookup, so a new file needs no edit anywhere else to be found.
    """

    def __init__(self, kind: str, *, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, Callable[..., T]] = {}
        self._loaded = package is None
        _REGISTRIES.append(self)

    def _load(self) -> None:
        if self._loaded or self.package is None:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a factory under ``name``."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = fn
            plugin = plugins.current()
            if plugin is not None and not str(getattr(fn, "__module__", "")).startswith("biossl."):
                plugin.provides.append(f"{self.kind} {name}")
            return fn

        return deco

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory for ``name``; raise ``KeyError`` listing the known names on a miss."""
        self._load()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}"
                f"{plugins.hint()}"
            ) from None

    def build(self, name: str, **kwargs: Any) -> T:
        """Build the item registered under ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plug-in registered for one test or session)."""
        self._items.pop(name, None)


#: Modality kinds (``slide``, ``volume``, ``table``, ``sequence``, ``features`` and plug-ins): name -> a
#: :class:`biossl.kinds.base.Kind` subclass. The built-in kinds are the modules of :mod:`biossl.kinds`,
#: found on the first lookup; a plug-in registers with ``@KINDS.register("name")`` from anywhere. It lives
#: here, at the package root, so that the cohort (``data/``) can look a kind up without importing the
#: layers above it.
KINDS: Registry[Any] = Registry("kind", package="biossl.kinds")
