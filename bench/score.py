"""Benchmark: nightly scoring through the Ray job (scoring/batch.py) against a bare PyTorch loop.

Both rank the same users (default 1,000, each with a 50-track history) over the same catalog
(default 50,000 items) with the same registered model, loaded from the MLflow registry by URI:

* bare loop: one process, ``mlflow.pyfunc.load_model`` and then ``ChampionScorer`` called batch
  by batch (the very code each Ray actor runs), torch on all cores;
* Ray job: ``scoring.batch.rank`` - a Ray Data actor pool (``scoring.actors`` = 1: one actor
  holding every core), each actor loading the model once, rows materialized in the object store.

Model loading is inside both timings; starting Ray itself (``ray.init``, paid once per process,
never on a running cluster) is not, and is printed on its own. Each mode runs in its own process,
so peak memory is that process tree's (RSS of the driver plus Ray's workers, sampled every 0.1 s;
on a GPU, also the device memory in use). The model: E4SRec (ID + lyrics + metadata, random item
tables) on the default MiniLM backbone, or ``--backbone`` (e.g. a generated ~1B Llama on a GPU).

    .venv/bin/python bench/score.py                              # 1,000 users x 50,000 items
    .venv/bin/python bench/score.py --users 200 --items 5000     # a quick look
    .venv/bin/python bench/score.py --nightly-state .encore/nightly/state-DATE.json   # + nightly steps
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NAME = "bench-scorer"


def _cfg(workdir: Path) -> Any:
    from encore.core.config import EncoreConfig, RayConfig

    return EncoreConfig(home=workdir / "home", ray=RayConfig(object_store_memory_mb=2048))


def prepare(workdir: Path, items: int, users: int, backbone: str | None) -> Path:
    """Register the model once and write the inputs (kept for reuse); returns the inputs file."""
    inputs = workdir / "inputs.parquet"
    if inputs.exists() and (workdir / "registered").exists():
        return inputs
    import numpy as np
    import pandas as pd
    from _models import random_e4srec

    from training import tracking
    from training.pyfunc import log_recommender

    cfg = _cfg(workdir)
    model = random_e4srec(items, backbone)
    track_ids = [f"trk-{i:06d}" for i in range(items)]
    rng = np.random.default_rng(2)
    hist = [list(rng.choice(track_ids, 50, replace=False)) for _ in range(users)]
    frame = pd.DataFrame({"user_id": [f"user_{u:06d}" for u in range(users)], "track_ids": hist,
                          "completions": [list(rng.random(50)) for _ in range(users)]})
    cfg_named = cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(update={"model_name": NAME})})
    with tracking.run(cfg_named, "bench-score"):
        log_recommender(model.eval(), track_ids, 50, True, frame.head(2), NAME)
    frame.to_parquet(inputs)
    (workdir / "registered").write_text(json.dumps({"items": items, "users": users, "backbone": backbone}))
    return inputs


class PeakMemory:
    """Peak RSS of this process and all its descendants (Ray's raylet and workers included)."""

    def __init__(self) -> None:
        import psutil

        self.proc, self.peak, self.gpu_peak = psutil.Process(), 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a worker that exited between listing and reading
                total += p.memory_info().rss
        self.peak = max(self.peak, total)
        try:
            import torch

            if torch.cuda.is_available():
                self.gpu_peak = max(self.gpu_peak, torch.cuda.device_memory_used())
        except Exception:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.1)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run_mode(workdir: Path, mode: str, k: int, actors: int, batch_size: int) -> dict[str, Any]:
    import pandas as pd
    import torch

    from scoring.batch import ChampionScorer, rank, resolve_champion

    cfg = _cfg(workdir)
    cfg = cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(update={"model_name": NAME}),
                                 "scoring": cfg.scoring.model_copy(update={"actors": actors,
                                                                           "batch_size": batch_size})})
    from mlflow import MlflowClient
    from training import tracking

    tracking.configure(cfg)
    client = MlflowClient()
    latest = max(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    client.set_registered_model_alias(NAME, "champion", str(latest))
    champ = resolve_champion(cfg)
    inputs = pd.read_parquet(workdir / "inputs.parquet")
    lineage = {"model_name": NAME, "model_version": champ.version, "model_run_id": champ.run_id,
               "feature_snapshot": "2009-05-05T00:00:00+00:00", "scoring_run_id": "bench"}
    out: dict[str, Any] = {"mode": mode, "users": len(inputs), "k": k}
    ray_init = 0.0
    if mode == "ray":
        from encore.core.ray_session import get_ray

        t = time.perf_counter()
        get_ray(cfg.ray)
        ray_init = time.perf_counter() - t
    b = cfg.scoring.batch_size
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        if mode == "bare":
            scorer = ChampionScorer(champ, cfg.mlflow_tracking_uri(), cfg.mlflow_tracking_uri(), k, True, [], lineage,
                                    torch.get_num_threads())
            batches = (scorer(inputs.iloc[i:i + b]) for i in range(0, len(inputs), b))
        else:
            batches = rank(cfg, champ, inputs, k, [], lineage).iter_batches(batch_size=None, batch_format="pandas")
        # Steady state: from the first ranked batch (model loaded, actor up) to the last.
        n_rows, first_users, t_first = 0, 0, None
        for rows in batches:
            n_rows += len(rows)
            if t_first is None:
                t_first, first_users = time.perf_counter(), rows["user_id"].nunique()
        seconds = time.perf_counter() - t0
    rest = len(inputs) - first_users  # one batch only: no steady state to measure
    steady = rest / (time.perf_counter() - t_first) if t_first and rest else float("nan")
    out.update(seconds=seconds, users_per_s=len(inputs) / seconds, steady_users_per_s=steady,
               first_batch_s=(t_first or t0) - t0, rows=n_rows, ray_init_s=ray_init,
               peak_rss_gib=mem.peak / 2**30, threads=torch.get_num_threads(),
               device=torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
               peak_gpu_gib=mem.gpu_peak / 2**30 if mem.gpu_peak else None)
    return out


def nightly_steps(state_file: Path) -> None:
    state = json.loads(state_file.read_text())
    steps = state["steps"]
    total = sum(r.get("seconds", 0) for r in steps.values())
    print(f"\nencore nightly {state['date']} ({state_file}), wall time by step:")
    for name, r in steps.items():
        print(f"  {name:<12} {r['status']:<8} {r.get('seconds', 0):>8.1f}s")
    print(f"  {'total':<12} {'':<8} {total:>8.1f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--actors", type=int, default=1, help="Ray actors (scoring.actors)")
    ap.add_argument("--batch-size", type=int, default=100, help="users per model call (scoring.batch_size)")
    ap.add_argument("--backbone", help="E4SRec backbone folder (default: MiniLM)")
    ap.add_argument("--workdir", type=Path, help="default .encore/bench-score/u<users>-i<items>[-<backbone>]")
    ap.add_argument("--mode", choices=["bare", "ray"], help=argparse.SUPPRESS)
    ap.add_argument("--nightly-state", type=Path, help="also print this nightly state file's step timings")
    args = ap.parse_args()
    tag = f"u{args.users}-i{args.items}" + (f"-{Path(args.backbone).name}" if args.backbone else "")
    workdir = (args.workdir or REPO / ".encore" / "bench-score" / tag).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.mode:
        print("RESULT " + json.dumps(run_mode(workdir, args.mode, args.k, args.actors, args.batch_size)))
        return
    t = time.perf_counter()
    prepare(workdir, args.items, args.users, args.backbone)
    print(f"model registered and inputs written in {time.perf_counter() - t:.1f}s ({workdir})", flush=True)
    results = {}
    for mode in ("bare", "ray"):
        cmd = [sys.executable, __file__, "--mode", mode, "--users", str(args.users), "--items", str(args.items),
               "--k", str(args.k), "--actors", str(args.actors), "--batch-size", str(args.batch_size),
               "--workdir", str(workdir)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{mode} run failed:\n{proc.stderr[-4000:]}")
        results[mode] = json.loads(line[len("RESULT "):])
    bare, ray = results["bare"], results["ray"]
    print(f"\nscoring {args.users:,} users x {args.items:,} items, top {args.k}, on {bare['device']} "
          f"({bare['threads']} torch threads; Ray: {args.actors} actor(s))")
    print(f"  {'':<14}{'users/s':>9}{'steady users/s':>16}{'seconds':>9}{'1st batch s':>13}"
          f"{'peak RSS GiB':>14}{'peak GPU GiB':>14}")
    for name, r in (("bare PyTorch", bare), ("Ray job", ray)):
        gpu = f"{r['peak_gpu_gib']:.2f}" if r["peak_gpu_gib"] else "-"
        print(f"  {name:<14}{r['users_per_s']:>9.1f}{r['steady_users_per_s']:>16.1f}{r['seconds']:>9.2f}"
              f"{r['first_batch_s']:>13.2f}{r['peak_rss_gib']:>14.2f}{gpu:>14}")
    steady = ray["steady_users_per_s"] / bare["steady_users_per_s"]  # NaN with a single batch
    print(f"  ratio Ray / bare: {ray['users_per_s'] / bare['users_per_s']:.2f}x end to end (model load and, "
          f"for Ray, the actor's start included), {steady:.2f}x steady state (goal >= 0.9)")
    print(f"  ray.init {ray['ray_init_s']:.1f}s not included; rows {bare['rows']:,} / {ray['rows']:,}")
    if args.nightly_state:
        nightly_steps(args.nightly_state)


if __name__ == "__main__":
    main()
