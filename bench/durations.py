"""Benchmark: how well the listening estimates track durations (jobs/durations.py), per setting.

A generated world knows every track's true length (truth/tracks.parquet) while its catalog is
missing a share of them (--drop). The real estimator (Spark) runs on the ingested lake for each
quantile and gap cap; for the tracks whose catalog length was dropped it reports

    MdARE      median |estimate - truth| / truth, own-gap estimates and the artist fallback apart
    corr       Pearson correlation, over in-session listens of estimated tracks, between completion
               from the estimate and completion from the true length (what models read)
    changed    tracks whose duration moves when the last --new-days days arrive later: each one
               makes the incremental feature job recompute from that track's first play

twice: on the listens as generated, and with --hide of the plays removed at random, which is what
unscrobbled skips do to a real log (the gap before a hidden play swallows it). Not a test; prints
markdown for docs/durations.md:

    .venv/bin/python bench/durations.py                      # 200 users x 5000 tracks x 60 days, 60% dropped
    .venv/bin/python bench/durations.py --users 40 --tracks 1500 --days 28 --seed 11 --drop 0.8   # the test's world

The world and its lakes are kept under --workdir and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyspark.sql import functions as F

from encore.core import lake
from encore.core.config import EncoreConfig, FeaturesConfig, SparkConfig
from encore.core.workspace import Workspace
from encore.sample_world.generator import CATALOG_FILE, LISTENS_FILE, WorldConfig, generate_world
from jobs.durations import LISTEN_ORDER, current, estimate_durations, stale_since
from jobs.spark import get_spark

READY = ".bench-ready"  # written into a home once its bronze lake is complete


def _world(args: argparse.Namespace) -> Path:
    wcfg = WorldConfig(users=args.users, tracks=args.tracks, days=args.days, seed=args.seed, clips=0,
                       drop_durations=args.drop)
    key = json.dumps({k: str(v) for k, v in asdict(wcfg).items()}, sort_keys=True)
    out = args.workdir / "world"
    if not (out / "world.key").exists() or (out / "world.key").read_text() != key:
        shutil.rmtree(args.workdir, ignore_errors=True)
        generate_world(wcfg, out, progress=False)
        (out / "world.key").write_text(key)
    return out


def _lake(args: argparse.Namespace, world: Path, hide: float) -> EncoreConfig:
    """The world ingested, with a share ``hide`` of its plays removed first (same draw each run)."""
    from jobs.ingest import IngestInputs, ingest

    home = args.workdir / f"home-hide{hide:g}"
    cfg = EncoreConfig(home=home, spark=SparkConfig(master="local[*]", driver_memory="3g", shuffle_partitions=4))
    if (home / READY).exists():
        return cfg
    shutil.rmtree(home, ignore_errors=True)
    listens = world / LISTENS_FILE
    if hide > 0:
        lines = listens.read_bytes().splitlines(keepends=True)
        keep = np.random.default_rng(12345).random(len(lines)) >= hide
        listens = args.workdir / f"listens-hide{hide:g}.tsv"
        listens.write_bytes(b"".join(x for x, k in zip(lines, keep, strict=True) if k))
    ingest(cfg, IngestInputs(listens=(listens,), catalog=world / CATALOG_FILE))
    (home / READY).touch()
    return cfg


def _listen_gaps(ws: Workspace, gap_s: int) -> pd.DataFrame:
    """In-session listens with their gap to the next start: track_id, gap (seconds)."""
    t = ds.dataset(ws.listens, format="parquet", partitioning="hive").to_table(
        columns=["user_id", *LISTEN_ORDER]).to_pandas()
    t = t.sort_values(["user_id", *LISTEN_ORDER], kind="stable")
    sec = t.ts.astype("int64") // 10**6 if t.ts.dtype.unit == "us" else t.ts.astype("int64") // 10**9
    gap = sec.groupby(t.user_id).shift(-1) - sec
    keep = (gap > 0) & (gap <= gap_s)
    return pd.DataFrame({"track_id": t.track_id[keep].to_numpy(), "gap": gap[keep].to_numpy()})


def _metrics(est: pd.DataFrame, truth: pd.DataFrame, gaps: pd.DataFrame) -> dict[str, float]:
    d = est.merge(truth, on="track_id")
    d = d[d.catalog_s.isna()]  # only what the catalog did not know
    are = (d.duration_s - d.true_s).abs() / d.true_s
    own, art = d.duration_method == "gaps", d.duration_method == "artist"
    out = {"gaps_n": int(own.sum()), "gaps_mdare": float(are[own].median()),
           "artist_n": int(art.sum()), "artist_mdare": float(are[art].median()),
           "unknown_n": int((d.duration_method == "none").sum())}
    lis = gaps.merge(d[["track_id", "duration_s", "duration_method", "true_s"]], on="track_id")
    lis = lis[lis.duration_s.notna()]
    c_est = np.minimum(1.0, lis.gap / lis.duration_s)
    c_true = np.minimum(1.0, lis.gap / lis.true_s)
    a = (lis.duration_method == "artist").to_numpy()
    out["corr"] = float(np.corrcoef(c_est, c_true)[0, 1])
    out["corr_artist"] = float(np.corrcoef(c_est[a], c_true[a])[0, 1]) if a.sum() > 2 else float("nan")
    out["listens"] = len(lis)
    return out


def _changed(bronze, catalog, fcfg: FeaturesConfig, cut: str, full) -> tuple[int, str]:
    """Tracks whose current duration differs between the lake before ``cut`` and the whole lake,
    and the first day whose durations differ (where an incremental run must start for them)."""
    early_sdf = estimate_durations(bronze.filter(F.col("date") < F.lit(cut)), catalog, fcfg)
    early, now = current(early_sdf).toPandas(), current(full).toPandas()
    j = early.merge(now, on="track_id", suffixes=("_old", ""))
    moved = j[~((j.duration_s_old == j.duration_s) | (j.duration_s_old.isna() & j.duration_s.isna()))
              | (j.duration_source_old != j.duration_source)]
    since = stale_since(early_sdf, full).first()["since"]
    return len(moved), (str(since) if since is not None else "-")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--tracks", type=int, default=5000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drop", type=float, default=0.6, help="share of catalog durations dropped")
    ap.add_argument("--hide", type=float, default=0.1, help="share of plays removed (unscrobbled); 0 = skip")
    ap.add_argument("--quantiles", default="0.5,0.75,0.8,0.9,0.95")
    ap.add_argument("--caps", default="5,50", help="features.duration_max_gaps values")
    ap.add_argument("--new-days", type=int, default=7, help="days that arrive later, for `changed`")
    ap.add_argument("--workdir", type=Path, default=Path(".encore/bench-durations"))
    args = ap.parse_args()
    args.workdir = args.workdir.resolve()
    t0 = time.perf_counter()
    world = _world(args)
    truth = pq.read_table(world / "truth" / "tracks.parquet", columns=["track_id", "duration_s"]).to_pandas()
    catalog_s = pd.read_json(world / CATALOG_FILE, lines=True, dtype=False)[["track_id", "duration_s"]]
    truth = truth.rename(columns={"duration_s": "true_s"}).merge(
        catalog_s.rename(columns={"duration_s": "catalog_s"}), on="track_id")
    quantiles = [float(q) for q in args.quantiles.split(",")]
    caps = [int(c) for c in args.caps.split(",")]
    default = FeaturesConfig()
    print(f"world: {args.users} users x {args.tracks} tracks x {args.days} days, seed {args.seed}, "
          f"{truth.catalog_s.isna().mean():.0%} of catalog durations dropped; min_gaps {default.duration_min_gaps}")
    for hide in [0.0] + ([args.hide] if args.hide > 0 else []):
        cfg = _lake(args, world, hide)
        ws = Workspace.at(cfg.home)
        spark = get_spark(cfg.spark)
        bronze = spark.read.parquet(str(ws.listens)).drop("period")
        catalog = spark.read.parquet(str(ws.tracks)).select("track_id", "artist_id", "duration_s")
        gaps = _listen_gaps(ws, default.session_gap_minutes * 60)
        days = lake.days(ws.listens)
        cut = (pd.Timestamp(days[-1]).date() - timedelta(days=args.new_days - 1)).isoformat()
        scenario = "as generated" if hide == 0 else f"{hide:.0%} of plays unscrobbled (removed)"
        print(f"\n### {scenario}: {bronze.count():,} listens\n")
        print("| cap | quantile | own-gap tracks | MdARE own gaps | artist tracks | MdARE artist | unknown "
              "| corr (estimated listens) | corr (artist listens) | changed by the last "
              f"{args.new_days} days | recompute from |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for cap in caps:
            for q in quantiles:
                fcfg = default.model_copy(update={"duration_max_gaps": cap, "duration_quantile": q})
                full = estimate_durations(bronze, catalog, fcfg).persist()
                m = _metrics(current(full).toPandas(), truth, gaps)
                n, since = _changed(bronze, catalog, fcfg, cut, full)
                full.unpersist()
                print(f"| {cap} | {q:.2f} | {m['gaps_n']:,} | {m['gaps_mdare']:.1%} | {m['artist_n']:,} | "
                      f"{m['artist_mdare']:.1%} | {m['unknown_n']:,} | {m['corr']:.3f} | {m['corr_artist']:.3f} | "
                      f"{n:,} | {since} |", flush=True)
    print(f"\n({time.perf_counter() - t0:.0f}s; new days from {cut})")


if __name__ == "__main__":
    main()
