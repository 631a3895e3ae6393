"""Benchmark: does the lake's cost follow rows or days? The same listens over 90 days and 19 years.

Generates one world twice with the same seed - the same users, tracks and sessions, so the same
number of rows - once over 90 consecutive days and once spread over 19 years (``--span-days``:
each user active over a window of their own, with quiet weeks, as long personal exports are).
Then runs, for each, in this process with Spark already warm:

    ingest (listens, profiles, catalog)  ->  features  ->  feast apply + materialize

and prints each step's seconds, microseconds per row and the ratio long / short. The goal is a
ratio <= 1.5x for each step (the day-partitioned layout measured 1.6x, 6x and 4.8x on a real lake).
``--granularity`` runs the long world once per given period size, to compare them.
``--baseline REV`` also runs both worlds with the code of git revision REV (e.g. the last commit
with one folder per day), in a child process from a worktree, warmed up the same way: the
before/after of a layout change, measured in the same run.

    .venv/bin/python bench/longspan.py [--users 100 --tracks 3000 --days 90 --span-days 6935]
                                       [--granularity month,quarter,year] [--baseline 8aa2cbc]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from encore.core import lake
from encore.core.config import EncoreConfig, LakeConfig, SparkConfig
from encore.core.workspace import Workspace
from encore.sample_world.generator import CATALOG_FILE, LISTENS_FILE, PROFILES_FILE, WorldConfig, generate_world

STEPS = ("ingest", "features", "materialize")
END = date(2026, 6, 30)  # a 19-year span ending here starts in 2007, as the real lake did


@dataclass
class Run:
    name: str
    rows: int = 0
    days: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)


def _world(work: Path, args: argparse.Namespace, span: int | None) -> Path:
    out = work / f"world-{'span' + str(span) if span else 'short'}"
    if not (out / LISTENS_FILE).exists():
        generate_world(WorldConfig(users=args.users, tracks=args.tracks, days=args.days, seed=args.seed, clips=0,
                                   end=END, span_days=span), out, progress=False)
    return out


def run_pipeline(name: str, world: Path, home: Path, granularity: str) -> Run:
    from feature_repo import store
    from jobs.features import build_features
    from jobs.ingest import IngestInputs, ingest

    shutil.rmtree(home, ignore_errors=True)
    cfg = EncoreConfig(home=home, spark=SparkConfig(driver_memory="6g"), lake=LakeConfig(granularity=granularity))
    run = Run(name)
    t = time.perf_counter()
    rep = ingest(cfg, IngestInputs(listens=(world / LISTENS_FILE,), profiles=world / PROFILES_FILE,
                                   catalog=world / CATALOG_FILE))
    run.seconds["ingest"] = time.perf_counter() - t
    assert rep.listens is not None
    run.rows = rep.listens.added
    t = time.perf_counter()
    build_features(cfg)
    run.seconds["features"] = time.perf_counter() - t
    t = time.perf_counter()
    store.apply(cfg)
    store.materialize(cfg)
    run.seconds["materialize"] = time.perf_counter() - t
    ws = Workspace.at(home)
    run.days = len(lake.days(ws.listens))
    run.partitions = {"bronze/listens": len(lake.period_dirs(lake.resolve(ws.listens)))}
    for t_name in ("listens", "sessions", "user_daily", "track_daily"):
        run.partitions[f"features/{t_name}"] = len(lake.period_dirs(lake.resolve(ws.feature_table(t_name))))
    return run


# Runs in a child with another revision's code first on sys.path: only APIs every revision has.
BASELINE_CHILD = r"""
import json, shutil, sys, time
from pathlib import Path
from encore.core.config import EncoreConfig, SparkConfig
from feature_repo import store
from jobs.features import build_features
from jobs.ingest import IngestInputs, ingest
out = {}
for name, world, home in json.loads(sys.argv[1]):
    world, home = Path(world), Path(home)
    shutil.rmtree(home, ignore_errors=True)
    cfg = EncoreConfig(home=home, spark=SparkConfig(driver_memory="6g"))
    s = {}
    t = time.perf_counter()
    ingest(cfg, IngestInputs(listens=(world / "userid-timestamp-artid-artname-traid-traname.tsv",),
                             profiles=world / "userid-profile.tsv", catalog=world / "catalog.jsonl"))
    s["ingest"] = time.perf_counter() - t
    t = time.perf_counter()
    build_features(cfg)
    s["features"] = time.perf_counter() - t
    t = time.perf_counter()
    store.apply(cfg)
    store.materialize(cfg)
    s["materialize"] = time.perf_counter() - t
    out[name] = s
print("BASELINE " + json.dumps(out))
"""


def run_baseline(rev: str, work: Path, worlds: list[tuple[str, Path]]) -> dict[str, dict[str, float]]:
    """Seconds per step of each world with revision ``rev``'s code (after the same tiny warm-up)."""
    tree = work / f"baseline-{rev}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], check=True, capture_output=True)
    jobs = [("warm-up", str(work / "world-tiny"), str(work / "home-base-tiny"))]
    jobs += [(name, str(w), str(work / f"home-base-{i}")) for i, (name, w) in enumerate(worlds)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("ENCORE_CONFIG", None)
    proc = subprocess.run([sys.executable, "-c", BASELINE_CHILD, json.dumps(jobs)], cwd=tree, env=env,
                          capture_output=True, text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("BASELINE "))
    return json.loads(line[len("BASELINE "):])


def warm_up(work: Path) -> None:
    """One tiny run first, so neither measured world pays for starting Spark or importing Feast."""
    tiny = work / "world-tiny"
    if not (tiny / LISTENS_FILE).exists():
        generate_world(WorldConfig(users=3, tracks=50, days=5, seed=0, clips=0, end=END), tiny, progress=False)
    run_pipeline("warm-up", tiny, work / "home-tiny", "month")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--tracks", type=int, default=3000)
    ap.add_argument("--days", type=int, default=90, help="simulated days (the short world's span)")
    ap.add_argument("--span-days", type=int, default=19 * 365, help="the long world's span in days")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--granularity", default="month",
                    help="comma-separated period sizes to run the long world with (month,quarter,year)")
    ap.add_argument("--workdir", type=Path, default=Path(".encore/bench-longspan"))
    ap.add_argument("--baseline", metavar="REV", help="also run both worlds with this git revision's code")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    short_w, long_w = _world(work, args, None), _world(work, args, args.span_days)
    warm_up(work)
    grans = [g.strip() for g in args.granularity.split(",") if g.strip()]
    short = run_pipeline("90 days", short_w, work / "home-short", grans[0])
    longs = [run_pipeline(f"{args.span_days / 365:.0f} years ({g})", long_w, work / f"home-long-{g}", g)
             for g in grans]
    assert all(r.rows == short.rows for r in longs), "the two worlds must hold the same rows"
    base = run_baseline(args.baseline, work, [("short", short_w), ("long", long_w)]) if args.baseline else None

    print(f"\nlong-span benchmark, {date.today()}: {short.rows:,} listens each; short world over "
          f"{short.days} days, long world over {longs[0].days:,} distinct days of {args.span_days:,}")
    head = f"{'step':<12}" + "".join(f"{r.name:>22}" for r in (short, *longs))
    print(head + "".join(f"{'ratio ' + g:>16}" for g in grans))
    for step in STEPS:
        cells = "".join(f"{r.seconds[step]:>8.1f} s {r.seconds[step] / r.rows * 1e6:>6.0f} us/row"
                        for r in (short, *longs))
        ratios = "".join(f"{r.seconds[step] / short.seconds[step]:>15.2f}x" for r in longs)
        print(f"{step:<12}{cells}{ratios}")
    total = {r.name: sum(r.seconds.values()) for r in (short, *longs)}
    print(f"{'total':<12}" + "".join(f"{v:>8.1f} s {'':>13}" for v in total.values())
          + "".join(f"{total[r.name] / total[short.name]:>15.2f}x" for r in longs))
    if base is not None:
        print(f"\nbaseline: revision {args.baseline} (its own layout), the same worlds, same run")
        print(f"{'step':<12}{'short':>10}{'long':>10}{'ratio':>8}{'long now':>11}{'speed-up':>10}")
        for step in (*STEPS, "total"):
            def sec(seconds: dict[str, float], step: str = step) -> float:
                return sum(seconds.values()) if step == "total" else seconds[step]
            b_s, b_l, now = sec(base["short"]), sec(base["long"]), sec(longs[0].seconds)
            print(f"{step:<12}{b_s:>8.1f} s{b_l:>8.1f} s{b_l / b_s:>7.2f}x{now:>9.1f} s{b_l / now:>9.1f}x")
    print("\npartitions per table (period folders):")
    for table in short.partitions:
        print(f"  {table:<20}" + "".join(f"{r.name}: {r.partitions[table]:>4}   " for r in (short, *longs)))


if __name__ == "__main__":
    main()
