"""The `active_learning` room's commands and demo step (registered in pyproject.toml)."""

from safesail.plugins import Plugin

PLUGIN = Plugin(name="active_learning", order=5)
