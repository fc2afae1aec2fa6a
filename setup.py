"""Lists the compiled extensions; everything else is in pyproject.toml.

BT_AGENT_DEBUG_BUILD=1 compiles with line tracing for profilers and coverage.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("BT_AGENT_DEBUG_BUILD") == "1"

DIRECTIVES = {"language_level": 3, "embedsignature": True}
MACROS: list[tuple[str, str | None]] = []
if DEBUG:
    DIRECTIVES.update({"linetrace": True, "profile": True})
    MACROS.append(("CYTHON_TRACE_NOGIL", "1"))

CFLAGS = ["-O3"] if os.name != "nt" else ["/O2"]


def ext(name: str, source: str) -> Extension:
    return Extension(
        name,
        [source],
        include_dirs=["_native"],
        define_macros=MACROS,
        extra_compile_args=CFLAGS,
    )


setup(
    ext_modules=cythonize(
        [
            ext("agent.codec._crc32c_c", "_native/_crc32c_c.pyx"),
            ext("agent.split._splitters_c", "_native/_splitters_c.pyx"),
            ext("agent.dataproc._dataproc_c", "_native/_dataproc_c.pyx"),
        ],
        compiler_directives=DIRECTIVES,
        include_path=["_native"],
    ),
)
