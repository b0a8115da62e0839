"""The `safesail` command: `main` (runs the commands), `commands` (the argument parser, the
core's subcommands and the rooms'), `flags` (flags derived from the config dataclasses).
"""
