"""Nightly batch scoring: every active user, all items, with the registry's champion (Ray Data).

    score(cfg, day) ->
      champion   models:/<name>@champion resolved once to a version (lineage; actors load that version)
      users      every user the user_daily table knows up to ``day``; active = plays_30d >= min
      features   Feast `scoring` service: the online store for today, point in time for a past day
      rank       Ray Data map_batches over a callable-class actor pool: one pyfunc per actor, each
                 batch ranks the whole catalog per user, heard items masked, top-K kept
      fallback   users whose history holds no track the model knows: the most played tracks (plays_7d)
      publish    recommendations/date=D/ and lake/features/user_recommendations/date=D/ written under
                 tmp/score-staging and swapped in together (journaled): a rerun replaces the date whole
      push       the lists to Feast's online store (view user_recommendations), for the newest date

Models are loaded by registry URI as MLflow pyfuncs; this package never imports ``training``.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from encore.core import faults, lake
from encore.core.atomic import Swap, new_run_id, publish_run, recover, write_report
from encore.core.config import EncoreConfig, registered_model_name
from encore.core.progress import Progress
from encore.core.schemas import RECOMMENDATION_COLUMNS, USER_RECOMMENDATIONS_TABLE
from encore.core.workspace import Workspace, partitions

log = logging.getLogger(__name__)

CHAMPION = "champion"
SERVICE = "scoring"
PUSH_SOURCE = "user_recommendations_push"


class ScoringError(RuntimeError):
    """Scoring cannot run (no champion, no features); the message says what to run first."""


@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    run_id: str
    uri: str  # models:/<name>/<version>: pinned, so a promotion mid-run cannot mix two models


@dataclass
class ScoreReport:
    run_id: str
    date: str
    mode: str  # online | point-in-time
    model_name: str = ""
    model_version: str = ""
    model_run_id: str = ""
    feature_snapshot: str = ""
    top_k: int = 0
    users_known: int = 0
    users_active: int = 0
    users_model: int = 0
    users_fallback: int = 0
    rows: int = 0
    distinct_items: int = 0
    pushed_online: bool = False
    output: str = ""
    seconds: float = 0.0
    recovered_publications: int = 0
    steps: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_champion(cfg: EncoreConfig, model_name: str | None = None) -> Champion:
    """The version behind ``@champion`` (raises :class:`ScoringError` if there is none)."""
    from mlflow.exceptions import MlflowException

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri())
    mlflow.set_registry_uri(cfg.mlflow_registry_uri())
    name = registered_model_name(cfg, model_name)
    try:
        mv = MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        raise ScoringError(f"registered model {name!r} has no @{CHAMPION}: train a model and run "
                           "`encore promote`") from None
    return Champion(name, str(mv.version), str(mv.run_id or ""), f"models:/{name}/{mv.version}")


# -- inputs --------------------------------------------------------------------------------------

def _table_files(ws: Workspace, table: str, day: date) -> list[str]:
    """The files of ``table``'s periods up to the one holding ``day`` (callers filter ``date <= day``:
    that period also holds later days)."""
    path = ws.feature_table(table)
    manifest = lake.read_manifest(path)
    if manifest is None:
        return []
    last = lake.period_of(day, manifest.granularity)
    return [str(f) for f in lake.files(path, [p for p in manifest.periods() if p <= last])]


def known_users(ws: Workspace, day: date) -> list[str]:
    """Every user with a user_daily row on or before ``day`` (sorted)."""
    files = _table_files(ws, "user_daily", day)
    if not files:
        raise ScoringError(f"no user_daily rows up to {day} under {ws.feature_table('user_daily')}: "
                           "run `encore features`")
    with duckdb.connect() as con:
        rows = con.execute("SELECT DISTINCT user_id FROM read_parquet(?) WHERE date <= ? ORDER BY user_id",
                           [files, day]).fetchall()
    return [r[0] for r in rows]


def popular_tracks(ws: Workspace, day: date, n: int) -> pd.DataFrame:
    """The ``n`` most played tracks of the 7 days up to ``day`` (track_daily's plays_7d, latest row
    per track on or before ``day``): track_id, plays_7d, best first, ties by id."""
    files = _table_files(ws, "track_daily", day)
    if not files:
        return pd.DataFrame({"track_id": pd.Series([], dtype=str), "plays_7d": pd.Series([], dtype="int64")})
    sql = """
        SELECT track_id, plays_7d FROM (
            SELECT track_id, plays_7d,
                   row_number() OVER (PARTITION BY track_id ORDER BY event_timestamp DESC, created DESC) AS rn
            FROM read_parquet(?) WHERE date <= ?)
        WHERE rn = 1 AND plays_7d > 0 ORDER BY plays_7d DESC, track_id LIMIT ?"""
    with duckdb.connect() as con:
        return con.execute(sql, [files, day, n]).df()


def user_features(cfg: EncoreConfig, users: list[str], day: date, today: date) -> tuple[pd.DataFrame, str, str]:
    """The `scoring` service for ``users``: online for today, point in time at the end of a past day.

    Returns (frame with user_id, track_ids, completions, plays_30d; feature snapshot; mode).
    """
    from feature_repo.store import FeastError, day_end, online_features, open_store, training_examples

    try:
        store = open_store(cfg)
        store.get_feature_service(SERVICE)
    except FeastError as exc:
        raise ScoringError(str(exc)) from None
    except Exception as exc:  # the registry lacks the service: an old `feast apply`
        raise ScoringError(f"Feast has no '{SERVICE}' feature service ({exc}): run `encore feast apply`") from None
    if day >= today:
        fv = store.get_feature_view("user_daily")
        if fv.most_recent_end_time is None:
            raise ScoringError("the online store was never loaded: run `encore materialize`")
        try:
            raw = online_features(cfg, users, service=SERVICE)
        except Exception as exc:  # e.g. sqlite "no such table": the online store was reset
            raise ScoringError(f"cannot read the online store ({type(exc).__name__}: {exc}): "
                               "run `encore materialize`") from None
        snapshot, mode = fv.most_recent_end_time.astimezone(UTC).isoformat(), "online"
    else:
        # As materialize stamps it: a past date reads what the online store held after that day.
        at = day_end(day)
        raw = training_examples(cfg, pd.DataFrame({"user_id": users, "event_timestamp": at}), service=SERVICE)
        snapshot, mode = at.isoformat(), "point-in-time"
    frame = pd.DataFrame({
        "user_id": raw["user_id"].astype(str),
        "track_ids": [list(t) if t is not None else [] for t in raw["user_daily__recent_track_ids"]],
        "completions": [[float("nan") if c is None else float(c) for c in cs] if cs is not None else []
                        for cs in raw["user_daily__recent_completions"]],
        "plays_30d": pd.to_numeric(raw["user_daily__plays_30d"], errors="coerce").fillna(0).astype("int64"),
    })
    # A list of completions that does not match its tracks (never written so; a guard) is dropped.
    frame["completions"] = [c if len(c) == len(t) else [float("nan")] * len(t)
                            for t, c in zip(frame["track_ids"], frame["completions"], strict=True)]
    return frame, snapshot, mode


# -- the actor -----------------------------------------------------------------------------------

class ChampionScorer:
    """One per actor: loads the pyfunc once, then ranks a batch of users per call.

    batch (pandas): user_id, track_ids, completions -> one row per (user, rank): RECOMMENDATION_COLUMNS.
    """

    def __init__(self, champion: Champion, tracking_uri: str, registry_uri: str, top_k: int, mask_heard: bool,
                 popular: list[tuple[str, float]], lineage: dict[str, Any], threads: int) -> None:
        import torch

        import mlflow

        torch.set_num_threads(max(1, threads))
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(registry_uri)
        self.model = mlflow.pyfunc.load_model(champion.uri)
        self.k, self.mask = top_k, mask_heard
        self.popular = popular
        self.lineage = lineage

    def _fallback(self, heard: list[str]) -> tuple[list[str], list[float]]:
        skip = set(heard) if self.mask else set()
        picked = [(t, s) for t, s in self.popular if t not in skip][: self.k]
        return [t for t, _ in picked], [s for _, s in picked]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = self.model.predict(batch[["user_id", "track_ids", "completions"]],
                                 params={"k": self.k, "mask_history": self.mask})
        # Older models return no history_len: then only an empty history means "nothing to rank from".
        known = (out["history_len"].to_numpy() if "history_len" in out
                 else np.array([len(t) for t in batch["track_ids"]]))
        users, ranks, tracks, scores, flags = [], [], [], [], []
        for i, (user, ids, sc) in enumerate(zip(out["user_id"], out["track_ids"], out["scores"], strict=True)):
            fallback = bool(known[i] == 0)
            if fallback:
                ids, sc = self._fallback(list(batch["track_ids"].iloc[i]))
            n = len(ids)
            users += [user] * n
            ranks += range(1, n + 1)
            tracks += list(ids)
            scores += [float(s) for s in sc]
            flags += [fallback] * n
        rows = pd.DataFrame({"user_id": users, "rank": np.array(ranks, dtype=np.int32), "track_id": tracks,
                             "score": np.array(scores, dtype=np.float64), "fallback": np.array(flags, dtype=bool)})
        for key, value in self.lineage.items():
            rows[key] = value
        rows["feature_snapshot"] = pd.to_datetime(rows["feature_snapshot"], utc=True)
        return rows[list(RECOMMENDATION_COLUMNS)]


# -- the job -------------------------------------------------------------------------------------

def rank(cfg: EncoreConfig, champ: Champion, inputs: pd.DataFrame, k: int, popular: list[tuple[str, float]],
         lineage: dict[str, Any]) -> Any:
    """The lazy Ray Dataset of ranked rows (RECOMMENDATION_COLUMNS) for ``inputs`` (user_id,
    track_ids, completions): a pool of ``scoring.actors`` ChampionScorer actors, each with one
    pyfunc, on a GPU each where the cluster has GPUs."""
    from encore.core.ray_session import actor_options, get_ray, gpus_per_actor

    ray = get_ray(cfg.ray)
    actors = cfg.scoring.actors
    node_cpus = max((n["Resources"].get("CPU", 1.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
    blocks = max(actors, int(np.ceil(len(inputs) / cfg.scoring.batch_size)))
    dataset = ray.data.from_pandas(inputs).repartition(blocks)
    with actor_options():
        return dataset.map_batches(
            ChampionScorer,
            fn_constructor_kwargs={
                "champion": champ, "tracking_uri": cfg.mlflow_tracking_uri(),
                "registry_uri": cfg.mlflow_registry_uri(), "top_k": k,
                "mask_heard": cfg.scoring.mask_heard, "popular": popular, "lineage": lineage,
                "threads": int(max(1, node_cpus // actors))},
            batch_format="pandas",
            batch_size=cfg.scoring.batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            # One logical CPU per actor (torch uses `threads` cores): a core stays for the driver.
            num_cpus=1,
            num_gpus=gpus_per_actor(ray, cfg.scoring.num_gpus),
            # No actor restarts (see jobs/embed.py): a lost actor fails the run, which publishes
            # nothing and reruns whole.
            max_restarts=0,
        )


def score(cfg: EncoreConfig, day: date | None = None, top_k: int | None = None,
          model_name: str | None = None) -> ScoreReport:
    """Score every active user for ``day`` (default today) and publish the date's lists atomically."""
    ws = Workspace.at(cfg.home)
    today = datetime.now(UTC).date()
    day = day or today
    if day > today:
        raise ScoringError(f"--date {day} is in the future (today is {today} UTC)")
    k = top_k or cfg.scoring.top_k
    run_id = new_run_id()
    t0 = time.perf_counter()
    with ws.lock("score"):
        rep = ScoreReport(run_id=run_id, date=day.isoformat(), mode="", top_k=k)
        # Scoring's own journal folder: it writes no table another job writes, and recovering
        # another job's journal here would race that job (which holds the lake lock, not this one).
        journals = ws.journals / "score"
        rep.recovered_publications = recover(journals)
        # Staged lists of killed scoring runs (we hold the score lock; never published). Scoring
        # stages outside tmp/staging, which the lake jobs clear under the lake lock, not this one.
        shutil.rmtree(ws.tmp / "score-staging", ignore_errors=True)
        champ = resolve_champion(cfg, model_name)
        rep.model_name, rep.model_version, rep.model_run_id = champ.name, champ.version, champ.run_id

        t = time.perf_counter()
        users = known_users(ws, day)
        feats, rep.feature_snapshot, rep.mode = user_features(cfg, users, day, today)
        active = feats[feats["plays_30d"] >= cfg.scoring.min_plays_30d].sort_values("user_id").reset_index(drop=True)
        rep.users_known, rep.users_active = len(users), len(active)
        snap_day = min(day, datetime.fromisoformat(rep.feature_snapshot).date())
        popular = popular_tracks(ws, snap_day, k + cfg.features.sequence_length)
        rep.steps["features_s"] = round(time.perf_counter() - t, 3)
        log.info("scoring %d active of %d known users for %s with %s v%s (%s features as of %s)",
                 len(active), len(users), day, champ.name, champ.version, rep.mode, rep.feature_snapshot)
        if active.empty:
            raise ScoringError(f"no active user (plays_30d >= {cfg.scoring.min_plays_30d}) "
                               f"as of {rep.feature_snapshot}")

        t = time.perf_counter()
        stage = ws.tmp / "score-staging" / run_id
        staged = stage / "recommendations" / f"date={day.isoformat()}"
        lineage = {"model_name": champ.name, "model_version": champ.version, "model_run_id": champ.run_id,
                   "feature_snapshot": rep.feature_snapshot, "scoring_run_id": run_id}
        popular_list = list(zip(popular["track_id"].astype(str), popular["plays_7d"].astype(float), strict=True))
        ranked = rank(cfg, champ, active[["user_id", "track_ids", "completions"]], k, popular_list, lineage)
        _stage_rows(ranked, staged / "part-0.parquet", len(active))
        rep.steps["rank_s"] = round(time.perf_counter() - t, 3)

        t = time.perf_counter()
        per_user = _per_user_lists(staged, day)
        feast_staged = stage / USER_RECOMMENDATIONS_TABLE / f"date={day.isoformat()}"
        feast_staged.mkdir(parents=True, exist_ok=True)
        per_user.to_parquet(feast_staged / "part-0.parquet", index=False)
        faults.point("score.staged")  # kill test: everything staged, nothing published
        live = ws.recommendations / f"date={day.isoformat()}"
        feast_live = ws.feature_table(USER_RECOMMENDATIONS_TABLE) / f"date={day.isoformat()}"
        trash = ws.trash / run_id
        publish_run([Swap(staged, live, trash / "recommendations"),
                     Swap(feast_staged, feast_live, trash / USER_RECOMMENDATIONS_TABLE)],
                    journals, stage, trash)
        rep.output = str(live)
        rep.users_model = int((~per_user["fallback"]).sum())
        rep.users_fallback = int(per_user["fallback"].sum())
        rep.rows = int(sum(len(x) for x in per_user["track_ids"]))
        rep.distinct_items = len({t for x in per_user["track_ids"] for t in x})
        rep.steps["publish_s"] = round(time.perf_counter() - t, 3)

        # Only the newest date goes online: re-scoring a past date must not replace tonight's lists.
        if partitions(ws.recommendations)[-1] == day.isoformat():
            t = time.perf_counter()
            _push_online(cfg, per_user)
            rep.pushed_online = True
            rep.steps["push_s"] = round(time.perf_counter() - t, 3)
        rep.seconds = round(time.perf_counter() - t0, 3)
        write_report(ws.reports("score"), run_id, rep.to_dict())
    log.info("scored %d users (%d on fallback) into %s in %.1fs", rep.users_model + rep.users_fallback,
             rep.users_fallback, rep.output, rep.seconds)
    return rep


def _stage_rows(ranked: Any, path: Path, users: int) -> None:
    """Stream the ranked rows to one staged file, counting users as their lists arrive.

    The rows (users x top_k, ~10^5 for LastFM-1K's 992 users) pass through the driver: that is what
    lets a progress bar count users, and one file per night reads back fastest. Each actor output
    batch holds whole users (the scorer emits all of a user's ranks at once).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    writer: pq.ParquetWriter | None = None
    with Progress(users, "score", "user") as bar:
        try:
            for batch in ranked.iter_batches(batch_format="pyarrow", batch_size=None):
                if batch.num_rows == 0:
                    continue
                if writer is None:
                    writer = pq.ParquetWriter(path, batch.schema)
                writer.write_table(batch.cast(writer.schema))
                bar.update(len(pc.unique(batch["user_id"])))
        finally:
            if writer is not None:
                writer.close()


def _per_user_lists(folder: Path, day: date) -> pd.DataFrame:
    """One row per user (the Feast view's shape) from the per-rank rows in ``folder``."""
    sql = """
        SELECT user_id, list(track_id ORDER BY rank) AS track_ids, list(score ORDER BY rank) AS scores,
               bool_or(fallback) AS fallback, any_value(model_version) AS model_version,
               any_value(scoring_run_id) AS scoring_run_id
        FROM read_parquet(?) GROUP BY user_id ORDER BY user_id"""
    with duckdb.connect() as con:
        df = con.execute(sql, [str(folder / "*.parquet")]).df()
    df["rec_date"] = day.isoformat()
    # Stamped at the start of the scoring date: a rerun of the date writes the same rows.
    df["event_timestamp"] = pd.Timestamp(datetime(day.year, day.month, day.day, tzinfo=UTC))
    df["created"] = pd.Timestamp.now(tz=UTC)
    return df


def _push_online(cfg: EncoreConfig, per_user: pd.DataFrame) -> None:
    from feast.data_source import PushMode

    from feature_repo.store import open_store

    store = open_store(cfg)
    try:
        store.get_feature_view("user_recommendations")
    except Exception:
        raise ScoringError("Feast has no user_recommendations view: run `encore feast apply`") from None
    store.push(PUSH_SOURCE, per_user, to=PushMode.ONLINE)


def read_recommendations(cfg: EncoreConfig, day: date) -> pd.DataFrame:
    """The published rows for ``day`` (empty frame if none), sorted by user and rank."""
    folder = Workspace.at(cfg.home).recommendations / f"date={day.isoformat()}"
    if not any(folder.glob("*.parquet")):
        return pd.DataFrame(columns=list(RECOMMENDATION_COLUMNS))
    with duckdb.connect() as con:
        df = con.execute("SELECT * FROM read_parquet(?) ORDER BY user_id, rank", [str(folder / "*.parquet")]).df()
    return df[list(RECOMMENDATION_COLUMNS)]


__all__ = ["ChampionScorer", "ScoreReport", "ScoringError", "known_users", "popular_tracks", "read_recommendations",
           "resolve_champion", "score", "user_features"]
