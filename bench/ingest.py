"""Benchmark: ingest one generated LastFM-1K file with Spark (the real job) and with DuckDB.

Both read the same raw file and write the same layout - listens parquet partitioned by date,
quarantine for invalid rows, exact duplicates dropped, the same derived ids - so the ratio is the
price of running the Spark job on one machine. Not a test; prints figures:

    .venv/bin/python bench/ingest.py [--listens 1000000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow.dataset as ds

from encore.core.config import EncoreConfig
from encore.sample_world.generator import LISTENS_FILE, LISTENS_PER_USER_DAY, WorldConfig, generate_world

DUCKDB_SQL = r"""
CREATE OR REPLACE TEMP TABLE parsed AS
WITH raw AS (
    SELECT line, string_split(line, chr(9)) AS f
    FROM read_csv('{path}', columns={{'line': 'VARCHAR'}}, delim=chr(0), quote='', escape='',
                  header=false, auto_detect=false)
), typed AS (
    SELECT line, f, len(f) AS n, try_strptime(f[2], '%Y-%m-%dT%H:%M:%SZ') AS ts FROM raw
)
SELECT line, f[1] AS user_id, ts,
    CASE WHEN n != 6 THEN 'field_count'
         WHEN greatest(length(f[1]), length(f[2]), length(f[3]), length(f[4]), length(f[5]), length(f[6])) > 2048
              THEN 'field_too_long'
         WHEN trim(f[1]) = '' THEN 'empty_user'
         WHEN ts IS NULL THEN 'bad_timestamp'
         WHEN ts < TIMESTAMP '2000-01-01' OR ts > now()::TIMESTAMP + INTERVAL 1 DAY THEN 'timestamp_out_of_range'
         WHEN f[5] = '' AND f[6] = '' THEN 'no_track' END AS reason,
    coalesce(nullif(f[3], ''), 'art-' || sha1(f[4])[1:24]) AS artist_id, nullif(f[3], '') AS artist_mbid,
    f[4] AS artist_name,
    coalesce(nullif(f[5], ''), 'trk-' || sha1(f[4] || chr(31) || f[6])[1:24]) AS track_id,
    nullif(f[5], '') AS track_mbid, f[6] AS track_name
FROM typed;
COPY (SELECT DISTINCT user_id, ts, artist_id, artist_mbid, artist_name, track_id, track_mbid, track_name,
             CAST(ts AS DATE) AS date
      FROM parsed WHERE reason IS NULL ORDER BY date, user_id, ts)
  TO '{out}/listens' (FORMAT parquet, PARTITION_BY (date));
COPY (SELECT reason, line AS raw_line FROM parsed WHERE reason IS NOT NULL)
  TO '{out}/quarantine.parquet' (FORMAT parquet);
"""


def bench_duckdb(path: Path, out: Path, threads: int) -> tuple[float, int]:
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    t0 = time.perf_counter()
    con.execute(DUCKDB_SQL.format(path=path, out=out))
    seconds = time.perf_counter() - t0
    return seconds, ds.dataset(out / "listens", partitioning="hive").count_rows()


def spark_startup() -> float:
    from jobs.spark import get_spark

    t0 = time.perf_counter()
    get_spark(EncoreConfig().spark).range(1).count()
    return time.perf_counter() - t0


def bench_spark(path: Path, home: Path) -> tuple[float, int]:
    from jobs.ingest import IngestInputs, ingest

    t0 = time.perf_counter()
    report = ingest(EncoreConfig(home=home), IngestInputs(listens=(path,)))
    return time.perf_counter() - t0, report.listens.added


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listens", type=int, default=1_000_000, help="approximate listens to generate")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per engine, each into a fresh output; best is kept")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="encore-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    # ~5.5% of planned listens run past the world's end (see LISTENS_PER_USER_DAY): plan for it.
    users = max(1, round(args.listens / (365 * LISTENS_PER_USER_DAY * 0.945)))
    t0 = time.perf_counter()
    stats = generate_world(WorldConfig(users=users, tracks=20000, days=365, clips=0), work / "world", progress=False)
    gen_s = time.perf_counter() - t0
    path = work / "world" / LISTENS_FILE
    size_mb = path.stat().st_size / 1e6
    print(f"input: {stats.listens:,} listens, {size_mb:.0f} MB ({users} users x 365 days), "
          f"generated in {gen_s:.1f}s = {stats.listens / gen_s * 60 / 1e6:.1f}M listens/min")

    startup = spark_startup()
    spark_runs, duck_runs = [], []
    for i in range(args.repeat):  # fresh outputs each time: a rerun into the same lake would add nothing
        for d in (f"spark-home-{i}", f"duckdb-out-{i}"):
            shutil.rmtree(work / d, ignore_errors=True)
        seconds, spark_rows = bench_spark(path, work / f"spark-home-{i}")
        spark_runs.append(seconds)
        seconds, duck_rows = bench_duckdb(path, work / f"duckdb-out-{i}", threads=2)
        duck_runs.append(seconds)
    spark_s, duck_s = min(spark_runs), min(duck_runs)
    print(f"spark session start {startup:.1f}s; runs: spark {', '.join(f'{x:.1f}' for x in spark_runs)}s "
          f"(the first warms the JVM), duckdb {', '.join(f'{x:.1f}' for x in duck_runs)}s")
    if spark_rows != duck_rows:
        raise SystemExit(f"row counts differ: spark {spark_rows} vs duckdb {duck_rows}")
    spark_rate, duck_rate = stats.listens / spark_s, stats.listens / duck_s
    print(f"spark  (local[*], best run, session start excluded):          {spark_s:7.1f}s  "
          f"{spark_rate:>12,.0f} rows/s")
    print(f"duckdb (2 threads, same layout):                          {duck_s:7.1f}s  {duck_rate:>12,.0f} rows/s")
    print(f"ratio spark/duckdb throughput: {spark_rate / duck_rate:.2f}x  (rows kept by both: {spark_rows:,})")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
