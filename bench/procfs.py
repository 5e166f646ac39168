"""A process and its children (vit-serve and its decode processes), read from /proc/<pid>/stat."""

from __future__ import annotations

import os
from collections.abc import Iterator


def process_tree(pid: int) -> Iterator[tuple[int, list[str]]]:
    """(pid, stat fields) of `pid` and of each of its children. The fields are those after the
    command name, so field i here is field i + 3 of proc(5): [1] ppid, [11] utime, [12] stime
    (clock ticks), [21] rss (pages). A process that exits while this reads is skipped."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            yield int(entry), fields
