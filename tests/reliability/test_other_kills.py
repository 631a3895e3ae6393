"""Kills outside the nightly: ``encore backfill``, ``encore train`` and ``encore promote``, each
SIGKILLed (process group) at a point inside it, then rerun; the registries stay consistent.

See tests/reliability/harness.py for how the kill is synchronised and how results are compared.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pytest

from encore.core.config import EncoreConfig
from mlflow import MlflowClient
from tests.conftest import copy_home
from tests.fixtures.registry import known_quality_lists, register_ranker
from tests.reliability.harness import (
    data_groups,
    encore_env,
    leftovers,
    online_rows,
    registries,
    run,
    run_and_kill_at,
)
from training import tracking
from training.promotion import promote

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

MODEL = "encore-recommender"


def _ok(args: list[str], env: dict[str, str]) -> str:
    proc = run(args, env)
    assert proc.returncode == 0, f"encore {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_a_backfill_killed_while_reloading_the_online_store_reruns_to_the_uninterrupted_result(
        content_store: EncoreConfig, tmp_path: Path, spark) -> None:
    from encore.nightly.pipeline import backfill
    from feature_repo import store

    env = encore_env()
    args = ["backfill", "--start", "2009-04-20", "--end", "2009-04-25"]
    reference = copy_home(content_store, tmp_path / "reference")
    home = copy_home(content_store, tmp_path / "home")
    for cfg in (reference, home):
        store.apply(cfg)
    backfill(reference, date(2009, 4, 20), date(2009, 4, 25))  # uninterrupted, in this process

    # Killed after the features were rebuilt and published and one view was reloaded online.
    run_and_kill_at(["--home", str(home.home), *args], env, "materialize.view_loaded")
    _ok(["--home", str(home.home), *args], env)

    assert data_groups(home.home) == data_groups(reference.home)
    assert online_rows(home.home) == online_rows(reference.home)
    assert registries(home.home, MODEL)["views"] == registries(reference.home, MODEL)["views"]
    assert leftovers(home.home) == []


def test_a_training_run_killed_after_an_epoch_resumes_its_checkpoint_and_registers_one_challenger(
        featured_home: EncoreConfig, tmp_path: Path) -> None:
    cfg = copy_home(featured_home, tmp_path / "home")
    # This pytest process may hold a torch.distributed store on MASTER_PORT (the DeepSpeed tests); the
    # child inherits that env and picks its own free port (trainer.single_process_env).
    env = encore_env()
    args = ["--home", str(cfg.home), "train", "--model", "gru4rec", "--epochs", "3", "--json"]
    run_and_kill_at(args, env, "train.epoch_saved")
    run_dirs = list((cfg.home / "outputs" / "train").glob("gru4rec-*"))
    assert len(run_dirs) == 1 and (run_dirs[0] / "checkpoints" / "latest").exists()
    first_run_id = (run_dirs[0] / "mlflow_run_id").read_text()
    tracking.configure(cfg)
    client = MlflowClient()
    assert client.search_registered_models() == [] or not client.search_model_versions(f"name='{MODEL}'")

    out = json.loads(_ok(args, env))
    assert out["run_id"] == first_run_id  # the same MLflow run, continued
    assert not run_dirs[0].exists()  # a finished run leaves no checkpoints behind
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert [(str(v.version), v.status, v.run_id) for v in versions] == [("1", "READY", first_run_id)]
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "1"
    assert client.get_run(first_run_id).info.status == "FINISHED"


@pytest.mark.parametrize("point", ["promote.recorded", "promote.previous_set"])
def test_a_promotion_killed_between_its_steps_leaves_a_valid_champion_and_the_rerun_completes_it(
        featured_home: EncoreConfig, tmp_path: Path, point: str) -> None:
    cfg = copy_home(featured_home, tmp_path / "home")
    catalog, oracle, blind = known_quality_lists(cfg)
    v1 = register_ranker(cfg, catalog, blind)
    promote(cfg)
    v2 = register_ranker(cfg, catalog, oracle)
    env = {**encore_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()),
                                                                       os.environ.get("PYTHONPATH")]))}

    run_and_kill_at(["--home", str(cfg.home), "promote"], env, point)
    tracking.configure(cfg)
    client = MlflowClient()
    aliases = {a: str(v) for a, v in client.get_registered_model(MODEL).aliases.items()}
    # No dangling champion: still the old version, whole and loadable, whatever moved before the kill.
    assert aliases["champion"] == v1 and aliases["challenger"] == v2
    assert client.get_model_version_by_alias(MODEL, "champion").status == "READY"
    # The decision is on record before any alias moves.
    assert client.get_model_version(MODEL, v2).tags["encore.promotion.decision"] == "promote"

    _ok(["--home", str(cfg.home), "promote"], env)
    aliases = {a: str(v) for a, v in client.get_registered_model(MODEL).aliases.items()}
    assert aliases == {"champion": v2, "previous-champion": v1, "challenger": v2}
