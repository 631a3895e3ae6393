"""The nightly's pure parts: list quality measures, inbox classification, step order."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from encore.core.config import EncoreConfig
from encore.nightly.pipeline import STEPS, inbox_files, nightly
from encore.nightly.report import list_quality


def test_list_quality_counts_coverage_artist_diversity_exposure_and_fallback() -> None:
    recs = pd.DataFrame({
        "user_id": ["a", "a", "b", "b"], "track_id": ["t1", "t2", "t1", "t3"],
        "score": [2.0, 1.0, 3.0, 0.5], "fallback": [False, False, True, True]})
    catalog = pd.DataFrame({"track_id": ["t1", "t2", "t3", "t4"], "artist_id": ["x", "x", "y", "z"]})
    q = list_quality(recs, catalog)
    assert q["catalog_coverage"] == 3 / 4
    assert q["artist_diversity"] == (1 / 2 + 2 / 2) / 2  # a: one artist in two slots; b: two
    # exposure counts (1, 1, 2): Gini = sum((2i - n - 1) x_i) / (n sum x) = (-2 + 0 + 4) / 12
    assert q["exposure_gini"] == pytest.approx(2 / 12)
    assert q["fallback_users"] == 1 and q["fallback_share"] == 0.5
    assert q["score_quantiles"][0.5] == 1.5  # model-ranked rows only


def test_inbox_sorts_files_by_kind_and_skips_ones_already_ingested(tmp_path: Path) -> None:
    cfg = EncoreConfig(home=tmp_path / "home")
    inbox = tmp_path / "home" / "inbox"
    inbox.mkdir(parents=True)
    for name in ("a.tsv", "b.tsv.gz", "userid-profile.tsv", "catalog.jsonl", "notes.txt"):
        (inbox / name).write_text("x")
    _, new, _ = inbox_files(cfg)
    assert [f.name for f in new["listens"]] == ["a.tsv", "b.tsv.gz"]
    assert [f.name for f in new["profiles"]] == ["userid-profile.tsv"]
    assert [f.name for f in new["catalog"]] == ["catalog.jsonl"]
    record = cfg.home / "nightly" / "ingested.json"
    st = (inbox / "a.tsv").stat()
    record.parent.mkdir(parents=True)
    record.write_text(f'{{"{(inbox / "a.tsv").resolve()}": "{st.st_size}:{st.st_mtime_ns}"}}')
    assert [f.name for f in inbox_files(cfg)[1]["listens"]] == ["b.tsv.gz"]
    os.utime(inbox / "a.tsv", ns=(st.st_atime_ns, st.st_mtime_ns + 10))  # rewritten: ingested again
    assert [f.name for f in inbox_files(cfg)[1]["listens"]] == ["a.tsv", "b.tsv.gz"]


def test_steps_run_in_data_flow_order_and_an_unknown_until_is_refused(tmp_path: Path) -> None:
    assert STEPS == ("ingest", "features", "annotate", "embed", "materialize", "score", "report")
    with pytest.raises(ValueError, match="unknown step"):
        nightly(EncoreConfig(home=tmp_path), until="train")
