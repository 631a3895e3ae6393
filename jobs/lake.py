"""Lake plumbing shared by the Spark jobs: tidy staged output, list partitions, summarise tables."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from encore.core.schemas import ENCODERS, FEATURE_TABLES, TRACK_CONTENT_TABLE
from encore.core.workspace import Workspace, partitions


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


def _reencode_file(path: Path) -> tuple[int, dict[str, int]]:
    # ParquetFile, not read_table: the latter would add the hive `date=` folder as a column.
    table = pq.ParquetFile(path).read().replace_schema_metadata(None)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="snappy")
    os.replace(tmp, path)
    return table.num_rows, {c: table.column(c).null_count for c in table.column_names}


def reencode(root: Path) -> tuple[int, dict[str, int]]:
    """Rewrite every parquet file under ``root`` with pyarrow; return (rows, nulls per column).

    Spark's parquet writer puts a hash-set-ordered field in the footer, so the same rows give
    different bytes in another JVM. pyarrow's output depends only on the table: after this, a rerun
    in any process leaves byte-identical files.
    """
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else []
    rows, nulls = 0, {}
    with ThreadPoolExecutor(max_workers=4) as pool:  # pyarrow releases the GIL while encoding
        for n, counts in pool.map(_reencode_file, files):
            rows += n
            for c, k in counts.items():
                nulls[c] = nulls.get(c, 0) + k
    return rows, nulls


def read_tracks(ws: Workspace, columns: Sequence[str]) -> pa.Table | None:
    """Bronze tracks (``columns``) sorted by track_id - a stable order for every consumer - or None
    when no catalog has been ingested."""
    if not ws.tracks.is_dir() or not any(ws.tracks.glob("*.parquet")):
        return None
    return ds.dataset(ws.tracks, format="parquet").to_table(columns=list(columns)).sort_by("track_id")


def newest_per_key(table: pa.Table, key: str, newest_first: Sequence[str]) -> pa.Table:
    """One row per ``key`` value: the first when rows are ordered by ``newest_first`` descending."""
    if table.num_rows == 0:
        return table
    t = table.sort_by([(key, "ascending"), *((c, "descending") for c in newest_first)])
    ids = t.column(key)
    changed = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    return t.filter(pa.concat_arrays([pa.array([True]), changed.combine_chunks()]))


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
    feats = {}
    for table in FEATURE_TABLES:
        days = partitions(ws.feature_table(table))
        if days:
            feats[table] = {"rows": ds.dataset(ws.feature_table(table), format="parquet",
                                               partitioning="hive").count_rows(),
                            "partitions": len(days), "first": days[0], "last": days[-1]}
    out["features"] = feats
    content = ws.feature_table(TRACK_CONTENT_TABLE)
    if content.is_dir() and any(content.glob("*.parquet")):
        t = ds.dataset(content, format="parquet").to_table(
            columns=[f"{e}_{c}" for e in ENCODERS for c in ("embedding", "version")])
        out["content"] = {"rows": t.num_rows, "encoders": {
            e: {"with_vector": t.num_rows - t[f"{e}_embedding"].null_count,
                "version": t[f"{e}_version"][0].as_py() if t.num_rows else None} for e in ENCODERS}}
    annotations = {}
    for name, path in (("valid", ws.annotations), ("quarantined", ws.quarantine("annotations"))):
        d = _dataset(path)
        annotations[name] = 0 if d is None else d.count_rows()
    out["annotations"] = annotations
    return out
