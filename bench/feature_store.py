"""Benchmark: Feast materialize (rows/s, peak memory) and online lookup latency (p50/p99).

Needs a workspace whose feature tables are built; without ``--home`` it generates one
(1,000 users x 365 days by default: sample-data -> ingest -> features, several minutes once).

* materialize ``user_daily`` into SQLite, each run in a fresh child process so its peak RSS is
  its own: (a) the whole year in one run, (b) the last 30 days as 30 nightly increments.
  Baseline in the same run: reading the same source rows with pyarrow (the floor any loader pays).
* online lookup through the ``scoring`` service for batches of 1, 100 and 1,000 users.
  Baseline: one SELECT of the same keys straight from Feast's SQLite table, without decoding.

    .venv/bin/python bench/feature_store.py [--home DIR] [--users 1000 --days 365 --tracks 50000]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
import warnings
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

from encore.core import lake
from encore.core.config import EncoreConfig, SparkConfig
from encore.core.workspace import Workspace

LISTENS_FILE = "userid-timestamp-artid-artname-traid-traname.tsv"
warnings.filterwarnings("ignore", category=DeprecationWarning)  # ibis inside Feast


def _cfg(home: Path) -> EncoreConfig:
    return EncoreConfig(home=home, spark=SparkConfig(driver_memory="8g"))


def prepare(workdir: Path, users: int, tracks: int, days: int) -> Path:
    """A workspace with feature tables for a generated world (reused when already built)."""
    home = workdir / "home"
    if lake.days(Workspace.at(home).feature_table("user_daily")):
        return home
    from encore.sample_world.generator import WorldConfig, generate_world
    from jobs.features import build_features
    from jobs.ingest import IngestInputs, ingest

    world = workdir / "world"
    if not (world / LISTENS_FILE).exists():
        generate_world(WorldConfig(users=users, tracks=tracks, days=days, seed=11, clips=0), world)
    cfg = _cfg(home)
    ingest(cfg, IngestInputs(listens=(world / LISTENS_FILE,), catalog=world / "catalog.jsonl"))
    build_features(cfg)
    return home


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_materialize(home: Path, mode: str) -> dict:
    """Runs in a child process: one benchmark case, printed as JSON."""
    from feature_repo import store

    cfg = _cfg(home)
    ws = Workspace.at(home)
    last = date.fromisoformat(lake.days(ws.feature_table("user_daily"))[-1])
    if mode == "pyarrow-read":
        t0 = time.perf_counter()
        t = ds.dataset(ws.feature_table("user_daily"), format="parquet", partitioning="hive").to_table()
        return {"seconds": time.perf_counter() - t0, "rows": t.num_rows, "runs": 1, "peak_mib": _peak_mib()}
    shutil.rmtree(ws.feast, ignore_errors=True)
    store.apply(cfg)
    if mode == "year":
        t0 = time.perf_counter()
        rep = store.materialize(cfg, last, views=["user_daily"])
        rows, runs = rep.views["user_daily"]["source_rows"], 1
    else:  # nightly: load up to 30 days ago (not timed), then one increment per day
        store.materialize(cfg, last - timedelta(days=30), views=["user_daily"])
        t0, rows, runs = time.perf_counter(), 0, 0
        for i in range(29, -1, -1):
            rep = store.materialize(cfg, last - timedelta(days=i), views=["user_daily"])
            rows += rep.views["user_daily"]["source_rows"]
            runs += 1
    return {"seconds": time.perf_counter() - t0, "rows": rows, "runs": runs, "peak_mib": _peak_mib()}


def run_child(home: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--home", str(home), "--child", mode],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def online_latency(home: Path, batch_sizes: tuple[int, ...]) -> list[dict]:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from feature_repo import store

    cfg = _cfg(home)
    ws = Workspace.at(home)
    store.materialize(cfg)  # everything online (the materialize cases left only user_daily)
    users = sorted(ds.dataset(ws.feature_table("user_daily"), format="parquet", partitioning="hive")
                   .to_table(columns=["user_id"]).column("user_id").unique().to_pylist())
    fs = store.open_store(cfg)
    service = fs.get_feature_service("scoring")
    db = sqlite3.connect(ws.feast / "online.db")
    table = f"{cfg.feast.project}_user_daily"
    rng = np.random.default_rng(0)
    results = []
    for n in batch_sizes:
        reps = max(5, min(200, 20_000 // n))
        feast_ms, sql_ms = [], []
        for _ in range(reps):
            batch = list(rng.choice(users, size=min(n, len(users)), replace=n > len(users)))
            t0 = time.perf_counter()
            fs.get_online_features(features=service, entity_rows=[{"user_id": u} for u in batch]).to_dict()
            feast_ms.append((time.perf_counter() - t0) * 1000)
            keys = [serialize_entity_key(EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=u)]), 3)
                    for u in batch]
            t0 = time.perf_counter()
            db.execute(f"SELECT entity_key, feature_name, value FROM {table} WHERE entity_key IN "
                       f"({','.join('?' * len(keys))})", keys).fetchall()
            sql_ms.append((time.perf_counter() - t0) * 1000)
        pct = {f"{name}_p{q}": float(np.percentile(ms, q))
               for name, ms in (("feast", feast_ms), ("sql", sql_ms)) for q in (50, 99)}
        results.append({"batch": n, "reps": reps, **pct})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, help="workspace with feature tables (default: build one in --workdir)")
    ap.add_argument("--workdir", type=Path, default=Path(".encore/bench-feast"))
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--tracks", type=int, default=50_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_materialize(args.home, args.child)))
        return
    home = args.home or prepare(args.workdir, args.users, args.tracks, args.days)
    ws = Workspace.at(home)
    days = lake.days(ws.feature_table("user_daily"))
    users = ds.dataset(ws.feature_table("user_daily"), format="parquet", partitioning="hive").to_table(
        columns=["user_id"]).column("user_id").unique()
    print(f"workspace {home}: user_daily over {len(days)} days ({days[0]} .. {days[-1]}), {len(users):,} users")
    print(f"{'materialize user_daily':<34} {'runs':>5} {'rows':>10} {'seconds':>9} {'rows/s':>10} {'peak MiB':>9}")
    for label, mode in (("baseline: pyarrow read of the rows", "pyarrow-read"),
                        ("one run, whole year", "year"), ("30 nightly increments", "nightly")):
        r = run_child(home, mode)
        print(f"{label:<34} {r['runs']:>5} {r['rows']:>10,} {r['seconds']:>9.2f} "
              f"{r['rows'] / max(r['seconds'], 1e-9):>10,.0f} {r['peak_mib']:>9,.0f}")
    print(f"\n{'online lookup (scoring service)':<34} {'reps':>5} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'SQL p50':>9} {'SQL p99':>9}")
    for r in online_latency(home, (1, 100, 1000)):
        print(f"{'batch of ' + str(r['batch']) + ' users':<34} {r['reps']:>5} {r['feast_p50']:>9.2f} "
              f"{r['feast_p99']:>9.2f} {r['sql_p50']:>9.2f} {r['sql_p99']:>9.2f}")


if __name__ == "__main__":
    main()
