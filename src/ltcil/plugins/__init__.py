"""Cross-method stages: plugins the experiment runs after any method's task (Liu et al.'s two-stage LWS recipe,
a GVAlign-style classifier alignment). A plugin adds classifiers beside the method's and keeps its own state in the
checkpoints; it never changes the method object."""

from __future__ import annotations

from .base import Plugin
from .gvalign import GVAlign
from .two_stage import TwoStage


def build_plugins(cfg, method) -> list[Plugin]:
    """The plugins the config switches on, checked against the method (a ConfigError names what is missing)."""
    plugins: list[Plugin] = []
    if cfg.two_stage.enabled:
        plugins.append(TwoStage(cfg, method))
    if cfg.gvalign.enabled:
        plugins.append(GVAlign(cfg, method))
    return plugins


__all__ = ["GVAlign", "Plugin", "TwoStage", "build_plugins"]
