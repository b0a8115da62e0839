"""The `safesail` command: `main` (parses and dispatches), `commands` (the argument parser, the
core's subcommands and the rooms'), `handlers` and `demo` (the core's commands), `show` (the
tables they print), `flags` (flags derived from the config dataclasses).
"""
