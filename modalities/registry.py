"""One name -> object registry for modalities, fusion strategies, heads and encoders.

Why one class: every registry must reject a name registered twice, list names sorted, fail
on an unknown name with the valid ones listed, and find its entries without a hand-kept
list. Entries come from two places, both found on first lookup:

* built-ins: the modules of ``package`` that register something (``builtin_modules``);
  adding one is one new file, nothing else;
* plugins: installed distributions declaring an entry point in ``group`` (e.g.
  ``clinfuse.modalities``), whose name is the name it registers and whose value is the
  module (or object) that registers it on import. A plugin is imported only when its name
  is looked up, so a broken plugin fails with ``PluginError`` naming it, and commands that
  never use it are unaffected.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Generic, TypeVar

from modalities.errors import PluginError, UnknownNameError

T = TypeVar("T")

MODALITY_GROUP = "clinfuse.modalities"
FUSION_GROUP = "clinfuse.fusion"
ENCODER_GROUP = "clinfuse.encoders"


@cache
def _entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    """Entry points of ``group`` by name (read once per process; the first one wins)."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=group):
        found.setdefault(ep.name, ep)
    return found


def plugin_names(group: str) -> list[str]:
    """Names declared by installed plugins in entry-point ``group`` (nothing is imported)."""
    return sorted(_entry_points(group))


def load_plugin(group: str, name: str) -> object:
    """Import plugin ``name`` of ``group``; any failure is a ``PluginError`` naming it."""
    ep = _entry_points(group)[name]
    dist = getattr(ep, "dist", None)
    origin = f"{dist.name} {dist.version}" if dist is not None else ep.value
    try:
        return ep.load()
    except Exception as err:  # a plugin's bug must not read as clinfuse's
        raise PluginError(
            f"plugin {name!r} ({origin}, entry point {group}) failed to load: "
            f"{type(err).__name__}: {err}; fix or uninstall that package"
        ) from err


def builtin_modules(package: str, marker: str | None = None) -> list[str]:
    """Dotted names of the modules in ``package`` (not its subpackages), sorted.

    With ``marker``, only modules with a line starting with it (``@register_modality(``),
    so finding the built-ins of a package that also holds helpers imports no helper.
    """
    pkg = importlib.import_module(package)
    out = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.ispkg or info.name.startswith("_"):
            continue
        if marker is not None:
            path = Path(info.module_finder.path) / f"{info.name}.py"  # type: ignore[union-attr]
            lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
            if not any(line.startswith(marker) for line in lines):
                continue
        out.append(f"{package}.{info.name}")
    return sorted(out)


def encoder_registry(kind: str) -> Registry:
    """A registry of encoder builders (``kind`` e.g. "audio encoder"); plugins add to it
    through the ``clinfuse.encoders`` entry-point group, named by the encoder name."""
    return Registry(kind, group=ENCODER_GROUP, stamp=False)


class Registry(Generic[T]):
    """Objects by name; ``kind`` names the registry in error messages ("fusion strategy").

    ``builtins`` lists the modules to import before the first lookup (a callable, so the
    list is computed lazily); ``group`` is the entry-point group plugins declare entries in.
    ``stamp`` sets ``obj.name`` on each registered class (modalities, strategies, heads).
    """

    def __init__(
        self,
        kind: str,
        builtins: Callable[[], Iterable[str]] | None = None,
        group: str | None = None,
        stamp: bool = True,
    ) -> None:
        self.kind = kind
        self.group = group
        self._builtins = builtins
        self._stamp = stamp
        self._items: dict[str, T] = {}
        self._loaded = builtins is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; a duplicate name is a bug."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Add ``obj`` under ``name`` (what ``register`` does, for non-decorator use)."""
        if name in self._items and self._items[name] is not obj:
            raise RuntimeError(f"{self.kind} {name!r} registered twice")
        if self._stamp:
            obj.name = name  # type: ignore[attr-defined]
        self._items[name] = obj

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: the modules register into this registry
            for module in self._builtins():  # type: ignore[misc]
                importlib.import_module(module)

    def builtin_names(self) -> list[str]:
        """Names registered by clinfuse itself (and any plugin already loaded), sorted."""
        self._load_builtins()
        return sorted(self._items)

    def names(self) -> list[str]:
        """Every valid name: registered ones plus those installed plugins declare, sorted."""
        extra = plugin_names(self.group) if self.group else []
        return sorted(set(self.builtin_names()) | set(extra))

    def get(self, name: str) -> T:
        """The object registered as ``name``, loading its plugin if one declares it.

        ``UnknownNameError`` lists the valid names; ``PluginError`` names a broken plugin.
        """
        self._load_builtins()
        if name not in self._items and self.group and name in _entry_points(self.group):
            obj = load_plugin(self.group, name)
            if name not in self._items and isinstance(obj, type):
                self.add(name, obj)  # type: ignore[arg-type]  # entry point names a class
            if name not in self._items:
                raise PluginError(
                    f"plugin {name!r} (entry point {self.group}) loaded but registered no "
                    f"{self.kind} named {name!r}; its entry point must name the module or "
                    "class that registers it"
                )
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()
