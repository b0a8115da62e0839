"""The paths a workspace's database records of its own files (SAE folders, the taxonomy file),
and pointing them at a copied or moved workspace's folder: the database travels with the
folder, so must the paths it keeps.
"""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session, select

from safesail.db.tables import SaeRecord, get_meta, set_meta

WORKSPACE_ROOT = "workspace_root"
"""Meta key: the folder the workspace's own paths (SAE folders, taxonomy file) were written
under."""
TAXONOMY_PATH = "taxonomy_path"
"""Meta key: the workspace's taxonomy file (absent: the packaged default)."""


def _moved(path: Path, base: Path | None, root: Path) -> Path | None:
    """`path`, written under the folder `base`, at the same place under `root`; None for a path
    outside `base` (a file added from elsewhere stays where it is)."""
    if base is None or not path.is_relative_to(base):
        return None
    return root / path.relative_to(base)


def rebase_paths(session: Session, root: Path) -> int:
    """Point the paths a copied or moved workspace keeps, its SAE folders and its taxonomy
    file, at their places under its new `root`, not the original's (which may be gone, or be
    changed by someone else). A path under the recorded old root is relative to the
    workspace, so it follows even when the file is not there yet: a copy whose database was
    opened before its `saes/` arrived must not keep reading the original's files (a missing
    file is an error at load, naming the path). Paths outside the old root (an SAE or a
    taxonomy from elsewhere) stay. A workspace written before the root was recorded: its SAEs
    under a `saes/` folder are taken to be its own, but only where the copy has that folder,
    as that root is a guess. Returns how many paths moved."""
    root = root.resolve()
    old = get_meta(session, WORKSPACE_ROOT)
    if old == str(root):
        return 0
    moved = 0
    for record in session.exec(select(SaeRecord).where(SaeRecord.path != "")):
        path = Path(record.path)
        base = Path(old) if old else (path.parent.parent if path.parent.name == "saes" else None)
        target = _moved(path, base, root)
        if target is not None and target != path and (old or target.is_dir()):
            record.path = str(target)
            moved += 1
    taxonomy = get_meta(session, TAXONOMY_PATH)
    if old and taxonomy and (target := _moved(Path(taxonomy), Path(old), root)) is not None:
        set_meta(session, TAXONOMY_PATH, str(target))
        moved += 1
    set_meta(session, WORKSPACE_ROOT, str(root))
    return moved
