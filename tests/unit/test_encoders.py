"""Each content encoder: output shape, determinism, and a null with a reason for what it cannot encode."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from encore.core.config import AudioEncoderConfig, EmbedConfig, EncoderVersions, TextEncoderConfig
from encore.core.schemas import CONTENT_REASONS, ENCODER_ERROR, GENES
from encore.sample_world.audio import write_wav
from jobs.encoders import (
    DESCRIPTOR_DIM,
    AudioDescriptorEncoder,
    LyricsEncoder,
    MetadataEncoder,
    PretrainedAudioEncoder,
    TextEncoder,
    default_text_model,
    encoder_specs,
    render_genes,
)
from tests.fixtures.content import SR, clip, make_tiny_audio_model, write_bad_audio

TEXTS = ["neon lights over the city at night", "a quiet river under autumn trees", "neon city lights at night"]


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder(TextEncoderConfig())


def test_text_encoder_gives_unit_vectors_that_repeat_exactly_and_reflect_meaning(minilm: TextEncoder) -> None:
    a = minilm.embed(TEXTS)
    assert a.shape == (3, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, minilm.embed(TEXTS))
    # A real pretrained encoder: the paraphrase is closer than the unrelated sentence.
    assert a[0] @ a[2] > a[0] @ a[1] + 0.2


def test_plain_hf_encoder_folder_is_mean_pooled_like_sentence_transformers(minilm: TextEncoder, tmp_path: Path) -> None:
    src = default_text_model()
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(src / name, plain / name)  # no modules.json: not a sentence-transformers folder
    hf = TextEncoder(TextEncoderConfig(path=plain))
    assert hf._st is None and hf.dim == 384
    np.testing.assert_allclose(hf.embed(TEXTS), minilm.embed(TEXTS), atol=1e-4)


def test_lyrics_without_text_get_null_and_reason_not_a_zero_vector(minilm: TextEncoder) -> None:
    vecs, reasons = LyricsEncoder(minilm).encode(pa.table({"lyrics": ["some words", None, "  \n", "more words"]}))
    assert reasons == [None, "no_lyrics", "no_lyrics", None]
    assert vecs[1] is None and vecs[2] is None
    assert vecs[0].shape == (384,) and np.abs(vecs[0]).sum() > 0


@pytest.mark.parametrize("mode,dim", [("genes", 58), ("text", 384), ("genes+text", 58 + 384)])
def test_metadata_encoder_dims_per_mode_and_null_without_genes(minilm: TextEncoder, mode: str, dim: int) -> None:
    g = np.linspace(0, 1, len(GENES), dtype=np.float32)
    enc = MetadataEncoder(mode, minilm if "text" in mode else None)
    vecs, reasons = enc.encode(pa.table({"genes": pa.array([g, None, g[::-1].copy()], pa.list_(pa.float32()))}))
    assert enc.dim == dim and reasons == [None, "no_metadata", None]
    assert vecs[0].shape == (dim,) and vecs[1] is None
    assert not np.array_equal(vecs[0], vecs[2])
    if "genes" in mode:
        np.testing.assert_array_equal(vecs[0][:58], g)


def test_gene_rendering_names_the_salient_genes_by_group() -> None:
    g = np.full(len(GENES), 0.4, np.float32)
    g[GENES.index("danceability")] = 1.0
    g[GENES.index("lyrics_sad")] = 0.0
    text = render_genes(g)
    assert "rhythm: very high danceability" in text
    assert "lyrics: very low sad" in text
    assert "vocals" not in text  # nothing salient there


def _audio_batch(paths: list[str | None]) -> pa.Table:
    return pa.table({"track_id": [f"t{i}" for i in range(len(paths))], "audio_path": pa.array(paths, pa.string())})


def test_audio_descriptors_are_fixed_length_finite_deterministic_and_tell_clips_apart(tmp_path: Path) -> None:
    paths = []
    for i, tempo in enumerate((80.0, 160.0)):
        paths.append(tmp_path / f"c{i}.wav")
        write_wav(paths[-1], clip(i, tempo=tempo), SR)
    enc = AudioDescriptorEncoder(AudioEncoderConfig())
    vecs, reasons = enc.encode(_audio_batch([str(p) for p in paths]))
    assert reasons == [None, None]
    assert all(v.shape == (DESCRIPTOR_DIM,) and v.dtype == np.float32 and np.isfinite(v).all() for v in vecs)
    again, _ = enc.encode(_audio_batch([str(p) for p in paths]))
    np.testing.assert_array_equal(vecs[0], again[0])
    assert np.linalg.norm(vecs[0] - vecs[1]) > 1.0
    # Standardised: typical values sit within a few units of zero, not raw Hz or dB.
    assert np.abs(vecs[0]).max() < 20


def test_audio_at_another_sample_rate_is_resampled_to_nearly_the_same_vector(tmp_path: Path) -> None:
    import librosa

    y = clip(5, sr=SR)
    write_wav(tmp_path / "a.wav", y, SR)
    up = librosa.resample(y.astype(np.float32) / 32768, orig_sr=SR, target_sr=44100)
    write_wav(tmp_path / "b.wav", (up * 32767).astype(np.int16), 44100)
    enc = AudioDescriptorEncoder(AudioEncoderConfig())
    (a, b), reasons = enc.encode(_audio_batch([str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]))
    assert reasons == [None, None]
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos > 0.98, cos


def test_each_broken_audio_file_gets_null_and_its_reason(tmp_path: Path) -> None:
    files = write_bad_audio(tmp_path)
    enc = AudioDescriptorEncoder(AudioEncoderConfig())
    order = list(files)
    vecs, reasons = enc.encode(_audio_batch([*(str(files[r]) for r in order), None]))
    assert reasons == [*order, "no_audio"]
    assert all(v is None for v in vecs)
    assert set(reasons) == set(CONTENT_REASONS["audio"])  # every declared reason is reachable


def test_pretrained_audio_encoder_loads_a_local_transformers_folder(tmp_path: Path) -> None:
    model = make_tiny_audio_model(tmp_path / "tiny-w2v")
    write_wav(tmp_path / "c.wav", clip(3), SR)  # 11.025 kHz in, 16 kHz for the model
    enc = PretrainedAudioEncoder(AudioEncoderConfig(kind="pretrained", path=model))
    batch = _audio_batch([str(tmp_path / "c.wav"), str(tmp_path / "nope.wav")])
    vecs, reasons = enc.encode(batch)
    assert reasons == [None, "missing_file"] and enc.dim == 16
    assert vecs[0].shape == (16,) and np.isfinite(vecs[0]).all()
    np.testing.assert_array_equal(vecs[0], enc.encode(batch)[0][0])


def test_encoder_version_moves_with_settings_and_user_version_only_for_that_encoder(tmp_path: Path) -> None:
    base = encoder_specs(EmbedConfig())
    assert base == encoder_specs(EmbedConfig())  # stable across calls
    bumped = encoder_specs(EmbedConfig(versions=EncoderVersions(lyrics="2")))
    assert bumped["lyrics"].version.startswith("2-") and bumped["lyrics"].version != base["lyrics"].version
    assert bumped["audio"].version == base["audio"].version
    other = encoder_specs(EmbedConfig(metadata="genes", audio=AudioEncoderConfig(sample_rate=16000)))
    assert other["metadata"].version != base["metadata"].version
    assert other["audio"].version != base["audio"].version
    assert other["lyrics"].version == base["lyrics"].version
    batched = encoder_specs(EmbedConfig(text=TextEncoderConfig(batch_size=7)))
    assert batched["lyrics"].version == base["lyrics"].version  # batching changes no vector


def test_one_failing_track_costs_that_track_not_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs import embed
    from jobs.encoders import EncoderSpec

    class Flaky:
        dim = 2

        def encode(self, batch: pa.Table) -> tuple[list, list]:
            if "boom" in batch.column("lyrics").to_pylist():
                raise RuntimeError("boom")
            return [np.ones(2, np.float32)] * batch.num_rows, [None] * batch.num_rows

    monkeypatch.setattr(embed, "build_encoders", lambda specs: {s.name: Flaky() for s in specs})
    call = embed.EncodeBatch([EncoderSpec("lyrics", "1-x")], threads=1)
    out = call(pa.table({"track_id": ["a", "b", "c", "d"], "lyrics": ["x", "boom", "y", "boom"],
                         "need_lyrics": [True, True, True, False]}))
    # d was not asked for: no vector and no reason, and its "boom" never reached the encoder.
    assert out.column("lyrics_reason").to_pylist() == [None, ENCODER_ERROR, None, None]
    assert [v is None for v in out.column("lyrics_embedding").to_pylist()] == [False, True, False, True]
