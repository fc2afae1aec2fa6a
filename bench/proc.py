"""What /proc says about a process the benchmarks started (Linux)."""

from __future__ import annotations


def vm_hwm(pid: int) -> int:
    """``VmHWM`` (peak resident set) of ``pid`` in bytes; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
