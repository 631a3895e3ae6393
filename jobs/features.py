"""Bronze listens -> feature tables (PySpark), each a Feast source with a ``date`` column and
period partitions (``encore.core.lake``: period=YYYY-MM by default, published as one snapshot).

    lake/features/listens/       one row per listen of day ``date``: session, position, completion
    lake/features/sessions/      one row per session whose end is known on day ``date``
    lake/features/user_daily/    user features as of the end of day ``date``
    lake/features/track_daily/   track features as of the end of day ``date``
    lake/features/track_durations/  one file: every listened track's duration over time, and its source

Definitions (the contract the Feast views, the tests and ``bench/features.py`` share):

* Listens of a user are ordered by (ts, track_id, artist_id, artist_name, track_name). A session
  starts at a user's first listen and after every gap *longer* than ``session_gap_minutes``.
  ``session_id`` = "s-" + sha1(user_id + U+001F + unix seconds of the session start)[:20];
  ``position`` is 1-based inside the session.
* ``duration_s`` is the catalog's (bronze tracks), else the estimate from the listening up to the
  listen's day (``jobs/durations.py``: a quantile of the track's earliest in-session gaps, else its
  artist's typical length); ``duration_source`` says which: catalog | estimated | unknown.
* ``completion`` = min(1, (next_ts - ts) / duration_s) where next_ts is the next listen of the same
  session. Null (unknown, never 0) for the last listen of a session, for tracks with no duration,
  and where the next listen has the same timestamp: minute-precision exports stamp several plays
  alike, so a zero elapsed time says nothing about how much was heard.
* Sessions: ``event_timestamp`` = last listen start + the gap, the moment the session is known to
  be over. length, duration_s (first to last start), mean_completion and skip_share (share of
  known completions below ``skip_below``) over known completions (null when none), distinct_artists.
* Daily tables hold values **as of the end of day D** (``event_timestamp`` = D+1 00:00 UTC): the
  7-day window is days D-6..D, the 30-day window D-29..D, and a completion counts only once its
  next listen has happened (next_ts < D+1 00:00). A row is written on each day a value can change
  (a play, a completion becoming known, a play leaving a window); Feast's as-of join returns the
  latest row, so every day's value is exact with far fewer rows than users x days.
* user_daily: plays_7d, plays_30d, days_active_30d, mean_completion_30d, top_artist_share (share
  of the most frequent artist in the recent sequence), recent_track_ids / recent_completions (the
  last ``sequence_length`` listens, oldest first; NaN where the completion is not known as of D -
  always so for the last one, whose next listen lies after the day).
* track_daily: plays_7d, plays_30d, listeners_7d, listeners_30d, mean_completion_30d, first_seen
  (midnight UTC of the first day anyone played it; an age would go stale between change rows, so
  consumers subtract it from their own timestamp).

Sums of completions are kept in integer micro-units, so they do not depend on the order Spark
adds them in: the same input gives the same values, whichever partitions a run recomputes.

A run covers a range of days [start, end] and reads only what those days need: listens from
start-31 to end+1 (the windows, completions that cross midnight) plus, for a user with fewer than
``sequence_length`` listens in that lookback, their newest older listens (the sequence). The
periods holding the range are staged with the rows of their other days read back unchanged, made
deterministic (pyarrow re-encode: same rows, same bytes, in any process), and published as one new
snapshot per table (``encore.core.lake``); periods outside the range are hard-linked, untouched.
Without a range, the run recomputes from the first bronze day that changed since the last run, or
from the first day on which the stored ``track_durations`` differ from the lake's (a new catalog
changes lengths from a track's first play; new listens change only their own days, since estimates
are made as of each day), whichever is earlier, and republishes ``track_durations`` with the rest.
A backfill (explicit range) uses the current durations but leaves ``track_durations`` as it was,
so the next incremental run still sees what changed since and repairs the days outside the backfill.
A session longer than the 31-day lookback (nonstop listening for a month) would be cut there.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from encore.core import atomic, faults
from encore.core import lake as lk
from encore.core.config import EncoreConfig, FeaturesConfig
from encore.core.schemas import (
    FEATURE_TABLES,
    LISTEN_FEATURE_COLUMNS,
    LONG_WINDOW_DAYS,
    SHORT_WINDOW_DAYS,
    TRACK_DURATION_COLUMNS,
    TRACK_DURATIONS_TABLE,
)
from encore.core.workspace import Workspace
from jobs.durations import LISTEN_ORDER, current, estimate_durations, join_as_of, stale_since
from jobs.lake import finalize_staged, read_table, reencode, stage_periods
from jobs.spark import get_spark

log = logging.getLogger(__name__)

LOOKBACK_DAYS = LONG_WINDOW_DAYS + 1  # the 30-day window, plus a day for completions crossing midnight
MICRO = 1_000_000  # completion sums are integers in these units
# Report keys for a duration's origin: source, and for estimates the method (jobs/durations.py).
DURATION_KINDS = ("catalog", "estimated_gaps", "estimated_artist", "unknown")


class FeaturesError(RuntimeError):
    """The feature job cannot run (no bronze listens, a bad range); nothing was written."""


@dataclass
class TableStats:
    rows: int = 0  # rows in the periods this run rewrote
    partitions_written: int = 0  # periods
    partitions_removed: int = 0
    nulls: dict[str, int] = field(default_factory=dict)  # column -> nulls (a NaN inside an array is not a null)


@dataclass
class FeaturesReport:
    run_id: str
    started_at: str
    mode: str  # "incremental" | "backfill" | "up-to-date"
    start: str | None = None
    end: str | None = None
    seconds: float = 0.0
    recovered_publications: int = 0
    listens_read: int = 0
    completion_unknown_last_of_session: int = 0  # listens in range whose session ends with them
    completion_unknown_duration: int = 0  # listens in range whose track has no known duration
    completion_unknown_same_timestamp: int = 0  # listens in range whose next listen has the same ts
    # The recompute reached back before the first changed bronze day for tracks whose duration
    # changed: their first play (None when it did not).
    durations_stale_since: str | None = None
    duration_tracks: dict[str, int] = field(default_factory=dict)  # DURATION_KINDS -> listened tracks
    duration_listens: dict[str, int] = field(default_factory=dict)  # DURATION_KINDS -> listens in range
    tables: dict[str, TableStats] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- reading
def _inputs(bronze: DataFrame, ws: Workspace, start: date, end: date, n_seq: int) -> DataFrame:
    """Listens of days start-31..end+1, plus older listens where a user's sequence reaches back.

    Adds ``tail`` (true for those older context rows): they seed sequences but feed no window.
    """
    lo, hi = start - timedelta(days=LOOKBACK_DAYS), end + timedelta(days=1)
    cols = ("user_id", "ts", "track_id", "artist_id", "artist_name", "track_name")
    # Rows are sorted by date inside each period file: the filter skips row groups by their stats.
    df = bronze.filter(_in_range(F.col("date"), lo, hi)).select(*cols).withColumn("tail", F.lit(False))
    if lk.days(ws.listens)[0] < lo.isoformat():
        # Only a user with fewer than n_seq listens between the lookback start and `start` has a
        # sequence reaching further back; only their newest n_seq older listens are read. (A session
        # that began before the lookback would need more, but that is a month of nonstop listening.)
        start_ts = datetime(start.year, start.month, start.day, tzinfo=UTC)
        covered = (df.filter(F.col("ts") < F.lit(start_ts)).groupBy("user_id").count()
                   .filter(F.col("count") >= n_seq).select("user_id"))
        need = df.select("user_id").distinct().join(covered, "user_id", "left_anti")
        w = Window.partitionBy("user_id").orderBy(*[F.col(c).desc() for c in LISTEN_ORDER])
        tail = (bronze.filter(F.col("date") < F.lit(lo)).select(*cols).join(need, "user_id", "left_semi")
                .withColumn("_k", F.row_number().over(w))
                .filter(F.col("_k") <= n_seq).drop("_k").withColumn("tail", F.lit(True)))
        df = df.unionByName(tail)
    return df


# --------------------------------------------------------------------------- sessions and completion
def sessionize(listens: DataFrame, durations: DataFrame, fcfg: FeaturesConfig) -> DataFrame:
    """Add session_id, position, rn (1-based order per user), next_ts and completion to ``listens``.

    ``listens``: user_id, ts, track_id, artist_id, artist_name, track_name (+ any extra columns).
    ``durations``: track_id, duration_s (null or > 0), + any extra columns (duration_source...),
    joined onto each listen; a track it lacks has a null duration. With valid_from/valid_to
    (``jobs.durations``' table) each listen gets the row valid on its day.
    """
    gap = fcfg.session_gap_minutes * 60
    w = Window.partitionBy("user_id").orderBy(*LISTEN_ORDER)
    running = w.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    sec = F.unix_seconds("ts")
    if "valid_from" in durations.columns:
        joined = join_as_of(listens.withColumn("_day", F.to_date("ts")), durations, "_day").drop("_day")
    else:
        joined = listens.join(F.broadcast(durations), "track_id", "left")
    df = (joined
          .withColumn("rn", F.row_number().over(w))
          .withColumn("_prev", F.lag(sec).over(w))
          .withColumn("_next", F.lead("ts").over(w)))
    new = F.col("_prev").isNull() | ((sec - F.col("_prev")) > gap)
    df = (df.withColumn("_start_rn", F.max(F.when(new, F.col("rn"))).over(running))
          .withColumn("_start", F.max(F.when(new, sec)).over(running)))
    in_session = F.col("_next").isNotNull() & ((F.unix_seconds("_next") - sec) <= gap)
    next_ts = F.when(in_session, F.col("_next"))
    elapsed = F.unix_seconds("_next") - sec
    # elapsed == 0: the next play has the same timestamp (minute precision), nothing is known.
    completion = F.when(in_session & (elapsed > 0) & F.col("duration_s").isNotNull(),
                        F.least(F.lit(1.0), elapsed / F.col("duration_s")))
    sid = F.concat(F.lit("s-"), F.substring(F.sha1(F.concat_ws("\u001f", "user_id", F.col("_start").cast("string"))
                                                   .cast("binary")), 1, 20))
    return (df.withColumn("session_id", sid)
            .withColumn("position", (F.col("rn") - F.col("_start_rn") + 1).cast("int"))
            .withColumn("next_ts", next_ts)
            .withColumn("completion", completion)
            # Names only broke ties in the order; dropping them keeps the cached listens small.
            .drop("_prev", "_next", "_start_rn", "_start", "artist_name", "track_name"))


def _micro(c: Column) -> Column:
    return F.round(c * MICRO).cast("long")


def _sessions(lis: DataFrame, fcfg: FeaturesConfig, created: Column) -> DataFrame:
    known = F.col("completion").isNotNull()
    agg = lis.groupBy("user_id", "session_id").agg(
        F.min("ts").alias("start_ts"), F.max("ts").alias("end_ts"), F.count(F.lit(1)).cast("int").alias("length"),
        F.sum(F.when(known, _micro(F.col("completion")))).alias("_csum"),
        F.sum(known.cast("int")).alias("_known"),
        F.sum((known & (F.col("completion") < fcfg.skip_below)).cast("int")).alias("_skips"),
        F.count_distinct("artist_id").cast("int").alias("distinct_artists"),
    )
    ev = F.timestamp_seconds(F.unix_seconds("end_ts") + fcfg.session_gap_minutes * 60)
    return agg.select(
        "user_id", "session_id", "start_ts", "end_ts", "length",
        (F.unix_seconds("end_ts") - F.unix_seconds("start_ts")).alias("duration_s"),
        F.when(F.col("_known") > 0, F.col("_csum") / F.col("_known") / MICRO).alias("mean_completion"),
        F.when(F.col("_known") > 0, F.col("_skips") / F.col("_known")).alias("skip_share"),
        "distinct_artists", ev.alias("event_timestamp"), created.alias("created"),
        F.to_date(ev).alias("date"),
    )


# --------------------------------------------------------------------------- as-of-day windows
def _day_plus(c: str | Column, n: int) -> Column:
    return F.date_add(F.col(c) if isinstance(c, str) else c, n)


def _window_events(lis: DataFrame, key: str) -> DataFrame:
    """Deltas per (key, day) whose running sum over days is each window's value as of that day.

    A play on day X enters the 7-day window on X and leaves it on X+7 (30: X+30). A completion
    enters the 30-day mean on the day its next listen happened (X, or X+1 across midnight: the
    session gap is at most a day) and leaves on X+30. One aggregation per (key, X), then each row
    explodes into its four event days. Columns: key, day, p7, p30, a30, cs, cn, l7, l30 (l* zero).
    """
    known = F.col("completion").isNotNull()
    same_day = known & (F.to_date("next_ts") == F.to_date("ts"))
    m = _micro(F.col("completion"))
    daily = lis.groupBy(key, F.to_date("ts").alias("x")).agg(
        F.count(F.lit(1)).alias("n"),
        F.coalesce(F.sum(F.when(same_day, m)), F.lit(0)).alias("cs0"),
        F.sum(same_day.cast("long")).alias("cn0"),
        F.coalesce(F.sum(F.when(known & ~same_day, m)), F.lit(0)).alias("cs1"),
        F.sum((known & ~same_day).cast("long")).alias("cn1"),
    )
    n, z, one = F.col("n"), F.lit(0).cast("long"), F.lit(1).cast("long")

    def ev(day: Column, p7: Column, p30: Column, a30: Column, cs: Column, cn: Column) -> Column:
        return F.struct(day.alias("day"), p7.alias("p7"), p30.alias("p30"), a30.alias("a30"),
                        cs.alias("cs"), cn.alias("cn"))

    events = F.array(
        ev(F.col("x"), n, n, one, F.col("cs0"), F.col("cn0")),
        ev(_day_plus("x", 1), z, z, z, F.col("cs1"), F.col("cn1")),
        ev(_day_plus("x", SHORT_WINDOW_DAYS), -n, z, z, z, z),
        ev(_day_plus("x", LONG_WINDOW_DAYS), z, -n, -one, -(F.col("cs0") + F.col("cs1")),
           -(F.col("cn0") + F.col("cn1"))),
    )
    # Only events that change something make a row: a day with no completion known across
    # midnight must not add a row the definitions do not call for.
    return (daily.select(key, F.explode(events).alias("e"))
            .filter((F.col("e.cn") != 0) | (F.col("e.p7") != 0) | (F.col("e.p30") != 0))
            .select(key, "e.*", z.alias("l7"), z.alias("l30")))


def _listener_events(lis: DataFrame) -> DataFrame:
    """+1/-1 per (track, day) so that the running sum counts distinct listeners in each window.

    A listener is inside the W-day window of day D if they played the track on some day in
    D-W+1..D. Per (track, user), each play day X opens an interval unless the previous play day
    was less than W days before, and closes it at X+W unless the next play day comes sooner.
    Same columns as :func:`_window_events`, with only l7 and l30 non-zero.
    """
    d = lis.select("track_id", "user_id", F.to_date("ts").alias("x")).distinct()
    w = Window.partitionBy("track_id", "user_id").orderBy("x")
    d = d.withColumn("_p", F.lag("x").over(w)).withColumn("_n", F.lead("x").over(w))
    z, one = F.lit(0).cast("long"), F.lit(1).cast("long")

    def ev(day: Column, l7: Column, l30: Column) -> Column:
        return F.struct(day.alias("day"), l7.alias("l7"), l30.alias("l30"))

    def opens(width: int) -> Column:
        return F.when(F.col("_p").isNull() | (F.datediff("x", "_p") >= width), one).otherwise(z)

    def closes(width: int) -> Column:
        return F.when(F.col("_n").isNull() | (F.datediff("_n", "x") >= width), -one).otherwise(z)

    events = F.array(
        ev(F.col("x"), opens(SHORT_WINDOW_DAYS), opens(LONG_WINDOW_DAYS)),
        ev(_day_plus("x", SHORT_WINDOW_DAYS), closes(SHORT_WINDOW_DAYS), z),
        ev(_day_plus("x", LONG_WINDOW_DAYS), z, closes(LONG_WINDOW_DAYS)),
    )
    return d.select("track_id", F.explode(events).alias("e")).filter(
        (F.col("e.l7") != 0) | (F.col("e.l30") != 0)).select(
        "track_id", "e.day", z.alias("p7"), z.alias("p30"), z.alias("a30"), z.alias("cs"), z.alias("cn"),
        "e.l7", "e.l30")


EVENT_COLS = ["p7", "p30", "a30", "cs", "cn", "l7", "l30"]


def _running(events: DataFrame, key: str) -> DataFrame:
    """Sum deltas per (key, day), then take running sums over days: the as-of-day values."""
    daily = events.groupBy(key, "day").agg(*[F.sum(c).alias(c) for c in EVENT_COLS])
    w = Window.partitionBy(key).orderBy("day").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    return daily.select(key, "day", *[F.sum(c).over(w).alias(c) for c in EVENT_COLS])


def _sequences(lis_all: DataFrame, first_day: date, n_seq: int) -> DataFrame:
    """The last ``n_seq`` listens as of the end of each active day >= ``first_day``, per user.

    Columns: user_id, day, recent_track_ids array<string>, recent_completions array<float>,
    top_artist_share. Built inside one row per user (its listens as a sorted array) so that each
    day's sequence is a slice, not a join of every day with every earlier listen.
    """
    item = F.struct("rn", "track_id", "artist_id", F.col("completion").cast("float").alias("c"))
    per_user = lis_all.groupBy("user_id").agg(F.sort_array(F.collect_list(item)).alias("arr"),
                                              F.min("rn").alias("rn0"))
    days = (lis_all.filter(~F.col("tail") & (F.to_date("ts") >= F.lit(first_day)))
            .groupBy("user_id", F.to_date("ts").alias("day")).agg(F.max("rn").alias("last_rn"))
            .groupBy("user_id").agg(F.collect_list(F.struct("day", "last_rn")).alias("days")))
    n = n_seq
    sliced = per_user.join(days, "user_id").select("user_id", F.explode(F.expr(f"""
        transform(days, d -> struct(
            d.day AS day,
            slice(arr, greatest(d.last_rn - rn0 + 1 - {n} + 1, 1),
                  least({n}, d.last_rn - rn0 + 1)) AS seq))""")).alias("s"))
    seq = F.col("s.seq")
    # NaN marks "not known as of the day": a last-of-session null, and always the final item.
    comps = F.transform(seq, lambda x, i: F.when(i == F.size(seq) - 1, F.lit(float("nan")))
                        .otherwise(F.coalesce(x["c"], F.lit(float("nan")))).cast("float"))
    artists = F.transform(seq, lambda x: x["artist_id"])
    top = F.array_max(F.transform(F.array_distinct(artists),
                                  lambda a: F.size(F.filter(artists, lambda b: b == a)))) / F.size(artists)
    return sliced.select("user_id", F.col("s.day").alias("day"),
                         F.transform(seq, lambda x: x["track_id"]).alias("recent_track_ids"),
                         comps.alias("recent_completions"), top.alias("top_artist_share"))


def _in_range(c: Column, start: date, end: date) -> Column:
    return (c >= F.lit(start)) & (c <= F.lit(end))


def _day_end(day: Column) -> Column:
    # The session time zone is UTC (jobs/spark.py), so this is D+1 00:00 UTC.
    return F.date_add(day, 1).cast("timestamp")


def _mean_completion() -> Column:
    return F.when(F.col("cn") > 0, F.col("cs") / F.col("cn") / MICRO)


def _user_daily(lis: DataFrame, lis_all: DataFrame, fcfg: FeaturesConfig, start: date, end: date,
                created: Column) -> DataFrame:
    vals = _running(_window_events(lis, "user_id"), "user_id")
    seqs = _sequences(lis_all, start - timedelta(days=LOOKBACK_DAYS), fcfg.sequence_length)
    w = Window.partitionBy("user_id").orderBy("day").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    joined = vals.join(seqs, ["user_id", "day"], "left")
    filled = joined.select(
        "user_id", "day", "p7", "p30", "a30", "cs", "cn",
        *[F.last(c, ignorenulls=True).over(w).alias(c)
          for c in ("recent_track_ids", "recent_completions", "top_artist_share")])
    return filled.filter(_in_range(F.col("day"), start, end)).select(
        "user_id",
        F.col("p7").cast("int").alias("plays_7d"), F.col("p30").cast("int").alias("plays_30d"),
        F.col("a30").cast("int").alias("days_active_30d"), _mean_completion().alias("mean_completion_30d"),
        "top_artist_share", "recent_track_ids", "recent_completions",
        _day_end(F.col("day")).alias("event_timestamp"), created.alias("created"), F.col("day").alias("date"))


def _track_daily(lis: DataFrame, first_seen: DataFrame, start: date, end: date, created: Column) -> DataFrame:
    # Partition by track once: every later aggregation and window is keyed by it (no reshuffles).
    lis = lis.repartition("track_id")
    vals = _running(_window_events(lis, "track_id").unionByName(_listener_events(lis)), "track_id")
    return (vals.filter(_in_range(F.col("day"), start, end))
            .join(F.broadcast(first_seen), "track_id", "left")
            .select("track_id",
                    F.col("p7").cast("int").alias("plays_7d"), F.col("p30").cast("int").alias("plays_30d"),
                    F.col("l7").cast("int").alias("listeners_7d"), F.col("l30").cast("int").alias("listeners_30d"),
                    _mean_completion().alias("mean_completion_30d"),
                    "first_seen",
                    _day_end(F.col("day")).alias("event_timestamp"), created.alias("created"),
                    F.col("day").alias("date")))


# --------------------------------------------------------------------------- incremental state
def _fingerprints(ws: Workspace) -> dict[str, str]:
    """date -> digest of its bronze listens (rows and a hash of them), from the listens manifest:
    which days changed, without opening a file."""
    m = lk.read_manifest(ws.listens)
    return {} if m is None else {d: str(v["digest"]) for d, v in m.days.items()}


def _catalog_fingerprint(ws: Workspace) -> str:
    """Fingerprint of the bronze tracks files: ingest rewrites them only when the catalog changes."""
    files = sorted(ws.tracks.glob("*.parquet")) if ws.tracks.is_dir() else []
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def _state_path(ws: Workspace) -> Path:
    return ws.features / "_state.json"


def _read_state(ws: Workspace) -> dict[str, Any]:
    state_file = _state_path(ws)
    return json.loads(state_file.read_text()) if state_file.exists() else {}


def _config_key(fcfg: FeaturesConfig) -> dict[str, Any]:
    return fcfg.model_dump(mode="json")


def plan_range(ws: Workspace, fcfg: FeaturesConfig, start: date | None, end: date | None
               ) -> tuple[str, date, date] | None:
    """Decide which days to compute: the explicit range, or everything from the first changed day.

    Returns (mode, start, end) or None when nothing changed since the last run. ``end`` is clipped
    to the last bronze day: rows for days the lake has not seen yet would claim a future.
    """
    days = lk.days(ws.listens)
    if not days:
        raise FeaturesError(f"no bronze listens under {ws.listens}: run `encore ingest` first")
    first, last = date.fromisoformat(days[0]), date.fromisoformat(days[-1])
    if start is not None or end is not None:
        s = start or first
        e = min(end or last, last)
        if end is not None and start is not None and end < start:
            raise FeaturesError(f"--end {end} is before --start {start}")
        if s > e:
            raise FeaturesError(f"range {s}..{end} holds no bronze day (lake has {first}..{last})")
        return "backfill", s, e
    state_file = _state_path(ws)
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if state.get("config") != _config_key(fcfg):
        return "incremental", first, last  # first run, or the definitions changed: everything
    old, now = state.get("bronze", {}), _fingerprints(ws)
    changed = sorted(d for d in set(old) | set(now) if old.get(d) != now.get(d))
    if not changed:
        return None
    # A changed day moves every later day's windows and sequences; completions reach one day back.
    s = date.fromisoformat(changed[0]) - timedelta(days=1)
    before = [d for d in old if d < changed[0]]
    if before:
        # Quiet days between the last day the tables saw and the change lay past the lake's end
        # then: their rows (plays leaving a window) were never written.
        s = min(s, date.fromisoformat(max(before)) + timedelta(days=1))
    s = max(first, s)
    return "incremental", s, last


def _save_state(ws: Workspace, fcfg: FeaturesConfig, start: date, end: date, catalog: str | None) -> None:
    """Remember which bronze days the feature tables now reflect.

    Days after ``start`` are up to date when the run reached the lake's last day; otherwise (a
    backfill that stopped short) later days may still be stale, so their old fingerprints stay.
    ``catalog``: the catalog fingerprint the published ``track_durations`` reflect (None: this
    run published none, a backfill).
    """
    state_file = _state_path(ws)
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    now = _fingerprints(ws)
    days = sorted(now)
    if end.isoformat() < days[-1]:
        return  # later days may depend on what changed inside the range: leave them marked stale
    # A bronze day d feeds feature days d-1 onwards, so d is reflected once d-1 was recomputed.
    lo = days[0] if start.isoformat() <= days[0] else (start + timedelta(days=1)).isoformat()
    if state.get("config") != _config_key(fcfg):
        if lo != days[0]:
            return  # a partial backfill over tables built with other settings proves nothing
        state = {"config": _config_key(fcfg), "bronze": {}}
    bronze = {d: fp for d, fp in state.get("bronze", {}).items() if d < lo}
    bronze.update({d: fp for d, fp in now.items() if d >= lo})
    state["bronze"] = bronze
    if catalog is not None:
        state["catalog"] = catalog
    atomic.write_json_atomic(state_file, state)


def _durations_may_have_changed(ws: Workspace) -> bool:
    """With no bronze listens day changed, durations can still move: a new catalog, or no stored
    ``track_durations`` to compare with (tables built by backfills only)."""
    stored = ws.feature_table(TRACK_DURATIONS_TABLE)
    return (_read_state(ws).get("catalog") != _catalog_fingerprint(ws)
            or not (stored.is_dir() and any(stored.glob("*.parquet"))))


# --------------------------------------------------------------------------- writing
# Row order inside each partition file: a unique key, so the same rows always give the same bytes.
SORT_KEYS = {
    "listens": ("user_id", "ts", "position"),
    "sessions": ("user_id", "start_ts"),
    "user_daily": ("user_id",),
    "track_daily": ("track_id",),
}


def _stage_table(df: DataFrame, name: str, ws: Workspace, run_id: str, granularity: str, start: date, end: date,
                 stats: TableStats) -> atomic.Repoint:
    t0 = time.perf_counter()
    staged = stage_periods(df, ws.feature_table(name), ws, run_id, granularity, start, end, SORT_KEYS[name])
    stats.rows, stats.nulls = staged.rows, staged.nulls
    stats.partitions_written, stats.partitions_removed = staged.periods_written, staged.periods_removed
    log.info("features: %s computed, written and re-encoded in %.1fs", name, time.perf_counter() - t0)
    return staged.repoint


def _stage_durations(durations: DataFrame, stage: Path, ws: Workspace, stats: TableStats) -> atomic.Swap:
    """Stage ``track_durations`` as one file sorted by track and day (same rows, same bytes); swapped whole."""
    out = stage / TRACK_DURATIONS_TABLE
    durations.coalesce(1).sortWithinPartitions("track_id", "valid_from").write.parquet(str(out))
    finalize_staged(out)
    stats.rows, stats.nulls = reencode(out)
    stats.partitions_written = 1
    return atomic.Swap(out, ws.feature_table(TRACK_DURATIONS_TABLE), ws.trash / stage.name / TRACK_DURATIONS_TABLE)


def _duration_kind(source: Column, method: Column) -> Column:
    """The report's DURATION_KINDS from a duration's source and method."""
    return (F.when(source == "catalog", "catalog").when(method == "gaps", "estimated_gaps")
            .when(method == "artist", "estimated_artist").otherwise("unknown"))


def _lake(spark: SparkSession, ws: Workspace, fcfg: FeaturesConfig) -> tuple[DataFrame, DataFrame]:
    """The bronze listens (one listing of the partitions, pruned per use) and every listened
    track's duration (persisted: the plan, the join, the counts and the table all read it)."""
    bronze = read_table(spark, ws.listens)
    assert bronze is not None  # plan_range refused an empty lake
    catalog = (spark.read.parquet(str(ws.tracks)).select("track_id", "artist_id", "duration_s")
               if ws.tracks.is_dir() and any(ws.tracks.glob("*.parquet")) else None)
    return bronze, estimate_durations(bronze, catalog, fcfg).persist()


def _stale_since(spark: SparkSession, ws: Workspace, durations: DataFrame) -> date | None:
    """The first day on which the stored durations and ``durations`` differ (the first play of every
    track, when none are stored); None when all agree."""
    live = ws.feature_table(TRACK_DURATIONS_TABLE)
    stored = live.is_dir() and any(live.glob("*.parquet"))
    old = spark.read.parquet(str(live)) if stored else durations.limit(0)
    row = stale_since(old, durations).first()
    return None if row is None or row["since"] is None else row["since"]


def build_features(cfg: EncoreConfig, start: date | None = None, end: date | None = None) -> FeaturesReport:
    """Compute the feature tables for [start, end] (a backfill) or whatever changed (incremental)."""
    t0 = time.perf_counter()
    run_id = atomic.new_run_id()
    ws = Workspace.at(cfg.home)
    fcfg = cfg.features
    with ws.lock("lake"):
        recovered = atomic.recover(ws.journals)
        shutil.rmtree(ws.tmp / "staging", ignore_errors=True)
        for table in (ws.listens, *(ws.feature_table(t) for t in FEATURE_TABLES)):
            lk.check_layout(table, cfg.lake.granularity)
        lk.clean_orphans(ws.lake, [ws.feature_table(t) for t in FEATURE_TABLES])
        plan = plan_range(ws, fcfg, start, end)
        report = FeaturesReport(run_id=run_id, started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                                mode="up-to-date", recovered_publications=recovered)
        catalog = _catalog_fingerprint(ws)
        bronze = durations = None
        if plan is not None or _durations_may_have_changed(ws):
            spark = get_spark(cfg.spark)
            bronze, durations = _lake(spark, ws, fcfg)
            if plan is None or plan[0] == "incremental":
                since = _stale_since(spark, ws, durations)
                last = date.fromisoformat(lk.days(ws.listens)[-1])
                if since is not None and (plan is None or since < plan[1]):
                    # Listens of a track with a new duration hold stale completions from its first play.
                    report.durations_stale_since = since.isoformat()
                    plan = ("incremental", since, last)
        if plan is not None:
            mode, s, e = plan
            report.mode, report.start, report.end = mode, s.isoformat(), e.isoformat()
            log.info("features %s: %s %s..%s", run_id, report.mode, s, e)
            assert bronze is not None and durations is not None
            incremental = mode == "incremental"
            if not incremental and "catalog" in (state := _read_state(ws)):
                # The backfilled days may disagree with the stored durations: forgetting the catalog
                # (before publishing, so a kill cannot skip it) makes the next incremental run
                # compare the durations again and repair the days outside the backfill.
                del state["catalog"]
                atomic.write_json_atomic(_state_path(ws), state)
            _run(cfg, ws, bronze, durations, s, e, ws.staging(run_id), report, publish_durations=incremental)
            _save_state(ws, fcfg, s, e, catalog if incremental else None)
        else:
            if durations is not None:  # a new catalog that changed no duration: nothing is stale
                atomic.write_json_atomic(_state_path(ws), {**_read_state(ws), "catalog": catalog})
            log.info("features %s: every bronze day is already reflected; nothing to do", run_id)
        if durations is not None:
            durations.unpersist()
        report.seconds = round(time.perf_counter() - t0, 3)
        atomic.write_report(ws.reports("features"), run_id, report.to_dict())
    return report


def _run(cfg: EncoreConfig, ws: Workspace, bronze: DataFrame, durations: DataFrame, start: date, end: date,
         stage: Path, report: FeaturesReport, publish_durations: bool) -> None:
    fcfg = cfg.features
    stage.mkdir(parents=True)
    raw = _inputs(bronze, ws, start, end, fcfg.sequence_length)
    joined = durations.select("track_id", "valid_from", "valid_to", "duration_s", "duration_source",
                              "duration_method")
    lis_all = sessionize(raw, joined, fcfg).persist()
    lis = lis_all.filter(~F.col("tail"))
    day = F.to_date("ts")
    inside = _in_range(day, start, end)
    in_range = lis.filter(inside)
    kind = _duration_kind(F.col("duration_source"), F.col("duration_method"))
    # One pass for the report's counts and `created` (the newest listen this run read: derived from
    # the data, so a rerun on the same lake writes the same bytes, and it moves when inputs do).
    counts = lis.agg(
        F.count(F.lit(1)).alias("read"), F.max("ts").alias("newest"),
        F.sum((inside & F.col("next_ts").isNull()).cast("int")).alias("last"),
        F.sum((inside & F.col("duration_s").isNull()).cast("int")).alias("nodur"),
        F.sum((inside & (F.col("next_ts") == F.col("ts"))).cast("int")).alias("same"),
        *[F.sum((inside & (kind == k)).cast("int")).alias(k) for k in DURATION_KINDS]).first()
    created = F.lit(counts["newest"])
    report.listens_read = int(counts["read"])
    report.completion_unknown_last_of_session = int(counts["last"] or 0)
    report.completion_unknown_duration = int(counts["nodur"] or 0)
    report.completion_unknown_same_timestamp = int(counts["same"] or 0)
    report.duration_listens = {k: int(counts[k] or 0) for k in DURATION_KINDS}
    per_kind = {r["k"]: r["count"] for r in current(durations).groupBy(
        _duration_kind(F.col("duration_source"), F.col("duration_method")).alias("k")).count().collect()}
    report.duration_tracks = {k: int(per_kind.get(k, 0)) for k in DURATION_KINDS}
    # First play day per track over the whole lake (the durations table carries it).
    first_seen = current(durations).select("track_id", F.col("first_played").cast("timestamp").alias("first_seen"))
    listen_cols = {"event_timestamp": F.col("ts"), "created": created, "date": day}
    tables = {
        "listens": in_range.select(*[listen_cols.get(c, F.col(c)).alias(c) for c in LISTEN_FEATURE_COLUMNS]),
        "sessions": _sessions(lis, fcfg, created).filter(_in_range(F.col("date"), start, end)),
        "user_daily": _user_daily(lis, lis_all, fcfg, start, end, created),
        "track_daily": _track_daily(lis, first_seen, start, end, created),
    }
    swaps: list[atomic.Entry] = []
    for name in FEATURE_TABLES:
        stats = report.tables.setdefault(name, TableStats())
        swaps.append(_stage_table(tables[name], name, ws, stage.name, cfg.lake.granularity, start, end, stats))
        log.info("features: %s %d rows in %d partitions (%d removed)", name, stats.rows,
                 stats.partitions_written, stats.partitions_removed)
    if publish_durations:
        swaps.append(_stage_durations(durations.select(*TRACK_DURATION_COLUMNS), stage, ws,
                                      report.tables.setdefault(TRACK_DURATIONS_TABLE, TableStats())))
    lis_all.unpersist()
    faults.point("features.staged")
    atomic.publish_run(swaps, ws.journals, stage, ws.trash / stage.name)


__all__ = ["DURATION_KINDS", "FeaturesError", "FeaturesReport", "build_features", "plan_range", "sessionize"]
