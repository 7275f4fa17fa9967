"""Watches a policy folder cheaply, so a changed policy or data file is used by the next decision.

Before every decision the engine asks `poll()`: one directory scan and one stat per file, and a
read only when a stat changed or a file is so new that its mtime cannot be trusted yet (file
systems stamp mtimes with a coarse clock, so two writes a few milliseconds apart can leave the
same mtime and size; the same "racy" rule git uses for its index). No watcher thread, no restart.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import policies

RACY_NS = 2_000_000_000  # files modified this recently are re-read on every poll

Stat = tuple[str, int, int, int]  # name, mtime_ns, size, inode


class FolderWatch:
    """The current policy and data files (not the `*_test.rego` ones) of one folder.

    With a `fallback` folder, the fallback's files are used while `folder` holds none, so a
    project whose policies/ is written after the gatekeeper started switches to them at once.
    """

    def __init__(self, folder: Path, fallback: Path | None = None) -> None:
        self.folder = folder
        self.fallback = fallback
        self.source = folder  # the folder the current files came from
        self._stats: tuple[Stat, ...] | None = None
        self._contents: dict[str, bytes] | None = None
        self._racy = True

    def poll(self) -> dict[str, bytes] | None:
        """The files' contents when they differ from the last poll (always on the first), else None.

        Raises OSError when a file cannot be read.
        """
        source, stats = self.folder, self._scan(self.folder)
        if not stats and self.fallback is not None:
            source, stats = self.fallback, self._scan(self.fallback)
        if stats == self._stats and source == self.source and not self._racy:
            return None
        self.source = source
        contents = {}
        for name, *_ in stats:
            try:
                contents[name] = (source / name).read_bytes()
            except FileNotFoundError:  # removed since the scan: the next poll sees the change
                continue
        self._stats = stats
        now = time.time_ns()
        self._racy = any(now - mtime < RACY_NS for _, mtime, _, _ in stats)
        if contents == self._contents:
            return None
        self._contents = contents
        return contents

    @staticmethod
    def _scan(folder: Path) -> tuple[Stat, ...]:
        stats = []
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return ()
        for entry in entries:
            if not policies.is_policy_name(entry.name):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                stats.append((entry.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sorted(stats))
