"""Named fault-injection points, for the kill and failure tests.

``ENCORE_FAULT=<name>`` makes the process SIGKILL itself when it reaches point ``<name>``: the
tests then know exactly where the kill landed, with no sleeps. Unset (always, in production), a
point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    if os.environ.get("ENCORE_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


class InjectedFault(RuntimeError):
    """Raised at a :func:`fail` point named by ``ENCORE_FAIL``."""


def fail(name: str) -> None:
    """``ENCORE_FAIL=<name>`` makes point ``<name>`` raise (a step that fails, the process lives on)."""
    if os.environ.get("ENCORE_FAIL") == name:
        raise InjectedFault(f"injected failure at {name} (ENCORE_FAIL)")
