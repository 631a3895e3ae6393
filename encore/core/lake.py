"""Period-partitioned lake tables, published whole: the layout every time-partitioned table uses.

    lake/bronze/listens  ->  ../_snapshots/bronze/listens/<run>        a relative symlink: the live table
    lake/_snapshots/bronze/listens/<run>/
        _manifest.json                       format, granularity, and per day: rows (+ a digest)
        period=2009-06/part-00000.parquet    the rows of that period's days, sorted by time; row
                                             groups of ``row_group_rows`` carry min/max of ``date``

Why: a listening history spans years, with quiet weeks. One folder per day made every job's cost
follow the number of days (one Spark output folder, one re-encode and one directory swap each); a
period (a month by default) holds a few hundred days' worth of small folders in one file, and the
date column's row-group statistics let date filters skip what a day-folder layout skipped.

Publication: a run writes the periods it changed into a new snapshot folder, hard-links every file
of the periods it did not change from the current snapshot (no copy, no rewrite: those rows stay
byte-identical) and then repoints the table's symlink - one atomic ``rename`` of a new link over the
old one (``encore.core.atomic.Repoint``). A reader sees the whole old table or the whole new one.
The previous snapshot is kept until the next publication, so a reader that resolved the link
(:func:`resolve`) before a publication can finish reading; older ones are deleted.

A workspace written by an older Encore (``date=YYYY-MM-DD`` folders) is refused with
:class:`LakeLayoutError`, which names ``encore lake migrate``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT = 2  # 1: one date=YYYY-MM-DD folder per day, swapped one by one
GRANULARITIES = ("month", "quarter", "year")
PARTITION_KEY = "period"
MANIFEST = "_manifest.json"
SNAPSHOTS = "_snapshots"  # under lake/: Spark, DuckDB and pyarrow skip names starting with "_"
LEGACY = "_legacy"  # under lake/: format-1 tables while `encore lake migrate` rewrites them


def read_tracks(tracks: Path, columns: Sequence[str]) -> pa.Table | None:
    """The bronze tracks table at ``tracks`` (``Workspace.tracks``), ``columns`` only, sorted by
    track_id - a stable order for every consumer - or None when no catalog has been ingested."""
    import pyarrow.dataset as pads

    if not tracks.is_dir() or not any(tracks.glob("*.parquet")):
        return None
    return pads.dataset(tracks, format="parquet").to_table(columns=list(columns)).sort_by("track_id")


class LakeLayoutError(RuntimeError):
    """A table is not in the layout this Encore reads; the message says what to run."""


def period_of(d: date, granularity: str) -> str:
    """The period folder value of day ``d``: 2009-06 (month), 2009-Q2 (quarter) or 2009 (year).

    Each granularity's values sort as strings in time order, so period ranges are string ranges.
    """
    if granularity == "month":
        return f"{d.year:04d}-{d.month:02d}"
    if granularity == "quarter":
        return f"{d.year:04d}-Q{(d.month - 1) // 3 + 1}"
    if granularity == "year":
        return f"{d.year:04d}"
    raise ValueError(f"unknown lake granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")


def periods_between(start: date, end: date, granularity: str) -> list[str]:
    """Every period that holds a day of [start, end], in order."""
    out: list[str] = []
    y, m = start.year, start.month
    while (y, m) <= (end.year, end.month):
        p = period_of(date(y, m, 1), granularity)
        if not out or out[-1] != p:
            out.append(p)
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def period_bounds(period: str) -> tuple[date, date]:
    """First and last day of a period value made by :func:`period_of`."""
    if "-Q" in period:
        y, q = int(period[:4]), int(period[-1])
        first, months = date(y, 3 * q - 2, 1), 3
    elif "-" in period:
        first, months = date(int(period[:4]), int(period[5:7]), 1), 1
    else:
        first, months = date(int(period), 1, 1), 12
    m = first.month - 1 + months
    nxt = date(first.year + m // 12, m % 12 + 1, 1)
    return first, date.fromordinal(nxt.toordinal() - 1)


@dataclass
class Manifest:
    """What a snapshot holds, readable without opening a parquet file.

    ``days``: ISO date -> {"rows": n} (+ "digest" for bronze listens: the XOR of the rows' hashes,
    which tells an incremental job which days changed without reading them).
    """
    granularity: str
    days: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = FORMAT

    @property
    def first_day(self) -> str | None:
        return min(self.days) if self.days else None

    @property
    def last_day(self) -> str | None:
        return max(self.days) if self.days else None

    @property
    def rows(self) -> int:
        return sum(int(v.get("rows", 0)) for v in self.days.values())

    def periods(self) -> list[str]:
        return sorted({period_of(date.fromisoformat(d), self.granularity) for d in self.days})

    def to_json(self) -> dict[str, Any]:
        # Nothing run-specific (the folder name is the run id): the same rows, the same manifest.
        return {"format": self.format, "granularity": self.granularity, "days": dict(sorted(self.days.items()))}


def is_legacy(table: Path) -> bool:
    """True when ``table`` is a real folder of ``date=`` partitions: the format-1 layout."""
    return table.is_dir() and not table.is_symlink() and any(
        p.name.startswith("date=") for p in table.iterdir())


def legacy_dir(lake: Path, table: Path) -> Path:
    """Where ``encore lake migrate`` keeps a format-1 table until its rewrite is published."""
    return lake / LEGACY / table.relative_to(lake)


def _lake_of(table: Path) -> Path | None:
    for parent in table.parents:
        if parent.name == "lake":
            return parent
    return None


def check_layout(table: Path, granularity: str | None = None) -> None:
    """Raise :class:`LakeLayoutError` unless ``table`` is absent or in this layout (and, when
    ``granularity`` is given, partitioned by it)."""
    lake = _lake_of(table)
    if lake is not None and legacy_dir(lake, table).exists():
        raise LakeLayoutError(f"the migration of {table} was interrupted; run `encore lake migrate` again "
                              f"to finish it (its rows are safe under lake/{LEGACY}/)")
    if is_legacy(table):
        raise LakeLayoutError(
            f"{table} is in the day-partitioned layout of an older Encore (one date=YYYY-MM-DD folder per "
            f"day). Run `encore lake migrate` once to rewrite the workspace into period partitions "
            f"(bronze rows are kept; feature tables are rebuilt by the next `encore features`).")
    if table.exists() and not table.is_symlink():
        raise LakeLayoutError(f"{table} should be a link to a snapshot under lake/{SNAPSHOTS}/ but is a "
                              f"plain {'folder' if table.is_dir() else 'file'}; move it away and rerun")
    if granularity is not None:
        m = read_manifest(table)
        if m is not None and m.granularity != granularity:
            raise LakeLayoutError(
                f"{table} is partitioned by {m.granularity} but lake.granularity is {granularity}: "
                f"run `encore lake migrate` to repartition it, or set lake.granularity: {m.granularity}")


def resolve(table: Path) -> Path | None:
    """The snapshot folder ``table`` points at now (None: no such table yet). Read through this
    path, not the link, when a read must not straddle a publication."""
    check_layout(table)
    return Path(os.path.realpath(table)) if table.is_symlink() and table.exists() else None


def read_manifest(table: Path) -> Manifest | None:
    """The live snapshot's manifest (None: no such table yet)."""
    snap = resolve(table)
    if snap is None:
        return None
    data = json.loads((snap / MANIFEST).read_text())
    return Manifest(granularity=data["granularity"], days=data["days"], format=data.get("format", FORMAT))


def days(table: Path) -> list[str]:
    """The days (ISO dates) that hold rows in ``table``, sorted; [] when there is no table."""
    m = read_manifest(table)
    return sorted(m.days) if m is not None else []


def period_dirs(snapshot: Path | None) -> dict[str, Path]:
    """period value -> its folder inside a snapshot."""
    if snapshot is None or not snapshot.is_dir():
        return {}
    prefix = f"{PARTITION_KEY}="
    return {p.name[len(prefix):]: p for p in sorted(snapshot.iterdir())
            if p.is_dir() and p.name.startswith(prefix)}


def files(table: Path, periods: list[str] | None = None) -> list[Path]:
    """The parquet files of the live snapshot (of ``periods`` only, when given), in period order."""
    dirs = period_dirs(resolve(table))
    chosen = dirs if periods is None else {p: dirs[p] for p in periods if p in dirs}
    return [f for _, d in sorted(chosen.items()) for f in sorted(d.glob("*.parquet"))]


def parquet_glob(table: Path) -> str:
    """A glob over the live snapshot's files, for DuckDB (``read_parquet``) or Feast's file source."""
    return f"{table}/{PARTITION_KEY}=*/*.parquet"


def snapshot_dir(lake: Path, table: Path, run_id: str) -> Path:
    """Where run ``run_id`` assembles the next snapshot of ``table`` (a path under ``lake``)."""
    return lake / SNAPSHOTS / table.relative_to(lake) / run_id


def assemble(table: Path, snapshot: Path, staged: Path | None, touched: set[str] | None,
             manifest: Manifest) -> None:
    """Fill ``snapshot``: the staged periods (``staged/period=P/``) moved in, every other period of
    the live snapshot hard-linked, and ``manifest`` written.

    ``touched``: the periods this run recomputed. Each appears in the new snapshot only if ``staged``
    holds it: a touched period with no staged rows is gone from the table. None: the staged periods
    are the whole table (a rewrite; nothing is linked).
    """
    snapshot.mkdir(parents=True)
    old = {} if touched is None else period_dirs(resolve(table))
    for p, d in old.items():
        if p in touched:
            continue
        out = snapshot / d.name
        out.mkdir()
        for f in sorted(d.iterdir()):
            os.link(f, out / f.name)
    for p, d in period_dirs(staged).items():
        if touched is not None and p not in touched:
            raise ValueError(f"staged period {p} is outside the run's periods {sorted(touched)}")
        os.rename(d, snapshot / d.name)
    tmp = snapshot / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest.to_json(), sort_keys=True))
    os.replace(tmp, snapshot / MANIFEST)


def clean_orphans(lake: Path, tables: list[Path]) -> int:
    """Delete the snapshot folders of ``tables`` that are neither live nor the one the live one
    replaced: what killed runs assembled and never published. Run under the lake lock, after the
    journals were rolled forward. Returns how many were deleted.

    Run ids sort by start time and runs hold the lake lock, so every publication deletes all but
    the new snapshot and the old one (``atomic``): what is left older than the live snapshot is the
    one it replaced (the newest of those), and anything newer was never published.
    """
    gone = 0
    for table in tables:
        parent = snapshot_dir(lake, table, "_").parent
        if not parent.is_dir():
            continue
        live = resolve(table)
        names = sorted(d.name for d in parent.iterdir() if d.is_dir())
        keep = set() if live is None else {live.name, *[n for n in names if n < live.name][-1:]}
        for n in names:
            if n not in keep:
                shutil.rmtree(parent / n, ignore_errors=True)
                gone += 1
    return gone
