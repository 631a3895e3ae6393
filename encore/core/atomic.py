"""Publish staged directories over live ones so readers never see a half-written directory.

A job writes everything under ``tmp/staging/<run>/`` first (a kill there leaves the lake as it
was). Then :func:`publish` writes a journal - the commit point - and swaps each directory with two
renames (live -> trash, staged -> live). Each rename is atomic on one filesystem, so every live
directory is always either its old complete version or its new complete version. A kill during
the swaps leaves the journal behind; :func:`recover` (run at the start of every writing job) rolls
it forward, so the next run finishes the publication before doing anything else.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from encore.core import faults

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swap:
    staged: Path  # complete new version, written by this run
    live: Path  # what readers read
    trash: Path  # where the old version goes until the journal is closed
    # Retire ``live`` without a replacement (a recomputed range that no longer has this partition).
    delete: bool = False


def _write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: object) -> None:
    """Write a small JSON file so that readers see the old file or the new one, never a torn one."""
    _write_json_atomic(path, data)


def new_run_id() -> str:
    """A sortable, unique id for one job run: UTC start time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def write_report(reports: Path, run_id: str, data: object) -> None:
    """Keep a run's report as ``<run_id>.json`` and as ``latest.json`` in ``reports``."""
    _write_json_atomic(reports / f"{run_id}.json", data)
    _write_json_atomic(reports / "latest.json", data)


def publish(swaps: Sequence[Swap], journal: Path) -> None:
    """Swap every ``staged`` directory into ``live``; all-or-roll-forward across a crash."""
    if not swaps:
        return
    _write_json_atomic(
        journal,
        [{"staged": str(s.staged), "live": str(s.live), "trash": str(s.trash), "delete": s.delete} for s in swaps],
    )
    _roll_forward(journal)


def publish_run(swaps: Sequence[Swap], journals: Path, stage: Path, trash: Path) -> None:
    """A job's commit: :func:`publish` its swaps under ``journals/<run>.json``, then drop the run's
    staging and trash folders (``stage`` and ``trash`` are named by the run id)."""
    publish(swaps, journals / f"{stage.name}.json")
    shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(trash, ignore_errors=True)


def _retire(s: Swap) -> None:
    """Move ``live`` to ``trash`` if it exists; a stale trash (never made by this code) must not block it."""
    if s.live.exists():
        if s.trash.exists():
            shutil.rmtree(s.trash)
        s.trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(s.live, s.trash)


def _roll_forward(journal: Path) -> None:
    entries = [Swap(Path(e["staged"]), Path(e["live"]), Path(e["trash"]), bool(e.get("delete", False)))
               for e in json.loads(journal.read_text())]
    for i, s in enumerate(entries):
        if s.delete:
            _retire(s)
        elif s.staged.exists():
            # States: (live, no trash) fresh; (no live, trash) killed between the two renames;
            # (no live, no trash) a new partition.
            _retire(s)
            s.live.parent.mkdir(parents=True, exist_ok=True)
            os.rename(s.staged, s.live)
        if i == 0 and len(entries) > 1:
            faults.point("publish.mid_swap")
    for s in entries:
        if s.trash.exists():
            shutil.rmtree(s.trash, ignore_errors=True)
    journal.unlink()


def recover(journal_dir: Path) -> int:
    """Finish every publication a killed run left half done. Returns how many were rolled forward."""
    if not journal_dir.is_dir():
        return 0
    done = 0
    for journal in sorted(journal_dir.glob("*.json")):
        log.warning("rolling forward interrupted publication %s", journal.name)
        _roll_forward(journal)
        done += 1
    return done
