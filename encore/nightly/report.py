"""The nightly run report: ``reports/nightly-DATE.html`` (plots embedded) and ``.json``.

What an on-call engineer checks the morning after: did every step run and how long did it take,
how many rows moved and how many were quarantined, which champion scored, and do the lists look
sane (score distribution, catalog coverage, diversity, users on the fallback list).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from encore.core import faults
from encore.core.atomic import write_json_atomic
from encore.core.config import EncoreConfig
from encore.core.workspace import Workspace

log = logging.getLogger(__name__)


def _catalog(ws: Workspace) -> pd.DataFrame:
    if not any(ws.tracks.rglob("*.parquet")):
        return pd.DataFrame({"track_id": [], "artist_id": []})
    return pads.dataset(ws.tracks, format="parquet").to_table(columns=["track_id", "artist_id"]).to_pandas()


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


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figures(steps: dict[str, Any], recs: pd.DataFrame) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def write_nightly_report(cfg: EncoreConfig, day: date, state: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``reports/nightly-DATE.html`` and ``.json`` from the date's step records."""
    from scoring.batch import read_recommendations

    ws = Workspace.at(cfg.home)
    steps = state.get("steps", {})
    score = steps.get("score", {}).get("summary", {})
    recs = read_recommendations(cfg, day) if score else pd.DataFrame()
    quality = list_quality(recs, _catalog(ws))
    ingest = steps.get("ingest", {}).get("summary", {})
    data = {
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
    figs = _figures(steps, recs)
    out = ws.home / "reports"
    js = out / f"nightly-{day.isoformat()}.json"
    write_json_atomic(js, json.loads(json.dumps(data, default=str)))
    faults.point("report.json_written")  # kill test: one of the two files rewritten
    page = out / f"nightly-{day.isoformat()}.html"
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(_html(data, figs), encoding="utf-8")
    tmp.replace(page)
    log.info("nightly report: %s", page)
    return page, js


def _table(rows: list[list[Any]], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def _rows_moved(step: str, summary: dict[str, Any]) -> str:
    if "skipped" in summary or "note" in summary:
        return summary.get("skipped") or summary.get("note")
    if step == "ingest":
        return ", ".join(f"{t} +{summary[t]['added']:,} (quarantined {summary[t]['quarantined_total']:,})"
                         for t in ("listens", "tracks", "users") if summary.get(t))
    if step == "features":
        tables = summary.get("tables", {})
        return f"{summary.get('mode')}; " + ", ".join(f"{t} {v['rows']:,}" for t, v in tables.items())
    if step == "embed":
        return ", ".join(f"{e} computed {v['computed']:,}" for e, v in summary.get("encoders", {}).items())
    if step == "materialize":
        return ", ".join(f"{v_name} {v.get('source_rows', 0):,}" for v_name, v in summary.get("views", {}).items()
                         if "source_rows" in v)
    if step == "score":
        users = summary.get("users_model", 0) + summary.get("users_fallback", 0)
        return f"{summary.get('rows', 0):,} rows for {users:,} users"
    return ""


def _html(d: dict[str, Any], figs: dict[str, str]) -> str:
    steps = d["steps"]
    step_rows = [[n, r.get("status"), r.get("seconds"), r.get("error") or _rows_moved(n, r.get("summary", {}))]
                 for n, r in steps.items()]
    q = d["lists"]
    champ = d["champion"]
    metrics = champ.get("test_metrics", {})
    held = champ.get("promotion", {}).get("held_out", {})
    mrows = [[m, metrics.get(m), held.get(m)] for m in ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr")]
    quar = [[t, r, n] for t, reasons in d["quarantine_in_lake"].items() for r, n in sorted(reasons.items())]
    sc = d["scoring"]
    img = "".join(f'<img alt="{k}" src="data:image/png;base64,{v}">' for k, v in figs.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Encore nightly {d['date']}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
img{{max-width:100%;display:block;margin:.5em 0}}</style></head><body>
<h1>Encore nightly {html.escape(d['date'])}</h1>
<p>profile {html.escape(d['profile'])}, workspace {html.escape(d['home'])}, written {html.escape(d['written'])}</p>
<h2>Steps</h2>{_table(step_rows, ['step', 'status', 'seconds', 'rows / note'])}
<h2>Champion</h2><p>{html.escape(str(champ.get('model_name')))} version {html.escape(str(champ.get('model_version')))}
({html.escape(str(champ.get('model') or ''))}, MLflow run {html.escape(str(champ.get('model_run_id')))})</p>
{_table(mrows, ['metric', 'test (training run)', 'held-out (at promotion)'])}
<h2>Recommendations</h2>
<p>{_fmt(sc.get('users_active'))} active of {_fmt(sc.get('users_known'))} known users;
{_fmt(sc.get('users_model'))} ranked by the model, {_fmt(sc.get('users_fallback'))} on the popular-tracks fallback
({q.get('fallback_share', 0):.1%}). Features: {html.escape(str(sc.get('mode')))} as of
{html.escape(str(sc.get('feature_snapshot')))}. Output: {html.escape(str(sc.get('output')))}</p>
{_table([['rows', q.get('rows')], ['distinct tracks', q.get('distinct_tracks')],
         ['catalog coverage', q.get('catalog_coverage')], ['artist diversity (distinct artists / list length)',
         q.get('artist_diversity')], ['exposure Gini', q.get('exposure_gini')]], ['measure', 'value'])}
<h2>Quarantine (lake totals)</h2>{_table(quar, ['table', 'reason', 'rows']) if quar else '<p>none</p>'}
<h2>Figures</h2>{img}
</body></html>"""
