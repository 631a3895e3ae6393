"""Ingestion on a real local Spark session: every reason counted, nothing lost, reruns change nothing."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from encore.cli import cli
from encore.core import ids
from encore.core.workspace import Workspace
from jobs.ingest import IngestError, IngestInputs, ingest
from tests.fixtures import raw
from tests.fixtures.files import day_rows, digest

pytestmark = pytest.mark.integration



def _table(path: Path):
    return ds.dataset(path, format="parquet", partitioning="hive").to_table()


def test_listen_report_counts_each_reason_in_the_fixture(spark, cfg, tmp_path: Path) -> None:
    src = raw.write_listens(tmp_path / "listens.tsv")
    rep = ingest(cfg, IngestInputs(listens=(src,))).listens
    exp = raw.expected_listen_report()
    assert rep.rows_read == exp["rows_read"]
    assert rep.header_lines == exp["header_lines"]
    assert rep.quarantined == exp["quarantined"]
    assert rep.duplicates_in_input == exp["duplicates_in_input"]
    assert rep.added == exp["added"]
    assert rep.rows_read == (rep.header_lines + rep.quarantined_total + rep.duplicates_in_input
                             + rep.already_in_lake + rep.added)
    assert rep.days_changed == ["2009-05-01", "2009-05-03", "2009-05-04"]
    assert rep.partitions_written == ["2009-05"]  # one month folder, not one per day


def test_kept_listens_keep_unicode_and_get_derived_ids_python_agrees_with(spark, cfg, tmp_path: Path) -> None:
    ingest(cfg, IngestInputs(listens=(raw.write_listens(tmp_path / "l.tsv"),)))
    rows = _table(Workspace.at(cfg.home).listens).to_pylist()
    by_name = {r["track_name"]: r for r in rows}
    assert set(by_name) == {"Симфония №5", "つけまつける", "Hoppípolla", "Song B"}
    beethoven = by_name["Симфония №5"]
    assert beethoven["track_id"] == raw.MB_T and beethoven["artist_id"] == raw.MB_A
    kyary = by_name["つけまつける"]
    assert kyary["track_mbid"] is None
    assert kyary["track_id"] == ids.derived_track_id("きゃりーぱみゅぱみゅ", "つけまつける")
    assert kyary["artist_id"] == ids.derived_artist_id("きゃりーぱみゅぱみゅ")
    assert str(kyary["date"]) == "2009-05-04"


def test_quarantine_keeps_raw_line_raw_bytes_and_reason(spark, cfg, tmp_path: Path) -> None:
    ingest(cfg, IngestInputs(listens=(raw.write_listens(tmp_path / "l.tsv"),)))
    q = _table(Workspace.at(cfg.home).quarantine("listens")).to_pylist()
    expected = sorted((line, what) for line, what in raw.LISTEN_LINES
                      if what not in ("header", "kept", "duplicate"))
    assert sorted((r["raw_bytes"], r["reason"]) for r in q) == expected
    bad = next(r for r in q if r["reason"] == "invalid_utf8")
    assert bad["raw_bytes"] == b"user_a\t2009-05-04T19:00:00Z\t\t\xff\xfeArtist\t\tTrack"
    assert "\ufffd" in bad["raw_line"] and bad["source_file"].endswith("l.tsv")


def test_gzip_input_gives_the_same_lake_as_plain(spark, tmp_path: Path) -> None:
    from tests.conftest import make_config

    plain = raw.write_listens(tmp_path / "l.tsv")
    gz = tmp_path / "l.tsv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    a, b = make_config(tmp_path / "a"), make_config(tmp_path / "b")
    ra, rb = ingest(a, IngestInputs(listens=(plain,))), ingest(b, IngestInputs(listens=(gz,)))
    assert ra.listens.quarantined == rb.listens.quarantined and ra.listens.added == rb.listens.added
    assert digest(Workspace.at(a.home).listens) == digest(Workspace.at(b.home).listens)


def test_truncated_gzip_is_rejected_by_name_and_the_lake_is_untouched(spark, cfg, tmp_path: Path) -> None:
    ingest(cfg, IngestInputs(listens=(raw.write_listens(tmp_path / "l.tsv"),)))
    before = digest(Workspace.at(cfg.home).lake)
    data = gzip.compress(b"user_a\t2009-05-02T10:00:00Z\t\tA\t\tT\n" * 5000)
    broken = tmp_path / "broken.tsv.gz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestError, match=r"broken\.tsv\.gz"):
        ingest(cfg, IngestInputs(listens=(broken,)))
    assert digest(Workspace.at(cfg.home).lake) == before


def test_empty_file_ingests_nothing_without_error(spark, cfg, tmp_path: Path) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    rep = ingest(cfg, IngestInputs(listens=(empty,))).listens
    assert rep.rows_read == 0 and rep.added == 0


def test_rerun_on_same_input_changes_nothing(spark, cfg, small_world) -> None:
    world, stats = small_world
    inputs = IngestInputs(listens=(world / "userid-timestamp-artid-artname-traid-traname.tsv",),
                          profiles=world / "userid-profile.tsv", catalog=world / "catalog.jsonl")
    first = ingest(cfg, inputs)
    assert first.listens.added == stats.listens and first.tracks.added == stats.tracks
    assert first.users.added == stats.users
    lake = Workspace.at(cfg.home).lake
    before = {p: p.stat().st_mtime_ns for p in lake.rglob("*") if p.is_file()}
    before_digest = digest(lake)
    second = ingest(cfg, inputs)
    assert second.listens.added == 0 and second.listens.already_in_lake == stats.listens
    assert second.tracks.added == second.tracks.replaced == 0 and second.tracks.already_in_lake == stats.tracks
    assert second.users.added == 0
    assert digest(lake) == before_digest
    assert {p: p.stat().st_mtime_ns for p in lake.rglob("*") if p.is_file()} == before  # not even rewritten


def test_second_file_with_new_days_adds_only_those_days(spark, cfg, small_world, tmp_path: Path) -> None:
    world, stats = small_world
    lines = (world / "userid-timestamp-artid-artname-traid-traname.tsv").read_bytes().splitlines(keepends=True)
    cut = b"\t2009-05-01T"  # the world ends 2009-05-04: split off its last four days
    old = [ln for ln in lines if ln.split(b"\t")[1] < cut[1:]]
    new = [ln for ln in lines if ln.split(b"\t")[1] >= cut[1:]]
    (tmp_path / "old.tsv").write_bytes(b"".join(old))
    (tmp_path / "new.tsv").write_bytes(b"".join(new + old[:50]))  # overlap: already-ingested rows
    ingest(cfg, IngestInputs(listens=(tmp_path / "old.tsv",)))
    ws = Workspace.at(cfg.home)
    before, before_days = digest(ws.listens), day_rows(ws.listens)
    rep = ingest(cfg, IngestInputs(listens=(tmp_path / "new.tsv",))).listens
    assert rep.added == len(new) and rep.already_in_lake == 50
    assert rep.days_changed == [f"2009-05-0{d}" for d in range(1, 5)]
    # Only May is rewritten: the 50 April rows were already there, so April gains nothing.
    assert rep.partitions_written == ["2009-05"]
    after = digest(ws.listens)

    def untouched(d: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in d.items() if k.startswith("period=") and k.split("/")[0][7:] < "2009-05"}
    assert untouched(after) and untouched(after) == untouched(before)  # older months byte for byte the same
    old_days = {d: h for d, h in day_rows(ws.listens).items() if d < "2009-05-01"}
    assert old_days == {d: h for d, h in before_days.items()}  # and every older day's rows
    assert _table(ws.listens).num_rows == stats.listens


def test_catalog_and_profile_reports_count_each_reason(spark, cfg, tmp_path: Path) -> None:
    rep = ingest(cfg, IngestInputs(catalog=raw.write_catalog(tmp_path / "catalog.jsonl"),
                                   profiles=raw.write_profiles(tmp_path / "profiles.tsv")))
    assert rep.tracks.quarantined == raw.expected_reasons(raw.CATALOG_RECORDS)
    assert rep.tracks.added == sum(w == "kept" for _, w in raw.CATALOG_RECORDS)
    assert rep.users.quarantined == raw.expected_reasons(raw.PROFILE_LINES)
    assert rep.users.added == 2 and rep.users.header_lines == 1
    ws = Workspace.at(cfg.home)
    tracks = {r["track_name"]: r for r in _table(ws.tracks).to_pylist()}
    assert tracks["Симфония №5"]["audio_path"] == str(tmp_path / "audio" / "x.wav")  # resolved
    assert tracks["Hoppípolla"]["audio_path"] == "/abs/clip.wav" and tracks["Hoppípolla"]["duration_s"] == 268.0
    assert tracks["Unknown"]["duration_s"] is None and tracks["Unknown"]["genes"] is None
    assert len(tracks["Симфония №5"]["genes"]) == 58
    users = {r["user_id"]: r for r in _table(ws.users).to_pylist()}
    assert users["user_a"]["age"] == 25 and str(users["user_a"]["registered"]) == "2006-08-13"
    assert users["user_b"]["gender"] is None and users["user_b"]["registered"] is None


def test_catalog_missing_required_columns_is_a_clear_error(spark, cfg, tmp_path: Path) -> None:
    bad = tmp_path / "cat.jsonl"
    bad.write_text('{"artist": "A", "title": "T"}\n')
    with pytest.raises(IngestError, match=r"lacks required column.*duration_s"):
        ingest(cfg, IngestInputs(catalog=bad))
    assert not Workspace.at(cfg.home).tracks.exists()


def test_ingest_command_prints_the_report_and_keeps_it(spark, cfg, tmp_path: Path) -> None:
    src = raw.write_listens(tmp_path / "l.tsv")
    res = CliRunner().invoke(cli, ["--home", str(cfg.home), "ingest", "--listens", str(src)])
    assert res.exit_code == 0, res.output
    for reason, n in raw.expected_listen_report()["quarantined"].items():
        assert re.search(rf"^\s+{reason}\s+{n}$", res.output, re.M), (reason, res.output)
    assert re.search(r"^\s+added\s+4$", res.output, re.M)
    kept = json.loads((Workspace.at(cfg.home).reports("ingest") / "latest.json").read_text())
    assert kept["listens"]["quarantined"] == raw.expected_listen_report()["quarantined"]
    assert kept["listens"]["quarantined_total"] == 11
    res = CliRunner().invoke(cli, ["--home", str(cfg.home), "ingest", "--json", "--listens", str(src)])
    assert json.loads(res.output)["listens"]["already_in_lake"] == 4
