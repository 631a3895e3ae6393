"""Security basics: secrets come from the environment and are never written or logged; models load
only from the configured registry, and local model folders only as safetensors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from click.testing import CliRunner

from encore.cli import cli
from encore.core.config import load_config
from tests.reliability.conftest import API_KEY_VALUE, Night

pytestmark = pytest.mark.reliability


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


@pytest.mark.slow
def test_the_llm_api_key_is_sent_but_never_written_or_logged(night: Night, fake_llm) -> None:
    # The key came from the environment (annotate.api_key_env) and reached the server ...
    assert any(r["auth"] == f"Bearer {API_KEY_VALUE}" for r in fake_llm.requests)
    assert API_KEY_VALUE not in night.profile.read_text()
    # ... and nothing the night wrote or printed (verbose logs included) holds it: not the lake,
    # the state and reports, Feast's files, the MLflow store, nor any of the runs' output.
    final = night.snaps["report"]
    assert _files_containing(final, API_KEY_VALUE.encode()) == []
    assert night.outputs and not [o for o in night.outputs if API_KEY_VALUE in o]


SECRET_PROFILE = """
mlflow:
  tracking_uri: https://alice:mlflow-pw-771@mlflow.example.com
feast:
  online_store:
    type: redis
    connection_string: redis.example.com:6379,db=1,password=redis-pw-772
"""


def test_credentials_written_into_a_profile_are_masked_in_everything_encore_prints_or_records(
        tmp_path: Path) -> None:
    from training.tracking import flatten

    path = tmp_path / "profile.yaml"
    path.write_text(SECRET_PROFILE)
    cfg = load_config(path)
    assert "mlflow-pw-771" in cfg.mlflow_tracking_uri()  # the client still gets the real URI
    shown = CliRunner().invoke(cli, ["--config", str(path), "config", "show", "--json"])
    params = flatten(cfg.effective())  # what `encore train` logs as MLflow params
    for text in (shown.output, json.dumps(params), json.dumps(cfg.effective())):
        assert "mlflow-pw-771" not in text and "redis-pw-772" not in text and "alice" not in text
    assert params["mlflow.tracking_uri"] == "https://***@mlflow.example.com"
    assert params["feast.online_store.connection_string"].endswith("password=***")


@pytest.mark.parametrize("model", ["/tmp/evil.pkl", "file:///tmp/evil", "runs:/abc/model", "../models/x",
                                   "models:/encore-recommender/1"])
def test_scoring_and_promotion_take_a_registry_name_never_a_path_or_uri(model: str, tmp_path: Path) -> None:
    for command in (["score", "--model", model], ["promote", "--model", model], ["rollback", "--model", model]):
        res = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), *command])
        assert res.exit_code == 1, (command, res.output)
        assert "not a path or URI" in res.output and "Traceback" not in res.output


class _Boom:
    """A pickle that creates a file when loaded: what a hostile model folder would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_model_folder_with_only_pickled_weights_is_refused_unopened(tmp_path: Path) -> None:
    from transformers import BertConfig

    from training.models.e4srec import _load_backbone

    folder = tmp_path / "backbone"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               vocab_size=100).save_pretrained(folder)
    marker = tmp_path / "pwned"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(OSError, match="safetensors"):
        _load_backbone(str(folder), causal=False)
    assert not marker.exists()


@pytest.mark.parametrize("key", [None, "sk-env-only-5d2e"])
def test_the_config_names_the_key_variable_and_never_holds_its_value(
        key: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The variable's *name* is configuration; its value is read from the environment only when used.
    if key is None:
        monkeypatch.delenv("ENCORE_LLM_API_KEY", raising=False)
    else:
        monkeypatch.setenv("ENCORE_LLM_API_KEY", key)
    res = CliRunner().invoke(cli, ["--home", str(tmp_path), "config", "show", "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)["annotate"]
    assert shown["api_key_env"] == "ENCORE_LLM_API_KEY"
    assert key is None or key not in res.output
