"""Raw LastFM-1K files -> the bronze lake (PySpark).

    listens  (userid-timestamp-artid-artname-traid-traname.tsv[.gz])  -> bronze/listens/period=YYYY-MM/
    profiles (userid-profile.tsv[.gz])                                -> bronze/users/
    catalog  (catalog.jsonl or .parquet)                              -> bronze/tracks/

Every raw row ends in exactly one place: a bronze table, the quarantine (with the raw line, its
raw bytes and one reason), or the report's duplicate / already-in-lake / header counts - so the
counts always add up to the rows read. Output is staged under ``tmp/`` and published with atomic
directory swaps (``encore.core.atomic``): a kill leaves the previous lake readable, and the next
run rolls an interrupted publication forward. Listens merge into their period partitions (a month
by default, ``encore.core.lake``): the periods that gain rows are rewritten, the others linked
into the new snapshot as they are; a rerun on the same input finds every listen already present
and writes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from encore.core import atomic, faults, ids
from encore.core import lake as lk
from encore.core.config import EncoreConfig, IngestConfig
from encore.core.schemas import CATALOG_REQUIRED, GENES, LISTEN_COLUMNS, LISTEN_KEY
from encore.core.workspace import Workspace, partitions
from jobs.lake import finalize_staged, period_col, read_table, stage_periods
from jobs.spark import get_spark

log = logging.getLogger(__name__)

HEADER_USER_FIELDS = ("userid", "user_id", "#userid", "#user_id", "#id", "user")


class IngestError(RuntimeError):
    """Input that cannot be ingested at all (missing, unreadable, wrong shape); nothing was written."""


@dataclass(frozen=True)
class IngestInputs:
    listens: tuple[Path, ...] = ()
    profiles: Path | None = None
    catalog: Path | None = None


@dataclass
class SourceFile:
    path: str
    bytes: int
    sha256: str


@dataclass
class TableReport:
    rows_read: int = 0  # raw rows (lines, or JSON records), header lines included
    header_lines: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)  # reason -> rows
    duplicates_in_input: int = 0  # exact repeats inside this run's input, dropped
    already_in_lake: int = 0  # identical rows the lake already holds, skipped
    added: int = 0  # new rows (new keys)
    replaced: int = 0  # rows whose key existed with other values (tracks, users)
    days_changed: list[str] = field(default_factory=list)  # listens: days that gained rows
    partitions_written: list[str] = field(default_factory=list)  # listens: periods rewritten
    warnings: list[str] = field(default_factory=list)  # what a person should look at (empty input, ...)

    def check(self, table: str) -> None:
        """Warn about input that ingested "fine" but is almost certainly not what was meant."""
        data_rows = self.rows_read - self.header_lines
        if data_rows == 0:
            self.warnings.append(f"{table}: the input holds no rows; nothing added")
        elif self.quarantined_total == data_rows:
            top = max(self.quarantined, key=self.quarantined.__getitem__)
            self.warnings.append(f"{table}: every one of {data_rows:,} rows was quarantined (mostly {top}): "
                                 "is this the right file and format?")
        for w in self.warnings:
            log.warning("%s", w)

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())


@dataclass
class IngestReport:
    run_id: str
    started_at: str
    seconds: float = 0.0
    inputs: list[SourceFile] = field(default_factory=list)
    recovered_publications: int = 0
    listens: TableReport | None = None
    tracks: TableReport | None = None
    users: TableReport | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("listens", "tracks", "users"):
            rep = getattr(self, name)
            if rep is not None:
                d[name]["quarantined_total"] = rep.quarantined_total
        return d


# --------------------------------------------------------------------------- input checks
def _check_file(path: Path) -> SourceFile:
    """Hash the file; for .gz also decompress it fully, so a truncated archive fails here, by name."""
    if not path.exists():
        raise IngestError(f"input not found: {path}")
    if not path.is_file():
        raise IngestError(f"input is not a file: {path}")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as gz:
                while gz.read(1 << 22):
                    pass
        except (OSError, EOFError, zlib.error) as exc:
            raise IngestError(f"{path} is not a readable gzip file ({exc}); nothing was ingested") from None
    return SourceFile(str(path.resolve()), path.stat().st_size, h.hexdigest())


def _expand(paths: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith((".", "_"))))
        else:
            files.append(p)
    return files


# --------------------------------------------------------------------------- listens
def _derived_id(prefix: str, *cols: Column) -> Column:
    # Same function as encore.core.ids (a test checks both agree): sha1 over UTF-8 bytes.
    joined = cols[0] if len(cols) == 1 else F.concat_ws(ids.SEP, *cols)
    return F.concat(F.lit(prefix), F.substring(F.sha1(joined.cast("binary")), 1, ids.DERIVED_HEX))


def _utc(t: datetime) -> datetime:
    """Config datetimes without a zone are UTC, like every timestamp in the lake."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _parse_listens(spark: SparkSession, src: SourceFile, icfg: IngestConfig, now: datetime) -> DataFrame:
    raw = spark.read.text(src.path)
    f = F.split(F.col("value"), "\t", -1)
    n = F.size(f)

    def g(i: int) -> Column:
        return F.get(f, i)

    ts = F.try_to_timestamp(g(1), F.lit("yyyy-MM-dd'T'HH:mm:ss'Z'"))
    is_header = (n == 6) & F.lower(g(0)).isin(*HEADER_USER_FIELDS) & (F.lower(g(1)) == "timestamp")
    too_long = F.greatest(*[F.length(g(i)) for i in range(6)]) > icfg.max_field_chars
    max_ts = now + timedelta(hours=icfg.max_future_hours)
    reason = (
        F.when(~F.is_valid_utf8("value"), "invalid_utf8")
        .when(n != 6, "field_count")
        .when(too_long, "field_too_long")
        .when(F.trim(g(0)) == "", "empty_user")
        .when(ts.isNull(), "bad_timestamp")
        .when((ts < F.lit(_utc(icfg.min_timestamp))) | (ts > F.lit(max_ts)), "timestamp_out_of_range")
        .when((g(4) == "") & (g(5) == ""), "no_track")
    )
    artist_mbid, track_mbid = F.nullif(g(2), F.lit("")), F.nullif(g(4), F.lit(""))
    return raw.select(
        F.col("value").alias("raw"),
        F.when(is_header, None).otherwise(reason).alias("reason"),
        is_header.alias("is_header"),
        g(0).alias("user_id"),
        ts.alias("ts"),
        F.coalesce(artist_mbid, _derived_id("art-", g(3))).alias("artist_id"),
        artist_mbid.alias("artist_mbid"),
        g(3).alias("artist_name"),
        F.coalesce(track_mbid, _derived_id("trk-", g(3), g(5))).alias("track_id"),
        track_mbid.alias("track_mbid"),
        g(5).alias("track_name"),
        F.lit(src.path).alias("source_file"),
        F.lit(src.sha256[:16]).alias("source"),
    )


def _stage_quarantine(rows: DataFrame, table: str, stage: Path, ws: Workspace) -> list[atomic.Swap]:
    """Stage the rejected ``rows`` (columns source, source_file, reason, raw) of ``table``.

    Partitioned by ``source`` (the file's hash): a rerun of the same file replaces its own rows.
    """
    q = rows.filter(F.col("reason").isNotNull()).select(
        "source", "source_file", "reason",
        F.make_valid_utf8("raw").alias("raw_line"),  # readable form; U+FFFD where bytes were invalid
        F.col("raw").cast("binary").alias("raw_bytes"),  # exactly what the file held
    )
    out = stage / f"quarantine-{table}"
    (q.repartition("source").sortWithinPartitions("source", "reason", "raw_bytes")
     .write.partitionBy("source").parquet(str(out)))
    finalize_staged(out)
    return [atomic.Swap(out / f"source={src}", ws.quarantine(table) / f"source={src}",
                        ws.trash / stage.name / f"quarantine-{table}" / f"source={src}")
            for src in partitions(out, "source")]


def _count_reasons(rows: DataFrame, rep: TableReport) -> None:
    """Fill rows read, header lines and quarantined-by-reason from one aggregation over ``rows``."""
    for r in rows.groupBy("reason", "is_header").count().collect():
        rep.rows_read += r["count"]
        if r["is_header"]:
            rep.header_lines += r["count"]
        elif r["reason"] is not None:
            rep.quarantined[r["reason"]] = r["count"]


def _ingest_listens(spark: SparkSession, sources: list[SourceFile], ws: Workspace, cfg: EncoreConfig,
                    run_id: str, now: datetime) -> tuple[TableReport, list[atomic.Entry]]:
    rep = TableReport()
    stage = ws.staging(run_id)
    gran = cfg.lake.granularity
    parsed = None
    for src in sources:
        df = _parse_listens(spark, src, cfg.ingest, now)
        parsed = df if parsed is None else parsed.unionByName(df)
    assert parsed is not None
    # Not cached: parsing a million lines again (1.4 s, measured) is cheaper than caching them with
    # their raw text (3.5 s). It is read by the counts, the dedup and, if any, the quarantine pass.
    _count_reasons(parsed, rep)
    log.info("listens: %d rows read, %d quarantined", rep.rows_read, rep.quarantined_total)

    good = parsed.filter(F.col("reason").isNull() & ~F.col("is_header")).select(*LISTEN_COLUMNS)
    unique = good.dropDuplicates(list(LISTEN_KEY)).withColumn("date", F.to_date("ts")).persist()
    n_good = rep.rows_read - rep.header_lines - rep.quarantined_total
    per_date = {r["date"].isoformat(): r["count"] for r in unique.groupBy("date").count().collect()}
    n_unique = sum(per_date.values())
    rep.duplicates_in_input = n_good - n_unique

    # Only the periods the input falls in are read back: a new night costs one month, not the lake.
    periods = sorted({lk.period_of(date.fromisoformat(d), gran) for d in per_date})
    existing = read_table(spark, ws.listens, periods) if periods else None
    if existing is not None:
        existing = existing.select(*LISTEN_COLUMNS, "date")
        fresh = unique.join(existing.select(*LISTEN_KEY), on=list(LISTEN_KEY), how="left_anti").persist()
        fresh_per_date = {r["date"].isoformat(): r["count"] for r in fresh.groupBy("date").count().collect()}
    else:
        fresh, fresh_per_date = unique, per_date  # empty lake for these periods: everything is new
    rep.added = sum(fresh_per_date.values())
    rep.already_in_lake = n_unique - rep.added
    swaps: list[atomic.Entry] = []
    if rep.added:
        rep.days_changed = sorted(fresh_per_date)
        written = sorted({lk.period_of(date.fromisoformat(d), gran) for d in rep.days_changed})
        out = fresh.select(*LISTEN_COLUMNS, "date")
        if existing is not None:
            old = existing.filter(period_col(F.col("date"), gran).isin(*written))
            out = out.unionByName(old)
        first, last = lk.period_bounds(written[0])[0], lk.period_bounds(written[-1])[1]
        staged = stage_periods(out, ws.listens, ws, run_id, gran, first, last, LISTEN_KEY,
                               digest_columns=LISTEN_COLUMNS, keep_outside=False)
        rep.partitions_written = written
        swaps.append(staged.repoint)
    if rep.quarantined_total:
        swaps += _stage_quarantine(parsed, "listens", stage, ws)
    unique.unpersist()
    fresh.unpersist()
    log.info("listens: %d duplicates in input, %d already in lake, %d added over %d days (%d %s partitions)",
             rep.duplicates_in_input, rep.already_in_lake, rep.added, len(rep.days_changed),
             len(rep.partitions_written), gran)
    return rep, swaps


# --------------------------------------------------------------------------- tracks and users
def _upsert(spark: SparkSession, new: DataFrame, live: Path, key: str, stage: Path, rep: TableReport
            ) -> bool:
    """Merge ``new`` into the table at ``live`` by ``key``; stage the result if anything changed."""
    new = new.persist()
    if live.is_dir() and any(live.glob("*.parquet")):
        old = spark.read.parquet(str(live))
        changed = new.subtract(old).persist()
        n_changed = changed.count()
        rep.already_in_lake = new.count() - n_changed
        rep.replaced = changed.join(old.select(key), key, "left_semi").count()
        rep.added = n_changed - rep.replaced
        merged = old.join(new.select(key), key, "left_anti").unionByName(new)
    else:
        n_changed = rep.added = new.count()
        merged = new
    if n_changed == 0:
        return False
    merged.coalesce(1).sortWithinPartitions(key).write.parquet(str(stage))
    finalize_staged(stage)
    return True


def _catalog_frame(spark: SparkSession, src: SourceFile) -> DataFrame:
    """Read the catalog as one row per record, with ``_corrupt_record`` for unparsable ones."""
    path = Path(src.path)
    if path.suffix == ".parquet":
        df = spark.read.parquet(src.path)
        cols = set(df.columns)
        _require_columns(cols, path)
        for c in ("track_id", "traid", "artid", "lyrics", "audio_path"):
            if c not in cols:
                df = df.withColumn(c, F.lit(None).cast("string"))
        if "genes" not in cols:
            df = df.withColumn("genes", F.lit(None).cast("map<string,double>"))
        return df.withColumn("_corrupt_record", F.lit(None).cast("string"))
    _require_columns(_first_record_keys(path), path)
    schema = T.StructType([
        *[T.StructField(c, T.StringType()) for c in ("track_id", "traid", "artid", "artist", "title")],
        T.StructField("duration_s", T.DoubleType()),
        T.StructField("lyrics", T.StringType()),
        T.StructField("audio_path", T.StringType()),
        T.StructField("genes", T.MapType(T.StringType(), T.DoubleType())),
        T.StructField("_corrupt_record", T.StringType()),
    ])
    return (spark.read.schema(schema).option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", "_corrupt_record").json(src.path))


def _first_record_keys(path: Path) -> set[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh):
            if i >= 1000:
                break
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                return set(rec)
    raise IngestError(f"catalog {path} holds no JSON object in its first 1000 lines; expected JSON Lines")


def _require_columns(cols: set[str], path: Path) -> None:
    missing = [c for c in CATALOG_REQUIRED if c not in cols]
    if missing:
        raise IngestError(f"catalog {path} lacks required column(s): {', '.join(missing)} "
                          f"(required: {', '.join(CATALOG_REQUIRED)})")


def _ingest_catalog(spark: SparkSession, src: SourceFile, ws: Workspace, stage: Path
                    ) -> tuple[TableReport, list[atomic.Swap]]:
    df = _catalog_frame(spark, src)
    base = str(Path(src.path).parent)
    genes = F.array(*[F.col("genes")[g] for g in GENES]).cast("array<float>")
    genes_ok = (F.size(F.map_keys("genes")) == len(GENES)) & F.forall(
        genes, lambda x: x.isNotNull() & (x >= 0) & (x <= 1))
    artist_mbid, track_mbid = F.nullif("artid", F.lit("")), F.nullif("traid", F.lit(""))
    track_id = F.coalesce(track_mbid, _derived_id("trk-", F.col("artist"), F.col("title")))
    reason = (
        F.when(F.col("_corrupt_record").isNotNull(), "malformed")
        .when(F.col("artist").isNull() | F.col("title").isNull() | (F.col("title") == ""), "missing_field")
        .when(F.col("duration_s").isNotNull() & ~(F.col("duration_s") > 0), "bad_duration")
        .when(F.col("genes").isNotNull() & ~genes_ok, "bad_genes")
        .when(F.col("track_id").isNotNull() & (F.col("track_id") != "") & (F.col("track_id") != track_id),
              "track_id_mismatch")
    )
    audio = F.when(F.col("audio_path").isNull() | (F.col("audio_path") == ""), None).when(
        F.col("audio_path").startswith("/"), F.col("audio_path")).otherwise(F.concat(F.lit(base + "/"), "audio_path"))
    rows = df.select(
        reason.alias("reason"),
        F.coalesce("_corrupt_record", F.to_json(F.struct(*[c for c in df.columns if c != "_corrupt_record"])))
        .alias("raw"),
        track_id.alias("track_id"), track_mbid.alias("track_mbid"),
        F.coalesce(artist_mbid, _derived_id("art-", F.col("artist"))).alias("artist_id"),
        artist_mbid.alias("artist_mbid"), F.col("artist").alias("artist_name"), F.col("title").alias("track_name"),
        F.col("duration_s"), F.col("lyrics"), audio.alias("audio_path"),
        F.when(F.col("genes").isNull(), None).otherwise(genes).alias("genes"),
        F.lit(False).alias("is_header"), F.lit(src.sha256[:16]).alias("source"), F.lit(src.path).alias("source_file"),
    )
    # A track listed twice keeps one row, chosen by content (not file order) so reruns agree.
    w = Window.partitionBy("track_id", F.col("reason").isNull()).orderBy(
        "track_name", "artist_name", "duration_s", "lyrics", "audio_path")
    rows = rows.withColumn("reason", F.when(F.col("reason").isNull() & (F.row_number().over(w) > 1),
                                            "duplicate_track").otherwise(F.col("reason"))).persist()
    rep = TableReport()
    _count_reasons(rows, rep)
    good = rows.filter(F.col("reason").isNull()).drop("reason", "raw", "is_header", "source", "source_file")
    swaps = []
    if _upsert(spark, good, ws.tracks, "track_id", stage / "tracks", rep):
        swaps.append(atomic.Swap(stage / "tracks", ws.tracks, ws.trash / stage.name / "tracks"))
    if rep.quarantined_total:
        swaps += _stage_quarantine(rows, "tracks", stage, ws)
    rows.unpersist()
    log.info("tracks: %d read, %d quarantined, %d added, %d replaced, %d unchanged",
             rep.rows_read, rep.quarantined_total, rep.added, rep.replaced, rep.already_in_lake)
    return rep, swaps


def _ingest_profiles(spark: SparkSession, src: SourceFile, ws: Workspace, stage: Path
                     ) -> tuple[TableReport, list[atomic.Swap]]:
    raw = spark.read.text(src.path)
    f = F.split("value", "\t", -1)
    n = F.size(f)

    def g(i: int) -> Column:
        return F.get(f, i)

    age = F.expr("try_cast(nullif(get(split(value, '\\t', -1), 2), '') as int)")
    is_header = F.col("value").startswith("#")
    reason = (
        F.when(~F.is_valid_utf8("value"), "invalid_utf8")
        .when(n != 5, "field_count")
        .when(F.trim(g(0)) == "", "empty_user")
        .when((g(2) != "") & (age.isNull() | (age < 0) | (age > 120)), "bad_age")
    )
    # Only valid rows compete for a user id: an invalid row must not make a valid one a "duplicate".
    w = Window.partitionBy(g(0), reason.isNull()).orderBy("value")
    rows = raw.select(
        F.when(is_header, None).otherwise(
            F.coalesce(reason, F.when(F.row_number().over(w) > 1, "duplicate_user"))).alias("reason"),
        is_header.alias("is_header"), F.col("value").alias("raw"),
        g(0).alias("user_id"), F.nullif(g(1), F.lit("")).alias("gender"), age.alias("age"),
        F.nullif(g(3), F.lit("")).alias("country"),
        F.try_to_date(g(4), "MMM d, yyyy").alias("registered"),
        F.lit(src.sha256[:16]).alias("source"), F.lit(src.path).alias("source_file"),
    ).persist()
    rep = TableReport()
    _count_reasons(rows, rep)
    good = rows.filter(F.col("reason").isNull() & ~F.col("is_header")).select(
        "user_id", "gender", "age", "country", "registered")
    swaps = []
    if _upsert(spark, good, ws.users, "user_id", stage / "users", rep):
        swaps.append(atomic.Swap(stage / "users", ws.users, ws.trash / stage.name / "users"))
    if rep.quarantined_total:
        swaps += _stage_quarantine(rows, "users", stage, ws)
    rows.unpersist()
    return rep, swaps


# --------------------------------------------------------------------------- entry point
def ingest(cfg: EncoreConfig, inputs: IngestInputs) -> IngestReport:
    """Ingest raw files into the bronze lake of ``cfg.home``; returns (and stores) the report."""
    if not (inputs.listens or inputs.profiles or inputs.catalog):
        raise IngestError("nothing to ingest: give listens, profiles and/or a catalog")
    t0 = time.perf_counter()
    now = datetime.now(UTC)
    run_id = atomic.new_run_id()
    report = IngestReport(run_id=run_id, started_at=now.isoformat(timespec="seconds"))
    expanded = _expand(inputs.listens)
    if inputs.listens and not expanded:
        raise IngestError(f"no listens files in {', '.join(map(str, inputs.listens))}")
    listen_files = [_check_file(p) for p in expanded]
    profile_file = _check_file(inputs.profiles) if inputs.profiles else None
    catalog_file = _check_file(inputs.catalog) if inputs.catalog else None
    report.inputs = [*listen_files, *(f for f in (profile_file, catalog_file) if f is not None)]

    ws = Workspace.at(cfg.home)
    with ws.lock("lake"):
        report.recovered_publications = atomic.recover(ws.journals)
        # Whatever staging is left belongs to killed runs (we hold the lock): it was never published.
        shutil.rmtree(ws.tmp / "staging", ignore_errors=True)
        lk.check_layout(ws.listens, cfg.lake.granularity)
        lk.clean_orphans(ws.lake, [ws.listens])
        stage = ws.staging(run_id)
        stage.mkdir(parents=True)
        spark = get_spark(cfg.spark)
        swaps: list[atomic.Entry] = []
        if listen_files:
            report.listens, s = _ingest_listens(spark, listen_files, ws, cfg, run_id, now)
            swaps += s
        if catalog_file:
            report.tracks, s = _ingest_catalog(spark, catalog_file, ws, stage)
            swaps += s
        if profile_file:
            report.users, s = _ingest_profiles(spark, profile_file, ws, stage)
            swaps += s
        for name in ("listens", "tracks", "users"):
            if getattr(report, name) is not None:
                getattr(report, name).check(name)
        faults.point("ingest.staged")
        atomic.publish_run(swaps, ws.journals, stage, ws.trash / run_id)
        report.seconds = round(time.perf_counter() - t0, 3)
        atomic.write_report(ws.reports("ingest"), run_id, report.to_dict())
    log.info("ingest %s done in %.1fs (%d swaps)", run_id, report.seconds, len(swaps))
    return report
