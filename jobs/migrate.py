"""``encore lake migrate``: rewrite a workspace's time-partitioned tables into the current layout.

Two cases, per table (bronze listens and the four feature tables):

* format 1 (one ``date=YYYY-MM-DD`` folder per day, from an older Encore): the folder is moved to
  ``lake/_legacy/`` (so no other job can write a half-empty table meanwhile: they refuse while it is
  there), read back with Spark and written as period partitions, then published;
* another granularity than ``lake.granularity``: the live snapshot is rewritten whole.

Rows are not changed, only where they live: a migrated table reads the same rows as before. The
feature job's record of which bronze days it reflects is translated to the new per-day digests,
so the next ``encore features`` is incremental as it would have been. Every table is published
in one journal; a kill leaves ``lake/_legacy/`` behind and the next ``encore lake migrate``
starts that table again from it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame

from encore.core import atomic, faults
from encore.core import lake as lk
from encore.core.config import EncoreConfig
from encore.core.schemas import FEATURE_TABLES, LISTEN_COLUMNS, LISTEN_KEY
from encore.core.workspace import Workspace, partitions
from jobs.features import SORT_KEYS
from jobs.lake import read_table, stage_periods
from jobs.spark import get_spark

log = logging.getLogger(__name__)


@dataclass
class MigrateReport:
    run_id: str
    granularity: str
    seconds: float = 0.0
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # table -> from, rows, days, periods

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _legacy_fingerprints(table: Path) -> dict[str, str]:
    """What the features job of format 1 stored per bronze day (file names, sizes, mtimes)."""
    out = {}
    for d in partitions(table):
        files = sorted((table / f"date={d}").glob("*.parquet"))
        out[d] = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return out


def migrate(cfg: EncoreConfig) -> MigrateReport:
    """Bring every time-partitioned table of ``cfg.home`` to the configured layout (idempotent)."""
    t0 = time.perf_counter()
    ws = Workspace.at(cfg.home)
    gran = cfg.lake.granularity
    report = MigrateReport(run_id=atomic.new_run_id(), granularity=gran)
    tables = {"bronze/listens": (ws.listens, LISTEN_KEY, LISTEN_COLUMNS)}
    tables |= {f"features/{t}": (ws.feature_table(t), SORT_KEYS[t], None) for t in FEATURE_TABLES}
    with ws.lock("lake"):
        atomic.recover(ws.journals)
        shutil.rmtree(ws.tmp / "staging", ignore_errors=True)
        spark = None
        entries: list[atomic.Entry] = []
        legacy_bronze: dict[str, str] | None = None
        for name, (table, keys, digest_cols) in tables.items():
            old = lk.legacy_dir(ws.lake, table)
            if lk.is_legacy(table):
                old.parent.mkdir(parents=True, exist_ok=True)
                table.rename(old)  # from here on, every other job refuses until this is published
            if old.exists():
                if name == "bronze/listens":  # a rename keeps names, sizes and mtimes
                    legacy_bronze = _legacy_fingerprints(old)
                source = "format 1 (date= folders)"
                spark = spark or get_spark(cfg.spark)
                df: DataFrame | None = spark.read.parquet(str(old))  # `date` from the folder names
            else:
                m = lk.read_manifest(table)
                if m is None or m.granularity == gran:
                    continue  # absent, or already in the layout
                source = f"{m.granularity} periods"
                spark = spark or get_spark(cfg.spark)
                df = read_table(spark, table)
            assert df is not None
            cols = [c for c in df.columns if c != "date"] + ["date"]
            day_counts = {r["date"].isoformat() for r in df.select("date").distinct().collect()}
            if not day_counts:
                continue
            first, last = date.fromisoformat(min(day_counts)), date.fromisoformat(max(day_counts))
            staged = stage_periods(df.select(*cols), table, ws, report.run_id, gran, first, last, keys,
                                   digest_columns=digest_cols, rewrite=True)
            entries.append(staged.repoint)
            report.tables[name] = {"from": source, "rows": staged.rows, "days": len(staged.days),
                                   "periods": staged.periods_written}
            log.info("lake migrate: %s from %s: %d rows, %d days into %d %s partitions", name, source,
                     staged.rows, len(staged.days), staged.periods_written, gran)
        faults.point("migrate.staged")
        atomic.publish_run(entries, ws.journals, ws.staging(report.run_id), ws.trash / report.run_id)
        if legacy_bronze is not None:
            bronze = next(e for e in entries if isinstance(e, atomic.Repoint) and e.link == ws.listens)
            _translate_feature_state(ws, legacy_bronze, bronze.target)
        shutil.rmtree(ws.lake / lk.LEGACY, ignore_errors=True)
        report.seconds = round(time.perf_counter() - t0, 3)
        atomic.write_report(ws.reports("migrate"), report.run_id, report.to_dict())
    return report


def _translate_feature_state(ws: Workspace, legacy: dict[str, str], snapshot: Path) -> None:
    """The features job remembered format-1 fingerprints of the bronze days it reflects; a day
    it reflected keeps that status under its new digest (from the published ``snapshot``), any
    other stays stale."""
    path = ws.features / "_state.json"
    if not path.exists():
        return
    state = json.loads(path.read_text())
    days = json.loads((snapshot / lk.MANIFEST).read_text())["days"]
    digests = {d: str(v["digest"]) for d, v in days.items()}
    old = state.get("bronze", {})
    state["bronze"] = {d: digests[d] for d, fp in old.items() if d in digests and legacy.get(d) == fp}
    atomic.write_json_atomic(path, state)


__all__ = ["MigrateReport", "migrate"]
