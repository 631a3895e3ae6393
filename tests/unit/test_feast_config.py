"""The Feast repo follows the Encore config: embedded stores by default, Spark + Redis by profile."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import yaml

from encore.core.config import load_config
from feature_repo import store

REPO = Path(__file__).resolve().parents[2]


def test_default_profile_renders_duckdb_offline_and_sqlite_online_under_the_workspace(tmp_path: Path) -> None:
    cfg = load_config(home=tmp_path / "home")
    fs_yaml, encore_yaml = store.feast_files(cfg)
    data = yaml.safe_load(fs_yaml.read_text())
    assert data["offline_store"] == {"type": "duckdb"}
    assert data["online_store"]["type"] == "sqlite"
    assert data["online_store"]["path"].startswith(str((tmp_path / "home").resolve()))
    assert data["registry"]["path"] == str((tmp_path / "home" / "feast" / "registry.db").resolve())
    assert data["entity_key_serialization_version"] == 3
    assert load_config(encore_yaml).home == (tmp_path / "home").resolve()


def test_cluster_profile_renders_spark_offline_and_redis_online_store(tmp_path: Path) -> None:
    cfg = load_config(REPO / "profiles" / "cluster.yaml", home=tmp_path / "home")
    data = yaml.safe_load(store.feast_files(cfg)[0].read_text())
    assert data["offline_store"]["type"] == "spark"
    assert data["offline_store"]["spark_conf"]["spark.master"] == cfg.spark.master
    assert data["online_store"] == {"type": "redis", "connection_string": cfg.feast.online_store.connection_string}


@pytest.mark.parametrize(("profile", "kind"), [(None, "FileSource"), ("cluster.yaml", "SparkSource")])
def test_sources_follow_the_configured_offline_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      profile: str | None, kind: str) -> None:
    cfg = load_config(REPO / "profiles" / profile if profile else None, home=tmp_path / "home")
    _, encore_yaml = store.feast_files(cfg)
    monkeypatch.setenv("ENCORE_CONFIG", str(encore_yaml))
    monkeypatch.syspath_prepend(str(REPO / "feature_repo"))
    sys.modules.pop("sources", None)
    try:
        sources = importlib.import_module("sources")
        src = sources.user_daily_source
        assert type(src).__name__ == kind
        assert str((tmp_path / "home").resolve()) in src.path
        assert src.timestamp_field == "event_timestamp" and src.created_timestamp_column == "created"
    finally:
        sys.modules.pop("sources", None)
    assert os.environ["ENCORE_CONFIG"] == str(encore_yaml)
