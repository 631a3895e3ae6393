"""The nightly job end to end on a small world: resume after a failed step, the lock, the report."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from encore.cli import cli
from encore.core.config import EmbedConfig, EncoreConfig
from encore.core.workspace import Workspace
from tests.conftest import copy_home

pytestmark = pytest.mark.slow


def _home(champion_home: EncoreConfig, dest: Path) -> EncoreConfig:
    from feature_repo import store

    cfg = copy_home(champion_home, dest)
    cfg = cfg.model_copy(update={"embed": EmbedConfig(metadata="genes")})  # as the world was embedded
    store.apply(cfg)
    return cfg


def _profile(cfg: EncoreConfig, tmp_path: Path) -> Path:
    """A profile file with the test's config (the CLI builds its own)."""
    path = tmp_path / "profile.yaml"
    path.write_text(json.dumps({"home": str(cfg.home), "spark": cfg.spark.model_dump(),
                                "embed": {"metadata": "genes"}, "ray": {"num_cpus": 2, "object_store_memory_mb": 256}}))
    return path


def test_a_failed_step_is_named_and_the_rerun_resumes_there(champion_home, tmp_path: Path, monkeypatch,
                                                            ray_local) -> None:
    cfg = _home(champion_home, tmp_path / "home")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "late.tsv").write_text("".join(
        f"user_000001\t2009-05-04T2{i}:00:00Z\t\tLate Artist\tlate-{i}\tLate Song {i}\n" for i in range(3)))
    args = ["--config", str(_profile(cfg, tmp_path)), "nightly", "--inbox", str(inbox)]
    runner = CliRunner()

    monkeypatch.setenv("ENCORE_FAIL", "nightly.score")
    failed = runner.invoke(cli, args)
    assert failed.exit_code == 1
    assert "step 'score' failed" in failed.output and "resume at 'score'" in failed.output
    state = json.loads((Workspace.at(cfg.home).nightly / f"state-{datetime.now(UTC).date()}.json").read_text())
    assert {n: r["status"] for n, r in state["steps"].items()} == {
        "ingest": "done", "features": "done", "annotate": "skipped", "embed": "done", "materialize": "done",
        "score": "failed"}
    assert state["steps"]["ingest"]["summary"]["listens"]["added"] == 3
    assert "InjectedFault" in state["steps"]["score"]["error"]

    monkeypatch.delenv("ENCORE_FAIL")
    resumed = runner.invoke(cli, [*args, "--json"])
    assert resumed.exit_code == 0, resumed.output
    out = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert out["ran"] == ["score", "report"]
    assert out["skipped"] == ["ingest", "features", "annotate", "embed", "materialize"]
    assert out["steps"]["ingest"]["finished"] == state["steps"]["ingest"]["finished"]  # not rerun

    # The report: both files, the figures inside, the numbers from this night.
    written = out["steps"]["report"]["summary"]
    html_path, json_path = Path(written["html"]), Path(written["json"])
    assert html_path.name == f"nightly-{datetime.now(UTC).date()}.html"
    page = html_path.read_text()
    assert page.count('src="data:image/png;base64,') == 3  # trends, step timings, scores and exposure
    report = json.loads(json_path.read_text())
    recs = pd.read_parquet(out["steps"]["score"]["summary"]["output"])
    assert report["lists"]["rows"] == len(recs) and report["lists"]["users"] == recs["user_id"].nunique()
    assert 0 < report["lists"]["catalog_coverage"] <= 1 and report["lists"]["fallback_users"] >= 1
    assert report["champion"]["model_version"] == str(recs["model_version"].iloc[0])
    assert report["champion"]["test_metrics"]["ndcg@10"] >= 0
    assert list(report["steps"]) == ["ingest", "features", "annotate", "embed", "materialize", "score"]
    assert report["steps"]["score"]["status"] == "done"  # the resumed run's record, not the failure

    again = runner.invoke(cli, [*args, "--json"])  # everything done for the date: nothing runs
    assert json.loads(again.stdout[again.stdout.index("{"):])["ran"] == []


def test_a_second_nightly_on_the_same_workspace_exits_75_and_says_why(featured_home: EncoreConfig,
                                                                    tmp_path: Path) -> None:
    cfg = copy_home(featured_home, tmp_path / "home")
    with Workspace.at(cfg.home).lock("nightly"):
        res = CliRunner().invoke(cli, ["--home", str(cfg.home), "nightly"])
    assert res.exit_code == 75
    assert "holds the 'nightly' lock" in res.output
    assert not (Workspace.at(cfg.home).nightly / f"state-{datetime.now(UTC).date()}.json").exists()


def test_backfill_rebuilds_the_range_and_reloads_the_online_store_from_its_start(champion_home,
                                                                                tmp_path: Path) -> None:
    from encore.nightly.pipeline import backfill
    from feature_repo.store import online_features

    cfg = _home(champion_home, tmp_path / "home")
    out = backfill(cfg, date(2009, 4, 20), date(2009, 4, 25))
    assert out["features"]["mode"] == "backfill"
    assert (out["features"]["start"], out["features"]["end"]) == ("2009-04-20", "2009-04-25")
    assert out["materialize"]["views"]["user_daily"]["start"].startswith("2009-04-20")
    # The online store still ends on each user's newest row, not on the backfilled days.
    table = pd.read_parquet(Workspace.at(cfg.home).feature_table("user_daily"))
    latest = table.sort_values("event_timestamp").groupby("user_id").tail(1).set_index("user_id")
    user = latest.index[0]
    got = online_features(cfg, [user])
    assert got["user_daily__plays_30d"][0] == latest.loc[user, "plays_30d"]
