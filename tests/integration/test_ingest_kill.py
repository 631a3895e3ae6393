"""A run killed midway leaves the previous lake readable, and the rerun reaches the same lake.

The kill lands at a named fault point (``ENCORE_FAULT``), not after a sleep: once all output is
staged but nothing is published, and in the middle of publishing (one partition swapped). The
rerun's lake is compared with an uninterrupted run's as the same files holding the same rows in
the same order (see ``_rows`` for why not bytes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from encore.core.workspace import Workspace
from jobs.ingest import IngestInputs, ingest
from tests.conftest import make_config
from tests.fixtures.files import digest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LISTENS = "userid-timestamp-artid-artname-traid-traname.tsv"



def _rows(root: Path) -> dict[str, list[dict]]:
    """Each file's rows in file order. Not bytes: parquet-mr writes a footer field from a hash set
    whose order differs between JVMs, so the same rows from two processes differ in a few bytes."""
    files = sorted(Path(d) / n for d, _, names in os.walk(root, followlinks=True)  # into the tables' links
                   for n in names if n.endswith(".parquet"))
    assert files
    return {str(p.relative_to(root)): pq.read_table(p).to_pylist() for p in files}


def _split_world(world: Path, tmp: Path) -> tuple[Path, Path]:
    lines = (world / LISTENS).read_bytes().splitlines(keepends=True)
    old = [ln for ln in lines if ln.split(b"\t")[1] < b"2009-04-28"]
    (tmp / "old.tsv").write_bytes(b"".join(old))
    (tmp / "all.tsv").write_bytes(b"".join(lines))
    return tmp / "old.tsv", tmp / "all.tsv"


def _killed_ingest(home: Path, listens: Path, fault: str) -> None:
    env = {**os.environ, "ENCORE_FAULT": fault, "ENCORE_HOME": str(home)}
    env.pop("ENCORE_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "encore", "-q", "ingest", "--listens", str(listens)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.mark.parametrize("fault", ["ingest.staged", "publish.mid_swap"])
def test_killed_ingest_leaves_lake_readable_and_rerun_matches_uninterrupted(
        spark, small_world, tmp_path: Path, fault: str) -> None:
    world, stats = small_world
    old, full = _split_world(world, tmp_path)
    reference = make_config(tmp_path / "reference")
    ingest(reference, IngestInputs(listens=(old,)))
    ingest(reference, IngestInputs(listens=(full,)))

    cfg = make_config(tmp_path / "home")
    ingest(cfg, IngestInputs(listens=(old,)))
    ws = Workspace.at(cfg.home)
    before = digest(ws.lake)
    old_rows = ds.dataset(ws.listens, partitioning="hive").count_rows()

    _killed_ingest(cfg.home, full, fault)

    # Every visible table is complete and readable: old or new, never half-written.
    after_kill = digest(ws.lake)
    rows = ds.dataset(ws.listens, partitioning="hive").count_rows()
    if fault == "ingest.staged":
        assert after_kill == before and rows == old_rows  # nothing published
    else:
        # The listens table was published first, whole: every row of the new version, none missing.
        assert after_kill != before and rows == stats.listens
        assert list(ws.journals.glob("*.json"))  # the journal says what is left to do (the quarantine)

    rep = ingest(cfg, IngestInputs(listens=(full,)))
    assert rep.recovered_publications == (1 if fault == "publish.mid_swap" else 0)
    assert not list(ws.journals.glob("*.json"))
    assert not (ws.tmp / "staging").exists() or not any((ws.tmp / "staging").iterdir())
    assert _rows(ws.lake / "bronze") == _rows(Workspace.at(reference.home).lake / "bronze")
    assert ds.dataset(ws.listens, partitioning="hive").count_rows() == stats.listens
