"""modAL-python 0.4.2.1 (2023) compatibility with numpy 2 and scikit-learn >= 1.6, applied once
on import. Every module of this room imports modAL through here, so the fixes live in one place.

- `ActiveLearner._fit_to_known/teach` call `check_X_y(force_all_finite=...)`, a keyword
  scikit-learn renamed to `ensure_all_finite` (and then removed).
- `modAL.expected_error` uses `np.float` in a signature, removed in numpy 2.
- `modAL.cluster` imports `sklearn.cluster.hierarchical`, now `sklearn.cluster`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import numpy as np
import sklearn.cluster
from sklearn.utils import check_X_y as _check_X_y


def check_X_y(*args: Any, force_all_finite: bool | str | None = None, **kwargs: Any) -> Any:
    """scikit-learn's check_X_y that still accepts modAL's old keyword."""
    if force_all_finite is not None:
        kwargs.setdefault("ensure_all_finite", force_all_finite)
    return _check_X_y(*args, **kwargs)


def _import_with(name: str, module_aliases: dict[str, Any], np_aliases: dict[str, Any]) -> None:
    """Import a modAL module while the names it expects exist, then remove them again so the
    rest of the process sees numpy and scikit-learn unchanged."""
    added_modules = [k for k in module_aliases if k not in sys.modules]
    added_np = [k for k in np_aliases if k not in np.__dict__]
    sys.modules.update({k: module_aliases[k] for k in added_modules})
    for key in added_np:
        setattr(np, key, np_aliases[key])
    try:
        importlib.import_module(name)
    finally:
        for key in added_modules:
            del sys.modules[key]
        for key in added_np:
            delattr(np, key)


def apply() -> None:
    """Patch modAL (idempotent)."""
    import modAL.models.learners as learners

    learners.check_X_y = check_X_y
    _import_with("modAL.expected_error", {}, {"float": float})
    _import_with("modAL.cluster", {"sklearn.cluster.hierarchical": sklearn.cluster}, {})


apply()
