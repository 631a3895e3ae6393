"""Running ``encore`` as a subprocess that is killed at a named point, and comparing workspaces.

A kill lands where the process announces ``ENCORE_HOLD`` (encore/core/faults.py): the test reads
its stderr up to that line, then SIGKILLs the whole process group (the Python driver, Spark's JVM,
the local Ray's workers), as a node loss or an OOM kill would. No sleeps.

Workspaces are compared as *row sets*: each table (and each date partition of it) read back with
pyarrow and sorted, never as bytes. Spark and Ray promise no row order or file naming across runs,
and parquet-mr writes a footer field from a hash set whose order differs between JVMs. Columns that
record *when* or *which run* (``VOLATILE``) are left out: they differ between two uninterrupted runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from encore.core.lake import SNAPSHOTS

REPO = Path(__file__).resolve().parents[2]
# Columns stamped with the wall clock or a run id. Everything else must match exactly.
VOLATILE = frozenset({
    "created",  # feature rows: when the job wrote them (Feast orders rewrites by it)
    "ingested_at", "ingest_run_id", "run_id", "run",  # bronze lineage, run=<id> partitions
    "annotated_at",  # annotations: when the answer came
    "scoring_run_id", "scored_at",  # recommendations: which scoring run, and when
    "created_ts",  # the online store's write time
    "quarantined_at",
    "computed_at",  # content embeddings: when the encoder ran
})
# Feature values in the online store that record which run wrote them (rows keyed by feature name).
VOLATILE_FEATURES = frozenset({"scoring_run_id"})
# Outputs a reader may see: the lake, tonight's lists. tmp/ is the jobs' own (staging, journals).
DATA_ROOTS = ("lake", "recommendations")


def encore_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ENCORE_CONFIG", "ENCORE_HOME", "ENCORE_FAULT", "ENCORE_HOLD", "ENCORE_FAIL")}
    env.update(RAY_AUTH_MODE="disabled", **extra)
    return env


def run(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "encore", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def run_and_kill_at(args: list[str], env: dict[str, str], point: str, timeout: float = 900) -> list[str]:
    """Start ``encore ARGS``, wait until it holds at fault ``point``, SIGKILL its process group.

    Returns the stderr lines read. Fails if the process ends (or ``timeout`` passes) first.
    """
    proc = subprocess.Popen([sys.executable, "-m", "encore", *args], env={**env, "ENCORE_HOLD": point},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    # A point never reached must not hang the suite: kill after timeout and report what was seen.
    watchdog = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    lines: list[str] = []
    held = False
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if f"holding at fault point {point} " in line:
                held = True
                break
    finally:
        watchdog.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
        if proc.stderr:
            proc.stderr.close()
    assert held, f"encore {' '.join(args)} never reached {point} (exit {proc.returncode}):\n{''.join(lines[-60:])}"
    return lines


def _group_key(path: Path, root: Path) -> tuple[str, str]:
    """(table, partition): the folders above the first key=value part, and the key=value parts
    (run=<id> dropped: run ids differ between runs, their rows are compared together)."""
    parts = path.relative_to(root).parent.parts
    table = [p for p in parts if "=" not in p]
    part = [p for p in parts if "=" in p and not p.startswith("run=")]
    return "/".join(table), "/".join(part)


def _rows(files: list[Path]) -> list[str]:
    t = ds.dataset(files, format="parquet").to_table()
    keep = sorted(c for c in t.column_names if c not in VOLATILE)
    return sorted(json.dumps({c: r[c] for c in keep}, default=str, sort_keys=True) for r in t.select(keep).to_pylist())


def _live_parquet(root: Path) -> list[Path]:
    """Every parquet file a reader can reach under ``root``: through the tables' links into their
    live snapshots, never into ``lake/_snapshots`` itself (old and unpublished snapshots)."""
    out = []
    for dirpath, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if d != SNAPSHOTS]
        out += [Path(dirpath) / n for n in names if n.endswith(".parquet")]
    return sorted(out)


def data_groups(home: Path) -> dict[tuple[str, str], list[str]]:
    """Every readable dataset under the data roots, per (table, partition), as a sorted row set."""
    groups: dict[tuple[str, str], list[Path]] = {}
    for root_name in DATA_ROOTS:
        root = home / root_name
        for f in _live_parquet(root) if root.is_dir() else []:
            groups.setdefault(_group_key(f, home), []).append(f)
    return {k: _rows(v) for k, v in sorted(groups.items())}


def online_rows(home: Path) -> dict[str, list[str]]:
    """The SQLite online store, per table, as sorted rows without the write time."""
    db = home / "feast" / "online.db"
    if not db.is_file():
        return {}
    out: dict[str, list[str]] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        for (table,) in con.execute("select name from sqlite_master where type='table'"):
            cur = con.execute(f'select * from "{table}"')
            cols = [d[0] for d in cur.description]
            keep = [i for i, c in enumerate(cols) if c not in VOLATILE]
            name = cols.index("feature_name") if "feature_name" in cols else None
            out[table] = sorted(repr(tuple(row[i] for i in keep)) for row in cur
                                if name is None or row[name] not in VOLATILE_FEATURES)
    return out


def leftovers(home: Path) -> list[str]:
    """Files under tmp/ (staging, journals, trash) that a finished job must not leave behind."""
    tmp = home / "tmp"
    return sorted(str(p.relative_to(home)) for p in tmp.rglob("*") if p.is_file()) if tmp.is_dir() else []


def registries(home: Path, model_name: str) -> dict[str, Any]:
    """What the Feast and MLflow registries say: views and how far each was loaded; model versions
    and aliases. Both must match an uninterrupted run: no dangling alias, no half-registered version."""
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    from feature_repo.store import REPO_DIR
    from mlflow import MlflowClient

    store = FeatureStore(config=load_repo_config(REPO_DIR, home / "feast" / "feature_store.yaml"))
    views = {v.name: str(v.most_recent_end_time) for v in store.list_feature_views()}
    services = sorted(s.name for s in store.list_feature_services())
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    versions = {v.version: (v.status, sorted(v.aliases)) for v in client.search_model_versions(f"name='{model_name}'")}
    return {"views": views, "services": services, "versions": versions}
