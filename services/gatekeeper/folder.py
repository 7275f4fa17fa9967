"""Watches a policy folder cheaply, so a changed policy or data file is used by the next decision.

Before every decision the engine asks `poll()`: one stat per file, and a read only when a stat
changed or a file is so new that its mtime cannot be trusted yet (file systems stamp mtimes with
a coarse clock, so two writes a few milliseconds apart can leave the same mtime and size; the same
"racy" rule git uses for its index). No watcher thread, no restart.
"""

from __future__ import annotations

import time
from pathlib import Path

import policies

RACY_NS = 2_000_000_000  # files modified this recently are re-read on every poll


class FolderWatch:
    """The current policy and data files (not the `*_test.rego` ones) of one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._stats: tuple[tuple[str, int, int, int], ...] | None = None
        self._contents: dict[str, bytes] | None = None
        self._racy = True

    def poll(self) -> dict[str, bytes] | None:
        """The files' contents when they differ from the last poll (always on the first), else None.

        Raises OSError when a file cannot be read.
        """
        stats = self._stat()
        if stats == self._stats and not self._racy:
            return None
        contents = {path.name: path.read_bytes() for path in policies.policy_files(self.folder)}
        self._stats = stats
        now = time.time_ns()
        self._racy = any(now - mtime < RACY_NS for _, mtime, _, _ in stats)
        if contents == self._contents:
            return None
        self._contents = contents
        return contents

    def _stat(self) -> tuple[tuple[str, int, int, int], ...]:
        stats = []
        for path in policies.policy_files(self.folder):
            try:
                st = path.stat()
            except FileNotFoundError:  # removed since the listing: the next poll sees the change
                continue
            stats.append((path.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stats)
