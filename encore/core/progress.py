"""Progress on long work: a tqdm bar on a terminal, a plain log line every N seconds elsewhere.

Under CI or cron (stderr is not a TTY) a bar would write hundreds of carriage-return frames into
the log file; there a line such as

    12:03:41 INFO    encore.progress: e4srec epoch 2/4: 3,200/8,000 samples (40%), 112 samples/s, ETA 43 s, loss 6.812

every ``ENCORE_PROGRESS_SECONDS`` (default 30) reads well and greps well.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import TracebackType
from typing import Any

log = logging.getLogger("encore.progress")

DEFAULT_INTERVAL_S = 30.0


def interval_s() -> float:
    """Seconds between plain progress lines (``ENCORE_PROGRESS_SECONDS``; <= 0 turns them off)."""
    try:
        return float(os.environ.get("ENCORE_PROGRESS_SECONDS", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Counts ``total`` units of work (``unit``: "sample", "track", "user").

    ``update(n, **postfix)`` after each piece; ``postfix`` values (loss=...) show beside the rate.
    ``tty``: None decides from stderr; True forces a bar, False the plain lines (tests).
    """

    def __init__(self, total: int, desc: str, unit: str, tty: bool | None = None,
                 every_s: float | None = None) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.done = 0
        self.postfix: dict[str, Any] = {}
        self.every_s = interval_s() if every_s is None else every_s
        self._t0 = self._last = time.perf_counter()
        self._bar = None
        if sys.stderr.isatty() if tty is None else tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, unit_scale=False, leave=False,
                             file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.done += n
        if postfix:
            self.postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _show(v) for k, v in self.postfix.items()}, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.every_s > 0 and now - self._last >= self.every_s and self.done < self.total:
            self._last = now
            log.info("%s", self.line())

    def line(self) -> str:
        """``desc: done/total unit (pct), rate unit/s, ETA t[, key value ...]``."""
        took = time.perf_counter() - self._t0
        rate = self.done / took if took > 0 else 0.0
        pct = f" ({self.done / self.total:.0%})" if self.total else ""
        eta = f", ETA {_duration((self.total - self.done) / rate)}" if rate > 0 and self.total > self.done else ""
        extra = "".join(f", {k} {_show(v)}" for k, v in self.postfix.items())
        return (f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}s{pct}, {rate:,.1f} {self.unit}s/s"
                f"{eta}{extra}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _show(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


__all__ = ["Progress", "interval_s"]
