"""LLM gene annotation end to end on a local Ray: a fake OpenAI-compatible server, then a tiny local model.

The fake server (tests/fixtures/fake_llm.py) answers by the track title in the prompt (``zz-<kind>-<n>``):
valid and gene tracks get a valid answer in a ```json fence; invalid ones a score of 9 (bad_value);
flaky ones prose on the first request, then a valid answer; slow ones sleep past the client's
timeout (until ``recovered`` is set).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from encore.core.config import AnnotateConfig, ConfigError, EncoreConfig
from encore.core.schemas import ANNOTATION_REASONS, GENES
from encore.core.workspace import Workspace
from jobs import annotate as annotate_mod
from jobs.annotate import (
    BackendError,
    BackendTimeout,
    HttpBackend,
    annotate,
    current_annotations,
    model_id,
    prompt_version,
)
from tests.fixtures.fake_llm import EXPECTED, TIMEOUT_S, FakeLLM, serve_fake_llm

pytestmark = pytest.mark.integration

API_KEY = "test-key-123"
# (track_id, title, lyrics, catalog genes?)
TRACKS = [
    ("t1", "zz-gene-1", "words", True),
    ("t2", "zz-gene-2", None, True),
    ("t3", "zz-valid-1", "la la la\nlove you so", False),
    ("t4", "zz-valid-2", None, False),
    ("t5", "zz-invalid-1", "grr", False),
    ("t6", "zz-flaky-1", "maybe", False),
    ("t7", "zz-slow-1", None, False),
]
TO_ANNOTATE = ("t3", "t4", "t5", "t6", "t7")


# --------------------------------------------------------------------------- fake LLM server
@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with serve_fake_llm() as state:
        yield state


@pytest.fixture
def recovered(llm: FakeLLM) -> Iterator[None]:
    llm.recovered = True
    yield
    llm.recovered = False


# --------------------------------------------------------------------------- workspace helpers
def write_catalog(home: Path, tracks: list[tuple[str, str, str | None, bool]]) -> None:
    rows = [{"track_id": tid, "track_mbid": None, "artist_id": "a1", "artist_mbid": None, "artist_name": "Zed",
             "track_name": title, "duration_s": 200.0, "lyrics": lyrics, "audio_path": None,
             "genes": [0.4] * len(GENES) if has_genes else None} for tid, title, lyrics, has_genes in tracks]
    schema = pa.schema([
        ("track_id", pa.string()), ("track_mbid", pa.string()), ("artist_id", pa.string()),
        ("artist_mbid", pa.string()), ("artist_name", pa.string()), ("track_name", pa.string()),
        ("duration_s", pa.float64()), ("lyrics", pa.string()), ("audio_path", pa.string()),
        ("genes", pa.list_(pa.float32())),
    ])
    out = Workspace.at(home).tracks
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "part-00000.parquet")


def http_config(home: Path, llm: FakeLLM, **changes: Any) -> EncoreConfig:
    acfg = AnnotateConfig(backend="http", url=llm.url, model="fake-llm", max_attempts=2, timeout_s=TIMEOUT_S,
                          max_new_tokens=700, concurrency=2, **changes)
    return EncoreConfig(home=home, annotate=acfg)


def quarantine(cfg: EncoreConfig) -> pa.Table:
    return pads.dataset(Workspace.at(cfg.home).quarantine("annotations"), format="parquet",
                        partitioning="hive").to_table().sort_by("track_id")


def copy_of(cfg: EncoreConfig, dest: Path) -> EncoreConfig:
    shutil.copytree(cfg.home, dest)
    return cfg.model_copy(update={"home": dest})


@dataclass
class FirstRun:
    cfg: EncoreConfig
    report: annotate_mod.AnnotateReport
    titles: Counter[str]
    requests: list[dict[str, Any]]


@pytest.fixture(scope="module")
def first_run(ray_local, llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """One run on the seven-track catalog; tests that write more runs work on a copy of its home."""
    home = tmp_path_factory.mktemp("annotate") / "home"
    write_catalog(home, TRACKS)
    cfg = http_config(home, llm)
    mp = pytest.MonkeyPatch()
    mp.setenv("ENCORE_LLM_API_KEY", API_KEY)
    try:
        before = len(llm.requests)
        report = annotate(cfg)
    finally:
        mp.undo()
    return FirstRun(cfg, report, llm.titles(), list(llm.requests[before:]))


# --------------------------------------------------------------------------- the first run
def test_first_run_sends_tracks_without_genes_and_counts_every_outcome(first_run: FirstRun) -> None:
    r = first_run.report
    assert (r.catalog_tracks, r.skipped_has_genes, r.skipped_cached, r.skipped_quarantined) == (7, 2, 0, 0)
    assert r.sent == 5
    assert r.valid == 3  # valid-1, valid-2, flaky on its second try
    assert r.invalid == {"bad_value": 1, "timeout": 1}
    assert r.attempts == 1 + 1 + 2 + 2 + 2
    assert r.model == "fake-llm" and r.prompt_version == prompt_version(first_run.cfg)
    stored = json.loads((Workspace.at(first_run.cfg.home).reports("annotate") / "latest.json").read_text())
    assert stored["run_id"] == r.run_id and stored["invalid"] == r.invalid


def test_first_run_retries_only_until_a_valid_answer(first_run: FirstRun) -> None:
    assert first_run.titles == {"zz-valid-1": 1, "zz-valid-2": 1, "zz-invalid-1": 2, "zz-flaky-1": 2,
                                "zz-slow-1": 2}


def test_requests_carry_the_model_settings_and_the_bearer_key(first_run: FirstRun) -> None:
    for req in first_run.requests:
        assert req["auth"] == f"Bearer {API_KEY}"
        body = req["body"]
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("fake-llm", 0.0, 700)
        assert body["messages"][0]["role"] == "user"
    prompt = next(r["body"]["messages"][0]["content"] for r in first_run.requests if r["title"] == "zz-valid-2")
    assert "Title: zz-valid-2\nLyrics:\n(instrumental or unknown)\nAnswer:" in prompt


def test_valid_answers_land_normalised_in_current_annotations(first_run: FirstRun) -> None:
    cur = current_annotations(first_run.cfg)
    assert cur.schema.field("genes").type == pa.list_(pa.float32())
    assert sorted(cur["track_id"].to_pylist()) == ["t3", "t4", "t6"]
    for genes in cur["genes"].to_pylist():
        assert genes == pytest.approx(EXPECTED)
    live = Workspace.at(first_run.cfg.home).annotations / f"run={first_run.report.run_id}"
    assert (live / "part-00000.parquet").is_file()


def test_quarantine_keeps_the_reason_raw_text_and_attempts(first_run: FirstRun) -> None:
    q = quarantine(first_run.cfg).to_pylist()
    assert [(r["track_id"], r["reason"], r["attempts"]) for r in q] == [("t5", "bad_value", 2), ("t7", "timeout", 2)]
    bad, slow = q
    assert '"tempo": 9' in bad["raw_text"] and "tempo" in bad["detail"]
    assert slow["raw_text"] is None and "1.0s" in slow["detail"]
    assert {r["prompt_version"] for r in q} == {first_run.report.prompt_version}
    assert {r["model"] for r in q} == {"fake-llm"}
    assert all(r["annotated_at"] is not None for r in q)


def test_the_workspace_keeps_no_staging_trash_or_journal(first_run: FirstRun) -> None:
    ws = Workspace.at(first_run.cfg.home)
    for d in (ws.staging(first_run.report.run_id), ws.trash / first_run.report.run_id):
        assert not d.exists()
    assert not list(ws.journals.glob("*.json"))


# --------------------------------------------------------------------------- later runs (on a copy)
def test_a_second_run_sends_nothing_and_starts_no_ray(first_run: FirstRun, llm: FakeLLM, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = copy_of(first_run.cfg, tmp_path / "home")
    monkeypatch.setattr(annotate_mod, "get_ray", lambda *_: pytest.fail("Ray started with nothing to send"))
    before = len(llm.requests)
    r = annotate(cfg)
    assert (r.sent, r.skipped_has_genes, r.skipped_cached, r.skipped_quarantined) == (0, 2, 3, 2)
    assert len(llm.requests) == before
    assert not (Workspace.at(cfg.home).annotations / f"run={r.run_id}").exists()


def test_retry_invalid_resends_only_the_quarantined_tracks(first_run: FirstRun, llm: FakeLLM, tmp_path: Path,
                                                           recovered: None) -> None:
    cfg = copy_of(first_run.cfg, tmp_path / "home")
    before = llm.titles()
    r = annotate(cfg, retry_invalid=True)
    assert (r.sent, r.skipped_cached, r.skipped_quarantined) == (2, 3, 0)
    assert (r.valid, r.invalid) == (1, {"bad_value": 1})
    assert llm.titles() - before == {"zz-invalid-1": 2, "zz-slow-1": 1}
    assert sorted(current_annotations(cfg)["track_id"].to_pylist()) == ["t3", "t4", "t6", "t7"]
    # t7 now has a valid answer: no later run sends it, with or without retry_invalid.
    assert annotate(cfg).sent == 0


def test_force_also_sends_tracks_whose_catalog_has_genes(first_run: FirstRun, llm: FakeLLM, tmp_path: Path) -> None:
    cfg = copy_of(first_run.cfg, tmp_path / "home")
    before = llm.titles()
    r = annotate(cfg, force=True)
    assert (r.skipped_has_genes, r.skipped_cached, r.skipped_quarantined, r.sent, r.valid) == (0, 3, 2, 2, 2)
    assert llm.titles() - before == {"zz-gene-1": 1, "zz-gene-2": 1}
    assert sorted(current_annotations(cfg)["track_id"].to_pylist()) == ["t1", "t2", "t3", "t4", "t6"]


def test_a_new_prompt_version_resends_every_track_and_limit_caps_a_run(first_run: FirstRun, llm: FakeLLM,
                                                                       tmp_path: Path, recovered: None) -> None:
    template = tmp_path / "terse_v1.txt"
    template.write_text("Rate the genes of $title by $artist as JSON.\nLyrics: $lyrics\n", encoding="utf-8")
    old = copy_of(first_run.cfg, tmp_path / "home")
    new = old.model_copy(update={"annotate": old.annotate.model_copy(update={"prompt": template})})
    assert prompt_version(new) != prompt_version(old)
    first = annotate(new, limit=2)
    assert (first.sent, first.skipped_cached, first.skipped_quarantined) == (2, 0, 0)
    assert first.prompt_version.startswith("terse_v1-")
    rest = annotate(new)
    assert (rest.sent, rest.skipped_cached, rest.valid, rest.invalid) == (3, 2, 2, {"bad_value": 1})
    assert sorted(current_annotations(new)["track_id"].to_pylist()) == ["t3", "t4", "t6", "t7"]
    # The old version's answers are still the old config's current ones.
    assert sorted(current_annotations(old)["track_id"].to_pylist()) == ["t3", "t4", "t6"]


# --------------------------------------------------------------------------- configuration and backend errors
def test_a_catalog_full_of_genes_needs_no_backend_and_no_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    write_catalog(home, [t for t in TRACKS if t[3]])
    monkeypatch.setattr(annotate_mod, "get_ray", lambda *_: pytest.fail("Ray started with nothing to send"))
    r = annotate(EncoreConfig(home=home))
    assert (r.catalog_tracks, r.skipped_has_genes, r.sent, r.model) == (2, 2, 0, None)
    assert current_annotations(EncoreConfig(home=home)).num_rows == 0  # no model configured: no key, no answers


def test_current_annotations_keeps_the_latest_valid_answer_per_track(tmp_path: Path) -> None:
    cfg = EncoreConfig(home=tmp_path / "home", annotate=AnnotateConfig(backend="http", url="http://x/v1", model="m"))
    version = prompt_version(cfg)

    def run(run_id: str, rows: list[tuple[str, str, str, float, int]]) -> None:
        # rows: (track_id, prompt_version, model, gene value, second of annotated_at)
        table = pa.Table.from_pylist([
            {"track_id": t, "prompt_version": v, "model": m, "genes": [g] * len(GENES), "attempts": 1,
             "annotated_at": datetime(2026, 1, 1, 0, 0, s, tzinfo=UTC)} for t, v, m, g, s in rows
        ], schema=annotate_mod.VALID_SCHEMA)
        folder = Workspace.at(cfg.home).annotations / f"run={run_id}"
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-00000.parquet")

    run("r1", [("a", version, "m", 0.2, 1), ("b", version, "m", 0.2, 1), ("c", "other-1234", "m", 0.2, 1)])
    run("r2", [("a", version, "m", 0.8, 5), ("b", version, "m", 0.6, 0), ("c", version, "other", 0.2, 5)])
    cur = current_annotations(cfg).sort_by("track_id")
    assert cur["track_id"].to_pylist() == ["a", "b"]  # c was annotated under other keys only
    assert [g[0] for g in cur["genes"].to_pylist()] == pytest.approx([0.8, 0.2])


def test_tracks_to_send_without_a_backend_is_a_config_error_naming_the_keys(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_catalog(home, TRACKS)
    with pytest.raises(ConfigError, match=r"annotate\.backend"):
        annotate(EncoreConfig(home=home))
    assert not Workspace.at(home).annotations.exists()


def test_http_backend_maps_statuses_refusals_and_timeouts(llm: FakeLLM, tmp_path: Path) -> None:
    base = dict(backend="http", model="fake-llm", timeout_s=TIMEOUT_S)
    with pytest.raises(BackendError, match="HTTP 500"):
        HttpBackend(AnnotateConfig(url=llm.url.replace("/v1", "/fail"), **base)).generate("zz-valid-9")
    with pytest.raises(BackendError, match="Connection"):
        HttpBackend(AnnotateConfig(url="http://127.0.0.1:9/v1", **base)).generate("zz-valid-9")
    with pytest.raises(BackendTimeout):
        HttpBackend(AnnotateConfig(url=llm.url, **base)).generate("zz-slow-9")
    assert "zz-gene-9" not in HttpBackend(AnnotateConfig(url=llm.url, **base)).generate("zz-gene-9")


# --------------------------------------------------------------------------- local backend
def test_a_tiny_local_model_runs_and_its_garbage_is_quarantined(ray_local, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.tiny_llm import make_tiny_causal_lm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = make_tiny_causal_lm(tmp_path / "tiny-llama")
    home = tmp_path / "home"
    write_catalog(home, TRACKS[2:5])
    cfg = EncoreConfig(home=home, annotate=AnnotateConfig(backend="local", model_path=model, max_new_tokens=24,
                                                          concurrency=1))
    assert model_id(cfg) == "tiny-llama"
    r = annotate(cfg)
    assert (r.sent, r.valid, r.model) == (3, 0, "tiny-llama")
    assert sum(r.invalid.values()) == 3
    assert r.attempts == 3  # greedy: an invalid answer would only come back, so it is not asked again
    q = quarantine(cfg).to_pylist()
    assert [row["track_id"] for row in q] == ["t3", "t4", "t5"]
    for row in q:
        assert row["reason"] in ANNOTATION_REASONS and row["reason"] not in ("timeout", "backend_error")
        assert row["raw_text"] and row["detail"]
    assert current_annotations(cfg).num_rows == 0
