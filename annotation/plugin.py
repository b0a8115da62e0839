"""The `annotation` room's commands and demo step (registered in pyproject.toml)."""

from safesail.plugins import Plugin

PLUGIN = Plugin(name="annotation", order=10)
