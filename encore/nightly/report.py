"""The nightly run report: ``reports/nightly-DATE.html`` (plots embedded) and ``.json``.

What an on-call engineer checks the morning after, one section each:

    at a glance    the night in five lines
    steps          did every step run, how long did it take, how many rows moved
    trends         the same figures for the last nights (earlier nights' JSON), table and plot
    champion       which model scored, its test and promotion metrics
    lists          tonight's lists: coverage, diversity, concentration, users on the fallback
    yesterday      the production check: yesterday's published lists against the listens since
    examples       three users: what they heard, what they get tonight, by name
    freshness      how old the features were when the users were scored
    quarantine     rejected raw rows in the lake, by reason
    figures        step timings, score distribution and item exposure

The JSON holds every figure of the page; its ``trend`` object is what the next nights read back
(:func:`trend_point`), so a night's trend row never needs that night's lake or registry again.
Every section after the steps is best effort: a failing one records its error in its place and
the report is still written (the report is the last step; it must not fail a night that scored).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from encore.core import faults
from encore.core import lake as lk
from encore.core.atomic import write_json_atomic
from encore.core.config import EncoreConfig
from encore.core.workspace import Workspace, partitions
from encore.nightly.pipeline import step_rows

log = logging.getLogger(__name__)

EVAL_K = 10  # yesterday's lists are judged on their first 10: the list a user sees first
TREND_NIGHTS = 30  # earlier nights in the trend table and plot: a month of nights
EXAMPLE_USERS = 3
RECENT_LISTENS = 10  # per example user, newest first
EXAMPLE_WINDOW = timedelta(days=30)  # scoring's "active" window (plays_30d): every scored user listened in it
DASH = "–"  # a figure that does not exist (no score step, no earlier night), not a zero


# -- formatting: one function per kind of number -------------------------------------------------

def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_count(n: Any) -> str:
    """A count with thousands separators: 118685 -> "118,685"."""
    return DASH if _missing(n) else f"{int(n):,}"


def fmt_share(x: Any) -> str:
    """A share or rate in [0, 1] as a percentage with one decimal: 0.0625 -> "6.3%"."""
    return DASH if _missing(x) else f"{float(x):.1%}"


def fmt_metric(x: Any) -> str:
    """A ranking metric (HR@K, NDCG@K, MRR) with the 4 decimals papers report: "0.0723"."""
    return DASH if _missing(x) else f"{float(x):.4f}"


def fmt_seconds(s: Any) -> str:
    """A duration: "47.9 s" under a minute, then "3 min 12 s", "2 h 5 min", "17 d 4 h"."""
    if _missing(s):
        return DASH
    sign, s = ("-" if s < 0 else ""), abs(float(s))
    if round(s, 1) < 60:
        return f"{sign}{s:.1f} s"
    total = round(s)
    if total < 3600:
        return f"{sign}{total // 60} min {total % 60} s"
    if total < 86400:
        return f"{sign}{total // 3600} h {total % 3600 // 60} min"
    return f"{sign}{total // 86400} d {total % 86400 // 3600} h"


def fmt_time(ts: Any) -> str:
    """An instant, to the second, in UTC: "2009-05-05 00:00:00 UTC"."""
    if _missing(ts) or ts == "":
        return DASH
    return _utc(ts).strftime("%Y-%m-%d %H:%M:%S UTC")


def _utc(ts: Any) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _json_clean(v: Any) -> Any:
    """Plain JSON: NaN -> null (NaN is not JSON), numpy scalars -> Python, times -> ISO strings."""
    if isinstance(v, dict):
        return {str(k): _json_clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_clean(x) for x in v]
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return None if math.isnan(v) else float(v)
    if isinstance(v, datetime | pd.Timestamp | date):
        return v.isoformat()
    if v is None or isinstance(v, str):
        return v
    return str(v)


# -- reading the lake ----------------------------------------------------------------------------

LISTEN_READ_COLUMNS = ("user_id", "ts", "track_id", "artist_name", "track_name")


def _day_end(d: date) -> datetime:
    # As feature_repo.store.day_end (the daily tables stamp day D at D+1 00:00 UTC); not imported
    # so that the report does not import Feast where it needs no Feast.
    return datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=1)


def read_listens(ws: Workspace, start: datetime | None, end: datetime | None,
                 users: Collection[str] | None = None,
                 columns: Sequence[str] = LISTEN_READ_COLUMNS) -> pd.DataFrame:
    """Bronze listens with ``start <= ts < end`` (either end open when None), of ``users`` if given.

    Half-open like the daily feature tables: a snapshot at D+1 00:00 holds every listen before it,
    so a listen at exactly D+1 00:00 is the next window's. Only the periods the window touches are
    opened. Returns one row per listen, ``columns`` (ts is timestamp[us, UTC]).
    """
    empty = pd.DataFrame({c: pd.Series([], dtype="datetime64[us, UTC]" if c == "ts" else object) for c in columns})
    manifest = lk.read_manifest(ws.listens)
    if manifest is None or not manifest.days:
        return empty
    first = start.date() if start else date.fromisoformat(manifest.first_day)
    last = (end - timedelta(microseconds=1)).date() if end else date.fromisoformat(manifest.last_day)
    if last < first:
        return empty
    files = lk.files(ws.listens, lk.periods_between(first, last, manifest.granularity))
    if not files:
        return empty
    ts_type = pa.timestamp("us", tz="UTC")
    cond = pads.scalar(True)
    if start is not None:
        cond = cond & (pads.field("ts") >= pa.scalar(start, ts_type))
    if end is not None:
        cond = cond & (pads.field("ts") < pa.scalar(end, ts_type))
    if users is not None:
        cond = cond & pads.field("user_id").isin(list(users))
    table = pads.dataset([str(f) for f in files], format="parquet").to_table(columns=list(columns), filter=cond)
    return table.to_pandas()


def _newest_listen(ws: Workspace) -> pd.Timestamp | None:
    """The newest listen's ts: only the last period's files are read (the manifest names it)."""
    manifest = lk.read_manifest(ws.listens)
    if manifest is None or not manifest.days:
        return None
    period = lk.period_of(date.fromisoformat(manifest.last_day), manifest.granularity)
    files = lk.files(ws.listens, [period])
    if not files:
        return None
    newest = pc.max(pads.dataset([str(f) for f in files], format="parquet").to_table(columns=["ts"])["ts"]).as_py()
    return None if newest is None else _utc(newest)


def _catalog(ws: Workspace) -> pd.DataFrame:
    if not any(ws.tracks.rglob("*.parquet")):
        return pd.DataFrame({"track_id": [], "artist_id": []})
    return pads.dataset(ws.tracks, format="parquet").to_table(columns=["track_id", "artist_id"]).to_pandas()


def track_names(ws: Workspace, track_ids: Collection[str], listens: pd.DataFrame | None = None) -> dict[str, str]:
    """track_id -> "artist – title": the bronze tracks table first, else the names a listen carried
    (a track heard but never in a catalog), else the id itself."""
    ids = sorted(set(track_ids))
    names: dict[str, str] = {}
    if listens is not None and not listens.empty:
        heard = listens[listens["track_id"].isin(ids)].drop_duplicates("track_id", keep="last")
        names.update({t: f"{a} – {n}" for t, a, n in
                      zip(heard["track_id"], heard["artist_name"], heard["track_name"], strict=True)})
    if ids and ws.tracks.is_dir() and any(ws.tracks.rglob("*.parquet")):
        rows = pads.dataset(ws.tracks, format="parquet").to_table(
            columns=["track_id", "artist_name", "track_name"], filter=pads.field("track_id").isin(ids)).to_pylist()
        names.update({r["track_id"]: f"{r['artist_name']} – {r['track_name']}" for r in rows})
    return {t: names.get(t, t) for t in ids}


# -- list quality (tonight) ----------------------------------------------------------------------

def list_quality(recs: pd.DataFrame, catalog: pd.DataFrame) -> dict[str, Any]:
    """Coverage, diversity and concentration of one night's lists.

    recs: one row per (user, rank) with track_id, score, fallback. Returns
      catalog_coverage   distinct recommended tracks / catalog tracks
      artist_diversity   mean over lists of distinct artists / list length (1 = no artist twice)
      exposure_gini      Gini of how often each recommended track is shown (0 = even, 1 = one track)
    """
    if recs.empty:
        return {"users": 0, "rows": 0, "catalog_coverage": 0.0, "artist_diversity": float("nan"),
                "exposure_gini": float("nan"), "fallback_users": 0, "fallback_share": 0.0}
    artist = dict(zip(catalog["track_id"], catalog["artist_id"], strict=True))
    per_list = recs.assign(artist=[artist.get(t, t) for t in recs["track_id"]]).groupby("user_id").agg(
        n=("track_id", "size"), artists=("artist", "nunique"), fallback=("fallback", "any"))
    counts = np.sort(recs["track_id"].value_counts().to_numpy())  # ascending
    n = len(counts)
    gini = float((2 * np.arange(1, n + 1) - n - 1) @ counts / (n * counts.sum())) if n else float("nan")
    users = len(per_list)
    return {
        "users": users, "rows": len(recs),
        "distinct_tracks": int(recs["track_id"].nunique()), "catalog_tracks": len(catalog),
        "catalog_coverage": recs["track_id"].nunique() / max(len(catalog), 1),
        "artist_diversity": float((per_list["artists"] / per_list["n"]).mean()),
        "exposure_gini": gini,
        "fallback_users": int(per_list["fallback"].sum()), "fallback_share": float(per_list["fallback"].mean()),
        "score_quantiles": {q: float(recs.loc[~recs["fallback"], "score"].quantile(q))
                            for q in (0.01, 0.25, 0.5, 0.75, 0.99)} if (~recs["fallback"]).any() else {},
    }


# -- yesterday's lists against today's listens ---------------------------------------------------

def _group(rows: list[tuple[bool, float]]) -> dict[str, Any]:
    n = len(rows)
    hits = sum(h for h, _ in rows)
    return {"users": n, "hits": hits, "hit_rate": hits / n if n else None,
            "recall": sum(r for _, r in rows) / n if n else None}


def yesterday_vs_today(recs: pd.DataFrame, listens: pd.DataFrame, k: int = EVAL_K,
                       popular: Sequence[str] | None = None) -> dict[str, Any]:
    """How yesterday's top ``k`` did against what each user played since: the production check.

    recs: yesterday's published rows, one per (user_id, rank) with track_id and fallback (rank 1 = best).
    listens: today's listens, one row per listen with user_id, track_id, already cut to the window.
    popular: yesterday's popularity ranking (track ids, best first), scored as if it had been every
      model user's list: the fair baseline for the model (same users, same k, no history masking).

    A user counts who had a list yesterday and >= 1 listen today. With T = the user's distinct tracks
    today and L = yesterday's top k: hit = |T ∩ L| > 0, recall@k = |T ∩ L| / |T|; the rates are
    means over users. Returns
      {"k", "users_scored", "users_listening", "users_evaluated",
       "listening_without_list": users who played today but had no list (new or inactive yesterday),
       "model" | "fallback" | "all" | "popular_for_model_users": {"users", "hits", "hit_rate", "recall"}}
    (hit_rate and recall None for a group of no users; popular_for_model_users None without ``popular``).
    """
    top = recs[recs["rank"] <= k]
    shown: dict[str, set[str]] = top.groupby("user_id")["track_id"].agg(set).to_dict()
    fallback: dict[str, bool] = recs.groupby("user_id")["fallback"].any().to_dict()
    heard: dict[str, set[str]] = (listens.groupby("user_id")["track_id"].agg(set).to_dict()
                                  if not listens.empty else {})
    evaluated = sorted(set(heard) & set(fallback))
    pop = set(list(popular or [])[:k])
    groups: dict[str, list[tuple[bool, float]]] = {"model": [], "fallback": [], "popular": []}
    for user in evaluated:
        today = heard[user]
        inter = len(today & shown.get(user, set()))
        groups["fallback" if fallback[user] else "model"].append((inter > 0, inter / len(today)))
        if not fallback[user]:
            p = len(today & pop)
            groups["popular"].append((p > 0, p / len(today)))
    return {
        "k": k, "users_scored": len(fallback), "users_listening": len(heard), "users_evaluated": len(evaluated),
        "listening_without_list": len(set(heard) - set(fallback)),
        "model": _group(groups["model"]), "fallback": _group(groups["fallback"]),
        "all": _group(groups["model"] + groups["fallback"]),
        "popular_for_model_users": _group(groups["popular"]) if popular is not None else None,
    }


def _snapshot_of(recs: pd.DataFrame) -> pd.Timestamp:
    # Every row of one scoring run carries the same snapshot; max() so a mixed folder errs late.
    return _utc(pd.to_datetime(recs["feature_snapshot"], utc=True).max())


def _yesterday(cfg: EncoreConfig, ws: Workspace, day: date, score: dict[str, Any], k: int = EVAL_K) -> dict[str, Any]:
    """The most recent earlier date's published lists against the listens since their snapshot."""
    from scoring.batch import popular_tracks, read_recommendations

    for d in reversed([p for p in partitions(ws.recommendations) if p < day.isoformat()]):
        prev_day = date.fromisoformat(d)
        recs = read_recommendations(cfg, prev_day)
        if not recs.empty:
            break
    else:
        return {"k": k, "previous_date": None,
                "note": f"no lists were published before {day.isoformat()}: nothing to check yet"}
    start = _snapshot_of(recs).to_pydatetime()
    end = _utc(score["feature_snapshot"]).to_pydatetime() if score.get("feature_snapshot") else _day_end(day)
    listens = read_listens(ws, start, end, columns=("user_id", "track_id"))
    popular = popular_tracks(ws, prev_day, k)["track_id"].astype(str).tolist()
    out = yesterday_vs_today(recs, listens, k, popular)
    out.update(previous_date=prev_day.isoformat(), window_start=start.isoformat(), window_end=end.isoformat(),
               listens_in_window=len(listens))
    return out


# -- example users -------------------------------------------------------------------------------

def example_users(recs: pd.DataFrame, recent: pd.DataFrame, n: int = EXAMPLE_USERS) -> list[str]:
    """Which users to show, deterministically: the model-ranked users with the most recent listens
    (ties by id), and, when tonight has fallback lists, the fallback user with the most in the last
    place, so the page shows both kinds. recs: tonight's rows (user_id, fallback); recent: listens
    (user_id) of the window before the snapshot. Users scored but without a recent listen rank last."""
    if recs.empty or n <= 0:
        return []
    kind = recs.groupby("user_id")["fallback"].any()
    counts = recent["user_id"].value_counts() if not recent.empty else pd.Series(dtype="int64")
    ranked = sorted(kind.index, key=lambda u: (-int(counts.get(u, 0)), u))
    model = [u for u in ranked if not kind[u]]
    fallback = [u for u in ranked if kind[u]]
    picked = model[: n - 1] + fallback[:1] if fallback and n > 1 else model[:n]
    rest = [u for u in ranked if u not in picked]
    return picked + rest[: n - len(picked)]  # too few model users: fill with whoever is left


def _examples(ws: Workspace, recs: pd.DataFrame, snapshot: pd.Timestamp, k: int = EVAL_K) -> list[dict[str, Any]]:
    end = snapshot.to_pydatetime()
    recent = read_listens(ws, end - EXAMPLE_WINDOW, end, users=set(recs["user_id"]))
    users = example_users(recs, recent)
    shown = recs[recs["user_id"].isin(users) & (recs["rank"] <= k)]
    heard = recent[recent["user_id"].isin(users)].sort_values(["ts", "track_id"], ascending=[False, True])
    names = track_names(ws, set(shown["track_id"]) | set(heard["track_id"]), recent)
    out = []
    for user in users:
        mine = shown[shown["user_id"] == user].sort_values("rank")
        last = heard[heard["user_id"] == user].head(RECENT_LISTENS)
        out.append({
            "user_id": user, "list": "fallback" if bool(mine["fallback"].any()) else "model",
            "recent_listens_in_window": int((recent["user_id"] == user).sum()),
            "recent": [{"ts": _utc(t).isoformat(), "track": names[tid]}
                       for t, tid in zip(last["ts"], last["track_id"], strict=True)],
            "top": [{"rank": int(r), "track": names[tid], "score": float(s)}
                    for r, tid, s in zip(mine["rank"], mine["track_id"], mine["score"], strict=True)],
        })
    return out


# -- feature freshness ---------------------------------------------------------------------------

def _feast_views(cfg: EncoreConfig) -> list[dict[str, Any]]:
    """Per Feast feature view, how far the online store is loaded (most_recent_end_time)."""
    from feature_repo.store import open_store

    store = open_store(cfg)
    return [{"view": v.name, "loaded_until": v.most_recent_end_time.astimezone(UTC).isoformat()
             if v.most_recent_end_time else None} for v in sorted(store.list_feature_views(), key=lambda v: v.name)]


def _freshness(cfg: EncoreConfig, ws: Workspace, steps: dict[str, Any], score: dict[str, Any]) -> dict[str, Any]:
    """How old the features were at scoring time, and what the lake holds that they do not.

      feature_age_s                 score step finished - feature snapshot
      snapshot_behind_newest_s      newest listen in the lake - snapshot (> 0: listens the features miss)
      listens_after_snapshot        how many such listens
      views                         per Feast view, loaded_until (best effort: feast_error instead)
    """
    out: dict[str, Any] = {"mode": score.get("mode"), "feature_snapshot": score.get("feature_snapshot") or None,
                           "scored_at": steps.get("score", {}).get("finished")}
    snap = _utc(out["feature_snapshot"]) if out["feature_snapshot"] else None
    if snap is not None and out["scored_at"]:
        out["feature_age_s"] = (_utc(out["scored_at"]) - snap).total_seconds()
    newest = _newest_listen(ws)
    out["newest_listen"] = newest.isoformat() if newest is not None else None
    if snap is not None and newest is not None:
        out["snapshot_behind_newest_s"] = (newest - snap).total_seconds()
        out["listens_after_snapshot"] = len(read_listens(ws, snap.to_pydatetime(), None, columns=("ts",)))
    # Feast only where a registry exists: importing Feast costs seconds, an empty workspace has none.
    if cfg.feast.registry or Path(cfg.feast_registry()).is_file():
        try:
            out["views"] = _feast_views(cfg)
        except Exception as exc:  # the report notes it rather than failing the night
            out["feast_error"] = f"{type(exc).__name__}: {exc}"
    return out


# -- trends --------------------------------------------------------------------------------------

def trend_point(d: dict[str, Any]) -> dict[str, Any]:
    """The figures of one night that the trend table and plot show, from that night's report data.

    Also reads reports written before ``trend`` existed (their steps, ingest and lists). Shape:
      {"date", "listens_added", "step_seconds": {step: s}, "total_seconds", "users_scored",
       "user_coverage" (scored / known users), "catalog_coverage", "fallback_share",
       "hit_rate_model", "recall_model", "hit_rate_fallback", "recall_fallback", "hit_rate_popular",
       "recall_popular", "users_evaluated", "feature_age_s"}
    """
    steps = d.get("steps", {})
    seconds = {n: float(r["seconds"]) for n, r in steps.items() if r.get("seconds") is not None}
    ingest = steps.get("ingest", {}).get("summary", {})
    added = (ingest.get("listens") or {}).get("added", 0) if "ingest" in steps else None
    sc = d.get("scoring") or {}
    scored = (sc.get("users_model") or 0) + (sc.get("users_fallback") or 0) if sc.get("users_known") else None
    lists = d.get("lists") or {}
    y = d.get("yesterday_vs_today") or {}
    model, fb = y.get("model") or {}, y.get("fallback") or {}
    pop = y.get("popular_for_model_users") or {}
    return {
        "date": d.get("date"), "listens_added": added, "step_seconds": seconds,
        "total_seconds": sum(seconds.values()) if seconds else None,
        "users_scored": scored, "user_coverage": scored / sc["users_known"] if scored is not None else None,
        "catalog_coverage": lists.get("catalog_coverage") if lists.get("users") else None,
        "fallback_share": lists.get("fallback_share") if lists.get("users") else None,
        "hit_rate_model": model.get("hit_rate"), "recall_model": model.get("recall"),
        "hit_rate_fallback": fb.get("hit_rate"), "recall_fallback": fb.get("recall"),
        "hit_rate_popular": pop.get("hit_rate"), "recall_popular": pop.get("recall"),
        "users_evaluated": y.get("users_evaluated"),
        "feature_age_s": (d.get("freshness") or {}).get("feature_age_s"),
    }


def earlier_nights(ws: Workspace, day: date, n: int = TREND_NIGHTS) -> list[dict[str, Any]]:
    """The trend points of the last ``n`` nights before ``day`` (oldest first), from their JSON.

    A night's report runs inside its own report step, so its JSON cannot hold that step's seconds:
    they come from the night's state file (nightly/state-DATE.json) when it is there.
    """
    reports = ws.home / "reports"
    dated = []
    for f in reports.glob("nightly-*.json"):
        m = re.fullmatch(r"nightly-(\d{4}-\d{2}-\d{2})\.json", f.name)
        if m and m.group(1) < day.isoformat():
            dated.append((m.group(1), f))
    out = []
    for d, f in sorted(dated)[-n:]:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            log.warning("trend: skipped %s (%s)", f, exc)
            continue
        point = data.get("trend") or trend_point(data)
        point["date"] = d
        state = ws.nightly / f"state-{d}.json"
        try:
            rep = json.loads(state.read_text())["steps"]["report"] if state.is_file() else {}
        except (OSError, ValueError, KeyError):
            rep = {}
        if rep.get("seconds") is not None and "report" not in point["step_seconds"]:
            point["step_seconds"]["report"] = float(rep["seconds"])
            point["total_seconds"] = sum(point["step_seconds"].values())
        out.append(point)
    return out


# -- figures -------------------------------------------------------------------------------------

def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a scheduler's machine
    import matplotlib.pyplot as plt

    return plt


def _figures(steps: dict[str, Any], recs: pd.DataFrame) -> dict[str, str]:
    plt = _plt()
    figs: dict[str, str] = {}
    names = [n for n in steps if "seconds" in steps[n]]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.barh(names[::-1], [steps[n]["seconds"] for n in names][::-1],
            color=["#c44" if steps[n]["status"] == "failed" else "#4a7" for n in names][::-1])
    ax.set(xlabel="seconds", title="step wall time (this date's runs)")
    fig.tight_layout()
    figs["step_timings"] = _png(fig)
    model = recs[~recs["fallback"]] if not recs.empty else recs
    if not model.empty:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
        a.hist(model["score"], bins=50, color="#47a")
        a.set(xlabel="score (logit)", ylabel="rows", title="score distribution, model-ranked lists")
        top = model[model["rank"] == 1]["score"]
        a.axvline(float(top.median()), color="k", ls="--", lw=1, label="median rank-1 score")
        a.legend()
        counts = np.sort(recs["track_id"].value_counts().to_numpy())[::-1]
        b.loglog(np.arange(1, len(counts) + 1), counts, marker=".", lw=1)
        b.set(xlabel="track, by times recommended", ylabel="lists it is in", title="item exposure")
        fig.tight_layout()
        figs["scores_and_exposure"] = _png(fig)
    return figs


def _step_order(points: list[dict[str, Any]]) -> list[str]:
    # Steps in the order the nights ran them (a step a release added appears where it runs).
    order: list[str] = []
    for p in points:
        order += [s for s in p["step_seconds"] if s not in order]
    return order


def _trend_figure(points: list[dict[str, Any]]) -> str:
    """Four panels over the nights (oldest left): rows in, step seconds (stacked), list shares, and
    yesterday-vs-today hit rate and recall."""
    plt = _plt()

    def series(key: str, pct: bool = False) -> np.ndarray:
        return np.array([np.nan if _missing(p.get(key)) else float(p[key]) * (100 if pct else 1) for p in points])

    x = np.arange(len(points))
    fig, axes = plt.subplots(2, 2, figsize=(11, 6), sharex=True)
    (a, b), (c, d) = axes
    a.bar(x, np.nan_to_num(series("listens_added")), color="#47a")
    a.set(ylabel="listens", title="rows in (listens added by ingest)")
    bottom = np.zeros(len(points))
    for i, step in enumerate(_step_order(points)):
        s = np.array([p["step_seconds"].get(step, 0.0) for p in points])
        b.bar(x, s, bottom=bottom, label=step, color=plt.cm.tab10(i % 10))
        bottom += s
    b.set(ylabel="seconds", title="step wall time")
    b.legend(fontsize=7, ncol=2, loc="upper left")
    for key, label in (("catalog_coverage", "catalog coverage"), ("fallback_share", "fallback share"),
                       ("user_coverage", "users scored / known")):
        c.plot(x, series(key, pct=True), marker="o", label=label)
    c.set(ylabel="%", title="list quality and coverage")
    c.legend(fontsize=7)
    for key, label, style in (("hit_rate_model", f"hit rate@{EVAL_K}, model", "-"),
                              ("hit_rate_popular", f"hit rate@{EVAL_K}, popular (same users)", "--"),
                              ("recall_model", f"recall@{EVAL_K}, model", ":"),
                              ("hit_rate_fallback", f"hit rate@{EVAL_K}, fallback lists", "-.")):
        d.plot(x, series(key, pct=True), marker="o", ls=style, label=label)
    d.set(ylabel="%", title="yesterday's lists vs today's listens")
    d.legend(fontsize=7)
    step = max(1, len(points) // 10)
    for ax in (c, d):
        ax.set_xticks(x[::step], [p["date"] for p in points][::step], rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


# -- champion and quarantine ---------------------------------------------------------------------

def _champion(cfg: EncoreConfig, score: dict[str, Any]) -> dict[str, Any]:
    """The scoring champion's identity and metrics, from the registry (best effort: a report must
    still be written when the registry is down)."""
    out: dict[str, Any] = {k: score.get(k) for k in ("model_name", "model_version", "model_run_id")}
    if not score.get("model_run_id"):
        return out
    try:
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(cfg.mlflow_tracking_uri())
        mlflow.set_registry_uri(cfg.mlflow_registry_uri())
        client = MlflowClient()
        run = client.get_run(score["model_run_id"])
        out["test_metrics"] = {k[len("test_"):].replace("_at_", "@"): v for k, v in run.data.metrics.items()
                               if k.startswith("test_")}
        out["model"] = run.data.tags.get("encore.model")
        mv = client.get_model_version(score["model_name"], score["model_version"])
        tags = mv.tags
        if "encore.promotion.challenger_metrics" in tags:
            out["promotion"] = {"at": tags.get("encore.promotion.at"), "reason": tags.get("encore.promotion.reason"),
                                "held_out": json.loads(tags["encore.promotion.challenger_metrics"])}
    except Exception as exc:  # the report notes it rather than failing the night
        out["registry_error"] = f"{type(exc).__name__}: {exc}"
    return out


def _quarantine(ws: Workspace) -> dict[str, dict[str, int]]:
    from jobs.lake import summarize

    try:
        return summarize(ws).get("quarantine", {})
    except Exception as exc:
        log.warning("quarantine summary failed: %s", exc)
        return {}


def _best_effort(name: str, fn: Callable[[], Any], default: Any) -> Any:
    """``fn()``, or ``default`` with the error recorded: one broken section must not lose the report."""
    try:
        return fn()
    except Exception as exc:
        log.warning("nightly report: section %s failed: %s", name, exc, exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}"} if default is None else default


# -- the report ----------------------------------------------------------------------------------

def write_nightly_report(cfg: EncoreConfig, day: date, state: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``reports/nightly-DATE.html`` and ``.json`` from the date's step records."""
    from scoring.batch import read_recommendations

    ws = Workspace.at(cfg.home)
    steps = state.get("steps", {})
    score = steps.get("score", {}).get("summary", {})
    recs = read_recommendations(cfg, day) if score else pd.DataFrame()
    quality = list_quality(recs, _catalog(ws))
    ingest = steps.get("ingest", {}).get("summary", {})
    data: dict[str, Any] = {
        "date": day.isoformat(), "written": datetime.now(UTC).isoformat(), "profile": cfg.profile,
        "home": str(ws.home),
        "steps": {n: {k: v for k, v in r.items() if k != "traceback"} for n, r in steps.items()},
        "ingest": {t: ingest.get(t) for t in ("listens", "tracks", "users") if ingest.get(t)},
        "quarantine_in_lake": _quarantine(ws),
        "champion": _champion(cfg, score),
        "scoring": {k: score.get(k) for k in ("run_id", "mode", "feature_snapshot", "users_known", "users_active",
                                              "users_model", "users_fallback", "rows", "top_k", "output")},
        "lists": quality,
    }
    data["yesterday_vs_today"] = _best_effort("yesterday", lambda: _yesterday(cfg, ws, day, score), None)
    snapshot = _utc(score["feature_snapshot"]) if score.get("feature_snapshot") else None
    data["examples"] = (_best_effort("examples", lambda: _examples(ws, recs, snapshot), None)
                        if snapshot is not None and not recs.empty else [])
    data["freshness"] = _best_effort("freshness", lambda: _freshness(cfg, ws, steps, score), None)
    data = _json_clean(data)
    data["trend"] = trend_point(data)
    earlier = _best_effort("trends", lambda: earlier_nights(ws, day), [])
    figs = _figures(steps, recs)
    figs["trends"] = _trend_figure([*earlier, data["trend"]])
    out = ws.home / "reports"
    js = out / f"nightly-{day.isoformat()}.json"
    write_json_atomic(js, data)
    faults.point("report.json_written")  # kill test: one of the two files rewritten
    page = out / f"nightly-{day.isoformat()}.html"
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(_html(data, earlier, figs), encoding="utf-8")
    tmp.replace(page)
    log.info("nightly report: %s", page)
    return page, js


# -- HTML ----------------------------------------------------------------------------------------

_NUMERIC = re.compile(r"^[-+]?\d")


def _table(rows: list[list[str]], head: list[str], cls: str = "") -> str:
    """Cells are formatted strings (the fmt_* functions); ones that start with a number are right-aligned."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{html.escape(c)}</td>' if _NUMERIC.match(c) else f"<td>{html.escape(c)}</td>"
                         for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _e(v: Any) -> str:
    return html.escape(DASH if _missing(v) else str(v))


def _section(anchor: str, title: str, what: str, body: str) -> str:
    return (f'<section id="{anchor}"><h2>{html.escape(title)}</h2>'
            f'<p class="what">{what}</p>{body}</section>')


def _img(name: str, b64: str | None) -> str:
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{b64}">' if b64 else ""


def _glance(d: dict[str, Any]) -> str:
    steps = d["steps"]
    failed = [n for n, r in steps.items() if r.get("status") == "failed"]
    done = sum(r.get("status") in ("done", "skipped") for r in steps.values())
    q, y, f = d["lists"], d["yesterday_vs_today"], d["freshness"]
    items = [f"{fmt_count(done)} of {fmt_count(len(steps))} steps before the report finished"
             + (f"; <b>failed: {html.escape(', '.join(failed))}</b>" if failed else "")]
    if q.get("users"):
        items.append(f"{fmt_count(q['users'])} users scored, {fmt_share(q.get('fallback_share'))} on the "
                     f"popular-tracks fallback; the lists cover {fmt_share(q.get('catalog_coverage'))} of the catalog")
    else:
        items.append("no lists tonight (no score step for this date yet)")
    model = y.get("model") or {}
    if model.get("users"):
        pop = y.get("popular_for_model_users") or {}
        items.append(f"yesterday's model lists: hit rate@{y['k']} {fmt_share(model['hit_rate'])} over "
                     f"{fmt_count(model['users'])} users who listened since (popular tracks: "
                     f"{fmt_share(pop.get('hit_rate'))})")
    if f.get("feature_age_s") is not None:
        items.append(f"features were {fmt_seconds(f['feature_age_s'])} old when the users were scored")
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _steps_section(d: dict[str, Any]) -> str:
    rows = [[n, str(r.get("status")), fmt_time(r.get("started")), fmt_seconds(r.get("seconds")),
             str(r.get("error") or step_rows(n, r.get("summary", {})))] for n, r in d["steps"].items()]
    return _table(rows, ["step", "status", "started", "took", "rows moved / note"])


def _trends_section(earlier: list[dict[str, Any]], tonight: dict[str, Any], img: str) -> str:
    points = [*earlier, tonight]
    steps = _step_order(points)
    head = ["night", "listens in", *steps, "total", "users scored", "users scored / known", "catalog coverage",
            "fallback share", f"hit rate@{EVAL_K} model", f"recall@{EVAL_K} model", f"hit rate@{EVAL_K} popular",
            f"hit rate@{EVAL_K} fallback"]
    rows = [[p["date"] + (" (tonight)" if p is tonight else ""), fmt_count(p["listens_added"]),
             *(fmt_seconds(p["step_seconds"].get(s)) for s in steps), fmt_seconds(p["total_seconds"]),
             fmt_count(p["users_scored"]), fmt_share(p["user_coverage"]), fmt_share(p["catalog_coverage"]),
             fmt_share(p["fallback_share"]), fmt_share(p["hit_rate_model"]), fmt_share(p["recall_model"]),
             fmt_share(p["hit_rate_popular"]), fmt_share(p["hit_rate_fallback"])] for p in reversed(points)]
    note = "" if earlier else "<p>No earlier night's report in this workspace: the trend starts tonight.</p>"
    return note + _table(rows, head, "wide") + img


def _champion_section(d: dict[str, Any]) -> str:
    champ = d["champion"]
    metrics = champ.get("test_metrics", {})
    held = champ.get("promotion", {}).get("held_out", {})
    mrows = [[m, fmt_metric(metrics.get(m)), fmt_metric(held.get(m))]
             for m in ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr")]
    err = f"<p>registry: {_e(champ['registry_error'])}</p>" if champ.get("registry_error") else ""
    if not champ.get("model_name"):
        return "<p>No champion scored this date.</p>" + err
    return (f"<p>{_e(champ.get('model_name'))} version {_e(champ.get('model_version'))} "
            f"({_e(champ.get('model') or '')}, MLflow run {_e(champ.get('model_run_id'))})</p>{err}"
            + _table(mrows, ["metric", "test (training run)", "held-out (at promotion)"]))


def _lists_section(d: dict[str, Any]) -> str:
    q, sc = d["lists"], d["scoring"]
    if not q.get("users"):
        return "<p>No lists for this date: the score step has not run (or failed).</p>"
    quant = q.get("score_quantiles") or {}
    rows = [["users with a list", fmt_count(q.get("users"))], ["rows", fmt_count(q.get("rows"))],
            ["distinct tracks", fmt_count(q.get("distinct_tracks"))],
            ["catalog coverage (distinct tracks / catalog tracks)", fmt_share(q.get("catalog_coverage"))],
            ["artist diversity (distinct artists / list length)", fmt_share(q.get("artist_diversity"))],
            ["exposure Gini (0 even, 1 one track everywhere)", DASH if _missing(q.get("exposure_gini"))
             else f"{q['exposure_gini']:.2f}"],
            ["users on the fallback", f"{fmt_count(q.get('fallback_users'))} ({fmt_share(q.get('fallback_share'))})"]]
    if quant:
        rows.append(["model score (logit): median [1%, 99%]",
                     f"{quant.get('0.5', 0):.2f} [{quant.get('0.01', 0):.2f}, {quant.get('0.99', 0):.2f}]"])
    return (f"<p>{fmt_count(sc.get('users_active'))} active of {fmt_count(sc.get('users_known'))} known users; "
            f"{fmt_count(sc.get('users_model'))} ranked by the model, {fmt_count(sc.get('users_fallback'))} on the "
            f"popular-tracks fallback. Top {fmt_count(sc.get('top_k'))} per user, features {_e(sc.get('mode'))} "
            f"as of {_e(fmt_time(sc.get('feature_snapshot')))}. Output: {_e(sc.get('output'))}</p>"
            + _table(rows, ["measure", "value"]))


def _yesterday_section(y: dict[str, Any]) -> str:
    if y.get("error"):
        return f"<p>Could not compute: {_e(y['error'])}</p>"
    if not y.get("previous_date"):
        return f"<p>{_e(y.get('note'))}.</p>"
    k = y["k"]
    head = ["lists", "users evaluated", "users with a hit", f"hit rate@{k}", f"mean recall@{k}"]

    def row(label: str, g: dict[str, Any] | None) -> list[str]:
        g = g or {}
        return [label, fmt_count(g.get("users")), fmt_count(g.get("hits")), fmt_share(g.get("hit_rate")),
                fmt_share(g.get("recall"))]

    rows = [row("model", y["model"]), row("fallback (popular tracks)", y["fallback"]), row("all", y["all"]),
            row("popular ranking of that day, for the model users", y.get("popular_for_model_users"))]
    return (f"<p>Lists of {_e(y['previous_date'])} (K = {k}) against {fmt_count(y['listens_in_window'])} listens "
            f"from {_e(fmt_time(y['window_start']))} to {_e(fmt_time(y['window_end']))}: "
            f"{fmt_count(y['users_scored'])} users had a list, {fmt_count(y['users_listening'])} listened, "
            f"{fmt_count(y['users_evaluated'])} did both ({fmt_count(y['listening_without_list'])} listened "
            "without a list).</p>" + _table(rows, head))


def _examples_section(examples: list[dict[str, Any]] | dict[str, Any]) -> str:
    if isinstance(examples, dict):
        return f"<p>Could not compute: {_e(examples.get('error'))}</p>"
    if not examples:
        return "<p>No lists tonight.</p>"
    parts = []
    for ex in examples:
        heard = "".join(f"<li><span class='t'>{html.escape(fmt_time(r['ts']))}</span> {html.escape(r['track'])}</li>"
                        for r in ex["recent"]) or f"<li>{DASH}</li>"
        top = "".join(f"<li>{html.escape(r['track'])}</li>" for r in ex["top"])
        kind = "model-ranked list" if ex["list"] == "model" else "fallback list (popular tracks)"
        parts.append(f"<div class='user'><h3>{html.escape(ex['user_id'])} <small>{kind}, "
                     f"{fmt_count(ex['recent_listens_in_window'])} listens in the last "
                     f"{EXAMPLE_WINDOW.days} days</small></h3><div class='cols'>"
                     f"<div><h4>recent listens, newest first</h4><ol class='plain'>{heard}</ol></div>"
                     f"<div><h4>tonight's top {len(ex['top'])}</h4><ol>{top}</ol></div></div></div>")
    return "".join(parts)


def _freshness_section(f: dict[str, Any]) -> str:
    if f.get("error"):
        return f"<p>Could not compute: {_e(f['error'])}</p>"
    behind = f.get("snapshot_behind_newest_s")
    rows = [["feature snapshot (features as of)", fmt_time(f.get("feature_snapshot"))],
            ["scored at (score step finished)", fmt_time(f.get("scored_at"))],
            ["feature age at scoring", fmt_seconds(f.get("feature_age_s"))],
            ["newest listen in the lake", fmt_time(f.get("newest_listen"))],
            ["newest listen after the snapshot by", DASH if behind is None else
             (fmt_seconds(behind) if behind > 0 else "none: the snapshot covers every listen")],
            ["listens after the snapshot", fmt_count(f.get("listens_after_snapshot"))]]
    body = _table(rows, ["measure", "value"])
    if f.get("mode") == "point-in-time":
        body = ("<p>A past date, scored from point-in-time features: the age is how long after that date "
                "the scoring ran.</p>" + body)
    if f.get("views"):
        body += _table([[v["view"], fmt_time(v["loaded_until"])] for v in f["views"]],
                       ["Feast feature view", "online store loaded until"])
    elif f.get("feast_error"):
        body += f"<p>Feast views unavailable: {_e(f['feast_error'])}</p>"
    return body


_CSS = """body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222}h1{margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
p.what{color:#555;margin-top:-.3em}.meta{color:#666;font-size:13px}nav a{margin-right:.9em}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafafa}
table.wide{font-size:13px}img{max-width:100%;display:block;margin:.5em 0}.user h3 small{color:#666;font-weight:normal}
.cols{display:flex;gap:2em;flex-wrap:wrap}.cols>div{flex:1;min-width:320px}ol.plain{list-style:none;padding-left:0}
.t{color:#777;font-size:12px;font-variant-numeric:tabular-nums}"""


def _html(d: dict[str, Any], earlier: list[dict[str, Any]], figs: dict[str, str]) -> str:
    k = EVAL_K
    sections = [
        ("glance", "At a glance", "The night in a few lines; each figure is explained in its section below.",
         _glance(d)),
        ("steps", "Steps", "Each step of this date's nightly: whether it ran, when, how long it took and what it "
         "moved (the report step itself is still running as this is written).", _steps_section(d)),
        ("trends", "Night over night", f"The same figures for the last {TREND_NIGHTS} nights at most, newest "
         "first, read from the earlier nights' reports: rows in, step times, list quality, coverage and "
         "yesterday-vs-today hit rates.", _trends_section(earlier, d["trend"], _img("trends", figs.get("trends")))),
        ("champion", "Champion", "The registered model that ranked tonight's lists, with its metrics on the "
         "test split of its training run and on the held-out users when it was promoted.", _champion_section(d)),
        ("lists", "Tonight's lists", "How broad and varied tonight's lists are, and how many users got the "
         "popular-tracks fallback because the model knew nothing of their history.", _lists_section(d)),
        ("yesterday", "Yesterday's lists against today's listens", f"The production check: for each user who "
         f"had a list yesterday and listened since, hit = one of today's tracks was in yesterday's top {k}, "
         f"recall@{k} = share of today's distinct tracks that were in it. The popular ranking of the same day "
         "(not masked by history, as the model lists are) is the baseline for the model users.",
         _yesterday_section(d["yesterday_vs_today"])),
        ("examples", "Example users", f"Three users, picked the same way every night (the model-ranked users "
         f"with the most listens in the last {EXAMPLE_WINDOW.days} days, ties by id, and the fallback user with "
         f"the most): what they heard last and tonight's top {k}, as artist – title.",
         _examples_section(d["examples"])),
        ("freshness", "Feature freshness", "How old the online features were when the users were scored, and "
         "whether the lake holds listens the features have not seen yet.", _freshness_section(d["freshness"])),
        ("quarantine", "Quarantine (lake totals)", "Raw rows the ingest rejected, over the lake's whole history, "
         "by table and reason.", _table([[t, r, fmt_count(n)] for t, reasons in d["quarantine_in_lake"].items()
                                         for r, n in sorted(reasons.items())], ["table", "reason", "rows"])
         if d["quarantine_in_lake"] else "<p>None.</p>"),
        ("figures", "Figures", "This date's step times, the model's score distribution and how often each "
         "track is recommended (a steep curve: a few tracks in most lists).",
         "".join(_img(n, b) for n, b in figs.items() if n != "trends")),
    ]
    nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _, _ in sections)
    body = "".join(_section(a, t, html.escape(w), b) for a, t, w, b in sections)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Encore nightly {_e(d['date'])}</title><style>{_CSS}</style></head><body>
<h1>Encore nightly {_e(d['date'])}</h1>
<p class="meta">profile {_e(d['profile'])} · workspace {_e(d['home'])} · written {_e(fmt_time(d['written']))}</p>
<nav>{nav}</nav>{body}
</body></html>"""
