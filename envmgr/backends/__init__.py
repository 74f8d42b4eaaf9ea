"""Compute backends. A backend is registered under the `envmgr.backends` entry-point group
(or named by a dotted path `package.module:Class`), so adding one touches no other module."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points

from envmgr.backends.base import Backend
from envmgr.settings import Settings


def load_backend(settings: Settings) -> Backend:
    name = settings.backend
    if ":" in name:
        module, _, attr = name.partition(":")
        cls = getattr(import_module(module), attr)
    else:
        found = {ep.name: ep for ep in entry_points(group="envmgr.backends")}
        if name not in found:
            raise ValueError(
                f"unknown backend {name!r}; installed backends: {', '.join(sorted(found))}")
        cls = found[name].load()
    backend = cls(settings)
    if not isinstance(backend, Backend):
        raise TypeError(f"{name!r} is not a Backend (see envmgr/backends/base.py)")
    return backend
