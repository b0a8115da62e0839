"""Commands and demo steps contributed by the rooms built on the core (annotation, active
learning, explainer, exports, app), found through the ``safesail.plugins`` entry-point group, so
the core never imports them and one `safesail` command still serves everything.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safesail.db.contracts import Learner, LearnerFactory, Workspace

if TYPE_CHECKING:
    from safesail.install.doctor import Check

log = logging.getLogger(__name__)
"""Library messages go to a logger; the CLI decides what is shown (unconfigured, Python's
last-resort handler writes warnings to stderr)."""

Handler = Callable[[Workspace, argparse.Namespace, bool], int | None]
"""A command or demo step: (workspace, parsed args, show progress) -> exit code (None = 0)."""


@dataclass(frozen=True)
class Plugin:
    """What a room adds to the CLI."""

    name: str
    """Shown in errors and `safesail --help`."""
    order: int
    """Demo steps run by ascending order after the core steps (labeling 10, explainer 20, ...)."""
    add_commands: Callable[[Any, argparse.ArgumentParser], None] | None = None
    """(subparsers, common options parent): add subparsers; each sets `handler=` via
    `set_defaults`, called as a Handler."""
    add_demo_options: Callable[[argparse.ArgumentParser], None] | None = None
    """Adds this room's flags to `safesail demo`."""
    demo: Handler | None = None
    """This room's part of `safesail demo`, run after the core steps."""
    resume: Callable[[argparse.Namespace], str] | None = None
    """(demo args) -> the command that reruns only this room's demo step, named when it fails."""
    learner: LearnerFactory | None = None
    """The active learner this room offers the others (see safesail.db.contracts.Learner)."""
    setup: Callable[[Path, bool], None] | None = None
    """(cache dir, show progress): install what this room runs on, from its lock, so that
    after `safesail setup` (which `make install` runs) nothing is downloaded."""
    checks: Callable[[Path, bool], list[Check]] | None = None
    """(cache dir, start servers) -> this room's parts for `safesail doctor`; with start servers
    False, only what needs no server started (see safesail.install.doctor)."""


def load_plugins() -> list[Plugin]:
    """Every installed plugin, in demo order; a plugin that fails to import is skipped with a
    one-line warning rather than breaking the core commands."""
    plugins = []
    for ep in entry_points(group="safesail.plugins"):
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken room must not break the core CLI
            log.warning("safesail: warning: plugin '%s' not loaded: %s", ep.name, exc)
            continue
        plugins.append(plugin)
    return sorted(plugins, key=lambda p: (p.order, p.name))


def learner_factory() -> LearnerFactory | None:
    """The factory of the installed active learner, or None when no room offers one (the
    labeling room then falls back to the triage ranking). One entry-point scan: a caller that
    builds a learner per round (the demo's push/pull rounds, `label listen`) finds it once."""
    for plugin in load_plugins():
        if plugin.learner is not None:
            return plugin.learner
    return None


def find_learner(ws: Workspace, strategy: str | None = None) -> Learner | None:
    """The installed active learner for the workspace's selected SAE, or None when no room
    offers one."""
    factory = learner_factory()
    return None if factory is None else factory(ws, strategy)
