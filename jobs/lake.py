"""Lake plumbing shared by the Spark jobs: stage period-partitioned tables, make staged output
deterministic, summarise tables. The layout itself is ``encore.core.lake``."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from encore.core import atomic
from encore.core import lake as lk
from encore.core.schemas import ENCODERS, FEATURE_TABLES, TRACK_CONTENT_TABLE
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


ROW_GROUP_ROWS = 65_536  # min/max of `date` per group: a month file skips to the days a filter wants


def _reencode_file(path: Path) -> tuple[int, dict[str, int]]:
    # ParquetFile, not read_table: the latter would add a hive folder (key=value) as a column.
    table = pq.ParquetFile(path).read().replace_schema_metadata(None)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="snappy", row_group_size=ROW_GROUP_ROWS)
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


# --------------------------------------------------------------------------- period tables
def split_periods(src: Path, out: Path) -> tuple[int, dict[str, int], dict[str, int]]:
    """Write the rows of Spark's part files under ``src`` (each holding whole periods, sorted by
    period) as ``out/period=P/part-00000.parquet``, without the period column; return (rows,
    nulls per column, rows per date). Same rows in, same bytes out, in any process."""
    rows, nulls, per_day = 0, {}, {}
    for f in sorted(src.glob("part-*.parquet")):
        t = pq.ParquetFile(f).read().replace_schema_metadata(None)
        if t.num_rows == 0:
            continue
        periods = t.column(lk.PARTITION_KEY).to_numpy(zero_copy_only=False)
        t = t.drop_columns([lk.PARTITION_KEY])
        starts = [0, *(np.flatnonzero(periods[1:] != periods[:-1]) + 1).tolist(), len(periods)]
        for a, b in itertools.pairwise(starts):
            d = out / f"{lk.PARTITION_KEY}={periods[a]}"
            if d.exists():
                raise ValueError(f"period {periods[a]} is split across Spark output files")
            d.mkdir(parents=True)
            part = t.slice(a, b - a)
            pq.write_table(part, d / "part-00000.parquet", compression="snappy", row_group_size=ROW_GROUP_ROWS)
            rows += part.num_rows
            for c in part.column_names:
                nulls[c] = nulls.get(c, 0) + part.column(c).null_count
            if "date" in part.column_names:
                for v in part.column("date").value_counts().to_pylist():
                    k = v["values"].isoformat()
                    per_day[k] = per_day.get(k, 0) + v["counts"]
    return rows, nulls, per_day


def period_col(day: Column, granularity: str) -> Column:
    """Spark's form of :func:`encore.core.lake.period_of` over a date column."""
    if granularity == "month":
        return F.date_format(day, "yyyy-MM")
    if granularity == "quarter":
        return F.concat(F.date_format(day, "yyyy"), F.lit("-Q"), F.quarter(day).cast("string"))
    if granularity == "year":
        return F.date_format(day, "yyyy")
    raise ValueError(f"unknown lake granularity {granularity!r}")


def read_table(spark: SparkSession, table: Path, periods: list[str] | None = None) -> DataFrame | None:
    """The live snapshot of a period table (only ``periods``, when given), pinned: the folder the
    link resolves to now, so a publication during the read cannot mix two versions. The ``period``
    folder column is dropped (``date`` is in the files). None when nothing matches."""
    snap = lk.resolve(table)
    if snap is None:
        return None
    dirs = lk.period_dirs(snap)
    chosen = sorted(dirs.values()) if periods is None else [dirs[p] for p in sorted(periods) if p in dirs]
    if not chosen:
        return None
    df = spark.read.option("basePath", str(snap)).parquet(*map(str, chosen))
    return df.drop(lk.PARTITION_KEY)


def day_digests(df: DataFrame, columns: Sequence[str]) -> dict[str, str]:
    """date -> "<rows>:<xor of the rows' xxhash64>" over ``columns``: order-free, so the same rows
    give the same digest whichever files or partitions hold them."""
    rows = df.groupBy("date").agg(F.count(F.lit(1)).alias("n"),
                                  F.bit_xor(F.xxhash64(*columns)).alias("h")).collect()
    return {r["date"].isoformat(): f"{r['n']}:{r['h'] & 0xFFFFFFFFFFFFFFFF:016x}" for r in rows}


@dataclass
class StagedTable:
    """A period table staged by one run: its :class:`atomic.Repoint` and what it wrote."""
    repoint: atomic.Repoint
    rows: int  # rows in the periods this run rewrote
    nulls: dict[str, int]
    periods_written: int
    periods_removed: int
    days: dict[str, int]  # rows per day in the periods this run rewrote


def stage_periods(df: DataFrame, table: Path, ws: Workspace, run_id: str, granularity: str, start: date,
                  end: date, sort_keys: Sequence[str], digest_columns: Sequence[str] | None = None,
                  keep_outside: bool = True, rewrite: bool = False) -> StagedTable:
    """Stage a new snapshot of ``table`` whose days [start, end] are ``df`` (it must have a ``date``
    column and no rows outside the range), every other day as it was.

    A period that holds days outside the range is rewritten with its old rows for those days read
    back unchanged; periods wholly outside are hard-linked. Rows inside a file are sorted by
    ``date`` then ``sort_keys`` (a unique key: same rows, same bytes). ``digest_columns``: also keep
    a per-day digest in the manifest (bronze listens: what tells the feature job which days changed).
    ``keep_outside=False``: ``df`` already holds every row of the touched periods (ingest's merge).
    ``rewrite``: ``df`` is the whole table; nothing of the live snapshot is kept (a migration).
    """
    spark = df.sparkSession
    touched = lk.periods_between(start, end, granularity)
    old = read_table(spark, table, touched) if keep_outside and not rewrite else None
    new = df
    if old is not None:
        outside = (F.col("date") < F.lit(start)) | (F.col("date") > F.lit(end))
        new = new.unionByName(old.filter(outside).select(*df.columns))
    out = ws.staging(run_id) / "periods" / table.relative_to(ws.lake)
    new = new.withColumn(lk.PARTITION_KEY, period_col(F.col("date"), granularity))
    if digest_columns is not None:
        new = new.persist()
        digests = day_digests(new, digest_columns)
    # Spark writes a few files, each holding whole periods in order (hash-partitioned by period,
    # sorted); pyarrow splits them into one file per period. Spark's own partitionBy costs a writer,
    # a commit and two renames per folder: 5x the features time on 19 years of sparse days.
    raw = ws.staging(run_id) / "spark" / table.relative_to(ws.lake)
    (new.repartition(lk.PARTITION_KEY).sortWithinPartitions(lk.PARTITION_KEY, "date", *sort_keys)
     .write.parquet(str(raw)))
    if digest_columns is not None:
        new.unpersist()
    rows, nulls, per_day = split_periods(raw, out)
    shutil.rmtree(raw, ignore_errors=True)
    staged = set(lk.period_dirs(out))
    manifest = None if rewrite else lk.read_manifest(table)
    kept = {} if manifest is None else {
        d: v for d, v in manifest.days.items() if lk.period_of(date.fromisoformat(d), granularity) not in touched}
    fresh = {d: {"rows": n} | ({"digest": digests[d]} if digest_columns is not None else {})
             for d, n in per_day.items()}
    # Assembled under staging (hard links work there: one filesystem); the publication moves it.
    snap = ws.staging(run_id) / "snapshots" / table.relative_to(ws.lake) / run_id
    lk.assemble(table, snap, out, None if rewrite else set(touched), lk.Manifest(granularity, {**kept, **fresh}))
    removed = 0 if rewrite else len({p for p in lk.period_dirs(lk.resolve(table)) if p in touched} - staged)
    target = lk.snapshot_dir(ws.lake, table, run_id)
    return StagedTable(atomic.repoint_of(table, target, staged=snap), rows, nulls, len(staged), removed, per_day)


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
        manifest = lk.read_manifest(ws.listens)
        t = listens.to_table(columns=["user_id", "track_id", "ts"])
        out["listens"] = {
            "rows": t.num_rows,
            "users": pc.count_distinct(t["user_id"]).as_py(),
            "tracks": pc.count_distinct(t["track_id"]).as_py(),
            "first": str(pc.min(t["ts"]).as_py()),
            "last": str(pc.max(t["ts"]).as_py()),
            "days": len(manifest.days) if manifest else 0,
            "partitions": len(manifest.periods()) if manifest else 0,
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
        m = lk.read_manifest(ws.feature_table(table))
        if m is not None and m.days:
            feats[table] = {"rows": m.rows, "partitions": len(m.periods()), "days": len(m.days),
                            "first": m.first_day, "last": m.last_day}
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
