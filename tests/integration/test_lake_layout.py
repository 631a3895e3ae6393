"""The lake over a long, sparse history: one folder per month at most, and older workspaces migrated."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import date
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from encore.core import lake
from encore.core.config import EncoreConfig
from encore.core.schemas import FEATURE_TABLES
from encore.core.workspace import Workspace
from tests.conftest import copy_home, ingest_world, make_config
from tests.fixtures.files import day_rows

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def sparse_home(tmp_path_factory: pytest.TempPathFactory, spark) -> EncoreConfig:
    """A 19-year history with quiet weeks, ingested and featured."""
    from encore.sample_world.generator import WorldConfig, generate_world
    from jobs.features import build_features

    world = tmp_path_factory.mktemp("sparse-world")
    generate_world(WorldConfig(users=8, tracks=300, days=40, seed=4, clips=0, end=date(2026, 6, 30),
                               span_days=19 * 365), world, progress=False)
    cfg = make_config(tmp_path_factory.mktemp("sparse") / "home")
    ingest_world(cfg, world)
    build_features(cfg)
    return cfg


def _tables(ws: Workspace) -> dict[str, Path]:
    return {"bronze/listens": ws.listens, **{f"features/{t}": ws.feature_table(t) for t in FEATURE_TABLES}}


def test_a_19_year_sparse_lake_has_at_most_one_partition_per_month_per_table(sparse_home: EncoreConfig) -> None:
    ws = Workspace.at(sparse_home.home)
    listen_days = lake.days(ws.listens)
    assert date.fromisoformat(listen_days[-1]) - date.fromisoformat(listen_days[0]) > \
        (date(2026, 1, 1) - date(2009, 1, 1))  # it does span the years
    for name, table in _tables(ws).items():
        days = lake.days(table)
        folders = sorted(lake.period_dirs(lake.resolve(table)))
        months = sorted({d[:7] for d in days})
        assert folders == months, name  # one folder per month that has rows, no more
        assert len(days) > len(folders), name  # days share folders
        files = lake.files(table)
        assert len(files) == len(folders), name  # one file per folder
        for f in files:  # rows sorted by date, so a date filter skips row groups by their statistics
            dates = pq.ParquetFile(f).read(columns=["date"]).column("date").to_pylist()
            assert dates == sorted(dates), f


def _to_day_folders(ws: Workspace) -> dict[str, str]:
    """Rewrite the workspace into the format-1 layout (one date= folder per day, no date column
    in the files); return the bronze fingerprints the old feature job would have stored."""
    for table in _tables(ws).values():
        t = ds.dataset(lake.files(table), format="parquet").to_table()
        table.unlink()
        for d in sorted(set(t.column("date").to_pylist())):
            out = table / f"date={d.isoformat()}"
            out.mkdir(parents=True)
            rows = t.filter(pc.equal(t.column("date"), d)).drop_columns(["date"])
            pq.write_table(rows, out / "part-00000.parquet")
    shutil.rmtree(ws.lake / lake.SNAPSHOTS)
    from jobs.migrate import _legacy_fingerprints
    return _legacy_fingerprints(ws.listens)


def _encore(home: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ENCORE_HOME": str(home)}
    env.pop("ENCORE_CONFIG", None)
    if fault:
        env["ENCORE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "encore", "-q", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_day_partitioned_workspace_is_refused_then_migrated_to_the_same_rows(
        sparse_home: EncoreConfig, tmp_path: Path) -> None:
    from jobs.features import build_features
    from jobs.migrate import migrate

    cfg = copy_home(sparse_home, tmp_path / "home")
    ws = Workspace.at(cfg.home)
    before = {name: day_rows(t) for name, t in _tables(ws).items()}
    state_file = ws.features / "_state.json"
    state = json.loads(state_file.read_text())
    state["bronze"] = _to_day_folders(ws)  # what the old job stored: every day reflected
    state_file.write_text(json.dumps(state))

    refused = _encore(cfg.home, "features")
    assert refused.returncode == 1 and "encore lake migrate" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    killed = _encore(cfg.home, "lake", "migrate", fault="migrate.staged")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with pytest.raises(lake.LakeLayoutError, match="interrupted"):
        build_features(cfg)  # the rows wait under lake/_legacy; no job may write a half-empty table

    rep = migrate(cfg)
    assert set(rep.tables) == set(before)
    assert {name: day_rows(t) for name, t in _tables(ws).items()} == before  # every day's rows, unchanged
    assert not (ws.lake / lake.LEGACY).exists()
    assert build_features(cfg).mode == "up-to-date"  # the old job's record carried over
    assert migrate(cfg).tables == {}  # a second run has nothing to do


@pytest.mark.slow
def test_changing_the_granularity_needs_a_migration_that_keeps_every_row(
        sparse_home: EncoreConfig, tmp_path: Path) -> None:
    from jobs.features import build_features
    from jobs.migrate import migrate

    cfg = copy_home(sparse_home, tmp_path / "home")
    ws = Workspace.at(cfg.home)
    before = {name: day_rows(t) for name, t in _tables(ws).items()}
    yearly = cfg.model_copy(update={"lake": cfg.lake.model_copy(update={"granularity": "year"})})
    with pytest.raises(lake.LakeLayoutError, match="encore lake migrate"):
        build_features(yearly)
    migrate(yearly)
    assert {name: day_rows(t) for name, t in _tables(ws).items()} == before
    years = sorted(lake.period_dirs(lake.resolve(ws.listens)))
    assert years == sorted({d[:4] for d in lake.days(ws.listens)})
    assert build_features(yearly).mode == "up-to-date"
