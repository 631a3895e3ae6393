"""Publish staged directories over live ones so readers never see a half-written directory.

A job writes everything under ``tmp/staging/<run>/`` first (a kill there leaves the lake as it
was). Then :func:`publish` writes a journal - the commit point - and swaps each directory with two
renames (live -> trash, staged -> live). Each rename is atomic on one filesystem, so every live
directory is always either its old complete version or its new complete version. A kill during
the swaps leaves the journal behind; :func:`recover` (run at the start of every writing job) rolls
it forward, so the next run finishes the publication before doing anything else.

Period-partitioned tables (``encore.core.lake``) are published by a :class:`Repoint` instead: the
run assembles a complete new snapshot folder, and the journal's roll-forward renames a new symlink
over the table's link. One run is one journal, whatever number of periods it changed.
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


@dataclass(frozen=True)
class Repoint:
    """Point the symlink ``link`` (a live lake table) at the complete snapshot folder ``target``.

    One ``rename`` of a fresh link over the old one: readers resolve either the old snapshot or
    the new one. ``previous`` (the old target, None for a new table) is kept for readers that
    resolved it before the swap; every other snapshot of the table is deleted afterwards.
    """
    link: Path
    target: Path
    previous: Path | None = None
    # The snapshot as the run assembled it under tmp/staging/: moved to ``target`` first, so the
    # lake holds nothing of a run until its journal exists.
    staged: Path | None = None


Entry = Swap | Repoint


def repoint_of(link: Path, target: Path, staged: Path | None = None) -> Repoint:
    """A :class:`Repoint` of ``link`` to ``target``, remembering what it points at now."""
    return Repoint(link, target, Path(os.path.realpath(link)) if link.is_symlink() else None, staged)


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


def _entry_json(e: Entry) -> dict[str, object]:
    if isinstance(e, Repoint):
        return {"link": str(e.link), "target": str(e.target),
                "previous": None if e.previous is None else str(e.previous),
                "staged": None if e.staged is None else str(e.staged)}
    return {"staged": str(e.staged), "live": str(e.live), "trash": str(e.trash), "delete": e.delete}


def _entry(d: dict[str, object]) -> Entry:
    if "link" in d:
        prev, staged = d.get("previous"), d.get("staged")
        return Repoint(Path(str(d["link"])), Path(str(d["target"])), None if prev is None else Path(str(prev)),
                       None if staged is None else Path(str(staged)))
    return Swap(Path(str(d["staged"])), Path(str(d["live"])), Path(str(d["trash"])), bool(d.get("delete", False)))


def publish(swaps: Sequence[Entry], journal: Path) -> None:
    """Swap every ``staged`` directory into ``live`` and repoint every table link; all or
    roll-forward across a crash."""
    if not swaps:
        return
    _write_json_atomic(journal, [_entry_json(s) for s in swaps])
    _roll_forward(journal)


def publish_run(swaps: Sequence[Entry], journals: Path, stage: Path, trash: Path) -> None:
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


def _repoint(r: Repoint) -> None:
    """Idempotent: a rerun after a kill finds the link already right, or makes it so."""
    rel = os.path.relpath(r.target, r.link.parent)
    if r.link.is_symlink() and os.readlink(r.link) == rel:
        return
    r.link.parent.mkdir(parents=True, exist_ok=True)
    tmp = r.link.with_name(f".{r.link.name}.link-tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(rel, tmp)
    os.replace(tmp, r.link)  # rename(2): atomic, also over an existing link


def _prune(r: Repoint) -> None:
    keep = {r.target} | ({r.previous} if r.previous is not None else set())
    parent = r.target.parent
    for d in sorted(parent.iterdir()) if parent.is_dir() else []:
        if d.is_dir() and d not in keep:
            shutil.rmtree(d, ignore_errors=True)


def _roll_forward(journal: Path) -> None:
    entries = [_entry(e) for e in json.loads(journal.read_text())]
    for i, s in enumerate(entries):
        if isinstance(s, Repoint):
            if s.staged is not None and s.staged.is_dir() and not s.target.exists():
                s.target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(s.staged, s.target)
            if s.target.is_dir():
                _repoint(s)
        elif s.delete:
            _retire(s)
        elif s.staged.exists():
            # States: (live, no trash) fresh; (no live, trash) killed between the two renames;
            # (no live, no trash) a new partition.
            _retire(s)
            s.live.parent.mkdir(parents=True, exist_ok=True)
            os.rename(s.staged, s.live)
        if i == 0:  # kill tests: the first entry published, the rest and the cleanup not
            faults.point("publish.mid_swap")
    for s in entries:
        if isinstance(s, Repoint):
            _prune(s)
        elif s.trash.exists():
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
