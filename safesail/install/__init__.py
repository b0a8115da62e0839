"""The install: the committed locks every install comes from, and `safesail doctor`, which checks
every part the project runs on against them.

`locks` (reading the locks shipped as package data, comparing an environment with them),
`doctor` (one line per part: its version, whether it works, the fix).
"""
