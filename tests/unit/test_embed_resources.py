"""Where the embedding actors run: a GPU each only where the cluster has GPUs and the encoder uses torch."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from encore.cli import cli
from encore.core.config import AudioEncoderConfig, EmbedConfig
from encore.core.ray_session import gpus_per_actor
from jobs.embed import _uses_gpu
from jobs.encoders import encoder_specs
from tests.fixtures.content import write_catalog


class _FakeRay:
    def __init__(self, gpus: float) -> None:
        self.gpus = gpus

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 8.0, **({"GPU": self.gpus} if self.gpus else {})}


def test_actors_ask_for_gpus_only_on_a_cluster_that_has_them() -> None:
    assert gpus_per_actor(_FakeRay(2), 0.5) == 0.5
    assert gpus_per_actor(_FakeRay(0), 0.5) == 0.0  # the same config runs on a CPU-only machine


@pytest.mark.parametrize("embed_cfg,on_gpu", [
    (EmbedConfig(), {"lyrics": True, "audio": False, "metadata": True}),
    (EmbedConfig(metadata="genes"), {"lyrics": True, "audio": False, "metadata": False}),
])
def test_only_torch_encoders_take_a_gpu(embed_cfg: EmbedConfig, on_gpu: dict[str, bool]) -> None:
    assert {n: _uses_gpu(s) for n, s in encoder_specs(embed_cfg).items()} == on_gpu


def test_pretrained_audio_encoder_without_a_folder_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"embed\.audio\.path"):
        encoder_specs(EmbedConfig(audio=AudioEncoderConfig(kind="pretrained")))


def test_annotate_without_a_backend_names_the_keys_to_set(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_catalog(home, n_good=1)  # one track lacks genes: it needs an LLM
    res = CliRunner().invoke(cli, ["--home", str(home), "annotate"], env={"ENCORE_CONFIG": None})
    assert res.exit_code == 1
    assert "annotate.backend" in res.output


def test_embed_without_a_catalog_says_to_ingest_first(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "empty"), "embed"], env={"ENCORE_CONFIG": None})
    assert res.exit_code == 1
    assert "encore ingest --catalog" in res.output


def test_lyrics_and_metadata_share_one_text_model_in_one_stage() -> None:
    from jobs.embed import stages
    from jobs.encoders import build_encoders

    specs = encoder_specs(EmbedConfig())
    groups = stages(list(specs.values()))
    assert [[s.name for s in g] for g in groups] == [["lyrics", "metadata"], ["audio"]]
    encoders = build_encoders(groups[0])
    assert encoders["lyrics"].text is encoders["metadata"].text  # loaded once
