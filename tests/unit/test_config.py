from __future__ import annotations

from pathlib import Path

import pytest

from encore.core.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def test_no_config_file_gives_embedded_local_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCORE_CONFIG", raising=False)
    monkeypatch.delenv("ENCORE_HOME", raising=False)
    cfg = load_config()
    eff = cfg.effective()
    assert cfg.profile == "local"
    assert cfg.spark.master == "local[*]"
    assert cfg.ray.address is None
    assert cfg.feast.offline_store.type == "duckdb" and cfg.feast.online_store.type == "sqlite"
    assert eff["mlflow"]["tracking_uri"].startswith("sqlite:///") and eff["mlflow"]["tracking_uri"].endswith(
        ".encore/mlflow/mlflow.db")
    assert eff["feast"]["registry"].endswith(".encore/feast/registry.db")


def test_home_flag_beats_env_which_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prof = tmp_path / "p.yaml"
    prof.write_text("home: from-file\n")
    monkeypatch.delenv("ENCORE_HOME", raising=False)
    assert load_config(prof).home == tmp_path / "from-file"  # relative to the profile file
    monkeypatch.setenv("ENCORE_HOME", str(tmp_path / "from-env"))
    assert load_config(prof).home == tmp_path / "from-env"
    assert load_config(prof, home=tmp_path / "from-flag").home == tmp_path / "from-flag"


def test_cluster_profile_switches_every_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCORE_HOME", raising=False)
    cfg = load_config(REPO / "profiles" / "cluster.yaml")
    assert cfg.profile == "cluster"
    assert cfg.spark.master.startswith("spark://")
    assert cfg.ray.address
    assert cfg.feast.offline_store.type == "spark"
    assert cfg.feast.online_store.type == "redis" and cfg.feast.online_store.connection_string
    assert cfg.mlflow.tracking_uri and cfg.mlflow.tracking_uri.startswith("http")


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("spark:\n  shuffle_partitions: many\n", "spark.shuffle_partitions"),
        ("ray:\n  adress: 127.0.0.1:6379\n", "ray.adress"),
        ("feast:\n  online_store:\n    type: memcached\n", "feast.online_store.type"),
        ("ingest:\n  max_future_hours: -1\n", "ingest.max_future_hours"),
        ("spark: local\n", "spark"),
        ("features:\n  duration_min_gaps: 9\n  duration_max_gaps: 5\n", "features"),
        ("features:\n  duration_quantile: 1.5\n", "features.duration_quantile"),
    ],
)
def test_invalid_config_error_names_the_bad_key(tmp_path: Path, yaml_text: str, named: str) -> None:
    prof = tmp_path / "bad.yaml"
    prof.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(prof)
    assert named in str(err.value)
    assert str(prof) in str(err.value)


def test_missing_or_unparsable_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spark: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_model_paths_in_a_profile_are_relative_to_the_profile_file(tmp_path: Path) -> None:
    prof = tmp_path / "profiles" / "gpu.yaml"
    prof.parent.mkdir()
    prof.write_text("embed:\n  text: {path: ../models/minilm}\n  audio: {kind: pretrained, path: /abs/clap}\n"
                    "annotate: {backend: local, model_path: models/llm}\n")
    cfg = load_config(prof)
    assert cfg.embed.text.path == tmp_path / "profiles" / ".." / "models" / "minilm"
    assert cfg.embed.audio.path == Path("/abs/clap")
    assert cfg.annotate.model_path == tmp_path / "profiles" / "models" / "llm"
