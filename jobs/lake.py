"""Lake plumbing shared by the Spark jobs: tidy staged output, list partitions, summarise tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as ds

from encore.core.workspace import Workspace


def finalize_staged(root: Path) -> list[Path]:
    """Make a directory Spark wrote deterministic: ``part-00000.parquet``... in each leaf, no ``.crc``.

    Spark names files after a random job UUID; renaming them (in sorted order) means the same
    rows give the same file names on every run, so a rerun replaces files instead of adding some.
    Returns the leaf directories that hold data.
    """
    leaves = []
    for dirpath, _dirs, files in os.walk(root):
        d = Path(dirpath)
        for f in files:
            if f.endswith(".crc") or f.startswith("_"):
                (d / f).unlink()
        parts = sorted(f for f in files if f.startswith("part-") and f.endswith(".parquet"))
        for i, f in enumerate(parts):
            os.rename(d / f, d / f".tmp-{i:05d}")
        for i in range(len(parts)):
            os.rename(d / f".tmp-{i:05d}", d / f"part-{i:05d}.parquet")
        if parts:
            leaves.append(d)
    return sorted(leaves)


def partitions(table: Path, key: str = "date") -> list[str]:
    """Values of the hive partition ``key`` present under ``table`` (sorted)."""
    if not table.is_dir():
        return []
    prefix = f"{key}="
    return sorted(p.name[len(prefix):] for p in table.iterdir() if p.is_dir() and p.name.startswith(prefix))


def _dataset(path: Path) -> ds.Dataset | None:
    if not path.is_dir() or not any(path.rglob("*.parquet")):
        return None
    return ds.dataset(path, format="parquet", partitioning="hive")


def summarize(ws: Workspace) -> dict[str, Any]:
    """Row counts, distinct keys and date range of each bronze table, and quarantine by reason."""
    out: dict[str, Any] = {"home": str(ws.home)}
    listens = _dataset(ws.listens)
    if listens is not None:
        t = listens.to_table(columns=["user_id", "track_id", "ts"])
        out["listens"] = {
            "rows": t.num_rows,
            "users": pc.count_distinct(t["user_id"]).as_py(),
            "tracks": pc.count_distinct(t["track_id"]).as_py(),
            "first": str(pc.min(t["ts"]).as_py()),
            "last": str(pc.max(t["ts"]).as_py()),
            "partitions": len(partitions(ws.listens)),
        }
    tracks = _dataset(ws.tracks)
    if tracks is not None:
        t = tracks.to_table(columns=["track_id", "duration_s", "lyrics", "audio_path", "genes"])
        out["tracks"] = {
            "rows": t.num_rows,
            "unknown_duration": t["duration_s"].null_count,
            "with_lyrics": t.num_rows - t["lyrics"].null_count,
            "with_audio": t.num_rows - t["audio_path"].null_count,
            "with_genes": t.num_rows - t["genes"].null_count,
        }
    users = _dataset(ws.users)
    if users is not None:
        out["users"] = {"rows": users.count_rows()}
    q: dict[str, dict[str, int]] = {}
    for table in ("listens", "tracks", "users"):
        qd = _dataset(ws.quarantine(table))
        if qd is not None:
            counts = qd.to_table(columns=["reason"])["reason"].value_counts().to_pylist()
            q[table] = {c["values"]: c["counts"] for c in counts}
    out["quarantine"] = q
    return out
