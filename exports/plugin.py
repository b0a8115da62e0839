"""The `exports` room's commands and demo step (registered in pyproject.toml)."""

from safesail.plugins import Plugin

PLUGIN = Plugin(name="exports", order=30)
