"""Benchmark: the feature job (jobs/features.py, PySpark) against the same four tables in DuckDB SQL.

Both engines read the same bronze lake (listens partitioned by date, the tracks catalog), compute
listens / sessions / user_daily / track_daily exactly as the docstring of jobs/features.py defines
them - the full range, i.e. what the first incremental run of ``build_features`` computes - and
write them as parquet partitioned by date. The ratio (Spark time / DuckDB time) is the price of
running the Spark job on one machine; the project's goal is at most 3x on 2 cores.

The DuckDB side is written independently of the Spark code (sessions numbered by a running count
of gaps instead of a running max, windows as RANGE frames over day rows instead of running sums
of +/- events, listeners as per-play spans instead of merged intervals, sequences as a bucketed
range join instead of array slices, forward fill as an ASOF join), so ``--check`` - which compares
every row and value of the two outputs - cross-validates both implementations.

    .venv/bin/python bench/features.py                 # 1000 users x 50,000 tracks x 365 days, ~5M listens
    .venv/bin/python bench/features.py --check         # small world (50 x 2000 x 60): the tables must agree
    .venv/bin/python bench/features.py --users 200 --days 90 --repeat 2

The generated world and its bronze lake are kept under --workdir and reused by later runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from encore.core import lake as layout
from encore.core.config import EncoreConfig, FeaturesConfig, SparkConfig
from encore.core.schemas import FEATURE_TABLES, LONG_WINDOW_DAYS, SHORT_WINDOW_DAYS
from encore.sample_world.generator import CATALOG_FILE, LISTENS_FILE, WorldConfig, generate_world

BIG = {"users": 1000, "tracks": 50_000, "days": 365}
SMALL = {"users": 50, "tracks": 2000, "days": 60}
READY = ".bench-ready"  # written into the Spark home once the bronze lake is complete
TOLERANCE = 1e-9

# {listens}, {tracks}, {out}: folders; {start}, {end}: first and last bronze day; the rest from
# FeaturesConfig and the window widths. Same contract as jobs/features.py, computed the SQL way.
DUCKDB_SQL = r"""
SET TimeZone = 'UTC';
CREATE OR REPLACE TEMP TABLE durations AS {durations};
CREATE OR REPLACE TEMP TABLE raw AS
    SELECT user_id, ts, track_id, artist_id, artist_name, track_name
    FROM read_parquet('{listens}/period=*/*.parquet', hive_partitioning = false);
SET VARIABLE created = (SELECT max(ts) FROM raw);

-- Listens in user order; a session starts at the first listen and after a gap > {gap}s: number
-- sessions by a running count of such starts.
CREATE OR REPLACE TEMP TABLE ordered AS
SELECT r.*, d.duration_s, epoch_us(r.ts) // 1000000 AS sec,
       row_number() OVER w AS rn,
       epoch_us(r.ts) // 1000000 - lag(epoch_us(r.ts) // 1000000) OVER w AS gap_before,
       lead(r.ts) OVER w AS following
FROM raw r LEFT JOIN durations d USING (track_id)
WINDOW w AS (PARTITION BY r.user_id ORDER BY r.ts, r.track_id, r.artist_id, r.artist_name, r.track_name);

CREATE OR REPLACE TEMP TABLE lis AS
WITH numbered AS (
    SELECT *, sum(CASE WHEN gap_before IS NULL OR gap_before > {gap} THEN 1 ELSE 0 END)
                  OVER (PARTITION BY user_id ORDER BY rn ROWS UNBOUNDED PRECEDING) AS session_no
    FROM ordered
), started AS (
    SELECT *, min(sec) OVER s AS start_sec, min(rn) OVER s AS start_rn,
           CASE WHEN epoch_us(following) // 1000000 - sec <= {gap} THEN following END AS next_ts
    FROM numbered WINDOW s AS (PARTITION BY user_id, session_no)
)
SELECT user_id, ts, sec, rn, track_id, artist_id, duration_s, next_ts, session_no,
       's-' || sha1(user_id || chr(31) || CAST(start_sec AS VARCHAR))[1:20] AS session_id,
       CAST(rn - start_rn + 1 AS INTEGER) AS position,
       CASE WHEN next_ts IS NOT NULL AND duration_s IS NOT NULL
            THEN least(1.0, CAST(epoch_us(next_ts) // 1000000 - sec AS DOUBLE) / duration_s) END AS completion,
       CAST(round(completion * 1000000) AS BIGINT) AS micro,
       CAST(ts AS DATE) AS x,
       CAST(next_ts AS DATE) AS k
FROM started;

COPY (SELECT user_id, ts, track_id, artist_id, session_id, position, duration_s, next_ts, completion,
             ts AS event_timestamp, getvariable('created') AS created, x AS date
      FROM lis ORDER BY date, user_id, ts, position)
  TO '{out}/listens' (FORMAT parquet, PARTITION_BY (date));

-- Sessions: known to be over {gap}s after their last listen starts; that moment's day partitions them.
COPY (
    SELECT user_id, session_id, min(ts) AS start_ts, max(ts) AS end_ts, CAST(count(*) AS INTEGER) AS length,
           max(sec) - min(sec) AS duration_s,
           CASE WHEN count(completion) > 0 THEN sum(micro) / count(completion) / 1000000 END AS mean_completion,
           CASE WHEN count(completion) > 0
                THEN count(completion) FILTER (WHERE completion < {skip_below}) / count(completion) END AS skip_share,
           CAST(count(DISTINCT artist_id) AS INTEGER) AS distinct_artists,
           to_timestamp(max(sec) + {gap}) AS event_timestamp, getvariable('created') AS created,
           CAST(to_timestamp(max(sec) + {gap}) AS DATE) AS date
    FROM lis GROUP BY user_id, session_no, session_id
    HAVING date BETWEEN DATE '{start}' AND DATE '{end}'
    ORDER BY date, user_id, start_ts)
  TO '{out}/sessions' (FORMAT parquet, PARTITION_BY (date));

-- Day rows: what each (key, play day) adds to the windows. A completion is known on day k (its next
-- listen's day, x or x+1): `late` is the part of day x not yet known at the end of x.
CREATE OR REPLACE TEMP TABLE user_day AS
SELECT user_id, x, count(*) AS n, coalesce(sum(micro), 0) AS cs, count(completion) AS cn,
       coalesce(sum(micro) FILTER (WHERE k > x), 0) AS cs_late, count(completion) FILTER (WHERE k > x) AS cn_late
FROM lis GROUP BY user_id, x;

CREATE OR REPLACE TEMP TABLE track_day AS
SELECT track_id, x, count(*) AS n, coalesce(sum(micro), 0) AS cs, count(completion) AS cn,
       coalesce(sum(micro) FILTER (WHERE k > x), 0) AS cs_late, count(completion) FILTER (WHERE k > x) AS cn_late
FROM lis GROUP BY track_id, x;

-- Change days: a play (x), a play leaving a window (x+{short}, x+{long}), a completion becoming
-- known (k). For users, k is always one of their play days (the next listen is theirs).
CREATE OR REPLACE TEMP TABLE user_days AS
SELECT DISTINCT user_id, d FROM (
    SELECT user_id, x AS d FROM user_day
    UNION ALL SELECT user_id, x + {short} FROM user_day
    UNION ALL SELECT user_id, x + {long} FROM user_day)
WHERE d <= DATE '{end}';

CREATE OR REPLACE TEMP TABLE track_days AS
SELECT DISTINCT track_id, d FROM (
    SELECT track_id, x AS d FROM track_day
    UNION ALL SELECT track_id, x + {short} FROM track_day
    UNION ALL SELECT track_id, x + {long} FROM track_day
    UNION ALL SELECT track_id, k FROM lis WHERE completion IS NOT NULL)
WHERE d <= DATE '{end}';

-- The last {n_seq} listens as of the end of each active day: those with rn in (last_rn - {n_seq}, last_rn].
-- Joined through buckets of {n_seq} listens (the range spans at most two), sorted by rn in the list.
CREATE OR REPLACE TEMP TABLE user_seq AS
WITH ends AS (
    SELECT user_id, x AS d, max(rn) AS last_rn FROM lis GROUP BY user_id, x
), keyed AS (
    SELECT *, unnest([last_rn // {n_seq}, last_rn // {n_seq} - 1]) AS bucket FROM ends
), seqs AS (
    SELECT e.user_id, e.d,
           list({{'t': l.track_id, 'a': l.artist_id, 'c': CAST(l.completion AS FLOAT)}} ORDER BY l.rn) AS seq
    FROM keyed e JOIN lis l
      ON l.user_id = e.user_id AND l.rn // {n_seq} = e.bucket AND l.rn BETWEEN e.last_rn - {n_seq_1} AND e.last_rn
    GROUP BY e.user_id, e.d
)
SELECT user_id, d,
       list_transform(seq, lambda e: e.t) AS recent_track_ids,
       list_transform(seq, lambda e, i: CASE WHEN i = len(seq) THEN CAST('nan' AS FLOAT)
                                             ELSE coalesce(e.c, CAST('nan' AS FLOAT)) END) AS recent_completions,
       list_max(map_values(list_aggregate(list_transform(seq, lambda e: e.a), 'histogram'))) / len(seq)
           AS top_artist_share
FROM seqs;

-- Values as of each change day D: RANGE frames over the day rows (D-{short_1}..D, D-{long_1}..D).
CREATE OR REPLACE TEMP TABLE user_vals AS
SELECT c.user_id, c.d,
       sum(coalesce(u.n, 0)) OVER w7 AS p7, sum(coalesce(u.n, 0)) OVER w30 AS p30, count(u.n) OVER w30 AS a30,
       sum(coalesce(u.cs, 0)) OVER w30 - coalesce(u.cs_late, 0) AS cs,
       sum(coalesce(u.cn, 0)) OVER w30 - coalesce(u.cn_late, 0) AS cn
FROM user_days c LEFT JOIN user_day u ON u.user_id = c.user_id AND u.x = c.d
WINDOW w7 AS (PARTITION BY c.user_id ORDER BY c.d RANGE BETWEEN INTERVAL {short_1} DAYS PRECEDING AND CURRENT ROW),
       w30 AS (PARTITION BY c.user_id ORDER BY c.d RANGE BETWEEN INTERVAL {long_1} DAYS PRECEDING AND CURRENT ROW);

-- A non-active change day keeps the sequence of the user's latest active day before it.
COPY (
    SELECT v.user_id, CAST(v.p7 AS INTEGER) AS plays_7d, CAST(v.p30 AS INTEGER) AS plays_30d,
           CAST(v.a30 AS INTEGER) AS days_active_30d,
           CASE WHEN v.cn > 0 THEN v.cs / v.cn / 1000000 END AS mean_completion_30d,
           s.top_artist_share, s.recent_track_ids, s.recent_completions,
           CAST(v.d + INTERVAL 1 DAY AS TIMESTAMPTZ) AS event_timestamp, getvariable('created') AS created,
           v.d AS date
    FROM user_vals v ASOF LEFT JOIN user_seq s ON v.user_id = s.user_id AND v.d >= s.d
    ORDER BY date, v.user_id)
  TO '{out}/user_daily' (FORMAT parquet, PARTITION_BY (date));

-- Listeners: each (track, listener, play day x) keeps the listener in the W-day window on days
-- x..x+W-1, handing over to their next play day nx if that comes sooner: one +1 at x and one -1
-- at least(nx, x+W), so the running sum counts each listener once.
CREATE OR REPLACE TEMP TABLE listener_delta AS
WITH plays AS (
    SELECT DISTINCT track_id, user_id, x FROM lis
), spans AS (
    SELECT track_id, x, lead(x) OVER (PARTITION BY track_id, user_id ORDER BY x) AS nx FROM plays
)
SELECT track_id, d, sum(l7) AS l7, sum(l30) AS l30 FROM (
    SELECT track_id, x AS d, 1 AS l7, 1 AS l30 FROM spans
    UNION ALL SELECT track_id, least(coalesce(nx, x + {short}), x + {short}), -1, 0 FROM spans
    UNION ALL SELECT track_id, least(coalesce(nx, x + {long}), x + {long}), 0, -1 FROM spans)
GROUP BY track_id, d;

CREATE OR REPLACE TEMP TABLE track_vals AS
SELECT c.track_id, c.d,
       sum(coalesce(t.n, 0)) OVER w7 AS p7, sum(coalesce(t.n, 0)) OVER w30 AS p30,
       sum(coalesce(t.cs, 0)) OVER w30 - coalesce(t.cs_late, 0) AS cs,
       sum(coalesce(t.cn, 0)) OVER w30 - coalesce(t.cn_late, 0) AS cn,
       sum(coalesce(l.l7, 0)) OVER upto AS l7, sum(coalesce(l.l30, 0)) OVER upto AS l30
FROM track_days c
LEFT JOIN track_day t ON t.track_id = c.track_id AND t.x = c.d
LEFT JOIN listener_delta l ON l.track_id = c.track_id AND l.d = c.d
WINDOW w7 AS (PARTITION BY c.track_id ORDER BY c.d RANGE BETWEEN INTERVAL {short_1} DAYS PRECEDING AND CURRENT ROW),
       w30 AS (PARTITION BY c.track_id ORDER BY c.d RANGE BETWEEN INTERVAL {long_1} DAYS PRECEDING AND CURRENT ROW),
       upto AS (PARTITION BY c.track_id ORDER BY c.d ROWS UNBOUNDED PRECEDING);

-- first_seen: midnight UTC of the first day anyone played the track, anywhere in the lake.
CREATE OR REPLACE TEMP TABLE first_seen AS
SELECT track_id, CAST(CAST(min(ts) AS DATE) AS TIMESTAMPTZ) AS first_seen FROM raw GROUP BY track_id;

COPY (
    SELECT v.track_id, CAST(v.p7 AS INTEGER) AS plays_7d, CAST(v.p30 AS INTEGER) AS plays_30d,
           CAST(v.l7 AS INTEGER) AS listeners_7d, CAST(v.l30 AS INTEGER) AS listeners_30d,
           CASE WHEN v.cn > 0 THEN v.cs / v.cn / 1000000 END AS mean_completion_30d,
           f.first_seen,
           CAST(v.d + INTERVAL 1 DAY AS TIMESTAMPTZ) AS event_timestamp, getvariable('created') AS created,
           v.d AS date
    FROM track_vals v LEFT JOIN first_seen f USING (track_id)
    ORDER BY date, v.track_id)
  TO '{out}/track_daily' (FORMAT parquet, PARTITION_BY (date));
"""

# Columns that identify a row when comparing the two outputs (listens: `dup` numbers listens that
# share all four, ordered by position).
COMPARE_KEYS = {
    "listens": ("user_id", "ts", "track_id", "artist_id", "dup"),
    "sessions": ("user_id", "start_ts"),
    "user_daily": ("user_id", "date"),
    "track_daily": ("track_id", "date"),
}
IGNORED = ("created",)


@dataclass
class World:
    cfg: WorldConfig
    home: Path  # Spark's workspace: bronze lake in, features out
    listens: int


def bronze_days(lake_root: Path) -> list[str]:
    return layout.days(lake_root / "bronze" / "listens")


def encore_config(home: Path) -> EncoreConfig:
    return EncoreConfig(home=home, spark=SparkConfig(master="local[*]", driver_memory="8g"))


def prepare_world(work: Path, wcfg: WorldConfig) -> World:
    """Generate the world and ingest it with the Spark job, unless a finished lake is already there."""
    root = work / f"u{wcfg.users}-t{wcfg.tracks}-d{wcfg.days}-s{wcfg.seed}"
    home = root / "home"
    marker = home / READY
    if marker.exists():
        listens = int(marker.read_text().strip() or 0)
        print(f"world: reusing {root} ({listens:,} listens)")
        return World(wcfg, home, listens)
    from jobs.ingest import IngestInputs, ingest

    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    stats = generate_world(wcfg, root / "world", progress=False)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ingest(encore_config(home), IngestInputs(listens=(root / "world" / LISTENS_FILE,),
                                            catalog=root / "world" / CATALOG_FILE))
    print(f"world: {stats.listens:,} listens ({wcfg.users} users x {wcfg.tracks} tracks x {wcfg.days} days), "
          f"generated in {gen_s:.1f}s, ingested by Spark in {time.perf_counter() - t0:.1f}s -> {root}")
    marker.write_text(f"{stats.listens}\n")
    return World(wcfg, home, stats.listens)


def duckdb_sql(lake: Path, out: Path, fcfg: FeaturesConfig) -> str:
    """The DuckDB script computing the four tables of ``lake`` into ``out`` (full range of bronze days)."""
    days = bronze_days(lake)
    if not days:
        raise SystemExit(f"no bronze listens under {lake}")
    tracks = lake / "bronze" / "tracks"
    durations = (f"SELECT track_id, duration_s FROM read_parquet('{tracks}/*.parquet')"
                 if any(tracks.glob("*.parquet")) else
                 "SELECT CAST(NULL AS VARCHAR) AS track_id, CAST(NULL AS DOUBLE) AS duration_s WHERE false")
    return DUCKDB_SQL.format(
        listens=lake / "bronze" / "listens", durations=durations, out=out, start=days[0], end=days[-1],
        gap=fcfg.session_gap_minutes * 60, skip_below=float(fcfg.skip_below),
        n_seq=fcfg.sequence_length, n_seq_1=fcfg.sequence_length - 1,
        short=SHORT_WINDOW_DAYS, long=LONG_WINDOW_DAYS, short_1=SHORT_WINDOW_DAYS - 1, long_1=LONG_WINDOW_DAYS - 1)


def bench_duckdb(lake: Path, out: Path, fcfg: FeaturesConfig, threads: int, memory: str) -> float:
    """Run the DuckDB script into a fresh ``out``; returns seconds (read + compute + write)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sql = duckdb_sql(lake, out, fcfg)
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute(f"SET memory_limit = '{memory}'")
    con.execute("SET preserve_insertion_order = false")
    t0 = time.perf_counter()
    con.execute(sql)
    seconds = time.perf_counter() - t0
    con.close()
    return seconds


def spark_startup(cfg: EncoreConfig) -> float:
    from jobs.spark import get_spark

    t0 = time.perf_counter()
    get_spark(cfg.spark).range(1).count()
    return time.perf_counter() - t0


def bench_spark(cfg: EncoreConfig) -> float:
    """Run ``build_features`` on a lake without feature tables (its first run: every bronze day)."""
    from encore.core.workspace import Workspace
    from jobs.features import build_features

    shutil.rmtree(Workspace.at(cfg.home).features, ignore_errors=True)
    t0 = time.perf_counter()
    report = build_features(cfg)
    seconds = time.perf_counter() - t0
    if report.mode != "incremental":
        raise SystemExit(f"unexpected feature run mode {report.mode!r} (wanted a first, full run)")
    return seconds


def _scan(root: Path, table: str) -> str:
    # Encore's tables: period folders with a date column; the DuckDB reference's: date= folders.
    glob = "period=*" if (root / table).is_symlink() else "date=*"
    return f"read_parquet('{root / table}/{glob}/*.parquet', hive_partitioning = {glob == 'date=*'})"


def _same(col: str, typ: str) -> str:
    """SQL that is true when a.col and b.col agree (floats within TOLERANCE, NaN equal to NaN, NULL to NULL)."""
    a, b = f'a."{col}"', f'b."{col}"'
    if typ in ("DOUBLE", "FLOAT"):
        return f"({a} IS NOT DISTINCT FROM {b} OR coalesce(abs({a} - {b}) <= {TOLERANCE}, false))"
    if typ in ("DOUBLE[]", "FLOAT[]"):
        close = f"list_bool_and(list_transform({a}, lambda v, i: v = {b}[i] OR abs(v - {b}[i]) <= {TOLERANCE}))"
        return f"({a} IS NOT DISTINCT FROM {b} OR coalesce(len({a}) = len({b}) AND {close}, false))"
    return f"{a} IS NOT DISTINCT FROM {b}"


def _short(value: object, chars: int = 600) -> str:
    text = repr(value)
    return text if len(text) <= chars else text[:chars] + "...]"


def compare(spark_root: Path, duck_root: Path, examples: int = 3) -> list[str]:
    """Every difference between the Spark and DuckDB feature tables (``created`` ignored), as text."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    problems: list[str] = []
    for table in FEATURE_TABLES:
        schemas = [[(r[0], r[1]) for r in con.execute(f"DESCRIBE SELECT * FROM {_scan(root, table)}").fetchall()
                    if r[0] not in IGNORED] for root in (spark_root, duck_root)]
        if schemas[0] != schemas[1]:
            problems.append(f"{table}: schemas differ\n  spark  {schemas[0]}\n  duckdb {schemas[1]}")
        types = dict(schemas[0])
        cols = [c for c in types if c in dict(schemas[1])]
        keys = COMPARE_KEYS[table]
        for side, root in (("s", spark_root), ("d", duck_root)):
            dup = ("row_number() OVER (PARTITION BY user_id, ts, track_id, artist_id ORDER BY position) AS dup"
                   if "dup" in keys else "1 AS dup")
            con.execute(f"CREATE OR REPLACE TEMP TABLE {side} AS SELECT *, {dup}, true AS _here "
                        f"FROM {_scan(root, table)}")
        n_s, n_d = (con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("s", "d"))
        on = " AND ".join(f'a."{k}" IS NOT DISTINCT FROM b."{k}"' for k in keys)
        # a and b: each side's whole row as a struct; a._here is NULL where Spark has no such row.
        con.execute(f"CREATE OR REPLACE TEMP TABLE j AS SELECT a, b FROM s a FULL JOIN d b ON {on}")
        only = {name: con.execute(f"SELECT count(*), any_value({side}) FROM j WHERE {other}._here IS NULL").fetchone()
                for name, side, other in (("spark", "a", "b"), ("duckdb", "b", "a"))}
        for name, (n, row) in only.items():
            if n:
                problems.append(f"{table}: {n} rows only in {name} (spark {n_s:,} rows, duckdb {n_d:,}); e.g. {row}")
        for col in cols:
            if col in keys:
                continue
            same = _same(col, types[col])
            bad = con.execute(f"SELECT count(*) FROM j WHERE a._here AND b._here AND NOT ({same})"
                              ).fetchone()[0]
            if bad:
                rows = con.execute(
                    f"SELECT {', '.join(f'a.{k}' for k in keys if k != 'dup')}, a.\"{col}\", b.\"{col}\" "
                    f"FROM j WHERE a._here AND b._here AND NOT ({same}) LIMIT {examples}").fetchall()
                lines = "\n".join(f"    key {r[:-2]}: spark {_short(r[-2])} | duckdb {_short(r[-1])}" for r in rows)
                problems.append(f"{table}.{col}: {bad:,} of {min(n_s, n_d):,} rows differ, e.g.\n{lines}")
        print(f"  {table:<12} spark {n_s:>10,} rows   duckdb {n_d:>10,} rows")
    con.close()
    return problems


def count_rows(root: Path) -> dict[str, int]:
    con = duckdb.connect()
    try:
        return {t: con.execute(f"SELECT count(*) FROM {_scan(root, t)}").fetchone()[0] for t in FEATURE_TABLES}
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=None, help=f"default {BIG['users']} ({SMALL['users']} with --check)")
    ap.add_argument("--tracks", type=int, default=None,
                    help=f"default {BIG['tracks']} ({SMALL['tracks']} with --check)")
    ap.add_argument("--days", type=int, default=None, help=f"default {BIG['days']} ({SMALL['days']} with --check)")
    ap.add_argument("--seed", type=int, default=0, help="world seed")
    ap.add_argument("--workdir", type=Path, default=Path(".encore/bench-features"),
                    help="worlds, lakes and outputs live here and are reused (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per engine, each into a fresh output; best is kept")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads (default: %(default)s, the 2-core target)")
    ap.add_argument("--check", action="store_true",
                    help="compare every row and value of the two outputs; exit 1 on any difference")
    args = ap.parse_args()
    size = SMALL if args.check else BIG
    wcfg = WorldConfig(users=args.users or size["users"], tracks=args.tracks or size["tracks"],
                       days=args.days or size["days"], seed=args.seed, clips=0)
    world = prepare_world(args.workdir, wcfg)
    cfg = encore_config(world.home)
    lake = world.home / "lake"
    duck_out = world.home.parent / "duckdb-features"

    startup = spark_startup(cfg)
    spark_runs, duck_runs = [], []
    for _ in range(args.repeat):
        spark_runs.append(bench_spark(cfg))
        duck_runs.append(bench_duckdb(lake, duck_out, cfg.features, args.threads, cfg.spark.driver_memory.upper()))
    spark_s, duck_s = min(spark_runs), min(duck_runs)
    print(f"spark session start {startup:.1f}s (excluded); runs: spark {', '.join(f'{x:.1f}' for x in spark_runs)}s"
          f", duckdb {', '.join(f'{x:.1f}' for x in duck_runs)}s"
          + ("  (one run: Spark's includes JVM warm-up)" if args.repeat == 1 else ""))

    spark_root = lake / "features"
    if args.check:
        print(f"check: every table, every value (floats within {TOLERANCE:g}, NaN = NaN, `created` ignored)")
        problems = compare(spark_root, duck_out)
    else:
        s_rows, d_rows = count_rows(spark_root), count_rows(duck_out)
        problems = [f"{t}: spark {s_rows[t]:,} rows vs duckdb {d_rows[t]:,}" for t in FEATURE_TABLES
                    if s_rows[t] != d_rows[t]]
        print("rows: " + ", ".join(f"{t} {s_rows[t]:,}" for t in FEATURE_TABLES))
    days = bronze_days(lake)
    print(f"\n{world.listens:,} listens, {len(days)} days ({days[0]}..{days[-1]}), "
          f"{wcfg.users} users, {wcfg.tracks} tracks")
    print(f"spark  (local[*], 8g driver, best of {args.repeat}): {spark_s:8.1f}s  "
          f"{world.listens / spark_s:>12,.0f} listens/s")
    print(f"duckdb ({args.threads} threads, same tables):        {duck_s:8.1f}s  "
          f"{world.listens / duck_s:>12,.0f} listens/s")
    ratio = spark_s / duck_s
    print(f"ratio spark/duckdb time: {ratio:.2f}x  (goal <= 3x on 2 cores: {'met' if ratio <= 3 else 'NOT met'})")
    if problems:
        print(f"\nMISMATCH: {len(problems)} difference(s) between the Spark and DuckDB tables:")
        for p in problems:
            print(f"- {p}")
        sys.exit(1)
    if args.check:
        print("check passed: the Spark and DuckDB tables are identical")


if __name__ == "__main__":
    main()
