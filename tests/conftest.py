"""Shared fixtures: one local Spark session for the run, small generated worlds, fresh workspaces."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from encore.core.config import EncoreConfig, SparkConfig, TrainConfig
from encore.sample_world.generator import WorldConfig, WorldStats, generate_world

# Small worlds keep the suite fast; the shapes are the production ones.
SMALL_WORLD = WorldConfig(users=24, tracks=600, days=28, seed=7, clips=60)

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def make_config(home: Path) -> EncoreConfig:
    # Two shuffle partitions: tiny data, two cores; the real default (8) is for larger inputs.
    return EncoreConfig(home=home, spark=SparkConfig(master="local[2]", driver_memory="2g", shuffle_partitions=2))


@pytest.fixture(scope="session")
def spark():
    from jobs.spark import get_spark

    session = get_spark(make_config(Path(".encore-test")).spark)
    yield session
    session.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def cfg(home: Path) -> EncoreConfig:
    return make_config(home)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorldStats]:
    out = tmp_path_factory.mktemp("world")
    return out, generate_world(SMALL_WORLD, out, progress=False)


LISTENS_FILE = "userid-timestamp-artid-artname-traid-traname.tsv"


def ingest_world(cfg: EncoreConfig, world: Path, listens: Path | None = None) -> None:
    from jobs.ingest import IngestInputs, ingest

    ingest(cfg, IngestInputs(listens=(listens or world / LISTENS_FILE,), catalog=world / "catalog.jsonl"))


def copy_home(cfg: EncoreConfig, dest: Path) -> EncoreConfig:
    """A private copy of a prepared workspace, for tests that write to it."""
    shutil.copytree(cfg.home, dest, symlinks=True)
    return make_config(dest)


@pytest.fixture(scope="session")
def featured_home(tmp_path_factory: pytest.TempPathFactory, small_world, spark) -> EncoreConfig:
    """The small world ingested and its feature tables built once. Tests that write copy it first."""
    from jobs.features import build_features

    world, _ = small_world
    cfg = make_config(tmp_path_factory.mktemp("featured") / "home")
    ingest_world(cfg, world)
    build_features(cfg)
    return cfg


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray for the whole run (two CPUs, a 256 MB object store)."""
    from encore.core.config import RayConfig
    from encore.core.ray_session import get_ray

    ray = get_ray(RayConfig(num_cpus=2, object_store_memory_mb=256))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def content_store(featured_home: EncoreConfig, tmp_path_factory: pytest.TempPathFactory, ray_local) -> EncoreConfig:
    """The small world with content embeddings (genes-only metadata) and the Feast repo applied."""
    from encore.core.config import EmbedConfig
    from feature_repo import store
    from jobs.embed import embed

    cfg = copy_home(featured_home, tmp_path_factory.mktemp("content") / "home")
    cfg = cfg.model_copy(update={"embed": EmbedConfig(metadata="genes")})
    embed(cfg)
    store.apply(cfg)
    return cfg


NEW_USER = "user_new"
NEW_TRACKS = [f"fresh-{i}" for i in range(4)]


@pytest.fixture(scope="session")
def champion_home(content_store: EncoreConfig, tmp_path_factory: pytest.TempPathFactory, spark) -> EncoreConfig:
    """A SASRec champion trained on the world; then a new user who has heard only tracks released
    since training arrives, and the online store is loaded."""
    from feature_repo import store
    from jobs.features import build_features
    from jobs.ingest import IngestInputs, ingest
    from training.promotion import promote
    from training.train import train

    home = tmp_path_factory.mktemp("scoring") / "home"
    cfg = copy_home(content_store, home)
    cfg = cfg.model_copy(update={
        "train": TrainConfig.model_validate({"model": "sasrec", "epochs": 2, "max_len": 20, "batch_size": 32,
                                             "id": {"hidden": 32, "inner": 64}})})
    train(cfg)
    assert promote(cfg).decision == "promote"
    extra = home.parent / "new-user.tsv"
    extra.write_text("".join(f"{NEW_USER}\t2009-05-04T1{i}:00:00Z\t\tNew Artist\t{t}\tNew Song {i}\n"
                             for i, t in enumerate(NEW_TRACKS)))
    ingest(cfg, IngestInputs(listens=(extra,)))
    build_features(cfg)
    store.apply(cfg)  # a copied workspace: its registry still names the original tables
    store.materialize(cfg)
    return cfg
