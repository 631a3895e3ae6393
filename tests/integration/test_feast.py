"""The Feast repo on real engines (DuckDB offline, SQLite online): apply, materialize, point-in-time
training rows, online lookup, and that nothing written after an example can leak into it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from encore.cli import cli
from encore.core import lake
from encore.core.config import EncoreConfig
from encore.core.workspace import Workspace
from feature_repo import store
from tests.conftest import copy_home

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def applied(featured_home: EncoreConfig, tmp_path_factory: pytest.TempPathFactory) -> EncoreConfig:
    cfg = copy_home(featured_home, tmp_path_factory.mktemp("feast") / "home")
    store.apply(cfg)
    store.materialize(cfg)
    return cfg


def _user_daily(cfg: EncoreConfig) -> pd.DataFrame:
    t = ds.dataset(Workspace.at(cfg.home).feature_table("user_daily"), format="parquet", partitioning="hive")
    return t.to_table().to_pandas()


def test_apply_registers_the_entities_views_and_services(applied: EncoreConfig) -> None:
    s = store.open_store(applied)
    assert sorted(e.name for e in s.list_entities()) == ["track", "user"]
    views = {v.name: v for v in s.list_feature_views()}
    assert sorted(views) == ["track_content", "track_daily", "user_daily", "user_recommendations", "user_session"]
    assert {"training", "scoring", "track_content", "recommendations"} <= {f.name for f in s.list_feature_services()}
    assert all(v.ttl.days > 0 for name, v in views.items() if name != "track_content")
    assert views["track_content"].ttl.total_seconds() == 0  # content never expires


def test_online_lookup_serves_each_users_latest_row_and_nulls_for_strangers(applied: EncoreConfig) -> None:
    table = _user_daily(applied)
    latest = table.sort_values("event_timestamp").groupby("user_id").tail(1).set_index("user_id")
    users = list(latest.index[:5])
    got = store.online_features(applied, [*users, "no-such-user"])
    assert list(got.user_id) == [*users, "no-such-user"]
    for i, u in enumerate(users):
        assert got.user_daily__plays_30d[i] == latest.loc[u, "plays_30d"]
        assert list(got.user_daily__recent_track_ids[i]) == list(latest.loc[u, "recent_track_ids"])
    assert got.user_daily__recent_track_ids.iloc[-1] is None and pd.isna(got.user_daily__plays_7d.iloc[-1])


def test_materialize_is_incremental(applied: EncoreConfig) -> None:
    again = store.materialize(applied)
    assert again.views["user_recommendations"] == {"skipped": "pushed by `encore score`"}
    loaded = {k: v for k, v in again.views.items() if "skipped" not in v}
    assert loaded and all(v["source_rows"] == 0 or v["start"] == again.end for v in loaded.values())


def test_training_rows_take_the_latest_values_at_or_before_each_timestamp(applied: EncoreConfig) -> None:
    table = _user_daily(applied)
    rng = np.random.default_rng(3)
    users = sorted(table.user_id.unique())
    lo, hi = table.event_timestamp.min(), table.event_timestamp.max()
    secs = rng.integers(0, int((hi - lo).total_seconds()) + 86400, size=60)
    entity = pd.DataFrame({"user_id": rng.choice(users, size=60),
                           "event_timestamp": [lo + pd.Timedelta(seconds=int(s)) for s in secs]})
    # Exactly on a row's stamp is "at or before": the row counts.
    entity.loc[0, "event_timestamp"] = table.event_timestamp.iloc[0]
    entity.loc[0, "user_id"] = table.user_id.iloc[0]
    got = store.training_examples(applied, entity)
    assert list(got.user_id) == list(entity.user_id)  # input order kept
    for _, ex in got.iterrows():
        rows = table[(table.user_id == ex.user_id) & (table.event_timestamp <= ex.event_timestamp)]
        if rows.empty:
            assert pd.isna(ex.user_daily__plays_30d)
        else:
            assert ex.user_daily__plays_30d == rows.sort_values("event_timestamp").plays_30d.iloc[-1]


def test_a_value_written_after_an_example_never_appears_in_it(applied: EncoreConfig, tmp_path: Path) -> None:
    cfg = copy_home(applied, tmp_path / "home")
    store.apply(cfg)  # the copied registry still names the original tables: point it at the copy
    ws = Workspace.at(cfg.home)
    table = _user_daily(cfg)
    row = table.sort_values("event_timestamp").iloc[len(table) // 2]
    t0 = row.event_timestamp + pd.Timedelta(hours=6)
    # A poison row one second after the example: if the join ever looked ahead, 999999 shows up.
    live = lake.files(ws.feature_table("user_daily"))[-1].parent
    schema = pq.ParquetFile(next(live.glob("*.parquet"))).schema_arrow
    poison = {c: [row[c]] for c in schema.names}
    poison.update(plays_30d=[999999], event_timestamp=[t0 + pd.Timedelta(seconds=1)],
                  created=[t0 + pd.Timedelta(seconds=1)])
    pq.write_table(pa.Table.from_pydict(poison, schema=schema), live / "part-99999.parquet")
    stamps = [t0, t0 + pd.Timedelta(microseconds=999_999), t0 + pd.Timedelta(seconds=1)]
    entity = pd.DataFrame({"user_id": [row.user_id] * 3, "event_timestamp": stamps})
    got = store.training_examples(cfg, entity)
    assert list(got.user_daily__plays_30d[:2]) == [row.plays_30d] * 2
    assert got.user_daily__plays_30d.iloc[2] == 999999  # the row is read; only time keeps it out


def test_user_session_view_expires_after_its_ttl(applied: EncoreConfig) -> None:
    sessions = ds.dataset(Workspace.at(applied.home).feature_table("sessions"), format="parquet",
                          partitioning="hive").to_table().to_pandas()
    last = sessions.sort_values("event_timestamp").groupby("user_id").tail(1).iloc[0]
    entity = pd.DataFrame({"user_id": [last.user_id] * 2,
                           "event_timestamp": [last.event_timestamp + pd.Timedelta(days=29),
                                               last.event_timestamp + pd.Timedelta(days=31)]})
    got = store.training_examples(applied, entity)
    assert got.user_session__length.iloc[0] == last.length
    assert pd.isna(got.user_session__length.iloc[1])


def test_materialize_before_features_says_what_to_run(tmp_path: Path) -> None:
    from tests.conftest import make_config

    with pytest.raises(store.FeastError, match="encore features"):
        store.materialize(make_config(tmp_path / "empty"))


def test_cli_materialize_and_feast_env(applied: EncoreConfig) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["--home", str(applied.home), "materialize"])
    assert res.exit_code == 0, res.output
    assert "user_daily" in res.output
    res = runner.invoke(cli, ["--home", str(applied.home), "feast", "env"])
    assert res.exit_code == 0 and "FEAST_FS_YAML_FILE_PATH=" in res.output


@pytest.mark.slow
def test_the_feast_cli_reads_the_same_registry_from_feature_repo(applied: EncoreConfig) -> None:
    fs_yaml, encore_yaml = store.feast_files(applied)
    env = {**os.environ, "FEAST_FS_YAML_FILE_PATH": str(fs_yaml), "ENCORE_CONFIG": str(encore_yaml)}
    feast = Path(sys.executable).with_name("feast")
    out = subprocess.run([str(feast), "-c", str(REPO / "feature_repo"), "feature-views", "list"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "user_daily" in out.stdout and "track_daily" in out.stdout


def test_applying_a_copied_workspace_leaves_the_originals_online_tables(applied: EncoreConfig, tmp_path: Path) -> None:
    import sqlite3

    def tables(cfg: EncoreConfig) -> set[str]:
        with sqlite3.connect(Workspace.at(cfg.home).feast / "online.db") as con:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    before = tables(applied)
    assert "encore_user_daily" in before
    copy = copy_home(applied, tmp_path / "copy")
    store.apply(copy)
    assert tables(applied) == before  # Feast alone would drop them through the copied registry
    assert "encore_user_daily" in tables(copy)
    user = _user_daily(applied)["user_id"].iloc[0]
    assert store.online_features(copy, [user])["user_daily__plays_30d"][0] is not None
