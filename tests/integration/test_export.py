"""``encore export``: the benchmark files agree with each other and with training's data, the same
workspace gives the same bytes, ``bench standard`` on the export reproduces training on the lake,
and a failed export leaves nothing half-written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlflow
from encore.core.config import PRESETS, EmbedConfig, EncoreConfig, TrainConfig
from encore.core.schemas import GENES
from tests.conftest import copy_home
from training.ablation import apply_changes
from training.data import load_lake, load_standard

pytestmark = pytest.mark.integration

# SASRec at test_training's small sizes: two epochs on the small world take seconds.
SMALL = {"model": "sasrec", "epochs": 2, "max_len": 20, "batch_size": 32, "id": {"hidden": 32, "inner": 64}}
# The small world has no listener with 1,000 plays: the paper's numbers, scaled to it (as in test_training).
PAPER = {**PRESETS["paper"], "paper.min_user_plays": 200, "paper.min_track_plays": 3, "paper.min_sessions": 10}


@pytest.fixture(scope="module")
def home(content_store: EncoreConfig, tmp_path_factory: pytest.TempPathFactory) -> EncoreConfig:
    from feature_repo import store

    cfg = copy_home(content_store, tmp_path_factory.mktemp("export") / "home")
    store.apply(cfg)  # Feast keeps absolute table paths: a copied workspace is applied again
    return cfg.model_copy(update={"embed": EmbedConfig(metadata="genes"),
                                  "train": TrainConfig.model_validate(SMALL)})


@pytest.fixture(scope="module")
def exported(home: EncoreConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.export import export

    out = tmp_path_factory.mktemp("exports") / "loo"
    export(home, out)
    return out


def _rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines()]


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_files_agree(out: Path, cfg: EncoreConfig) -> None:
    """Every file there, and their shapes, indices and tokens consistent with each other and the lake."""
    data = load_lake(cfg)
    items = pd.read_csv(out / "items.tsv", sep="\t", keep_default_na=False, dtype=str)
    users = pd.read_csv(out / "users.tsv", sep="\t", keep_default_na=False, dtype=str)
    n = len(items)
    assert n == len(data.vocab) and list(items["track_id"]) == data.vocab.track_ids
    assert list(items["item"]) == [str(i) for i in range(1, n + 1)]
    assert (items["artist"] != "").mean() > 0.9  # names from the bronze tracks table

    seqs, comps, times = _rows(out / "sequences.txt"), _rows(out / "completion.txt"), _rows(out / "timestamps.txt")
    assert [r[0] for r in seqs] == [r[0] for r in comps] == [r[0] for r in times] == list(users["user"])
    assert [len(r) for r in seqs] == [len(r) for r in comps] == [len(r) for r in times]  # token for token
    assert list(users["user_id"]) == [u for u, s in zip(data.sequences.users, data.sequences.items, strict=True)
                                      if len(s)]
    by_user = {r[0]: np.array(r[1:], dtype=np.int64) for r in seqs}
    lake_seqs = dict(zip(data.sequences.users, data.sequences.items, strict=True))
    for u, uid in zip(users["user"], users["user_id"], strict=True):
        assert np.array_equal(by_user[u], lake_seqs[uid])  # every kept listen, in time order
        assert np.all(np.diff(np.array(times[int(u) - 1][1:], dtype=np.int64)) >= 0)
    every = np.concatenate(list(by_user.values()))
    assert every.min() >= 1 and every.max() == n
    c = np.array([float(x) for r in comps for x in r[1:]])
    assert np.isnan(c).any() and np.nanmax(c) <= 1 and all(x == "nan" or len(x.split(".")[1]) == 4
                                                           for r in comps for x in r[1:])

    # Training prefixes, and each held-out example's target where its history count says.
    for r in _rows(out / "train.txt"):
        assert np.array_equal(np.array(r[1:], dtype=np.int64), by_user[r[0]][:len(r) - 1])
    for name, ev in (("valid", data.valid), ("test", data.test)):
        rows = pd.read_csv(out / f"{name}.tsv", sep="\t", dtype={"user": str})
        assert len(rows) == len(ev) > 0
        for u, target, pos in zip(rows["user"], rows["target"], rows["history_items"], strict=True):
            assert 0 < pos < len(by_user[u]) and by_user[u][pos] == target
        assert list(rows["target"]) == ev.targets.tolist() and list(rows["timestamp"]) == ev.timestamps.tolist()

    cands = pd.read_csv(out / "candidates_test.tsv", sep="\t", dtype={"user": str})
    tests = pd.read_csv(out / "test.tsv", sep="\t", dtype={"user": str})
    assert list(cands["user"]) == list(tests["user"]) and list(cands["target"]) == list(tests["target"])
    negatives = [np.array(x.split(), dtype=np.int64) for x in cands["negatives"]]
    want = cfg.train.eval.num_candidates if cfg.train.eval.protocol == "candidates" else 199
    assert all(len(x) == min(want, n - 1) and len(set(x)) == len(x) and t not in x and x.min() >= 1
               for x, t in zip(negatives, cands["target"], strict=True))

    for m in ("lyrics", "audio", "meta"):
        vec, present = np.load(out / "content" / f"{m}.npy"), np.load(out / "content" / f"{m}_present.npy")
        assert vec.dtype == np.float32 and vec.shape[0] == n + 1 and present.shape == (n + 1,)
        assert not present[0] and not vec[0].any() and not vec[~present].any() and present.any()
        assert (np.abs(vec[present]).sum(1) > 0).all()
    genes = pd.read_csv(out / "genes.csv")
    assert list(genes.columns) == ["item", "track_id", *GENES] and len(genes) == n
    assert list(genes["track_id"]) == data.vocab.track_ids
    g = genes[list(GENES)].to_numpy()
    known = ~np.isnan(g).all(1)  # a row is whole or empty
    assert known.mean() > 0.5 and not np.isnan(g[known]).any() and g[known].min() >= 0 and g[known].max() <= 1

    sheet = (out / "datasheet.md").read_text(encoding="utf-8")
    assert f"| users | {len(users):,} |" in sheet and f"| items (tracks) | {n:,} |" in sheet
    assert f"| listens | {len(every):,} |" in sheet and f"| test examples (`test.tsv`) | {len(data.test):,} |" in sheet
    assert "Licence: (to be filled in by the operator)" in sheet and "| torch |" in sheet
    assert "| lyrics | `content/lyrics.npy` | text encoder all-MiniLM-L6-v2" in sheet
    assert str(cfg.home) not in sheet and str(out) not in sheet  # no paths of this machine
    sums = dict(reversed(line.split("  ")) for line in (out / "SHA256SUMS").read_text().splitlines())
    assert sums == {k: v for k, v in _digests(out).items() if k != "SHA256SUMS"}


@pytest.mark.parametrize("split", ["loo", "time", "paper"])
def test_every_file_is_written_and_the_files_agree_token_by_token(split: str, home: EncoreConfig, exported: Path,
                                                                 tmp_path: Path) -> None:
    from training.export import export

    if split == "loo":
        cfg, out = home, exported
    else:
        changes = PAPER if split == "paper" else {"split": "time"}
        cfg = home.model_copy(update={"train": apply_changes(home.train, changes)})
        out = tmp_path / split
        summary = export(cfg, out)
        assert summary.files == tuple(sorted(_digests(out)))
    _check_files_agree(out, cfg)
    sheet = (out / "datasheet.md").read_text(encoding="utf-8")
    if split == "paper":
        assert "| min_sessions |" in sheet and "199 distinct negatives" in sheet
        assert "These are the lists `encore train` scores" in sheet
    if split == "loo":
        assert "leave-one-out" in sheet and "the paper's 200-candidate protocol" in sheet


def test_two_exports_of_one_workspace_are_byte_identical(home: EncoreConfig, exported: Path, tmp_path: Path) -> None:
    from training.export import export

    again = tmp_path / "again"
    export(home, again)
    first, second = _digests(exported), _digests(again)
    assert first == second and len(first) >= 16


def test_the_cli_writes_the_export_and_replaces_a_previous_one(home: EncoreConfig, exported: Path,
                                                             tmp_path: Path) -> None:
    from click.testing import CliRunner

    from encore.cli import cli

    out = tmp_path / "cli"
    result = CliRunner().invoke(cli, ["--home", str(home.home), "export", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "exported" in result.output and "200 candidates each" in result.output
    # The default settings read the same data as the fixture's (model sizes do not shape the data).
    for name in ("sequences.txt", "completion.txt", "items.tsv", "test.tsv", "content/audio.npy", "genes.csv"):
        assert (out / name).read_bytes() == (exported / name).read_bytes(), name

    replaced = CliRunner().invoke(cli, ["--home", str(home.home), "export", "--out", str(out),
                                       "--split", "time"])
    assert replaced.exit_code == 0, replaced.output  # a previous export is replaced whole
    assert (out / "datasheet.md").read_text().count("global time split") == 1


def test_an_export_refuses_a_folder_that_holds_something_else(home: EncoreConfig, tmp_path: Path) -> None:
    from training.export import ExportError, export

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export(home, busy)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


def test_a_failed_export_leaves_no_partial_folder_and_keeps_the_previous_export(
        home: EncoreConfig, exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import training.export as ex

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ex, "_write_content", broken)  # midway: sequences and splits written, content not
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        ex.export(home, fresh)
    assert not fresh.exists() and list(tmp_path.iterdir()) == []  # nothing, not even the staging folder

    previous = tmp_path / "previous"
    shutil.copytree(exported, previous)
    before = _digests(previous)
    with pytest.raises(OSError, match="disk full"):
        ex.export(home.model_copy(update={"train": apply_changes(home.train, {"split": "time"})}), previous)
    assert _digests(previous) == before and sorted(p.name for p in tmp_path.iterdir()) == ["previous"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["export.staged", "publish.mid_swap"])
def test_a_killed_export_leaves_the_previous_or_the_new_export_whole_and_the_rerun_cleans_up(
        fault: str, home: EncoreConfig, exported: Path, tmp_path: Path) -> None:
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from training.export import export

    out = tmp_path / "out"
    shutil.copytree(exported, out)
    (out / "sequences.txt").write_text("1 1\n")  # an older export: the kill must not leave a mix
    (out / "SHA256SUMS").write_text("")
    before = _digests(out)
    env = {**os.environ, "ENCORE_FAULT": fault, "ENCORE_HOME": str(home.home)}
    env.pop("ENCORE_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "encore", "-q", "export", "--out", str(out), "--max-len", "20"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    if fault == "export.staged":
        assert _digests(out) == before  # the previous export, untouched
    else:
        # Swapped in before the kill: the new export whole, its SHA256SUMS true to its files.
        sums = dict(reversed(line.split("  ")) for line in (out / "SHA256SUMS").read_text().splitlines())
        assert sums == {k: v for k, v in _digests(out).items() if k != "SHA256SUMS"}
        assert (out / "sequences.txt").read_bytes() == (exported / "sequences.txt").read_bytes()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "out")
    assert left and all(name.startswith(".out.") for name in left)  # hidden siblings: staging, or trash + journal

    export(home, out)  # finishes or drops what the killed run left
    assert _digests(out) == _digests(exported) and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_bench_standard_on_the_exported_sequences_reproduces_training_on_the_lake(home: EncoreConfig,
                                                                                  exported: Path) -> None:
    from training.standard import standard_table
    from training.train import train

    # The dataset first: the same users, item sequences, training windows and targets.
    lake, std = load_lake(home), load_standard(exported / "sequences.txt", home.train)
    assert std.vocab.track_ids == [str(i) for i in range(1, len(lake.vocab) + 1)]
    assert all(np.array_equal(a, b) for a, b in zip(lake.train.items, std.train.items, strict=True))
    for a, b in ((lake.valid, std.valid), (lake.test, std.test)):
        assert a.items.equal(b.items) and a.targets.equal(b.targets) and (a.history != b.history).nnz == 0

    from_lake = train(home, register=False, log_model=False)
    table = standard_table(home, exported / "sequences.txt", None, "full", ["sasrec"], [home.train.seed])
    from_file = table["results"][0]
    assert from_file["test"].keys() == from_lake.test.keys()
    assert from_file["test"] == pytest.approx(from_lake.test, rel=1e-9, abs=1e-12)
    # 24 test users make coarse metrics: the losses of every epoch say the two trainings were one.
    client = mlflow.MlflowClient()
    for name in ("train_loss", "first_step_loss", "valid_ndcg_at_10", "valid_mrr"):
        lake_curve = [m.value for m in client.get_metric_history(from_lake.run_id, name)]
        file_curve = [m.value for m in client.get_metric_history(from_file["run_id"], name)]
        assert len(lake_curve) == home.train.epochs and file_curve == pytest.approx(lake_curve, rel=1e-9), name
