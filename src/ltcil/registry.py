"""Name -> component registries, so adding a method, dataset or backbone touches no central list."""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Dict

from .errors import ConfigError

_REGISTRIES: Dict[str, Dict[str, Callable]] = {"method": {}, "dataset": {}, "backbone": {}}

# Modules whose import registers the built-in components (imported lazily, on first lookup).
_BUILTIN_MODULES = {
    "method": "ltcil.methods",
    "dataset": "ltcil.data",
    "backbone": "ltcil.backbones",
}


def _register(kind: str, name: str):
    def decorator(obj):
        table = _REGISTRIES[kind]
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = obj
        return obj

    return decorator


def register_method(name: str):
    return _register("method", name)


def register_dataset(name: str):
    return _register("dataset", name)


def register_backbone(name: str):
    return _register("backbone", name)


def available(kind: str) -> list[str]:
    importlib.import_module(_BUILTIN_MODULES[kind])
    return sorted(_REGISTRIES[kind])


def get(kind: str, name: str, key: str | None = None):
    """Look up a component; an unknown name fails with the config key and the closest valid names."""
    names = available(kind)
    if name not in _REGISTRIES[kind]:
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        where = f"{key}: " if key else ""
        raise ConfigError(f"{where}unknown {kind} {name!r}. Valid {kind}s: {', '.join(names)}.{hint}")
    return _REGISTRIES[kind][name]
