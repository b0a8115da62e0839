"""The workspace database: its tables, the records rooms share through it, and the questions
every room asks of it.

`tables` (the sqlmodel tables, opening a database, Meta values, array blobs), `contracts`
(typed records one room writes and others read, and the `Workspace` / `Learner` protocols),
`queries` (a feature's human label, the best accepted label, taken features, the selected SAE,
coverage states), `paths` (the workspace's own paths it records, rebased when the folder
is copied or moved).
"""
