"""Supervised children of the local control plane, and how a recorded process is known again.

`SupervisedChild` is one long-running server the supervisor keeps alive with the same command
line (the embedded redis-server: same port, same data folder; any other managed server the same
way): started, polled, restarted with backoff when it exits, stopped with a grace. `Identity` is
what the control plane records about a process it started (pid, create time, a marker of its
command line) so that `down` and `ps` later act only on that very process: a pid reused by
someone else's process has another create time and is never signalled.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from pydantic import BaseModel

RESTART_FIRST_S = 0.5
RESTART_MAX_S = 10.0
CRASH_WINDOW_S = 60.0
CREATE_TIME_SLACK_S = 0.05


class Identity(BaseModel):
    """A process as recorded when it was started: pid, create time, a marker of its cmdline."""

    pid: int
    create_time: float
    marker: str

    @classmethod
    def of(cls, pid: int, marker: str) -> Identity | None:
        with contextlib.suppress(psutil.Error):
            return cls(pid=pid, create_time=psutil.Process(pid).create_time(), marker=marker)
        return None

    def process(self) -> psutil.Process | None:
        """The live process if it is still the one recorded (same create time, marker in its
        command line, not a zombie), else None."""
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > CREATE_TIME_SLACK_S:
                return None  # the pid was reused
            if proc.status() == psutil.STATUS_ZOMBIE or self.marker not in " ".join(proc.cmdline()):
                return None
            return proc
        return None


def restart_due(crashes: list[float], now: float) -> tuple[bool, list[float]]:
    """Whether a child that exited may be restarted now (backing off 0.5 s doubling to 10 s per
    recent crash), and the crash times to keep (the last minute's, plus this one when due)."""
    recent = [t for t in crashes if now - t < CRASH_WINDOW_S]
    delay = min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** len(recent))
    if recent and now - recent[-1] < delay:
        return False, recent
    return True, [*recent, now]


class SupervisedChild:
    """One server process kept running with a fixed command line; see the module docstring."""

    def __init__(self, name: str, argv: list[str], log: Path, marker: str,
                 ready: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.name, self.argv, self.log, self.marker, self.ready = name, argv, log, marker, ready
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.crashes: list[float] = []
        self.identity: Identity | None = None

    def start(self) -> None:
        """Start the process and wait until `ready` returns (it raises when the child is not)."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.identity = Identity.of(self.proc.pid, self.marker)
        if self.ready is not None:
            self.ready()

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def restart_if_exited(self) -> bool:
        """Called every poll: restart the child if it exited and its backoff has passed."""
        code = self.exited()
        if code is None:
            return False
        due, self.crashes = restart_due(self.crashes, time.time())
        if not due:
            return False
        print(f"{self.name} exited with {code}; restarting", flush=True)
        self.restarts += 1
        try:
            self.start()
        except Exception as exc:  # whatever `ready` raised: it stays down; the next poll tries again
            print(f"{self.name} did not come back: {exc}", flush=True)
        return True

    def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
