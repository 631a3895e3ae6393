"""The cluster profile on real engines, all on 127.0.0.1: the embedded default's commands, switched
only by ``profiles/cluster.yaml`` (its addresses moved to free ports, its sizes cut to two cores).

One night end to end: ``nightly --until materialize`` (features on the Spark standalone master,
embeddings on the Ray cluster, Feast on its Spark offline store and Redis), ``train`` and
``promote`` against the MLflow tracking server, then ``nightly`` again (scoring on the Ray cluster).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
import yaml

from encore.core.config import EncoreConfig, load_config
from encore.core.schemas import FEATURE_TABLES
from encore.core.workspace import Workspace
from tests.cluster.services import Cluster, local_cluster, spark_master_state
from tests.reliability.harness import data_groups, encore_env, run

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# The shipped profile's example addresses, and what a user would change them to.
ADDRESSES = {"127.0.0.1:7077": "spark", "127.0.0.1:6380": "ray", "127.0.0.1:6379": "redis",
             "http://127.0.0.1:5000": "mlflow"}
# Two cores: one actor per pool, small JVMs, and a SASRec that trains in seconds.
SMALL = {
    "spark": {"driver_memory": "1g", "shuffle_partitions": 2, "conf": {"spark.executor.memory": "1g"}},
    "scoring": {"actors": 1}, "embed": {"actors": 1, "metadata": "genes"},
    "train": {"model": "sasrec", "epochs": 2, "max_len": 20, "batch_size": 32, "id": {"hidden": 32, "inner": 64}},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def cluster_profile(c: Cluster, home: Path, inbox: Path, dest: Path) -> Path:
    text = (REPO / "profiles" / "cluster.yaml").read_text()
    ports = {"spark": c.spark_master.removeprefix("spark://"), "ray": c.ray_address, "redis": c.redis,
             "mlflow": c.mlflow}
    for old, which in ADDRESSES.items():
        assert old in text, f"profiles/cluster.yaml no longer names {old}"
        text = text.replace(old, ports[which])
    data = _merge(yaml.safe_load(text), {**SMALL, "home": str(home), "nightly": {"inbox": str(inbox)}})
    dest.write_text(yaml.safe_dump(data))
    return dest


def encore(profile: Path, *args: str) -> subprocess.CompletedProcess:
    proc = run(["--config", str(profile), *args], encore_env())
    assert proc.returncode == 0, f"encore {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


def ray_job_count(address: str) -> int:
    """Drivers the Ray cluster has seen (this probe's own connection not counted)."""
    probe = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
             "print(len(ray._private.state.jobs()) - 1)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def feature_tables(home: Path) -> dict:
    """The feature tables as sorted row sets per date partition (tests/reliability/harness.py):
    Spark promises no row order across engines and masters."""
    return {k: v for k, v in data_groups(home).items()
            if k[0] in {f"lake/features/{t}" for t in FEATURE_TABLES}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with local_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def test_one_night_runs_on_spark_ray_redis_and_an_mlflow_server_by_profile_alone(
        cluster: Cluster, small_world, featured_home: EncoreConfig, tmp_path: Path) -> None:
    import redis

    from mlflow import MlflowClient

    world, _ = small_world
    home = tmp_path / "home"
    profile = cluster_profile(cluster, home, world, tmp_path / "cluster.yaml")
    cfg = load_config(profile)
    assert (cfg.ray.address, cfg.feast.online_store.type, cfg.feast.offline_store.type) == (
        cluster.ray_address, "redis", "spark")

    jobs_before = ray_job_count(cluster.ray_address)
    encore(profile, "nightly", "--until", "materialize")
    encore(profile, "train")
    promoted = encore(profile, "promote", "--json")
    assert json.loads(promoted.stdout[promoted.stdout.index("{"):])["decision"] == "promote"
    night = encore(profile, "nightly", "--json")
    out = json.loads(night.stdout[night.stdout.index("{"):])
    assert out["ran"] == ["score", "report"]

    # Spark: the feature jobs ran as applications of the standalone master, not in local mode.
    apps = [a["name"] for a in spark_master_state(cluster.spark_ui)["completedapps"]]
    assert "encore" in apps, apps
    # Ray: the embed and score steps were drivers of the cluster (each step is one process here:
    # the first nightly embedded, the second scored).
    assert ray_job_count(cluster.ray_address) - jobs_before >= 2
    # Redis holds the online store: tonight's lists were pushed there and read back by user.
    host, port = cluster.redis.split(":")
    db = redis.Redis(host=host, port=int(port), db=1)
    assert db.dbsize() > 0
    # MLflow: the tracking server has the run, the champion alias and the model's artifacts.
    client = MlflowClient(tracking_uri=cluster.mlflow, registry_uri=cluster.mlflow)
    champion = client.get_model_version_by_alias(cfg.mlflow.model_name, "champion")
    assert champion.version == "1"
    assert client.get_run(champion.run_id).data.params["train.model"] == "sasrec"
    assert any(cluster.mlflow_artifacts.rglob("MLmodel"))  # artifacts went through the server
    # Nothing embedded was used: no local MLflow store, no SQLite online store in the workspace.
    ws = Workspace.at(home)
    assert not (home / "mlflow").exists() and not (ws.feast / "online.db").exists()

    scored = out["steps"]["score"]["summary"]
    recs = ds.dataset(scored["output"], format="parquet").to_table().to_pandas()
    assert scored["pushed_online"] and scored["users_active"] > 0
    assert recs["user_id"].nunique() == scored["users_active"] and len(recs) == scored["rows"]
    assert (recs["model_version"].astype(str) == "1").all()

    # The same commands give the same features as the embedded default (local[*], DuckDB, SQLite).
    got, want = feature_tables(home), feature_tables(featured_home.home)
    assert {k[0] for k in want} == {f"lake/features/{t}" for t in FEATURE_TABLES}
    assert got == want
