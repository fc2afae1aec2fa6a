"""The one place that decides between compiled modules and their pure-Python twins,
and the few plain facts every layer may use (imports nothing from ``agent``).

``BT_AGENT_NO_EXTENSIONS=1`` (any non-empty value) forces the pure twins; otherwise
each twin pair imports its compiled module and falls back to the pure one only
when the compiled module is missing (for example a source checkout never built).
"""

from __future__ import annotations

import os

NO_EXTENSIONS: bool = bool(os.environ.get("BT_AGENT_NO_EXTENSIONS"))

# What byte-level functions accept (``collections.abc.Buffer`` needs Python 3.12).
BytesLike = bytes | bytearray | memoryview

# A mebibyte: MiB as SageMaker's *MB fields (MaxPayloadInMB) and the agent's mean them.
MIB = 1 << 20
