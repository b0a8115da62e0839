"""The embedded llama.cpp server's build runs on every machine of this kind: no AMX tile
instructions, no AVX-512 (a native build on one CPU trapped with SIGILL on another)."""

from __future__ import annotations

import importlib.util
import shutil

from safesail.explainer.portable import forbidden_in, forbidden_instructions, llama_libraries
from tests.conftest import skip_or_fail

LISTING = """
  4a1f20:	vfmadd231ps %ymm1,%ymm2,%ymm3
  4a1f26:	tileloadd (%rsi,%rdx,1),%tmm0
  4a1f2c:	vmovups %zmm0,(%rax)
  4a1f32:	tdpbssd %tmm2,%tmm1,%tmm0
  4a1f38:	vpaddd %zmm1,%zmm2,%zmm3
"""


def test_forbidden_in_counts_amx_and_avx512_only():
    assert forbidden_in(LISTING) == {
        "tileloadd": 1,
        "tdpbssd": 1,
        "zmm registers (AVX-512)": 4,
    }
    assert forbidden_in("  4a1f20:\tvfmadd231ps %ymm1,%ymm2,%ymm3\n") == {}


def test_installed_llama_cpp_is_portable():
    if importlib.util.find_spec("llama_cpp") is None:
        skip_or_fail("llama-cpp-python is not installed (make install builds it)")
    if shutil.which("objdump") is None:
        skip_or_fail("objdump is missing (apt-get install binutils)")
    libraries = llama_libraries()
    assert any(lib.name.startswith("libggml-cpu") for lib in libraries), libraries
    assert {lib.name: forbidden_instructions(lib) for lib in libraries} == {
        lib.name: {} for lib in libraries
    }
