"""Check that the installed llama.cpp libraries run on every machine of this project's kind.

A native build (`-march=native`) on a CPU that advertises AMX or AVX-512 emits instructions
that trap on machines without them (the embedded server then dies with SIGILL at its first
completion). `make install` builds with portable flags; this check disassembles the installed
libraries and refuses any AMX tile instruction or AVX-512 (zmm) register, so a wheel that came
from somewhere else (pip's cache, another build) cannot slip through.

Run: `python -m safesail.explainer.portable` (exit 1 with one line per offending library).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

# AMX tile instructions and any AVX-512 register: neither exists on every machine of this kind.
_FORBIDDEN = re.compile(r"\b(tileloadd\w*|tilestored|ldtilecfg|tdpb\w+|tdpfp16ps)\b|%zmm\d+")


def llama_libraries() -> list[Path]:
    """The shared libraries of the installed llama_cpp package (empty if it is not installed)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(spec.submodule_search_locations[0])
    return sorted(p for p in root.rglob("*.so*") if p.is_file())


def forbidden_in(listing: str) -> dict[str, int]:
    """Count of each forbidden instruction or register in an objdump listing."""
    counts: dict[str, int] = {}
    for match in _FORBIDDEN.finditer(listing):
        name = "zmm registers (AVX-512)" if match.group(0).startswith("%zmm") else match.group(0)
        counts[name] = counts.get(name, 0) + 1
    return counts


def forbidden_instructions(library: Path) -> dict[str, int]:
    """Count of each forbidden instruction or register in the library's disassembly."""
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return forbidden_in(listing)


def main() -> int:
    libraries = llama_libraries()
    if not libraries:
        print("portable check: llama-cpp-python is not installed; nothing to check")
        return 0
    if shutil.which("objdump") is None:
        print("portable check: objdump not found (apt-get install binutils); not checked")
        return 0
    bad = {lib: found for lib in libraries if (found := forbidden_instructions(lib))}
    for lib, found in bad.items():
        what = ", ".join(f"{name} x{n}" for name, n in sorted(found.items()))
        print(
            f"portable check: {lib.name} uses {what}: not every machine of this kind has them; "
            "rebuild with `make install` (portable CMAKE_ARGS)",
            file=sys.stderr,
        )
    if not bad:
        print(f"portable check: {len(libraries)} llama.cpp libraries use no AMX or AVX-512")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
