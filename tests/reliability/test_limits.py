"""Concurrency and limits: two nightlies on one workspace, scoring memory as the catalog grows,
materialization over long windows in chunks."""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest
import torch

from encore.core.config import EncoreConfig, FeastConfig
from tests.conftest import copy_home
from tests.reliability.harness import REPO, encore_env, online_rows, run_and_kill_at
from training.pyfunc import SCORE_BUDGET_BYTES, Recommender, rows_per_forward

pytestmark = pytest.mark.reliability


@pytest.mark.slow
def test_a_second_nightly_exits_75_while_the_first_runs_and_the_lock_dies_with_a_killed_run(
        featured_home: EncoreConfig, tmp_path) -> None:
    cfg = copy_home(featured_home, tmp_path / "home")
    env = encore_env()
    args = ["--home", str(cfg.home), "nightly", "--until", "features"]
    # The first run holds the lock (it announces itself inside it); the second must not wait forever
    # nor run: it exits 75 (EX_TEMPFAIL, "try again later") naming the holder.
    lines = run_and_kill_at(args, env, "nightly.locked", timeout=300)
    holder = lines[-1].split("pid ")[1].rstrip(")\n")
    # The first is gone now (SIGKILL): its flock went with it. Hold again, and race a second run.
    proc = subprocess.Popen([sys.executable, "-m", "encore", *args], env={**env, "ENCORE_HOLD": "nightly.locked"},
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "holding at fault point nightly.locked" in line:
                break
        second = subprocess.run([sys.executable, "-m", "encore", *args], env=env, capture_output=True, text=True,
                                timeout=300, cwd=REPO)
        assert second.returncode == 75, second.stderr[-2000:]
        assert f"pid {proc.pid}" in second.stderr and "holds the 'nightly' lock" in second.stderr
        assert holder != str(proc.pid)
        backfill = subprocess.run([sys.executable, "-m", "encore", "--home", str(cfg.home), "backfill",
                                   "--start", "2009-04-20", "--end", "2009-04-21"], env=env, capture_output=True,
                                  text=True, timeout=300, cwd=REPO)
        assert backfill.returncode == 75 and "holds the 'nightly' lock" in backfill.stderr
    finally:
        proc.kill()
        proc.wait(60)
    # A killed holder leaves no stale lock: the next nightly runs.
    state = subprocess.run([sys.executable, "-m", "encore", *args], env=env, capture_output=True, text=True,
                           timeout=600, cwd=REPO)
    assert state.returncode == 0, state.stderr[-3000:]


class _CountingModel:
    """Stands in for a model with ``n_items`` outputs; records the rows of every forward."""

    def __init__(self, n_items: int) -> None:
        self.n_items, self.rows = n_items, []

    def score(self, items: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        self.rows.append(items.shape[0])
        g = torch.Generator().manual_seed(len(self.rows))
        return torch.rand(items.shape[0], self.n_items + 1, generator=g)


@pytest.mark.parametrize("n_items", [1_000, 300_000, 3_000_000])
def test_scoring_memory_per_forward_stays_under_budget_as_the_catalog_grows(n_items: int) -> None:
    rec = Recommender()
    rec.model = _CountingModel(n_items)
    rec.device = torch.device("cpu")
    rec.track_ids = np.array([f"t{i}" for i in range(n_items)], dtype=object)
    rec.index = {"t0": 1, "t1": 2, "t2": 3}
    rec.max_len, rec.mask_history = 20, True
    rec.batch_size = rows_per_forward(n_items)
    users = 40
    frame = pd.DataFrame({"user_id": [f"u{i}" for i in range(users)], "track_ids": [["t0", "t1"]] * users,
                          "completions": [[1.0, 0.5]] * users})
    out = rec.predict(None, frame, {"k": 5})
    # Every user ranked, their history masked; no forward's [rows, items + 1] scores past the budget.
    assert len(out) == users and all(len(t) == 5 and not {"t0", "t1"} & set(t) for t in out["track_ids"])
    assert sum(rec.model.rows) == users
    assert max(rec.model.rows) * (n_items + 1) * 4 <= max(SCORE_BUDGET_BYTES, (n_items + 1) * 4)
    if n_items <= 100_000:
        assert max(rec.model.rows) == min(users, 64)  # small catalogs keep full batches


def test_materialize_loads_a_long_window_in_chunks_with_the_same_online_result(content_store: EncoreConfig,
                                                                               tmp_path) -> None:
    from feature_repo import store

    whole = copy_home(content_store, tmp_path / "whole")
    whole = whole.model_copy(update={"feast": FeastConfig(materialize_chunk_days=365)})
    chunked = copy_home(content_store, tmp_path / "chunked")
    chunked = chunked.model_copy(update={"feast": FeastConfig(materialize_chunk_days=3)})
    for cfg in (whole, chunked):
        store.apply(cfg)
    start = date(2009, 4, 1)  # a backfill-style reload over the whole world (28 days)
    one = store.materialize(whole, start=start)
    many = store.materialize(chunked, start=start)
    assert {v: r["chunks"] for v, r in one.views.items() if "chunks" in r} == {
        "track_daily": 1, "user_daily": 1, "user_session": 1}
    assert all(many.views[v]["chunks"] >= 8 for v in ("track_daily", "user_daily", "user_session"))
    assert online_rows(chunked.home) == online_rows(whole.home)
    # The registry records the same end for each view, whichever way it was loaded.
    ends = [{v.name: v.most_recent_end_time for v in store.open_store(c).list_feature_views()}
            for c in (whole, chunked)]
    assert ends[0] == ends[1]
    assert max(e for e in ends[0].values() if e) >= datetime(2009, 5, 4, tzinfo=UTC)


def test_chunks_cover_the_window_without_gaps() -> None:
    from feature_repo.store import chunks

    lo, hi = datetime(2009, 1, 1, tzinfo=UTC), datetime(2009, 3, 5, 12, tzinfo=UTC)
    got = chunks(lo, hi, 30)
    assert got[0][0] == lo and got[-1][1] == hi and len(got) == 3
    assert all(a[1] == b[0] for a, b in itertools.pairwise(got))
    assert chunks(hi, hi, 30) == []
