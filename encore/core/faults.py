"""Named fault-injection points, for the kill and failure tests.

``ENCORE_FAULT=<name>`` makes the process SIGKILL itself when it reaches point ``<name>``.
``ENCORE_HOLD=<name>`` makes it announce the point on stderr and wait there, so a test can kill
the whole process group (Spark's JVM, Ray's workers) from outside at a known moment: the test
synchronises on the line, never on a sleep. Unset (always, in production), a point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys

HOLD_LINE = "encore: holding at fault point {name} (pid {pid})"


def point(name: str) -> None:
    if os.environ.get("ENCORE_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("ENCORE_HOLD") == name:
        print(HOLD_LINE.format(name=name, pid=os.getpid()), file=sys.stderr, flush=True)
        while True:  # until the test's SIGKILL
            signal.pause()


class InjectedFault(RuntimeError):
    """Raised at a :func:`fail` point named by ``ENCORE_FAIL``."""


def fail(name: str) -> None:
    """``ENCORE_FAIL=<name>`` makes point ``<name>`` raise (a step that fails, the process lives on)."""
    if os.environ.get("ENCORE_FAIL") == name:
        raise InjectedFault(f"injected failure at {name} (ENCORE_FAIL)")
