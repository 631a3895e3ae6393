"""A feature run killed midway leaves every visible partition complete, and the rerun writes the
same bytes as an uninterrupted run (pyarrow re-encoding makes bytes comparable across processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import date
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from encore.core import lake
from encore.core.config import EncoreConfig
from encore.core.schemas import FEATURE_TABLES
from encore.core.workspace import Workspace
from jobs.features import build_features
from tests.conftest import copy_home
from tests.fixtures.files import digest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _digests(ws: Workspace) -> dict[str, str]:
    return {t: digest(ws.feature_table(t)) for t in FEATURE_TABLES}


@pytest.mark.parametrize("fault", ["features.staged", "publish.mid_swap"])
def test_killed_backfill_leaves_tables_readable_and_rerun_matches_uninterrupted(
        featured_home: EncoreConfig, tmp_path: Path, fault: str) -> None:
    days = lake.days(Workspace.at(featured_home.home).listens)
    start, end = date.fromisoformat(days[5]), date.fromisoformat(days[9])
    reference = copy_home(featured_home, tmp_path / "reference")
    build_features(reference, start, end)
    expected = _digests(Workspace.at(reference.home))

    cfg = copy_home(featured_home, tmp_path / "home")
    ws = Workspace.at(cfg.home)
    before = _digests(ws)
    env = {**os.environ, "ENCORE_FAULT": fault, "ENCORE_HOME": str(cfg.home)}
    env.pop("ENCORE_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "encore", "-q", "features", "--start", start.isoformat(),
                           "--end", end.isoformat()], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    for t in FEATURE_TABLES:  # whatever is visible reads as complete tables
        ds.dataset(ws.feature_table(t), format="parquet", partitioning="hive").to_table()
    if fault == "features.staged":
        assert _digests(ws) == before
    else:
        assert _digests(ws) != before and list(ws.journals.glob("*.json"))

    rep = build_features(cfg, start, end)
    assert rep.recovered_publications == (1 if fault == "publish.mid_swap" else 0)
    assert not list(ws.journals.glob("*.json"))
    assert _digests(ws) == expected
