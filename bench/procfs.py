"""A process and its descendants (vit-serve, its front-ends, engine and decode processes), read
from /proc/<pid>/stat; and the CPU every figure is named with, from /proc/cpuinfo."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", …), which every benchmark figure names."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.processor())


def process_tree(pid: int) -> Iterator[tuple[int, list[str]]]:
    """(pid, stat fields) of `pid` and of each of its descendants. The fields are those after
    the command name, so field i here is field i + 3 of proc(5): [1] ppid, [11] utime, [12] stime
    (clock ticks), [21] rss (pages). A process that exits while this reads is skipped."""
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stats[int(entry)] = _stat(f"/proc/{entry}/stat")
        except OSError:
            continue
    tree = {pid}
    grew = True
    while grew:  # parents before children is not guaranteed by pid order: repeat until stable
        grew = False
        for child, fields in stats.items():
            if child not in tree and int(fields[1]) in tree:
                tree.add(child)
                grew = True
    for member in sorted(tree & stats.keys()):
        yield member, stats[member]


def cpu_seconds(fields: list[str]) -> float:
    """User and system CPU seconds from a process's or thread's stat fields (as `process_tree`'s)."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds so far of a server and its descendants: those of the rest (the
    process, or a group's supervisor, front-ends and engine), and those of its decode processes."""
    main = decoders = 0.0
    for process, fields in process_tree(pid):
        if is_decoder(process):
            decoders += cpu_seconds(fields)
        else:
            main += cpu_seconds(fields)
    return main, decoders


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """CPU seconds of thread `tid` of process `pid` (the main thread's tid is the pid)."""
    return cpu_seconds(_stat(f"/proc/{pid}/task/{tid}/stat"))


def _stat(path: str) -> list[str]:
    """A stat file's fields after the command name (which may hold spaces and parentheses)."""
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


def is_decoder(pid: int) -> bool:
    """Whether `pid` is one of vit-serve's decode processes (`python -m service.decoding`)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"service.decoding" in f.read()
    except OSError:
        return False
