"""Probes of a process through /proc: descriptors, memory, CPU time (Linux)."""

from __future__ import annotations

import os

__all__ = ["alive", "children", "cpu_seconds", "fd_count", "rss_kib"]


def fd_count(pid: int | None = None) -> int:
    """Open file descriptors of ``pid`` (this process by default)."""
    return len(os.listdir(f"/proc/{pid or 'self'}/fd"))


def rss_kib(pid: int | None = None) -> int:
    """Resident memory of ``pid`` in KiB."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU time of ``pid``, in seconds."""
    with open(f"/proc/{pid or 'self'}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a scan of /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, exited but not reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
