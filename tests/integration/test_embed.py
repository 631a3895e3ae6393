"""`encore embed` on a real local Ray: nulls with reasons, incremental reruns, version bumps, kills."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from encore.core.config import AnnotateConfig, EmbedConfig, EncoderVersions
from encore.core.schemas import ENCODERS, GENES, TRACK_CONTENT_TABLE
from encore.core.workspace import Workspace
from jobs.embed import embed, read_content
from tests.conftest import make_config
from tests.fixtures.content import write_catalog

pytestmark = pytest.mark.integration


def _cfg(home: Path, **embed_kw):
    # metadata "genes+text" is the default; the text half is covered by the unit tests and the demo.
    return make_config(home).model_copy(update={"embed": EmbedConfig(metadata="genes", **embed_kw)})


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, ray_local):
    """A catalog with every content problem, embedded once. Tests that write copy the workspace."""
    home = tmp_path_factory.mktemp("embed") / "home"
    expected = write_catalog(home)
    cfg = _cfg(home)
    return cfg, expected, embed(cfg)


def _copy(cfg, dest: Path, **embed_kw):
    shutil.copytree(cfg.home, dest)
    return _cfg(dest, **embed_kw)


def _by_track(table: pa.Table) -> dict[str, dict]:
    return {r["track_id"]: r for r in table.to_pylist()}


def test_every_track_gets_a_vector_or_a_null_with_its_reason_never_a_zero_vector(embedded) -> None:
    cfg, expected, report = embedded
    rows = _by_track(read_content(cfg))
    assert set(rows) == set(expected)
    for tid, exp in expected.items():
        for name in ENCODERS:
            vec, reason = rows[tid][f"{name}_embedding"], rows[tid][f"{name}_reason"]
            assert reason == exp[name], (tid, name)
            assert (vec is None) == (reason is not None), (tid, name)
            if vec is not None:
                assert np.abs(np.asarray(vec)).sum() > 0
    dims = {name: {len(r[f"{name}_embedding"]) for r in rows.values() if r[f"{name}_embedding"]} for name in ENCODERS}
    assert dims == {"lyrics": {384}, "audio": {93}, "metadata": {len(GENES)}}
    # The report counts the same reasons the table holds.
    audio = report.encoders["audio"]
    assert audio.missing == {r: sum(e["audio"] == r for e in expected.values())
                             for r in {e["audio"] for e in expected.values()} - {None}}
    assert audio.embedded == sum(e["audio"] is None for e in expected.values())
    assert report.content_nulls["lyrics"] == 2 and report.content_nulls["metadata"] == 1


def test_rerun_computes_no_track_and_keeps_every_vector(embedded, tmp_path: Path) -> None:
    cfg, _, _ = embedded
    cfg = _copy(cfg, tmp_path / "home")
    before = read_content(cfg)
    again = embed(cfg)
    assert {n: e.computed for n, e in again.encoders.items()} == dict.fromkeys(ENCODERS, 0)
    after = read_content(cfg)
    for name in ENCODERS:
        assert after.column(f"{name}_embedding").equals(before.column(f"{name}_embedding"))


def test_version_bump_recomputes_that_encoder_only(embedded, tmp_path: Path) -> None:
    cfg, expected, first = embedded
    cfg = _copy(cfg, tmp_path / "home", versions=EncoderVersions(lyrics="2"))
    rep = embed(cfg)
    assert rep.encoders["lyrics"].computed == len(expected)
    assert rep.encoders["lyrics"].version.startswith("2-")
    assert rep.encoders["audio"].computed == rep.encoders["metadata"].computed == 0
    content = read_content(cfg)
    assert set(content.column("lyrics_version").to_pylist()) == {rep.encoders["lyrics"].version}
    # The old version's vectors stay in the cache: switching back costs nothing.
    ws = Workspace.at(cfg.home)
    assert ws.embeddings("lyrics", first.encoders["lyrics"].version).is_dir()


def _set_lyrics(cfg, track: str, text: str) -> str:
    path = next(Workspace.at(cfg.home).tracks.glob("*.parquet"))
    t = pq.read_table(path)
    lyrics = t.column("lyrics").to_pylist()
    i = t.column("track_id").to_pylist().index(track)
    old, lyrics[i] = lyrics[i], text
    pq.write_table(t.set_column(t.schema.get_field_index("lyrics"), "lyrics", pa.array(lyrics, pa.string())), path)
    return old


def test_changed_input_recomputes_only_that_track_and_changing_it_back_restores_it(embedded, tmp_path: Path) -> None:
    cfg, _, _ = embedded
    cfg = _copy(cfg, tmp_path / "home")
    original = _set_lyrics(cfg, "t003", "completely different words now")
    before = _by_track(read_content(cfg))
    rep = embed(cfg)
    assert {n: e.computed for n, e in rep.encoders.items()} == {"lyrics": 1, "audio": 0, "metadata": 0}
    after = _by_track(read_content(cfg))
    assert after["t003"]["lyrics_embedding"] != before["t003"]["lyrics_embedding"]
    assert after["t004"]["lyrics_embedding"] == before["t004"]["lyrics_embedding"]
    # Back to the first text: its old vector is in the cache, but not the newest row for the track.
    _set_lyrics(cfg, "t003", original)
    rep = embed(cfg)
    assert rep.encoders["lyrics"].computed == 1
    restored = _by_track(read_content(cfg))["t003"]
    assert restored["lyrics_reason"] is None
    np.testing.assert_allclose(restored["lyrics_embedding"], before["t003"]["lyrics_embedding"], atol=1e-5)


def test_llm_annotation_fills_genes_for_a_track_the_catalog_left_without(embedded, tmp_path: Path) -> None:
    from jobs.annotate import VALID_SCHEMA, model_id, prompt_version

    cfg, _, _ = embedded
    cfg = _copy(cfg, tmp_path / "home").model_copy(update={"annotate": AnnotateConfig(
        backend="http", url="http://127.0.0.1:9", model="test-llm")})
    genes = np.full(len(GENES), 0.6, np.float32)
    run = Workspace.at(cfg.home).annotations / "run=r1"
    run.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{
        "track_id": "no-genes", "prompt_version": prompt_version(cfg), "model": model_id(cfg), "genes": genes,
        "attempts": 1, "annotated_at": pa.scalar(0, pa.timestamp("us", tz="UTC")).as_py()}], VALID_SCHEMA),
        run / "part-00000.parquet")
    rep = embed(cfg)
    assert rep.genes_from == {"catalog": len(_by_track(read_content(cfg))) - 1, "llm": 1}
    assert rep.encoders["metadata"].computed == 1  # only the track whose genes arrived
    row = _by_track(read_content(cfg))["no-genes"]
    assert row["genes_source"] == "llm" and row["metadata_reason"] is None
    np.testing.assert_allclose(row["metadata_embedding"], genes)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["embed.staged", "publish.mid_swap"])
def test_killed_run_shows_nothing_partial_and_rerun_matches_uninterrupted(embedded, tmp_path: Path, fault: str) -> None:
    cfg, expected, _ = embedded
    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(Workspace.at(cfg.home).tracks, Workspace.at(home).tracks)
    # Same catalog, same audio files: the bronze table names absolute paths next to the original home.
    cfg = _cfg(home)
    env = {**os.environ, "ENCORE_FAULT": fault, "ENCORE_HOME": str(home), "RAY_AUTH_MODE": "disabled"}
    env.pop("ENCORE_CONFIG", None)
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"home: {home}\nembed:\n  metadata: genes\nray:\n  num_cpus: 2\n  object_store_memory_mb: 128\n")
    env["ENCORE_CONFIG"] = str(profile)
    proc = subprocess.run([sys.executable, "-m", "encore", "-q", "embed"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ws = Workspace.at(home)
    content = ws.feature_table(TRACK_CONTENT_TABLE)
    if fault == "embed.staged":  # killed before the commit point: nothing visible
        assert not content.exists() and not (ws.content / "embeddings").exists()
    else:  # killed between swaps: the journal is there, and whatever is visible is complete
        assert list(ws.journals.glob("*.json"))
        for f in (ws.content / "embeddings").rglob("*.parquet"):
            pq.read_table(f)
    rep = embed(cfg)
    assert rep.recovered_publications == (1 if fault == "publish.mid_swap" else 0)
    rows = _by_track(ds.dataset(content, format="parquet").to_table())
    assert {t: {n: rows[t][f"{n}_reason"] for n in ENCODERS} for t in rows} == expected
    assert all(rows[t]["audio_embedding"] is not None for t in expected if expected[t]["audio"] is None)
