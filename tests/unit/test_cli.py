"""The CLI explains itself and maps failures to clear messages and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from encore.cli import cli

COMMANDS = [[], ["config"], ["config", "show"], ["sample-data"], ["ingest"], ["features"], ["annotate"], ["embed"],
            ["feast"], ["materialize"], ["summary"], ["export"]]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "encore")
def test_every_command_has_help_that_explains_it(args: list[str]) -> None:
    res = CliRunner().invoke(cli, [*args, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage: " in res.output
    body = res.output.split("\n\n", 2)[1].strip()
    assert len(body) > 20  # a real sentence, not an empty docstring


def test_config_show_prints_effective_config_with_overrides(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "ws"), "config", "show"], env={"ENCORE_CONFIG": None})
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.output)
    assert shown["home"] == str(tmp_path / "ws")
    assert shown["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path / 'ws' / 'mlflow' / 'mlflow.db'}"


def test_invalid_config_exits_1_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("spark:\n  shuffle_partitions: lots\n")
    res = CliRunner().invoke(cli, ["--config", str(bad), "config", "show"])
    assert res.exit_code == 1
    assert "spark.shuffle_partitions" in res.output


def test_sample_data_command_writes_world_and_reports_counts(tmp_path: Path) -> None:
    out = tmp_path / "w"
    res = CliRunner().invoke(cli, ["sample-data", "--out", str(out), "--users", "3", "--tracks", "40",
                                   "--days", "3", "--clips", "none"])
    assert res.exit_code == 0, res.output
    assert "listens" in res.output and "0 audio clips" in res.output
    assert (out / "userid-timestamp-artid-artname-traid-traname.tsv").stat().st_size > 0


def test_sample_data_rejects_a_bad_clips_value(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["sample-data", "--out", str(tmp_path), "--clips", "some"])
    assert res.exit_code == 2 and "'some' is not 'all', 'none' or a number" in res.output


def test_ingest_without_inputs_is_a_clear_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["--home", str(tmp_path), "ingest"])
    assert res.exit_code == 1 and "nothing to ingest" in res.output


def test_summary_of_an_empty_workspace_says_what_to_do(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["--home", str(tmp_path), "summary"])
    assert res.exit_code == 0 and "run `encore ingest` first" in res.output


def test_train_kbit_e4srec_without_cuda_exits_1_before_reading_any_data(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "empty"), "train", "--model", "e4srec",
                                   "--quantization", "4bit"], env={"ENCORE_CONFIG": None})
    assert res.exit_code == 1, res.output
    # Not the empty workspace's "no listens table": the refusal comes before the data is read.
    assert "train.e4srec.quantization: 4bit needs a CUDA GPU" in res.stderr
    assert "train.e4srec.quantization: none" in res.stderr and "no listens table" not in res.stderr


def test_preset_paper_sets_the_protocol_and_options_given_beside_it_win() -> None:
    from encore.cli import _train_changes

    names = ("model", "modalities", "fusion", "backbone", "id_encoder", "zero_stage", "epochs", "id_epochs",
             "max_len", "batch_size", "lr", "seed", "split", "min_item_plays")
    none = dict.fromkeys(names)
    changes = _train_changes(**{**none, "preset": "paper"})
    assert changes["split"] == "paper" and changes["eval.protocol"] == "candidates"
    assert changes["eval.num_candidates"] == 199
    assert _train_changes(**{**none, "preset": "paper", "split": "time"})["split"] == "time"
    assert "split" not in _train_changes(**none)  # no preset, nothing set


def test_export_without_a_lake_says_what_to_run_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "ws"), "export", "--out", str(out)],
                             env={"ENCORE_CONFIG": None})
    assert res.exit_code == 1 and "encore ingest" in res.output, res.output
    assert not out.exists()
