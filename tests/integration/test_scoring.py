"""Nightly batch scoring on a small world: a real champion from the registry, Feast, local Ray."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

import mlflow
from encore.core.config import EncoreConfig
from encore.core.workspace import Workspace
from tests.conftest import NEW_TRACKS, NEW_USER, copy_home

K = 15


@pytest.fixture(scope="module")
def tonight(champion_home: EncoreConfig, ray_local):
    from scoring.batch import read_recommendations, score

    rep = score(champion_home, top_k=K)
    return rep, read_recommendations(champion_home, date.fromisoformat(rep.date))


def _online_users(cfg: EncoreConfig) -> pd.DataFrame:
    from feature_repo.store import online_features
    from scoring.batch import known_users

    users = known_users(Workspace.at(cfg.home), datetime.now(UTC).date())
    return online_features(cfg, users, service="scoring").set_index("user_id")


def test_every_active_user_gets_k_distinct_unheard_items_with_lineage(champion_home, tonight) -> None:
    rep, out = tonight
    feats = _online_users(champion_home)
    active = set(feats.index[feats["user_daily__plays_30d"] >= 1])
    assert set(out["user_id"]) == active and rep.users_active == len(active)
    for user, rows in out.groupby("user_id"):
        assert list(rows["rank"]) == list(range(1, K + 1))
        assert rows["track_id"].is_unique
        assert not set(rows["track_id"]) & set(feats.loc[user, "user_daily__recent_track_ids"])  # unheard
        if not rows["fallback"].iloc[0]:
            assert rows["score"].is_monotonic_decreasing
    champion = mlflow.MlflowClient().get_model_version_by_alias(champion_home.mlflow.model_name, "champion")
    assert (out["model_name"] == champion_home.mlflow.model_name).all()
    assert (out["model_version"] == str(champion.version)).all() and (out["model_run_id"] == champion.run_id).all()
    assert (out["scoring_run_id"] == rep.run_id).all() and out["feature_snapshot"].notna().all()
    assert rep.mode == "online" and rep.feature_snapshot.startswith("2009-05-05")


def test_min_plays_30d_zero_also_scores_a_user_quiet_for_the_last_30_days(champion_home, tonight, ray_local,
                                                                         tmp_path: Path) -> None:
    from feature_repo import store
    from jobs.features import build_features
    from jobs.ingest import IngestInputs, ingest
    from scoring.batch import read_recommendations, score, user_features

    default, before = tonight
    cfg = copy_home(champion_home, tmp_path / "home")
    quiet = tmp_path / "quiet-user.tsv"  # known to the lake, but last heard 45 days before the world's end
    quiet.write_text("".join(f"user_quiet\t2009-03-20T1{i}:00:00Z\t\tOld Artist\told-{i}\tOld Song {i}\n"
                             for i in range(3)))
    ingest(cfg, IngestInputs(listens=(quiet,)))
    build_features(cfg)
    store.apply(cfg)
    store.materialize(cfg)
    cfg = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"min_plays_30d": 0})})
    rep = score(cfg, top_k=K)
    out = read_recommendations(cfg, date.fromisoformat(rep.date))
    seen, _, _ = user_features(cfg, ["user_quiet"], date.fromisoformat(rep.date), datetime.now(UTC).date())
    assert seen["plays_30d"].tolist() == [0]  # what the default (1) leaves out
    assert rep.users_known == default.users_known + 1 and rep.users_active == rep.users_known
    assert set(out["user_id"]) == set(before["user_id"]) | {"user_quiet"}
    assert (out.groupby("user_id").size() == K).all()
    mine = out[out["user_id"] == "user_quiet"]
    assert mine["fallback"].all() and not set(mine["track_id"]) & {f"old-{i}" for i in range(3)}


def test_a_user_whose_history_the_model_does_not_know_gets_the_flagged_popular_fallback(tonight) -> None:
    rep, out = tonight
    mine = out[out["user_id"] == NEW_USER]
    assert len(mine) == K and mine["fallback"].all()
    assert not set(mine["track_id"]) & set(NEW_TRACKS)  # heard, so masked
    assert mine["score"].is_monotonic_decreasing  # plays in the last 7 days, most played first
    assert not out.loc[out["user_id"] != NEW_USER, "fallback"].any()
    assert rep.users_fallback == 1


def test_rescoring_a_date_replaces_its_output_exactly(champion_home, tonight) -> None:
    from scoring.batch import read_recommendations, score

    def digest(df: pd.DataFrame) -> str:
        stable = df.drop(columns=["scoring_run_id"]).sort_values(["user_id", "rank"]).reset_index(drop=True)
        stable["score"] = stable["score"].round(5)  # batch composition may move the last float bits
        return hashlib.sha256(pd.util.hash_pandas_object(stable, index=False).values.tobytes()).hexdigest()

    rep, first = tonight
    again = score(champion_home, date.fromisoformat(rep.date), top_k=K)
    second = read_recommendations(champion_home, date.fromisoformat(rep.date))
    assert again.run_id != rep.run_id and (second["scoring_run_id"] == again.run_id).all()
    assert len(second) == len(first) and not second.duplicated(["user_id", "rank"]).any()
    assert digest(second) == digest(first)


def test_tonights_lists_are_served_online_by_user_id(champion_home, tonight) -> None:
    from feature_repo.store import online_features

    rep, out = tonight
    user = out["user_id"].iloc[0]
    got = online_features(champion_home, [user, NEW_USER], service="recommendations").set_index("user_id")
    assert list(got.loc[user, "user_recommendations__track_ids"]) == list(out[out["user_id"] == user]["track_id"])
    assert got.loc[NEW_USER, "user_recommendations__fallback"]
    assert got.loc[user, "user_recommendations__rec_date"] == rep.date


def test_a_past_date_ranks_from_point_in_time_features(champion_home, tonight, ray_local) -> None:
    from scoring.batch import read_recommendations, score

    past = date(2009, 4, 24)
    rep = score(champion_home, past, top_k=K)
    assert rep.mode == "point-in-time" and rep.feature_snapshot.startswith("2009-04-25T00:00:00")
    assert not rep.pushed_online  # tonight's lists stay online
    out = read_recommendations(champion_home, past)
    rows = pd.read_parquet(Workspace.at(champion_home.home).feature_table("user_daily"))
    rows = rows[rows["event_timestamp"] <= pd.Timestamp(past, tz=UTC) + timedelta(days=1)]
    as_of = rows.sort_values("event_timestamp").groupby("user_id").tail(1).set_index("user_id")
    active = as_of[as_of["plays_30d"] >= 1]
    assert set(out["user_id"]) == set(active.index) and NEW_USER not in set(out["user_id"])
    # The lists are what the champion ranks from each user's sequence as of that day.
    model = mlflow.pyfunc.load_model(f"models:/{champion_home.mlflow.model_name}@champion")
    users = list(active.index[:5])
    want = model.predict(pd.DataFrame({"user_id": users,
                                       "track_ids": [list(active.loc[u, "recent_track_ids"]) for u in users],
                                       "completions": [list(active.loc[u, "recent_completions"]) for u in users]}),
                         params={"k": K})
    for user, tracks in zip(want["user_id"], want["track_ids"], strict=True):
        assert list(out[out["user_id"] == user]["track_id"]) == list(tracks)
    today = read_recommendations(champion_home, datetime.now(UTC).date())
    assert not today.empty  # the other date is untouched


def test_scoring_without_a_champion_says_to_promote(featured_home: EncoreConfig, tmp_path: Path) -> None:
    from scoring.batch import ScoringError, score

    cfg = copy_home(featured_home, tmp_path / "home")
    with pytest.raises(ScoringError, match="encore promote"):
        score(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["score.staged", "publish.mid_swap"])
def test_a_scoring_run_killed_midway_shows_no_partial_output_and_the_rerun_gives_the_same_rows(
        champion_home, tonight, tmp_path: Path, fault: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    from feature_repo import store
    from scoring.batch import read_recommendations, score

    cfg = copy_home(champion_home, tmp_path / "home")
    store.apply(cfg)
    day = date(2009, 4, 28)  # a past date: point-in-time features, nothing pushed online
    env = {**os.environ, "ENCORE_FAULT": fault, "RAY_AUTH_MODE": "disabled"}
    env.pop("ENCORE_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "encore", "-q", "--home", str(cfg.home), "score",
                           "--date", day.isoformat(), "--top-k", str(K)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ws = Workspace.at(cfg.home)
    live = ws.recommendations / f"date={day}"
    journals = list((ws.journals / "score").glob("*.json"))
    if fault == "score.staged":  # killed before the commit point: nothing visible, nothing to recover
        assert not live.exists() and not journals
    else:  # killed between the two swaps: the journal is the commit point, the live folder is whole
        assert len(journals) == 1 and len(read_recommendations(cfg, day)) > 0
    rep = score(cfg, day, top_k=K)
    assert rep.recovered_publications == (1 if fault == "publish.mid_swap" else 0)
    out = read_recommendations(cfg, day)
    assert (out["scoring_run_id"] == rep.run_id).all() and not out.duplicated(["user_id", "rank"]).any()
    assert not list((ws.journals / "score").glob("*.json")) and not any((ws.tmp / "score-staging").rglob("*"))
    fresh = copy_home(champion_home, tmp_path / "fresh")
    store.apply(fresh)
    clean = score(fresh, day, top_k=K)
    want = read_recommendations(fresh, day)
    assert clean.rows == rep.rows
    cols = ["user_id", "rank", "track_id", "fallback", "model_version"]
    pd.testing.assert_frame_equal(out[cols], want[cols])
    assert out["score"].to_numpy() == pytest.approx(want["score"].to_numpy(), abs=1e-5)
