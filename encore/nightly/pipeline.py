"""The nightly job, and ad-hoc backfills: the only code besides the CLI that calls several stages.

    ingest      new raw files in the inbox -> bronze lake (jobs/ingest.py)
    features    incremental feature tables (jobs/features.py)
    annotate    LLM genes for tracks without them, when annotate.backend is set (jobs/annotate.py)
    embed       content embeddings of new tracks (jobs/embed.py, Ray)
    materialize feast apply + incremental load of the online store (feature_repo/store.py)
    score       every active user with @champion (scoring/batch.py, Ray)
    report      reports/nightly-DATE.html and .json (encore/nightly/report.py)

Each finished step is recorded in ``nightly/state-DATE.json``; a rerun for the date resumes at the
first unfinished step (``force`` reruns all). A workspace lock keeps two nightlies apart.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from encore.core import faults
from encore.core.atomic import write_json_atomic
from encore.core.config import EncoreConfig
from encore.core.workspace import Workspace

log = logging.getLogger(__name__)

STEPS = ("ingest", "features", "annotate", "embed", "materialize", "score", "report")


class NightlyError(RuntimeError):
    """A step failed; ``step`` names it. The state file keeps what finished, so a rerun resumes."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"step '{step}' failed: {type(cause).__name__}: {cause}")
        self.step = step


@dataclass
class NightlyResult:
    date: str
    state_file: Path
    ran: list[str] = field(default_factory=list)  # steps executed by this run
    skipped: list[str] = field(default_factory=list)  # finished by an earlier run for the date
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    report_html: Path | None = None
    report_json: Path | None = None
    recommendations: Path | None = None


# -- the inbox -----------------------------------------------------------------------------------

def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if "profile" in name and name.endswith(".tsv"):
        return "profiles"
    if name.endswith((".jsonl", ".parquet")):
        return "catalog"
    if name.endswith((".tsv", ".tsv.gz")):
        return "listens"
    return None


def _signature(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def inbox_files(cfg: EncoreConfig) -> tuple[Path, dict[str, list[Path]], dict[str, str]]:
    """(inbox, new files by kind, the ingested-files record). New: not ingested with this size and mtime."""
    ws = Workspace.at(cfg.home)
    inbox = Path(cfg.nightly.inbox or ws.home / "inbox")
    record_file = ws.nightly / "ingested.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    new: dict[str, list[Path]] = {"listens": [], "profiles": [], "catalog": []}
    if inbox.is_dir():
        for f in sorted(p for p in inbox.iterdir() if p.is_file()):
            kind = _kind(f)
            if kind and record.get(str(f.resolve())) != _signature(f):
                new[kind].append(f)
    return inbox, new, record


# -- steps: each returns a JSON-able summary, or raises --------------------------------------------

def _ingest(cfg: EncoreConfig, day: date) -> dict[str, Any]:
    from jobs.ingest import IngestInputs, ingest

    inbox, new, record = inbox_files(cfg)
    if not any(new.values()):
        return {"inbox": str(inbox), "new_files": 0, "note": "no new raw files"}
    if len(new["profiles"]) > 1 or len(new["catalog"]) > 1:
        raise ValueError(f"{inbox} holds several new profile or catalog files; ingest them one at a time")
    rep = ingest(cfg, IngestInputs(listens=tuple(new["listens"]), profiles=next(iter(new["profiles"]), None),
                                   catalog=next(iter(new["catalog"]), None)))
    for files in new.values():
        for f in files:
            record[str(f.resolve())] = _signature(f)
    write_json_atomic(Workspace.at(cfg.home).nightly / "ingested.json", record)
    out = rep.to_dict()
    out.update(inbox=str(inbox), new_files=sum(map(len, new.values())),
               files=[str(f) for fs in new.values() for f in fs])
    return out


def _features(cfg: EncoreConfig, day: date) -> dict[str, Any]:
    from jobs.features import build_features

    return build_features(cfg).to_dict()


def _annotate(cfg: EncoreConfig, day: date) -> dict[str, Any]:
    if cfg.annotate.backend is None:
        return {"skipped": "annotate.backend not configured: genes come from the catalog only"}
    from dataclasses import asdict

    from jobs.annotate import annotate

    return json.loads(json.dumps(asdict(annotate(cfg)), default=str))


def _embed(cfg: EncoreConfig, day: date) -> dict[str, Any]:
    from jobs.embed import embed

    return embed(cfg).to_dict()


def _materialize(cfg: EncoreConfig, day: date) -> dict[str, Any]:
    from feature_repo.store import apply, materialize

    objs = apply(cfg)  # idempotent; registers views a new release added
    rep = materialize(cfg)
    return {"applied": objs, "end": rep.end, "seconds": rep.seconds, "views": rep.views}


def _score(cfg: EncoreConfig, day: date) -> dict[str, Any]:
    from scoring.batch import score

    return score(cfg, day).to_dict()


def _report(cfg: EncoreConfig, day: date, state: dict[str, Any]) -> dict[str, Any]:
    from encore.nightly.report import write_nightly_report

    html, js = write_nightly_report(cfg, day, state)
    return {"html": str(html), "json": str(js)}


def _spark_running() -> bool:
    if "pyspark" not in sys.modules:
        return False
    from pyspark import SparkContext

    return SparkContext._active_spark_context is not None


def _release_spark() -> None:
    """Stop the Spark session and its JVM before the Ray and torch steps.

    The JVM keeps its driver heap (spark.driver_memory) that the encoders and Ray's object store
    want. Left running, its py4j connection is reset while Ray starts its local cluster, and
    PySpark logs a Py4JNetworkError traceback in the middle of the night's log.
    """
    import gc

    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()
    gateway = SparkContext._gateway
    if gateway is not None:
        gateway.shutdown()
        SparkContext._gateway = None
        SparkContext._jvm = None
    gc.collect()
    log.info("stopped the Spark session before the Ray steps")


_RUNNERS: dict[str, Callable[[EncoreConfig, date], dict[str, Any]]] = {
    "ingest": _ingest, "features": _features, "annotate": _annotate, "embed": _embed,
    "materialize": _materialize, "score": _score,
}


# -- the pipeline --------------------------------------------------------------------------------

def state_path(cfg: EncoreConfig, day: date) -> Path:
    return Workspace.at(cfg.home).nightly / f"state-{day.isoformat()}.json"


def load_state(cfg: EncoreConfig, day: date) -> dict[str, Any]:
    path = state_path(cfg, day)
    return json.loads(path.read_text()) if path.is_file() else {"date": day.isoformat(), "steps": {}, "runs": []}


def nightly(cfg: EncoreConfig, day: date | None = None, force: bool = False, until: str | None = None,
            on_step: Callable[[str, str, dict[str, Any]], None] | None = None) -> NightlyResult:
    """Run the nightly steps for ``day`` (default today, UTC), resuming after the last finished one.

    ``until``: stop after this step (the rest stay pending for a later run). ``on_step(name,
    status, record)`` is called as each step starts ("running") and ends (done, skipped, failed).
    Raises :class:`NightlyError` naming the failed step; ``WorkspaceBusy`` if another nightly runs.
    """
    if until is not None and until not in STEPS:
        raise ValueError(f"unknown step {until!r}; steps: {', '.join(STEPS)}")
    ws = Workspace.at(cfg.home)
    day = day or datetime.now(UTC).date()
    with ws.lock("nightly"):
        faults.point("nightly.locked")  # lock tests: a run that holds the lock and waits
        state = load_state(cfg, day)
        path = state_path(cfg, day)
        result = NightlyResult(day.isoformat(), path)
        state["runs"].append({"started": datetime.now(UTC).isoformat(), "force": force, "until": until})
        todo = STEPS[: STEPS.index(until) + 1] if until else STEPS
        # A session someone else started (a notebook, the test suite) is theirs to stop.
        own_spark = not _spark_running()
        for name in todo:
            if name in ("annotate", "embed") and own_spark and _spark_running():
                _release_spark()
            prev = state["steps"].get(name, {})
            if prev.get("status") in ("done", "skipped") and not force:
                result.skipped.append(name)
                if on_step:
                    on_step(name, "already done", prev)
                continue
            if on_step:
                on_step(name, "running", {})
            t0 = time.perf_counter()
            started = datetime.now(UTC).isoformat()
            try:
                faults.fail(f"nightly.{name}")
                summary = _report(cfg, day, state) if name == "report" else _RUNNERS[name](cfg, day)
            except Exception as exc:
                rec = {"status": "failed", "started": started, "seconds": round(time.perf_counter() - t0, 3),
                       "error": f"{type(exc).__name__}: {exc}",
                       "traceback": "".join(traceback.format_exception(exc))[-4000:]}
                state["steps"][name] = rec
                write_json_atomic(path, state)
                if on_step:
                    on_step(name, "failed", rec)
                raise NightlyError(name, exc) from exc
            status = "skipped" if "skipped" in summary else "done"
            rec = {"status": status, "started": started, "seconds": round(time.perf_counter() - t0, 3),
                   "finished": datetime.now(UTC).isoformat(), "summary": summary}
            state["steps"][name] = rec
            write_json_atomic(path, state)  # the step's completion point
            result.ran.append(name)
            if on_step:
                on_step(name, status, rec)
        result.steps = state["steps"]
        rep = state["steps"].get("report", {}).get("summary", {})
        if rep:
            result.report_html, result.report_json = Path(rep["html"]), Path(rep["json"])
        out = state["steps"].get("score", {}).get("summary", {}).get("output")
        result.recommendations = Path(out) if out else None
    return result


def backfill(cfg: EncoreConfig, start: date, end: date) -> dict[str, Any]:
    """Recompute the feature tables for ``start``..``end`` and reload the online store from ``start``."""
    from feature_repo.store import materialize
    from jobs.features import build_features

    if end < start:
        raise ValueError(f"--end {end} is before --start {start}")
    ws = Workspace.at(cfg.home)
    with ws.lock("nightly"):  # a backfill and a nightly rewrite the same tables
        feats = build_features(cfg, start, end)
        # From the backfill's first day to the lake's last: the online store ends on the newest values.
        mat = materialize(cfg, start=start)
    return {"features": feats.to_dict(), "materialize": {"end": mat.end, "views": mat.views, "seconds": mat.seconds}}


def step_rows(name: str, summary: dict[str, Any]) -> str:
    """What a finished step moved, in one phrase ("+118,685 listens, +3,000 tracks, 0 quarantined")."""
    if "skipped" in summary or "note" in summary:
        return str(summary.get("skipped") or summary.get("note"))
    if name == "ingest":
        tables = [t for t in ("listens", "tracks", "users") if summary.get(t)]
        quarantined = sum(summary[t].get("quarantined_total", 0) for t in tables)
        return ", ".join([*(f"+{summary[t]['added']:,} {t}" for t in tables), f"{quarantined:,} quarantined"])
    if name == "features":
        tables = summary.get("tables", {})
        rows = sum(v.get("rows", 0) for v in tables.values())
        return f"{summary.get('mode')}, {rows:,} rows in {len(tables)} table{'' if len(tables) == 1 else 's'}"
    if name == "embed":
        enc = summary.get("encoders", {})
        if not enc:
            return "nothing to encode"
        done = max(v.get("computed", 0) for v in enc.values())
        return f"{done:,} tracks encoded; vectors " + ", ".join(
            f"{e} {v.get('embedded', v.get('computed', 0)):,}" for e, v in enc.items())
    if name == "materialize":
        rows = sum(v.get("source_rows", 0) for v in summary.get("views", {}).values())
        return f"{rows:,} rows into the online store"
    if name == "score":
        users = summary.get("users_model", 0) + summary.get("users_fallback", 0)
        return (f"{users:,} users ({summary.get('users_fallback', 0):,} on the fallback), "
                f"{summary.get('rows', 0):,} rows")
    if name == "report":
        return str(summary.get("html", ""))
    return ""


def progress_printer(stream: Any = None) -> Callable[[str, str, dict[str, Any]], None]:
    """An ``on_step`` that prints a start line and an end line per step, the end with what it moved
    and its seconds (plain text: it reads the same in a log file)."""
    out = stream or sys.stderr
    index = {n: i + 1 for i, n in enumerate(STEPS)}

    def show(name: str, status: str, rec: dict[str, Any]) -> None:
        took = f" in {rec['seconds']:.1f} s" if "seconds" in rec else ""
        rows = step_rows(name, rec["summary"]) if "summary" in rec else rec.get("error", "")
        tail = f": {rows}" if rows and status != "running" else ""
        print(f"[{index[name]}/{len(STEPS)}] {name:<12} {status}{took}{tail}", file=out, flush=True)

    return show
