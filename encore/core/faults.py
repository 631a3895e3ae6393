"""Named fault-injection points, for the kill tests.

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
