"""The Python face of the Feast repo: apply, materialize, point-in-time training rows, online lookup.

Every call renders ``<home>/feast/feature_store.yaml`` from the Encore config (DuckDB + SQLite
embedded, Spark + Redis in the cluster profile) and opens the store from it, so the Python API and
the ``feast`` CLI (pointed at the same file, see ``encore feast env``) see one registry.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as ds
import yaml

from encore.core import faults, lake
from encore.core.atomic import write_json_atomic
from encore.core.config import EncoreConfig, dump_yaml
from encore.core.schemas import CONTENT_VALID_FROM, FEATURE_TABLES, TRACK_CONTENT_TABLE
from encore.core.workspace import Workspace

log = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parent
# The modules `feast apply` imports from this folder, by the names it gives them (cwd-relative).
_DEFINITION_MODULES = ("entities", "sources", "services", "views")
# Which feature table feeds which view (for row counts in reports). Daily tables are partitioned
# by date and materialized incrementally; static ones (one row per entity, stamped at
# CONTENT_VALID_FROM) are reloaded whole whenever the job that writes them has run again.
VIEW_TABLES = {"user_daily": "user_daily", "user_session": "sessions", "track_daily": "track_daily"}
STATIC_VIEW_TABLES = {"track_content": TRACK_CONTENT_TABLE}
# Views whose online rows are pushed by the job that computes them, never materialized.
PUSHED_VIEWS = {"user_recommendations": "pushed by `encore score`"}


class FeastError(RuntimeError):
    """The feature store cannot do what was asked (nothing built yet, not applied); says what to run."""


@dataclass
class MaterializeReport:
    end: str
    seconds: float = 0.0
    views: dict[str, dict[str, Any]] = field(default_factory=dict)  # view -> start, end, source rows


def feast_files(cfg: EncoreConfig) -> tuple[Path, Path]:
    """Write ``feature_store.yaml`` and the Encore config the repo modules read; return both paths."""
    ws = Workspace.at(cfg.home)
    ws.feast.mkdir(parents=True, exist_ok=True)
    registry = cfg.feast_registry()
    store: dict[str, Any] = {
        "project": cfg.feast.project,
        "provider": "local",
        "registry": ({"registry_type": "sql", "path": registry} if "://" in registry and not registry.startswith(
            ("file://", "s3://", "gs://")) else {"path": registry}),
        "entity_key_serialization_version": 3,
    }
    off = cfg.feast.offline_store
    if off.type == "spark":
        from jobs.spark import session_conf

        # Feast starts its own session when none is active: the same settings as the feature jobs'.
        store["offline_store"] = {"type": "spark", "spark_conf": {**session_conf(cfg.spark), **off.spark_conf}}
    else:
        store["offline_store"] = {"type": "duckdb"}
    on = cfg.feast.online_store
    if on.type == "redis":
        store["online_store"] = {"type": "redis", "connection_string": on.connection_string or "localhost:6379"}
    else:
        store["online_store"] = {"type": "sqlite", "path": str(ws.feast / "online.db")}
    fs_yaml = ws.feast / "feature_store.yaml"
    encore_yaml = ws.feast / "encore.yaml"
    _write_if_changed(fs_yaml, "# Rendered by encore from its config; do not edit.\n"
                      + yaml.safe_dump(store, sort_keys=False))
    _write_if_changed(encore_yaml, dump_yaml(cfg))
    return fs_yaml, encore_yaml


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


@contextlib.contextmanager
def _repo_env(cfg: EncoreConfig) -> Iterator[Path]:
    """Point the repo modules at ``cfg`` and import them afresh; restore cwd, env and sys.path after."""
    fs_yaml, encore_yaml = feast_files(cfg)
    saved_env = {k: os.environ.get(k) for k in ("ENCORE_CONFIG", "ENCORE_HOME")}
    saved_cwd, saved_path = os.getcwd(), list(sys.path)
    os.environ["ENCORE_CONFIG"] = str(encore_yaml)
    os.environ["ENCORE_HOME"] = str(Path(cfg.home).resolve())
    # Modules imported for another workspace would keep its paths: drop them so feast re-imports.
    for name in [m for m in sys.modules if m.split(".")[0] in _DEFINITION_MODULES]:
        del sys.modules[name]
    sys.path.insert(0, str(REPO_DIR))
    try:
        yield fs_yaml
    finally:
        os.chdir(saved_cwd)  # feast's apply_total changes directory
        sys.path[:] = saved_path
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _require_tables(ws: Workspace) -> None:
    missing = [t for t in FEATURE_TABLES if not lake.days(ws.feature_table(t))]
    if missing:
        raise FeastError(f"no feature table(s) {', '.join(missing)} under {ws.features}: run `encore features` first")


def apply(cfg: EncoreConfig) -> dict[str, list[str]]:
    """``feast apply`` for this workspace: register entities, sources, views and services."""
    from feast.repo_config import load_repo_config
    from feast.repo_operations import apply_total

    _require_tables(Workspace.at(cfg.home))
    with _repo_env(cfg) as fs_yaml:
        repo_config = load_repo_config(REPO_DIR, fs_yaml)
        _forget_foreign_tables(cfg, repo_config)
        with _quiet_stdout():
            # Source validation stats the path, which fails on a glob; _require_tables checked them.
            apply_total(repo_config, REPO_DIR, skip_source_validation=True)
    store = open_store(cfg)
    return {
        "entities": sorted(e.name for e in store.list_entities()),
        "feature_views": sorted(v.name for v in store.list_feature_views()),
        "feature_services": sorted(s.name for s in store.list_feature_services()),
    }


def _forget_foreign_tables(cfg: EncoreConfig, repo_config: Any) -> None:
    """Drop, from the registry's record, SQLite online tables that live in another workspace's file.

    A copied or moved workspace carries a registry whose infra names the original ``online.db``.
    Feast's apply diffs that infra against this workspace's and tears the "removed" tables down
    through their own path: it would drop the tables of the workspace this one was copied from
    (and then find none here). Forgetting them first makes apply only create tables here.
    """
    if cfg.feast.online_store.type != "sqlite" or not Path(cfg.feast_registry()).is_file():
        return
    from feast import FeatureStore

    here = str(Workspace.at(cfg.home).feast / "online.db")
    try:
        registry = FeatureStore(config=repo_config).registry
        proto = registry._get_registry_proto(project=cfg.feast.project, allow_cache=False)
        objs = list(proto.infra.infra_objects)
        kept = [o for o in objs if o.WhichOneof("infra_object") != "sqlite_table" or o.sqlite_table.path == here]
        if len(kept) == len(objs):
            return
        del proto.infra.infra_objects[:]
        proto.infra.infra_objects.extend(kept)
        registry.cached_registry_proto = proto
        registry.commit()
        log.warning("feast registry named %d online table(s) of another workspace; forgot them (not dropped)",
                    len(objs) - len(kept))
    except Exception as exc:  # private registry API: if it moved, apply still runs as Feast does it
        log.warning("could not check the registry's online tables: %s", exc)


def open_store(cfg: EncoreConfig) -> Any:
    """A ``feast.FeatureStore`` on this workspace's registry (``apply`` must have run)."""
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    fs_yaml, _ = feast_files(cfg)
    store = FeatureStore(config=load_repo_config(REPO_DIR, fs_yaml))
    views = store.list_feature_views()
    if not views:
        raise FeastError(f"Feast registry {cfg.feast_registry()} has no feature views: run `encore feast apply`")
    here = str(Workspace.at(cfg.home).features)
    elsewhere = [v.name for v in views if not str(getattr(v.batch_source, "path", here)).startswith(here)]
    if elsewhere:  # a copied or moved workspace: its registry still names the old tables
        raise FeastError(f"feature views {', '.join(elsewhere)} read tables outside {here}: "
                         "run `encore feast apply` for this workspace")
    return store


def day_end(d: date) -> datetime:
    """The end of day ``d`` as the daily tables stamp it: D+1 00:00 UTC (jobs/features.py)."""
    return datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=1)


def chunks(start: datetime, end: datetime, days: int) -> list[tuple[datetime, datetime]]:
    """``start``..``end`` cut into consecutive windows of at most ``days`` days, oldest first.

    Feast's materialize takes both ends inclusively; a row stamped exactly on a cut is read by both
    windows it touches, which rewrites the same value (idempotent), never skips it.
    """
    step = timedelta(days=days)
    out, lo = [], start
    while lo < end:
        hi = min(lo + step, end)
        out.append((lo, hi))
        lo = hi
    return out


def _source_rows(path: Path, start: datetime | None, end: datetime) -> int:
    manifest = lake.read_manifest(path)
    if manifest is None:
        return 0
    # Rows are stamped at most a day after their date (day ends, session ends): only the periods
    # holding [start - 1 day, end] can match, whatever the number of years the table spans.
    periods = None if start is None else lake.periods_between(
        (start - timedelta(days=1)).date(), end.date(), manifest.granularity)
    files = lake.files(path, periods)
    if not files:
        return 0
    t = ds.dataset(files, format="parquet")
    cond = ds.field("event_timestamp") <= pd.Timestamp(end)
    if start is not None:
        cond = cond & (ds.field("event_timestamp") >= pd.Timestamp(start))  # feast: both ends inclusive
    return t.count_rows(filter=cond)


def materialize(cfg: EncoreConfig, end: date | None = None, views: Sequence[str] | None = None,
                start: date | None = None) -> MaterializeReport:
    """Load the online store with every view's latest rows up to the end of day ``end``.

    Incremental: each view continues from where its last materialization stopped (the first one
    starts a TTL before ``end``). Default ``end``: the last day the feature tables hold - wall-clock
    "now" would be wrong for a lake whose data is from another year. ``views``: only these.
    ``start`` (a backfill): reload the daily views from that day's rows on, whatever was loaded.
    """
    ws = Workspace.at(cfg.home)
    _require_tables(ws)
    store = open_store(cfg)
    last = max(date.fromisoformat(lake.days(ws.feature_table(t))[-1]) for t in VIEW_TABLES.values())
    end_ts = day_end(end or last)
    report = MaterializeReport(end=end_ts.isoformat())
    t0 = time.perf_counter()
    chosen = [v for v in store.list_feature_views() if views is None or v.name in views]
    unknown = set(views or ()) - {v.name for v in chosen}
    if unknown:
        raise FeastError(f"no feature view(s) {', '.join(sorted(unknown))}; "
                         f"have {', '.join(sorted({**VIEW_TABLES, **STATIC_VIEW_TABLES, **PUSHED_VIEWS}))}")
    for fv in sorted(chosen, key=lambda v: v.name):
        if fv.name in PUSHED_VIEWS:
            report.views[fv.name] = {"skipped": PUSHED_VIEWS[fv.name]}
            continue
        if fv.name in STATIC_VIEW_TABLES:
            report.views[fv.name] = _materialize_static(store, ws, fv, end_ts)
            continue
        # Feast's own incremental mode starts a first run at wall-clock now - ttl, which skips a
        # lake whose data lies in the past: start from the data's end instead.
        if start is not None:
            # Day D's rows are stamped D+1 00:00: a start at D 00:00 takes them (and D-1's, unchanged).
            start_ts = datetime(start.year, start.month, start.day, tzinfo=UTC)
        else:
            start_ts = fv.most_recent_end_time or (end_ts - fv.ttl)
        if start_ts >= end_ts:
            report.views[fv.name] = {"start": start_ts.isoformat(), "end": end_ts.isoformat(), "source_rows": 0}
            continue
        table = ws.feature_table(VIEW_TABLES[fv.name])
        windows = chunks(start_ts, end_ts, cfg.feast.materialize_chunk_days)
        # Oldest first, so each entity's online row ends on its newest value. Windows without rows
        # are not sent to Feast, except the last: it records how far the view is loaded.
        loaded = [(lo, hi) for i, (lo, hi) in enumerate(windows)
                  if i == len(windows) - 1 or _source_rows(table, lo, hi) > 0]
        for lo, hi in loaded:
            with _quiet_stdout():
                store.materialize(start_date=lo, end_date=hi, feature_views=[fv.name])
        report.views[fv.name] = {
            "start": start_ts.isoformat(), "end": end_ts.isoformat(), "chunks": len(loaded),
            "source_rows": _source_rows(table, start_ts, end_ts),
        }
        log.info("materialized %s: %s .. %s", fv.name, start_ts, end_ts)
        faults.point("materialize.view_loaded")  # kill test: some views loaded, the rest not
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _materialize_static(store: Any, ws: Workspace, fv: Any, end_ts: datetime) -> dict[str, Any]:
    """Load a whole static table (rows at CONTENT_VALID_FROM) once per new version of it.

    Feast's incremental window would never look back at the epoch again, so the table's newest
    ``created`` decides: unchanged since the last load, nothing to do.
    """
    view = fv.name
    path = ws.feature_table(STATIC_VIEW_TABLES[view])
    files = sorted(path.glob("*.parquet")) if path.is_dir() else []
    if not files:
        log.warning("materialize %s: no table under %s yet (run `encore embed`); skipped", view, path)
        return {"start": CONTENT_VALID_FROM.isoformat(), "end": end_ts.isoformat(), "source_rows": 0,
                "skipped": f"no table under {path}: run `encore embed`"}
    table = ds.dataset(files, format="parquet")
    created = max(
        (v for v in table.to_table(columns=["created"]).column("created").to_pylist() if v is not None),
        default=CONTENT_VALID_FROM)
    state_file = ws.feast / "static_views.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    loaded = state.get(view)
    # A registry that never loaded the view (a fresh `feast apply`) loads it whatever the state says.
    if loaded == created.isoformat() and fv.most_recent_end_time is not None:
        return {"start": CONTENT_VALID_FROM.isoformat(), "end": end_ts.isoformat(), "source_rows": 0,
                "unchanged_since": loaded}
    with _quiet_stdout():
        store.materialize(start_date=CONTENT_VALID_FROM, end_date=max(end_ts, created), feature_views=[view])
    state[view] = created.isoformat()
    write_json_atomic(state_file, state)
    log.info("materialized %s: %d rows (created %s)", view, table.count_rows(), created)
    return {"start": CONTENT_VALID_FROM.isoformat(), "end": end_ts.isoformat(), "source_rows": table.count_rows()}


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Feast prints coloured banners to stdout; keep them as debug log lines, not in our output."""
    buf = io.StringIO()
    # Feast's ibis/DuckDB path raises DeprecationWarnings that say nothing to an Encore user.
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield
    for line in buf.getvalue().splitlines():
        if line.strip():
            log.debug("feast: %s", line)


def training_examples(cfg: EncoreConfig, entity_df: pd.DataFrame, service: str = "training",
                      key: str = "user_id") -> pd.DataFrame:
    """Point-in-time-correct features for each (``key``, event_timestamp) row of ``entity_df``.

    Each row gets the values of the latest feature rows stamped at or before its timestamp (and
    within the view's TTL); nothing written later can appear. Columns are ``<view>__<feature>``.
    ``key="track_id"`` serves the item-side services (``track_content``, ``track_popularity``).
    """
    missing = {key, "event_timestamp"} - set(entity_df.columns)
    if missing:
        raise ValueError(f"entity_df lacks column(s) {sorted(missing)}")
    df = entity_df.copy()
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    df["_row"] = range(len(df))  # the offline store may reorder rows; give them back in input order
    store = open_store(cfg)
    with _quiet_stdout():
        job = store.get_historical_features(entity_df=df, features=store.get_feature_service(service),
                                            full_feature_names=True)
        out = job.to_df()
    return out.sort_values("_row").drop(columns="_row").reset_index(drop=True)


def online_features(cfg: EncoreConfig, ids: Sequence[str], service: str = "scoring",
                    key: str = "user_id") -> pd.DataFrame:
    """The online store's current values for entity ``ids`` (one row each, in order; nulls if unknown).

    ``key`` is the join key of the service's entity: ``user_id`` (scoring) or ``track_id`` (track_content).
    """
    store = open_store(cfg)
    resp = store.get_online_features(features=store.get_feature_service(service),
                                     entity_rows=[{key: i} for i in ids], full_feature_names=True)
    return pd.DataFrame(resp.to_dict())


__all__ = ["FeastError", "MaterializeReport", "apply", "chunks", "day_end", "feast_files", "materialize",
           "online_features", "open_store", "training_examples"]
