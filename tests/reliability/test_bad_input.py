"""Malformed input, table-driven: each case gets a clear error or is quarantined and counted, no
command crashes without a message, and nothing already in the lake is lost.

Raw files go through the real ``encore ingest`` (in-process, on the suite's Spark session) into a
workspace that already holds a lake; answers, audio and configs through the functions that meet
them in production.
"""

from __future__ import annotations

import gzip
import json
import random
import struct
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from encore.cli import cli
from encore.core.config import AudioEncoderConfig, ConfigError, EncoreConfig, load_config
from encore.core.schemas import GENES
from encore.core.workspace import Workspace
from jobs.annotate import MAX_ANSWER_CHARS, InvalidAnswer, parse_answer
from jobs.encoders import AudioRejected, load_audio
from tests.conftest import copy_home

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


def listen(user: str = "user_000001", ts: str = "2009-05-05T10:00:00Z", artist: str = "Some Artist",
           track: str = "Some Song") -> str:
    return f"{user}\t{ts}\t\t{artist}\t\t{track}\n"


VALID = "".join(listen(ts=f"2009-05-05T1{i}:00:00Z", track=f"Song {i}") for i in range(3))


def _gzip_truncated(path: Path) -> Path:
    data = gzip.compress((VALID * 200).encode())
    path = path.with_suffix(".tsv.gz")
    path.write_bytes(data[: len(data) // 2])
    return path


def _text(body: str, suffix: str = ".tsv") -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        path = path.with_suffix(suffix)
        path.write_text(body, encoding="utf-8")
        return path
    return make


def _binary(path: Path) -> Path:
    path = path.with_suffix(".tsv")
    path.write_bytes(random.Random(0).randbytes(20_000))
    return path


def _catalog(rows: list[dict]) -> Callable[[Path], Path]:
    return _text("".join(json.dumps(r) + "\n" for r in rows), ".jsonl")


@dataclass
class Case:
    make: Callable[[Path], Path]
    option: str = "--listens"
    error: str | None = None  # a clear error whose message says this; nothing ingested
    quarantined: dict[str, int] = field(default_factory=dict)  # reason -> rows (None: every row read)
    added: int = 0
    table: str = "listens"
    warning: str | None = None  # ingested, with this warning in the report and the output


CASES = {
    "truncated_gzip": Case(_gzip_truncated, error="is not a readable gzip file"),
    "binary_garbage": Case(_binary, quarantined={"*": -1}, warning="every one of"),
    "wrong_delimiter": Case(_text(VALID.replace("\t", ",")), quarantined={"field_count": 3},
                            warning="every one of 3 rows was quarantined (mostly field_count)"),
    "five_and_seven_fields": Case(_text("u1\t2009-05-05T10:00:00Z\t\tA\tT\n" + "u1\t2009-05-05T10:00:00Z\t\tA\t\tT\tx\n"
                                        + listen()), quarantined={"field_count": 2}, added=1),
    "future_and_before_2000": Case(_text(listen(ts="2031-01-01T00:00:00Z") + listen(ts="1999-12-31T23:59:59Z")
                                         + listen()), quarantined={"timestamp_out_of_range": 2}, added=1),
    "bad_timestamp_text": Case(_text(listen(ts="yesterday") + listen()), quarantined={"bad_timestamp": 1}, added=1),
    "100k_character_names": Case(_text(listen(artist="A" * 100_000) + listen(track="T" * 100_000) + listen()),
                                 quarantined={"field_too_long": 2}, added=1),
    "user_with_one_listen": Case(_text(listen(user="user_lonely")), added=1),
    "empty_file": Case(_text(""), warning="the input holds no rows"),
    "zero_and_negative_duration": Case(_catalog([
        {"artist": "A", "title": "Zero", "duration_s": 0}, {"artist": "A", "title": "Neg", "duration_s": -5},
        {"artist": "A", "title": "Fine", "duration_s": 200}]), option="--catalog",
        quarantined={"bad_duration": 2}, added=1, table="tracks"),
    "catalog_missing_columns": Case(_catalog([{"title": "No artist, no duration"}]), option="--catalog",
                                    error="lacks required column(s): artist, duration_s"),
    "catalog_not_json": Case(_text("artist,title,duration_s\nA,T,200\n", ".jsonl"), option="--catalog",
                             error="no JSON object"),
}


def _count(path: Path) -> int:
    return ds.dataset(path, format="parquet", partitioning="hive").count_rows() if path.is_dir() else 0


def _lake_rows(ws: Workspace) -> dict[str, set]:
    """Every row of the bronze tables, as tuples: what must still be there after any bad input."""
    out = {}
    for name, path in (("listens", ws.listens), ("tracks", ws.tracks)):
        t = ds.dataset(path, format="parquet", partitioning="hive").to_table()
        out[name] = set(map(tuple, (t.to_pandas().astype(str).to_numpy().tolist())))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_raw_input_is_refused_or_quarantined_and_the_lake_keeps_every_row(
        name: str, featured_home: EncoreConfig, tmp_path: Path, spark) -> None:
    case = CASES[name]
    cfg = copy_home(featured_home, tmp_path / "home")
    ws = Workspace.at(cfg.home)
    before = _lake_rows(ws)
    path = case.make(tmp_path / name)
    res = CliRunner().invoke(cli, ["--home", str(cfg.home), "ingest", case.option, str(path), "--json"])

    assert "Traceback" not in res.output
    after = _lake_rows(ws)
    assert all(before[t] <= after[t] for t in before), "rows already in the lake were lost"
    if case.error:
        assert res.exit_code == 1 and not isinstance(res.exception, AssertionError)
        assert case.error in res.output, res.output
        assert after == before  # nothing half-ingested
        return
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout[res.stdout.index("{"):])[case.table]
    quarantined = rep["quarantined"]
    if "*" in case.quarantined:  # garbage: whatever lines the bytes make, every one is rejected
        assert sum(quarantined.values()) == rep["rows_read"] > 0
    else:
        assert quarantined == case.quarantined
    assert rep["added"] == case.added
    if case.warning:
        assert any(case.warning in w for w in rep["warnings"]), rep["warnings"]
    else:
        assert rep["warnings"] == []
    assert len(after[case.table]) - len(before[case.table]) == case.added
    # Quarantined rows are kept with their reason, not dropped: the lake's quarantine holds them.
    assert _count(ws.quarantine(case.table)) - _count(Workspace.at(featured_home.home).quarantine(case.table)) == (
        sum(quarantined.values()))


def test_a_user_with_one_listen_gets_features_like_anyone_else(featured_home: EncoreConfig, tmp_path: Path,
                                                                spark) -> None:
    from jobs.features import build_features
    from jobs.ingest import IngestInputs, ingest

    cfg = copy_home(featured_home, tmp_path / "home")
    one = tmp_path / "one.tsv"
    one.write_text(listen(user="user_lonely"))
    ingest(cfg, IngestInputs(listens=(one,)))
    build_features(cfg)
    t = ds.dataset(Workspace.at(cfg.home).feature_table("user_daily"), format="parquet",
                   partitioning="hive").to_table().to_pandas()
    row = t[t["user_id"] == "user_lonely"]
    assert len(row) == 1 and row["plays_30d"].iloc[0] == 1


# ---------------------------------------------------------------- model output, audio, configuration
SCORES = dict.fromkeys(GENES, 3)
ANSWERS = {
    "prose": ("I would rather talk about the weather.", "no_json"),
    "truncated_json": ('{"vocal_register": 3, "tempo": ', "no_json"),
    "json_list": (json.dumps(list(SCORES.values())), "no_json"),
    "missing_genes": (json.dumps({"tempo": 3}), "missing_genes"),
    "extra_key_injection": (json.dumps({**SCORES, "__import__('os').system('id')": 1}), "unknown_genes"),
    "out_of_range": (json.dumps({**SCORES, "tempo": 9}), "bad_value"),
    "string_scores": (json.dumps({**SCORES, "tempo": "3"}), "bad_value"),
    "booleans": (json.dumps({**SCORES, "tempo": True}), "bad_value"),
    "nan": (json.dumps({**SCORES, "tempo": float("nan")}), "bad_value"),
    "too_long": ("x" * (MAX_ANSWER_CHARS + 1) + json.dumps(SCORES), "too_long"),
    "deeply_nested": ('{"a":' * 5_000, "no_json"),  # the JSON parser's recursion limit, not a crash
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_llm_answers_are_untrusted_data_parsed_strictly(name: str) -> None:
    text, reason = ANSWERS[name]
    with pytest.raises(InvalidAnswer) as err:
        parse_answer(text)
    assert err.value.reason == reason


def _wav(path: Path, seconds: float = 1.0, sr: int = 22050) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        t = np.arange(int(seconds * sr)) / sr
        w.writeframes((np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2").tobytes())
    return path


AUDIO = {
    "garbage_bytes": (lambda p: p.write_bytes(random.Random(1).randbytes(50_000)), "unreadable"),
    "truncated_wav": (lambda p: p.write_bytes(_wav(p).read_bytes()[:20_000]), "truncated"),
    "header_only": (lambda p: p.write_bytes(_wav(p).read_bytes()[:44]), None),
    "empty_file": (lambda p: p.write_bytes(b""), "unreadable"),
    "absurd_sample_rate": (lambda p: p.write_bytes(_wav(p).read_bytes()[:24] + struct.pack("<I", 3)
                                                   + _wav(p).read_bytes()[28:]), "bad_sample_rate"),
}


@pytest.mark.parametrize("name", list(AUDIO))
def test_corrupt_audio_is_rejected_with_a_reason(name: str, tmp_path: Path) -> None:
    make, reason = AUDIO[name]
    path = tmp_path / f"{name}.wav"
    make(path)
    with pytest.raises(AudioRejected) as err:
        load_audio(str(path), AudioEncoderConfig(), 22050)
    if reason:
        assert err.value.reason == reason
    assert err.value.reason in ("unreadable", "truncated", "bad_sample_rate", "too_short", "silent")


CONFIGS = {
    "number_as_text": ("spark:\n  shuffle_partitions: many\n", "spark.shuffle_partitions"),
    "list_for_section": ("ray: [1, 2]\n", "ray"),
    "negative_epochs": ("train:\n  epochs: -1\n", "train.epochs"),
    "unknown_key": ("ray:\n  adress: 127.0.0.1:6379\n", "ray.adress"),
    "bad_choice": ("feast:\n  online_store:\n    type: cassandra\n", "feast.online_store.type"),
    "not_a_mapping": ("- just\n- a list\n", "mapping at the top level"),
    "not_yaml": ("spark: {master: [\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_config_with_wrong_types_is_an_error_naming_the_key(name: str, tmp_path: Path) -> None:
    text, key = CONFIGS[name]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("(", r"\(")):
        load_config(path)
    res = CliRunner().invoke(cli, ["--config", str(path), "config", "show"])
    assert res.exit_code == 1 and key in res.output and "Traceback" not in res.output


def test_an_oversized_llm_response_is_cut_off_and_a_hostile_one_is_only_data() -> None:
    from encore.core.config import AnnotateConfig
    from jobs.annotate import MAX_RESPONSE_BYTES, BackendError, HttpBackend
    from tests.fixtures.fake_llm import serve_fake_llm

    with serve_fake_llm() as llm:
        backend = HttpBackend(AnnotateConfig(backend="http", url=llm.url, model="m", timeout_s=10))
        with pytest.raises(BackendError, match=f"passed {MAX_RESPONSE_BYTES:,} bytes"):
            backend.generate("Title: zz-huge-1")
        hostile = backend.generate("Title: zz-inject-1")
    with pytest.raises(InvalidAnswer) as err:
        parse_answer(hostile)
    assert err.value.reason == "missing_genes"
