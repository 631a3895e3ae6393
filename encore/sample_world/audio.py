"""Short synthetic clips whose timbre, tempo and key follow the track's style.

An eighth-note melody on the track's scale (additive synthesis: the harmonic roll-off sets the
brightness), a bass line an octave down, and noise-burst drums on the beat. Distortion saturates
the mix. Mono 16-bit PCM WAV, written with the standard library.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
MINOR = np.array([0, 2, 3, 5, 7, 8, 10])


@dataclass(frozen=True)
class ClipParams:
    tempo_bpm: float
    root_midi: int  # tonic, MIDI note number
    major: bool
    brightness: float  # 0..1: harmonic roll-off
    percussive: float  # 0..1: drum level
    distortion: float  # 0..1: saturation
    synthetic: float  # 0..1: square-ish vs decaying plucked envelope


def synthesize(p: ClipParams, rng: np.random.Generator, seconds: float = 3.0, sr: int = 11025) -> np.ndarray:
    """Return ``(seconds * sr,)`` int16 samples."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    beat = 60.0 / p.tempo_bpm
    step = beat / 2  # eighth notes
    n_steps = int(np.ceil(seconds / step)) + 1
    scale = MAJOR if p.major else MINOR
    degree = np.cumsum(rng.integers(-2, 3, size=n_steps))  # melodic random walk on the scale
    degree = np.clip(degree, -7, 10)
    semis = scale[degree % 7] + 12 * (degree // 7)
    freqs = 440.0 * 2.0 ** ((p.root_midi + semis - 69) / 12.0)
    k = np.minimum((t // step).astype(int), n_steps - 1)
    phase = 2 * np.pi * np.cumsum(freqs[k]) / sr
    rolloff = 0.25 + 0.65 * p.brightness
    melody = sum(rolloff ** (h - 1) * np.sin(h * phase) for h in range(1, 9))
    # Synthetic tracks hold notes (organ/synth); played ones pluck and decay within the step.
    decay = 0.25 + 2.0 * p.synthetic
    env = np.exp(-(t % step) / (step * decay))
    bass = 0.6 * np.sin(phase / 2) * np.exp(-(t % beat) / (beat * 0.8))
    hits = rng.standard_normal(n) * np.exp(-(t % beat) / 0.035)
    kick = np.sin(2 * np.pi * 55 * t) * np.exp(-(t % beat) / 0.08)
    x = 0.5 * melody * env / 3 + bass * (0.3 + 0.4 * p.percussive) + p.percussive * (0.35 * hits + 0.6 * kick)
    if p.distortion > 0:
        gain = 1 + 8 * p.distortion
        x = np.tanh(gain * x) / np.tanh(gain)
    x += 0.003 * rng.standard_normal(n)  # room noise: no clip is digitally silent
    x = 0.9 * x / (np.max(np.abs(x)) + 1e-9)
    return (x * 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(samples.astype("<i2").tobytes())
