"""CRC-32C, from the compiled module or its pure-Python twin (see ``agent._compat``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent._compat import NO_EXTENSIONS

if TYPE_CHECKING or NO_EXTENSIONS:
    from agent.codec._crc32c_py import implementation, masked, value
else:
    try:
        from agent.codec._crc32c_c import implementation, masked, value
    except ImportError:  # pragma: no cover - a source tree that was never built
        from agent.codec._crc32c_py import implementation, masked, value

__all__ = ["implementation", "masked", "value", "IS_NATIVE"]

IS_NATIVE: bool = implementation() != "python"
