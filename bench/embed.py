"""Benchmark: the Ray embedding job (jobs/embed.py) against a bare loop over the same encoders.

Both encode the same catalog (default 2,000 tracks, every one with lyrics or not as generated, a
3-second clip and genes) with the same three encoders (MiniLM lyrics, librosa audio descriptors,
genes + their text rendering) and the same batch sizes:

* bare loop: one process, ``build_encoders`` + ``encode`` batch by batch, torch on all cores;
* Ray job: ``embed(cfg)`` on a fresh workspace, i.e. everything a user pays for - catalog read,
  input digests, actor start and model load per actor, streaming, parquet, the track_content
  table - with ``embed.actors`` = 1 (one actor holding both cores) and = 2 (one core each).

Model loading is inside both timings; starting Ray itself (``ray.init``, ~3 s, paid once per
process or never on a running cluster) is not, and is printed on its own. The figure is
embeddings per second = tracks x 3 encoders / seconds; ratio = Ray / bare (goal >= 0.8 on CPU).

    .venv/bin/python bench/embed.py                    # 2,000 tracks
    .venv/bin/python bench/embed.py --tracks 300       # a quick look
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pyarrow.dataset as ds

from encore.core.config import EmbedConfig, EncoreConfig, RayConfig, SparkConfig
from encore.core.schemas import ENCODERS
from encore.sample_world.generator import CATALOG_FILE, WorldConfig, generate_world

READY = ".bench-ready"


def prepare(workdir: Path, tracks: int, seed: int) -> Path:
    """A world whose every track has a clip, ingested once into a bronze lake (kept for reuse)."""
    home = workdir / "home"
    if (home / READY).exists():
        return home
    shutil.rmtree(workdir, ignore_errors=True)
    world = workdir / "world"
    generate_world(WorldConfig(users=10, tracks=tracks, days=3, seed=seed, clips=None), world, progress=True)
    from jobs.ingest import IngestInputs, ingest

    cfg = EncoreConfig(home=home, spark=SparkConfig(master="local[2]", shuffle_partitions=2))
    ingest(cfg, IngestInputs(listens=(), catalog=world / CATALOG_FILE))
    (home / READY).write_text("ok\n")
    return home


def bare_loop(cfg: EncoreConfig, home: Path) -> tuple[float, dict[str, float]]:
    """Every encoder over every track in this process, in the job's batch sizes. Returns (s, per encoder)."""
    from jobs.embed import encoder_inputs, read_catalog
    from jobs.encoders import build_encoders, encoder_specs

    catalog = read_catalog(cfg)
    specs = encoder_specs(cfg.embed)
    per: dict[str, float] = {}
    t0 = time.perf_counter()
    encoders = build_encoders(list(specs.values()))  # one text model for lyrics and metadata, as the job
    per["load"] = time.perf_counter() - t0
    print(f"  bare load     {per['load']:.1f}s", flush=True)
    for name in ENCODERS:
        t1 = time.perf_counter()
        inputs = encoder_inputs(name, catalog)
        bs = cfg.embed.audio.batch_size if name == "audio" else cfg.embed.text.batch_size
        n_vec = 0
        for i in range(0, inputs.num_rows, bs):
            vecs, _ = encoders[name].encode(inputs.slice(i, bs))
            n_vec += sum(v is not None for v in vecs)
        per[name] = time.perf_counter() - t1
        print(f"  bare {name:<9} {inputs.num_rows:,} tracks, {n_vec:,} vectors, {per[name]:.1f}s", flush=True)
    return time.perf_counter() - t0, per


def ray_job(cfg: EncoreConfig, home: Path, run_home: Path, actors: int) -> float:
    from jobs.embed import embed

    shutil.rmtree(run_home, ignore_errors=True)
    run_home.mkdir(parents=True)
    shutil.copytree(home / "lake" / "bronze", run_home / "lake" / "bronze")
    run_cfg = cfg.model_copy(update={"home": run_home,
                                     "embed": cfg.embed.model_copy(update={"actors": actors})})
    t0 = time.perf_counter()
    report = embed(run_cfg)
    seconds = time.perf_counter() - t0
    for name, e in report.encoders.items():
        print(f"  ray{actors} {name:<9} {e.computed:,} tracks, {e.embedded:,} vectors", flush=True)
    print(f"  ray{actors} pipeline {report.encode_seconds:.1f}s of the job's {seconds:.1f}s", flush=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=2000, help="catalog size (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="world seed")
    ap.add_argument("--workdir", type=Path, default=None, help="default .encore/bench-embed/t<tracks>-s<seed>")
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="Ray pool sizes to run (default: 1 2)")
    args = ap.parse_args()
    workdir = args.workdir or Path(f".encore/bench-embed/t{args.tracks}-s{args.seed}")
    home = prepare(workdir, args.tracks, args.seed)
    cfg = EncoreConfig(home=home, ray=RayConfig(num_cpus=2, object_store_memory_mb=512), embed=EmbedConfig())
    n = ds.dataset(home / "lake" / "bronze" / "tracks", format="parquet").count_rows()
    embeddings = n * len(ENCODERS)
    print(f"catalog: {n:,} tracks under {home}; {embeddings:,} embeddings per run (3 encoders)", flush=True)

    bare_s, _ = bare_loop(cfg, home)
    from encore.core.ray_session import get_ray

    t0 = time.perf_counter()
    get_ray(cfg.ray)
    ray_start = time.perf_counter() - t0
    runs = {a: ray_job(cfg, home, workdir / f"ray{a}", a) for a in args.actors}

    print()
    print(f"{'run':<14} {'seconds':>8} {'embeddings/s':>13} {'vs bare':>8}")
    print(f"{'bare loop':<14} {bare_s:>8.1f} {embeddings / bare_s:>13.1f} {1.0:>7.2f}x")
    for a, s in runs.items():
        print(f"{f'ray {a} actor' + ('s' if a > 1 else ''):<14} {s:>8.1f} {embeddings / s:>13.1f} {bare_s / s:>7.2f}x")
    print(f"(ray.init took {ray_start:.1f}s, once per process; not in the Ray figures. Goal: ray >= 0.8x bare.)")


if __name__ == "__main__":
    main()
