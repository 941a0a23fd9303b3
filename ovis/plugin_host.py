"""The plugin host: finds installed plugins, loads each in isolation, and answers lookups.

Every ``ovis.plugins`` entry point is imported and asked to register on its own, so one broken
plugin is reported (with its error) while the others keep working. ``OVIS_STRICT_PLUGINS=1`` makes
any such failure raise, which is what a plugin author wants while developing.

A registration is refused (the first one stands; the plugin gets an error, raised under strict
mode) when its name is already taken, naming both plugins, or when its spec's ``plugin`` field
names another distribution than the one whose entry point registered it.

Importing this module does not import torch or transformers (``ovis plugins`` and ``ovis list``
start fast); plugins that register backbones import them themselves.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import importlib.util
import os
import re
import traceback
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

import ovis.interfaces as interfaces
from ovis.errors import OvisError
from ovis.interfaces import hookspecs
from ovis.interfaces.chat import ChatFormat
from ovis.interfaces.presets import iter_presets, recording_preset_errors
from ovis.interfaces.specs import Kind, LLMSpec, VisionSpec

if TYPE_CHECKING:
    from ovis.interfaces.vision import VisionBackbone

_HOOKS = ("register_vision_backbones", "register_llms", "register_chat_formats")


class PluginError(OvisError, RuntimeError):
    """A plugin failed to load or register (raised under ``OVIS_STRICT_PLUGINS=1``), or an object
    handed to :meth:`PluginHost.add_plugin` cannot be a plugin at all (always raised)."""


class UnknownNameError(OvisError, KeyError):
    """A backbone or chat format name that no installed plugin provides."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass
class Entry:
    """One registered backbone: its spec, the class that builds it, and who registered it.

    A plugin may register the class itself or its import path (``"package.module:Class"``): then
    the module, and torch with it, is imported only when the class is first needed, so listing
    what is installed (``ovis list``, ``ovis plugins``) stays fast.
    """

    spec: VisionSpec | LLMSpec
    target: type | str
    plugin: str
    kind: Kind = "vision"

    @property
    def factory(self) -> type:
        if isinstance(self.target, str):
            self.target = _resolve_factory(self.target, self.kind, self.spec.name, self.plugin)
        return self.target


def _factory_base(kind: Kind) -> type:
    # The bases import torch: reached through the package's lazy attributes, on first use.
    return interfaces.VisionBackbone if kind == "vision" else interfaces.LLMBackbone


def _resolve_factory(path: str, kind: Kind, name: str, plugin: str) -> type:
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"plugin {plugin!r}: the builder of {kind} {name!r}, {path!r}, cannot be imported: "
                          f"{type(exc).__name__}: {exc}") from exc
    base = _factory_base(kind)
    if not (isinstance(factory, type) and issubclass(factory, base)):
        raise PluginError(f"plugin {plugin!r}: the builder of {kind} {name!r}, {path!r}, is not a subclass of "
                          f"{base.__name__}")
    return factory


@dataclass
class PluginInfo:
    """What the host knows of one plugin: where it comes from, what it registered, what failed.

    ``name`` is the entry-point name (or the name given to :meth:`PluginHost.add_plugin`);
    ``distribution`` and ``version`` are those of the pip package that declares the entry point
    (None for a plugin added in-process without them).
    """

    name: str
    version: str | None = None
    module: str | None = None
    distribution: str | None = None
    registered: dict[str, list[str]] = field(
        default_factory=lambda: {"vision": [], "llm": [], "chat_format": []}
    )
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "registered": self.registered,
            "errors": self.errors,
        }


def _canonical(distribution: str) -> str:
    """A distribution name compared as pip does (PEP 503): case and -_. runs do not matter."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _unregistrable(obj: object) -> str | None:
    """Why pluggy cannot take ``obj`` as a plugin, or None. It keys plugins by object, so an
    unhashable one (a dict, a SimpleNamespace, a dataclass with eq) would fail deep inside it."""
    try:
        hash(obj)
    except TypeError:
        return (
            f"a {type(obj).__name__} object cannot be a plugin (it is unhashable); register a module, "
            "or an instance of a class whose methods carry @hookimpl"
        )
    return None


class PluginHost:
    """Loads plugins and holds what they registered.

    ``extra_plugins`` are ``(name, module_or_object)`` pairs registered after the entry points;
    tests use them to add throwaway plugins. ``entry_points=False`` skips discovery entirely.

    Reading it back: ``plugins`` (name -> :class:`PluginInfo`, with each plugin's ``errors``),
    :meth:`list` / :meth:`get` / :meth:`vision` / :meth:`llm` (registered backbones as
    :class:`Entry`), :meth:`chat_format` / :meth:`chat_formats`, and :attr:`preset_errors`.
    """

    def __init__(
        self,
        *,
        entry_points: bool = True,
        extra_plugins: Iterable[tuple[str, object]] = (),
        strict: bool | None = None,
    ) -> None:
        self.strict = hookspecs.strict_from_env() if strict is None else strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._entries: dict[Kind, dict[str, Entry]] = {"vision": {}, "llm": {}}
        self._aliases: dict[Kind, dict[str, str]] = {"vision": {}, "llm": {}}
        self._chat_formats: dict[str, tuple[ChatFormat, str]] = {}
        self._preset_errors: dict[str, str] = {}
        if entry_points:
            for ep in metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
                self._load_entry_point(ep)
        for name, obj in extra_plugins:
            self.add_plugin(name, obj)

    # -- loading -------------------------------------------------------------------------------
    def _fail(self, info: PluginInfo, message: str, exc: BaseException | None = None) -> None:
        info.errors.append(message)
        if self.strict:
            raise PluginError(f"plugin {info.name!r}: {message}") from exc

    def _load_entry_point(self, ep: metadata.EntryPoint) -> None:
        dist = ep.dist
        info = PluginInfo(
            name=ep.name,
            version=dist.version if dist else None,
            module=ep.value,
            distribution=dist.name if dist else None,
        )
        self.plugins[ep.name] = info
        try:
            module = ep.load()
        except Exception as exc:
            self._fail(info, f"failed to import {ep.value}: {type(exc).__name__}: {exc}", exc)
            return
        self._register_plugin(info, module)

    def add_plugin(
        self, name: str, obj: object, version: str | None = None, distribution: str | None = None
    ) -> PluginInfo:
        """Register a plugin directly (tests, notebooks): a module, or an instance of a class whose
        methods carry ``@hookimpl``. Its failures are recorded in the returned info's ``errors``
        (raised under strict mode), like an entry point's; an object that cannot be a plugin at
        all raises :class:`PluginError` at once. Give ``distribution`` to have specs' ``plugin``
        field checked against it."""
        problem = _unregistrable(obj)
        if problem:
            raise PluginError(f"plugin {name!r}: {problem}")
        info = PluginInfo(
            name=name, version=version, module=getattr(obj, "__name__", repr(obj)), distribution=distribution
        )
        self.plugins[name] = info
        self._register_plugin(info, obj)
        return info

    def remove_plugin(self, name: str) -> None:
        """Forget a plugin and everything it registered (tests use this to clean up)."""
        self.plugins.pop(name, None)
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        for kind in ("vision", "llm"):
            gone = {n for n, e in self._entries[kind].items() if e.plugin == name}
            for n in gone:
                del self._entries[kind][n]
            self._aliases[kind] = {a: n for a, n in self._aliases[kind].items() if n not in gone}
        self._chat_formats = {n: v for n, v in self._chat_formats.items() if v[1] != name}

    def _register_plugin(self, info: PluginInfo, obj: object) -> None:
        problem = _unregistrable(obj)  # an entry point may name any object, e.g. `pkg.mod:PLUGIN`
        if problem:
            self._fail(info, problem)
            return
        try:
            self.pm.register(obj, name=info.name)
            # Hooks that match no hookspec (a typo'd name) only surface here.
            self.pm.check_pending()
        except Exception as exc:
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            self._fail(info, f"is not a valid ovis plugin: {type(exc).__name__}: {exc}", exc)
            return
        others = [p for p in self.pm.get_plugins() if p is not obj]
        for hook in _HOOKS:
            caller = self.pm.subset_hook_caller(hook, remove_plugins=others)
            register = functools.partial(self._register_callback(hook), info)
            try:
                with recording_preset_errors(self._preset_errors):
                    caller(register=register)
            except PluginError:
                raise
            except Exception as exc:
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                self._fail(info, f"{hook} raised {detail}", exc)

    def _register_callback(self, hook: str):
        return {
            "register_vision_backbones": self._register_vision,
            "register_llms": self._register_llm,
            "register_chat_formats": self._register_chat_format,
        }[hook]

    def _register_backbone(self, kind: Kind, info: PluginInfo, spec: Any, factory: Any) -> None:
        spec_type = VisionSpec if kind == "vision" else LLMSpec
        if not isinstance(spec, spec_type):
            raise TypeError(f"register expects a {spec_type.__name__}, got {type(spec).__name__}")
        if isinstance(factory, str):
            if not re.fullmatch(r"[\w.]+:\w+", factory):
                raise TypeError(f"{spec.name}: a builder given by name must be 'package.module:Class', got {factory!r}")
        else:
            base = _factory_base(kind)
            if not (isinstance(factory, type) and issubclass(factory, base)):
                raise TypeError(f"{spec.name}: builder must be a subclass of {base.__name__} or its import path "
                                f"'package.module:Class', got {factory!r}")
        if spec.plugin and info.distribution and _canonical(spec.plugin) != _canonical(info.distribution):
            self._fail(
                info,
                f"{kind} {spec.name!r} says plugin {spec.plugin!r}, but distribution {info.distribution!r} "
                "registers it (rejected); set the spec's 'plugin' to the distribution that registers it",
            )
            return
        names = [spec.name, *spec.aliases]
        for name in names:
            owner = self._owner(kind, name)
            if owner is not None:
                self._fail(
                    info,
                    f"{kind} name {name!r} is already registered by plugin {owner!r}; "
                    f"plugin {info.name!r} tried to register it again (rejected)",
                )
                return
        self._entries[kind][spec.name] = Entry(spec=spec, target=factory, plugin=info.name, kind=kind)
        for alias in spec.aliases:
            self._aliases[kind][alias] = spec.name
        info.registered[kind].append(spec.name)

    def _owner(self, kind: Kind, name: str) -> str | None:
        canonical = self._aliases[kind].get(name, name)
        entry = self._entries[kind].get(canonical)
        return entry.plugin if entry else None

    def _register_vision(self, info: PluginInfo, spec: VisionSpec, factory: type) -> None:
        self._register_backbone("vision", info, spec, factory)

    def _register_llm(self, info: PluginInfo, spec: LLMSpec, factory: type) -> None:
        self._register_backbone("llm", info, spec, factory)

    def _register_chat_format(self, info: PluginInfo, chat_format: ChatFormat) -> None:
        if not isinstance(chat_format, ChatFormat) or not chat_format.name:
            raise TypeError(f"register expects a named ChatFormat instance, got {chat_format!r}")
        if chat_format.name in self._chat_formats:
            owner = self._chat_formats[chat_format.name][1]
            self._fail(
                info,
                f"chat format {chat_format.name!r} is already registered by plugin {owner!r}; "
                f"plugin {info.name!r} tried to register it again (rejected)",
            )
            return
        self._chat_formats[chat_format.name] = (chat_format, info.name)
        info.registered["chat_format"].append(chat_format.name)

    # -- lookups -------------------------------------------------------------------------------
    def entries(self, kind: Kind) -> list[Entry]:
        """Every registered backbone of ``kind``, sorted by name."""
        return sorted(self._entries[kind].values(), key=lambda e: e.spec.name)

    def list(self, kind: Kind, pattern: str | None = None) -> list[Entry]:
        """Entries whose name or an alias matches the fnmatch ``pattern`` (case-insensitive)."""
        if not pattern:
            return self.entries(kind)
        pattern = pattern.lower()
        return [
            e for e in self.entries(kind)
            if any(fnmatch.fnmatchcase(n, pattern) for n in (e.spec.name, *e.spec.aliases))
        ]

    def get(self, kind: Kind, name: str) -> Entry:
        """The entry for a name or alias (any case); :class:`UnknownNameError` with suggestions."""
        canonical = self._aliases[kind].get(name.lower(), name.lower())
        entry = self._entries[kind].get(canonical)
        if entry is None:
            raise UnknownNameError(self._unknown_message(kind, name))
        return entry

    def vision(self, name: str) -> Entry:
        return self.get("vision", name)

    def llm(self, name: str) -> Entry:
        return self.get("llm", name)

    def vision_factory(self, builder: str, plugin: str | None = None) -> type[VisionBackbone]:
        """The class registered for a builder key (used to rebuild a saved model's encoder);
        ``plugin``: the distribution a saved model records for it, named when it is not installed."""
        for entry in self._entries["vision"].values():
            if entry.spec.builder == builder:
                return entry.factory
        providers = self._preset_plugins("vision", lambda spec: spec.builder == builder)
        if plugin:
            providers.add(plugin)
        hint = f"; it is provided by {', '.join(sorted(providers))}" if providers else ""
        raise UnknownNameError(
            f"no installed plugin builds vision backbones of kind {builder!r}{hint}{_install_hint(providers)}"
        )

    def chat_format(self, name: str, plugin: str | None = None) -> ChatFormat:
        """The registered chat format instance; :class:`UnknownNameError` with suggestions (and, given
        ``plugin``, the distribution a saved model records as providing it)."""
        if name not in self._chat_formats:
            close = difflib.get_close_matches(name, list(self._chat_formats), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            saved = f" The model was saved with it from {plugin}{_install_hint({plugin})}." if plugin else ""
            raise UnknownNameError(
                f"unknown chat format {name!r}.{saved}{hint} "
                f"Available: {', '.join(sorted(self._chat_formats)) or 'none'}"
            )
        return self._chat_formats[name][0]

    def chat_formats(self) -> dict[str, str]:
        """Chat format name -> the plugin that registered it."""
        return {name: plugin for name, (_, plugin) in sorted(self._chat_formats.items())}

    @property
    def preset_errors(self) -> dict[str, str]:
        """Preset files skipped as invalid while this host loaded its plugins (path -> reason)."""
        return dict(self._preset_errors)

    def _preset_plugins(self, kind: Kind, predicate) -> set[str]:
        try:
            with recording_preset_errors(self._preset_errors):
                return {s.plugin for s in iter_presets(kind) if predicate(s) and s.plugin}
        except Exception:
            return set()

    def _unknown_message(self, kind: Kind, name: str) -> str:
        label = "vision encoder" if kind == "vision" else "LLM"
        known = {n: e for e in self._entries[kind].values() for n in (e.spec.name, *e.spec.aliases)}
        lines = [f"unknown {label} {name!r}."]
        # A preset in registry/ whose plugin is not installed: say which package provides it.
        missing = self._preset_plugins(
            kind, lambda s: name.lower() in (s.name, *s.aliases) and s.name not in self._entries[kind]
        )
        if missing:
            loaded = {
                _canonical(info.distribution) for info in self.plugins.values() if info.distribution and not info.errors
            }
            absent = sorted(d for d in missing if _canonical(d) not in loaded)
            present = sorted(set(missing) - set(absent))
            if absent:
                lines.append(
                    f"It is defined in the registry but provided by plugin {', '.join(absent)}, "
                    "which is not installed or failed to load (see `ovis plugins`)."
                )
            if present:
                lines.append(
                    f"A preset file defines it for plugin {', '.join(present)}, which is installed and loaded but "
                    "did not register it: a plugin registers the preset files of its builders by calling "
                    "iter_presets(kind, builders={...}) in its hook (docs/writing-a-plugin.md, Specs)."
                )
        # A preset file of this name that was skipped as invalid: its error says why the name is unknown.
        for path, problem in self.preset_errors.items():
            if Path(path).stem.lower() == name.lower():
                lines.append(f"The preset file {path} was skipped as invalid: {problem.removeprefix(path + ': ')}")
        close = difflib.get_close_matches(name.lower(), list(known), n=4, cutoff=0.5)
        if not close:
            close = [n for n in known if name.lower() in n][:4]
        if close:
            hints = ", ".join(f"{c!r} (plugin {known[c].plugin})" for c in close)
            lines.append(f"Did you mean {hints}?")
        lines.append(f"Available: {', '.join(sorted(self._entries[kind])) or 'none'}.")
        broken = [p.name for p in self.plugins.values() if p.errors]
        if broken:
            lines.append(f"Plugins that failed to load: {', '.join(broken)} (see `ovis plugins`).")
        return " ".join(lines)


    # -- whose error ---------------------------------------------------------------------------
    def blame(self, exc: BaseException) -> tuple[PluginInfo, str] | None:
        """The plugin whose own code raised ``exc``, and where (``file:line``): the innermost frame of
        its traceback that is either a plugin's or ovis's decides; library frames (torch,
        transformers) in between are passed over. None where ovis's code comes first or no plugin's
        code is in the traceback. A plugin inside the ``ovis`` package is ovis's own."""
        roots: list[tuple[str, PluginInfo]] = []
        for name, info in self.plugins.items():
            obj = self.pm.get_plugin(name)
            if obj is None:
                continue
            module = obj.__name__ if isinstance(obj, types.ModuleType) else type(obj).__module__
            top = module.split(".")[0]
            if top != "ovis":
                roots += [(root, info) for root in _package_roots(top)]
        core = _package_roots("ovis")
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            path = os.path.realpath(frame.filename)
            if any(_within(path, root) for root in core):
                return None
            for root, info in roots:
                if _within(path, root):
                    return info, f"{frame.filename}:{frame.lineno}"
        return None


def _install_hint(distributions: set[str]) -> str:
    """``: pip install NAME`` for distributions that are not installed (nothing for those that are:
    a plugin installed but failing to load is told by `ovis plugins`)."""
    missing = []
    for name in sorted(distributions):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if not missing:
        return " (installed, but it did not register it: see `ovis plugins`)" if distributions else ""
    return f" (not installed: pip install {' '.join(missing)})"


def _package_roots(top: str) -> list[str]:
    """Where the code of top-level package (or module) ``top`` lives: its directories, or its file."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [os.path.realpath(p) for p in spec.submodule_search_locations]
    return [os.path.realpath(spec.origin)] if spec.origin else []


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


@functools.lru_cache(maxsize=1)
def get_host() -> PluginHost:
    """The process-wide host built from installed entry points (cached; see :func:`reset_host`)."""
    return PluginHost()


def reset_host() -> None:
    """Forget the process-wide host (and with it its plugin and preset errors); the next
    :func:`get_host` discovers the entry points again."""
    get_host.cache_clear()
